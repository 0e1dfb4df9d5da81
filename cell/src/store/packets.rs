//! Sending packets (with their `idem_uid` row), payment callbacks, reads and history.

use serde_json::json;
use topology::Uid;

use super::journal::append_event;
use super::rows::{self, Packet, Payment, PACKET_COLS};
use super::{get, Store, StoreError, WriteTx};
use crate::domain::validate::{Funding, History, PaymentOutcome, Role, SendPacket};
use crate::domain::{PacketKind, PacketStatus};
use crate::fence::Fence;
use crate::journal::Event;

/// What `send_packet` did.
#[derive(Debug)]
pub enum SendOutcome {
    /// A new packet; `body` is the stored response.
    Created {
        body: String,
    },
    /// The same key and body were seen before: the stored response, byte for byte.
    Replayed {
        status: u16,
        body: String,
    },
    /// The same key came with another body.
    KeyReused,
    SubsidyNotFound,
    SubsidyUnavailable,
    /// The request's total differs from the subsidy, or the subsidy cannot give each share a cent.
    BadTotal(String),
}

/// The inputs of one send, all validated at the edge.
pub struct NewPacket<'a> {
    pub sender: &'a Uid,
    pub idem_key: &'a str,
    pub request_hash: &'a str,
    pub cmd: &'a SendPacket,
    pub packet_id: &'a str,
    pub payment_id: &'a str,
    pub slot: i64,
    pub now: i64,
    /// When to first ask the payment provider about a C2C payment.
    pub payment_check_at: i64,
    /// A C2C payment still pending then cancels the packet.
    pub payment_deadline_at: i64,
}

#[derive(Debug)]
pub enum CallbackOutcome {
    NotFound,
    /// The payment's state after the callback (unchanged if it was already final).
    Done {
        status: String,
        packet_id: String,
    },
}

pub struct HistoryPage {
    pub items: Vec<serde_json::Value>,
    pub next: Option<(i64, String)>,
}

impl Store {
    /// Sends a packet exactly once per `(sender, Idempotency-Key)`.
    ///
    /// Locks: the `idem_uid` primary key first (a concurrent retry with the same key waits on
    /// it, then replays our stored response), then for B2C the subsidy row, so one subsidy
    /// funds one packet.
    pub async fn send_packet(
        &self,
        n: NewPacket<'_>,
        fence: &Fence,
        render: impl Fn(&Packet) -> String,
    ) -> Result<SendOutcome, StoreError> {
        let mut tx = self.begin_fenced(fence).await?;
        // Every row of a send (packet, payment, idem_uid, the sender's subsidy) is of the
        // sender's slot.
        tx.fence(n.slot).await?;
        let fresh = sqlx::query(
            "INSERT INTO idem_uid (uid, operation, idem_key, slot, request_hash, status_code, response_body, created_at) \
             VALUES ($1, 'send_packet', $2, $3, $4, 0, '', $5) ON CONFLICT DO NOTHING",
        )
        .bind(n.sender.as_str())
        .bind(n.idem_key)
        .bind(n.slot)
        .bind(n.request_hash)
        .bind(n.now)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if fresh == 0 {
            tx.rollback().await?;
            return self.replay_send(n.sender, n.idem_key, n.request_hash).await;
        }
        let (total, status, subsidy_id) = match &n.cmd.funding {
            Funding::C2c { total } => (*total, PacketStatus::AwaitingPayment, None),
            Funding::B2c { subsidy_id, total } => {
                match self.use_subsidy(&mut tx, &n, subsidy_id, *total).await? {
                    Ok(amount) => (amount, PacketStatus::Active, Some(subsidy_id.clone())),
                    Err(outcome) => {
                        tx.rollback().await?;
                        return Ok(outcome);
                    }
                }
            }
        };
        let kind = n.cmd.kind();
        let expires_at = n.now + n.cmd.expires_in_s * 1000;
        sqlx::query(
            "INSERT INTO packets (packet_id, slot, sender, kind, total, count, remaining_amount, \
             remaining_count, status, greeting, created_at, expires_at, subsidy_id, payment_id) \
             VALUES ($1, $2, $3, $4, $5, $6, $5, $6, $7, $8, $9, $10, $11, $12)",
        )
        .bind(n.packet_id)
        .bind(n.slot)
        .bind(n.sender.as_str())
        .bind(kind.as_str())
        .bind(total)
        .bind(n.cmd.count)
        .bind(status.as_str())
        .bind(&n.cmd.greeting)
        .bind(n.now)
        .bind(expires_at)
        .bind(subsidy_id.as_deref())
        .bind((kind == PacketKind::C2c).then_some(n.payment_id))
        .execute(&mut *tx)
        .await?;
        let payment = if kind == PacketKind::C2c {
            sqlx::query(
                "INSERT INTO payments (payment_id, slot, packet_id, amount, status, created_at, updated_at, \
                 next_check_at, deadline_at) VALUES ($1, $2, $3, $4, 'pending', $5, $5, $6, $7)",
            )
            .bind(n.payment_id)
            .bind(n.slot)
            .bind(n.packet_id)
            .bind(total)
            .bind(n.now)
            .bind(n.payment_check_at)
            .bind(n.payment_deadline_at)
            .execute(&mut *tx)
            .await?;
            let payload = json!({"packet_id": n.packet_id, "amount": total});
            append_event(
                &mut tx,
                n.slot,
                Event::PaymentCreated,
                n.payment_id,
                payload,
                n.now,
            )
            .await?;
            Some(Payment {
                payment_id: n.payment_id.to_owned(),
                amount: total,
                status: "pending".into(),
            })
        } else {
            None
        };
        let packet = Packet {
            packet_id: n.packet_id.to_owned(),
            sender: n.sender.to_string(),
            kind,
            total,
            count: n.cmd.count,
            remaining_amount: total,
            remaining_count: n.cmd.count,
            refunded_amount: 0,
            status,
            greeting: n.cmd.greeting.clone(),
            created_at: n.now,
            expires_at,
            subsidy_id,
            payment,
        };
        let body = render(&packet);
        sqlx::query(
            "UPDATE idem_uid SET status_code = 201, response_body = $1 \
             WHERE uid = $2 AND operation = 'send_packet' AND idem_key = $3",
        )
        .bind(&body)
        .bind(n.sender.as_str())
        .bind(n.idem_key)
        .execute(&mut *tx)
        .await?;
        let payload =
            json!({"sender": n.sender, "kind": kind, "total": total, "count": n.cmd.count});
        append_event(
            &mut tx,
            n.slot,
            Event::PacketCreated,
            n.packet_id,
            payload,
            n.now,
        )
        .await?;
        tx.commit().await?;
        Ok(SendOutcome::Created { body })
    }

    /// Marks the sender's subsidy used by this packet; `Ok(amount)` or the refusal.
    async fn use_subsidy(
        &self,
        tx: &mut WriteTx,
        n: &NewPacket<'_>,
        subsidy_id: &str,
        total: Option<i64>,
    ) -> Result<Result<i64, SendOutcome>, StoreError> {
        let sql = format!(
            "SELECT uid, amount, status, expires_at FROM subsidies WHERE subsidy_id = $1{}",
            self.for_update()
        );
        let Some(row) = sqlx::query(&sql)
            .bind(subsidy_id)
            .fetch_optional(&mut **tx)
            .await?
        else {
            return Ok(Err(SendOutcome::SubsidyNotFound));
        };
        let (uid, amount): (String, i64) = (get(&row, "uid")?, get(&row, "amount")?);
        let (status, expires_at): (String, i64) = (get(&row, "status")?, get(&row, "expires_at")?);
        let count = n.cmd.count;
        if uid != n.sender.as_str() {
            // Someone else's subsidy is, to this sender, one that does not exist.
            return Ok(Err(SendOutcome::SubsidyNotFound));
        }
        if status != "available" || n.now >= expires_at {
            return Ok(Err(SendOutcome::SubsidyUnavailable));
        }
        if total.is_some_and(|t| t != amount) {
            return Ok(Err(SendOutcome::BadTotal(format!(
                "must equal the subsidy's amount {amount}"
            ))));
        }
        if amount < count {
            return Ok(Err(SendOutcome::BadTotal(format!(
                "the subsidy's {amount} cents cannot fund {count} shares"
            ))));
        }
        sqlx::query("UPDATE subsidies SET status = 'used', packet_id = $1 WHERE subsidy_id = $2")
            .bind(n.packet_id)
            .bind(subsidy_id)
            .execute(&mut **tx)
            .await?;
        Ok(Ok(amount))
    }

    async fn replay_send(
        &self,
        sender: &Uid,
        key: &str,
        hash: &str,
    ) -> Result<SendOutcome, StoreError> {
        let row = sqlx::query(
            "SELECT request_hash, status_code, response_body FROM idem_uid \
             WHERE uid = $1 AND operation = 'send_packet' AND idem_key = $2",
        )
        .bind(sender.as_str())
        .bind(key)
        .fetch_one(&self.write)
        .await?;
        let stored_hash: String = get(&row, "request_hash")?;
        if stored_hash != hash {
            return Ok(SendOutcome::KeyReused);
        }
        let status: i64 = get(&row, "status_code")?;
        Ok(SendOutcome::Replayed {
            status: u16::try_from(status).map_err(|_| StoreError::Corrupt("status_code".into()))?,
            body: get(&row, "response_body")?,
        })
    }

    pub async fn packet(&self, packet_id: &str) -> Result<Option<Packet>, StoreError> {
        let sql = format!(
            "SELECT {PACKET_COLS} FROM packets p LEFT JOIN payments y ON y.payment_id = p.payment_id \
             WHERE p.packet_id = $1"
        );
        let row = sqlx::query(&sql)
            .bind(packet_id)
            .fetch_optional(&self.read)
            .await?;
        row.as_ref().map(rows::packet).transpose()
    }

    /// Applies a provider's verdict once; a repeat, or a verdict after the payment is final,
    /// changes nothing and reports the state as it is.
    ///
    /// Locks: the payment row, then its packet row (the same order as every other path that
    /// takes both), then the slot's epoch row (the fence).
    pub async fn payment_callback(
        &self,
        payment_id: &str,
        outcome: PaymentOutcome,
        now: i64,
        fence: &Fence,
    ) -> Result<CallbackOutcome, StoreError> {
        let mut tx = self.begin_fenced(fence).await?;
        let sql = format!(
            "SELECT packet_id, status, slot FROM payments WHERE payment_id = $1{}",
            self.for_update()
        );
        let Some(row) = sqlx::query(&sql)
            .bind(payment_id)
            .fetch_optional(&mut *tx)
            .await?
        else {
            return Ok(CallbackOutcome::NotFound);
        };
        let packet_id: String = get(&row, "packet_id")?;
        let status: String = get(&row, "status")?;
        let slot: i64 = get(&row, "slot")?;
        if status != "pending" {
            if status != outcome.as_str() {
                tracing::warn!(
                    payment_id,
                    status,
                    reported = outcome.as_str(),
                    "payment callback contradicts the final state; ignored"
                );
            }
            tx.rollback().await?;
            return Ok(CallbackOutcome::Done { status, packet_id });
        }
        // The payment and its packet share the slot.
        tx.fence(slot).await?;
        sqlx::query("UPDATE payments SET status = $1, updated_at = $2 WHERE payment_id = $3")
            .bind(outcome.as_str())
            .bind(now)
            .bind(payment_id)
            .execute(&mut *tx)
            .await?;
        let next = match outcome {
            PaymentOutcome::Succeeded => PacketStatus::Active,
            PaymentOutcome::Failed => PacketStatus::Cancelled,
        };
        sqlx::query(
            "UPDATE packets SET status = $1 WHERE packet_id = $2 AND status = 'awaiting_payment'",
        )
        .bind(next.as_str())
        .bind(&packet_id)
        .execute(&mut *tx)
        .await?;
        let payload = json!({"payment_id": payment_id, "status": outcome.as_str()});
        append_event(
            &mut tx,
            slot,
            Event::PaymentSettled,
            &packet_id,
            payload,
            now,
        )
        .await?;
        tx.commit().await?;
        Ok(CallbackOutcome::Done {
            status: outcome.as_str().to_owned(),
            packet_id,
        })
    }

    /// One page of a user's history, newest first.
    pub async fn history(
        &self,
        uid: &Uid,
        q: &History,
        now: i64,
    ) -> Result<HistoryPage, StoreError> {
        let (after_at, after_id) = q.after.clone().unwrap_or((i64::MAX, String::new()));
        // Without a cursor the bound (i64::MAX, "") admits every row.
        let bound = "AND (t < $2 OR (t = $2 AND id < $3))";
        let (sql, key) = match q.role {
            Role::Sent => (
                format!(
                    "SELECT * FROM (SELECT {PACKET_COLS}, p.created_at AS t, p.packet_id AS id \
                     FROM packets p LEFT JOIN payments y ON y.payment_id = p.payment_id \
                     WHERE p.sender = $1) x WHERE 1 = 1 {bound} ORDER BY t DESC, id DESC LIMIT $4"
                ),
                "packet_id",
            ),
            Role::Received => (
                format!(
                    // From the credits in this (home) cell: claims on packets of any cell end
                    // here once their transfer is credited.
                    "SELECT * FROM (SELECT k.source_id, k.packet_id, k.amount, k.created_at AS t, \
                     k.source_id AS id FROM wallet_credits k \
                     WHERE k.uid = $1 AND k.kind IN ('claim', 'transfer_in')) x \
                     WHERE 1 = 1 {bound} ORDER BY t DESC, id DESC LIMIT $4"
                ),
                "source_id",
            ),
        };
        let found = sqlx::query(&sql)
            .bind(uid.as_str())
            .bind(after_at)
            .bind(after_id)
            .bind(q.limit + 1)
            .fetch_all(&self.read)
            .await?;
        let more = found.len() as i64 > q.limit;
        let mut items = Vec::with_capacity(found.len());
        let mut last = None;
        for row in found.iter().take(q.limit as usize) {
            last = Some((get::<i64>(row, "t")?, get::<String>(row, key)?));
            items.push(match q.role {
                Role::Sent => rows::packet(row)?.view(now),
                Role::Received => json!({
                    "transfer_id": get::<String>(row, "source_id")?,
                    "packet_id": get::<Option<String>>(row, "packet_id")?,
                    "amount": get::<i64>(row, "amount")?,
                    "received_at": crate::domain::rfc3339(get(row, "t")?),
                }),
            });
        }
        Ok(HistoryPage {
            items,
            next: if more { last } else { None },
        })
    }

    /// A user's wallet balance (completed credits only); 0 for a user never credited.
    pub async fn balance(&self, uid: &Uid) -> Result<i64, StoreError> {
        let row = sqlx::query("SELECT balance FROM wallets WHERE uid = $1")
            .bind(uid.as_str())
            .fetch_optional(&self.read)
            .await?;
        row.map(|r| get(&r, "balance"))
            .transpose()
            .map(Option::unwrap_or_default)
    }
}

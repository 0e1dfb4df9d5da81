//! What the workers read and write: the journal cursor, transfers to complete, packets and
//! subsidies to expire, and refunds.

use std::collections::{BTreeMap, HashSet};

use serde_json::json;

use super::fence::live_filter;
use super::journal::{append_event, append_events, EventEntry};
use super::{get, placeholders, values_list, Store, StoreError, WriteTx};
use crate::fence::{self, Fence, LiveSlots};
use crate::journal::Event;

/// A transfer still to be credited to its claimer's wallet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DueTransfer {
    pub transfer_id: String,
    pub to_uid: String,
    pub amount: i64,
    /// The claimer's home slot.
    pub slot: i64,
    pub packet_id: String,
}

impl Store {
    /// The journal position `worker` has processed up to (0 before its first run).
    pub async fn cursor(&self, worker: &str) -> Result<i64, StoreError> {
        let row = sqlx::query("SELECT seq FROM worker_cursors WHERE worker = $1")
            .bind(worker)
            .fetch_optional(&self.read)
            .await?;
        row.map(|r| get(&r, "seq"))
            .transpose()
            .map(Option::unwrap_or_default)
    }

    /// Transfers of packets of `live` slots still pending that were created at or before
    /// `created_before` and whose next delivery attempt is due at `now`.
    pub async fn pending_transfers(
        &self,
        created_before: i64,
        now: i64,
        limit: i64,
        live: &LiveSlots,
    ) -> Result<Vec<String>, StoreError> {
        // A transfer row names its claimer's slot; it is written under its packet's slot.
        let (only_live, slots) = live_filter("p.slot", live, 4);
        let sql = format!(
            "SELECT t.transfer_id FROM transfers t JOIN packets p ON p.packet_id = t.packet_id \
             WHERE t.status = 'pending' AND t.created_at <= $1 AND t.next_attempt_at <= $2{only_live} \
             ORDER BY t.created_at LIMIT $3"
        );
        let mut q = sqlx::query(&sql).bind(created_before).bind(now).bind(limit);
        for s in slots {
            q = q.bind(s);
        }
        let found = q.fetch_all(&self.read).await?;
        found.iter().map(|r| get(r, "transfer_id")).collect()
    }

    /// The pending transfers among `ids` of packets of `live` slots, with what delivering
    /// them needs.
    pub async fn pending_by_ids(
        &self,
        ids: &[String],
        live: &LiveSlots,
    ) -> Result<Vec<DueTransfer>, StoreError> {
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(256) {
            let (only_live, slots) = live_filter("p.slot", live, chunk.len() + 1);
            let sql = format!(
                "SELECT t.transfer_id, t.to_uid, t.amount, t.slot, t.packet_id FROM transfers t \
                 JOIN packets p ON p.packet_id = t.packet_id \
                 WHERE t.status = 'pending' AND t.transfer_id IN ({}){only_live}",
                placeholders(1, chunk.len())
            );
            let mut q = sqlx::query(&sql);
            for id in chunk {
                q = q.bind(id);
            }
            for s in slots {
                q = q.bind(s);
            }
            for row in q.fetch_all(&self.read).await? {
                out.push(DueTransfer {
                    transfer_id: get(&row, "transfer_id")?,
                    to_uid: get(&row, "to_uid")?,
                    amount: get(&row, "amount")?,
                    slot: get(&row, "slot")?,
                    packet_id: get(&row, "packet_id")?,
                });
            }
        }
        Ok(out)
    }

    /// Marks transfers another cell acknowledged as completed (once; repeats change nothing).
    /// Fenced on their packets' slots.
    pub async fn mark_delivered(
        &self,
        ids: &[String],
        cell: &str,
        now: i64,
        fence: &Fence,
    ) -> Result<usize, StoreError> {
        let mut tx = self.begin_fenced(fence).await?;
        let mut done = 0;
        for chunk in ids.chunks(256) {
            let sql = format!(
                "UPDATE transfers SET status = 'completed', completed_at = $1, delivered_to = $2 \
                 WHERE status = 'pending' AND transfer_id IN ({}) RETURNING transfer_id, slot, amount, packet_id",
                placeholders(3, chunk.len())
            );
            let mut q = sqlx::query(&sql).bind(now).bind(cell);
            for id in chunk {
                q = q.bind(id);
            }
            let (mut ids, mut rest, mut packet_slots) = (Vec::new(), Vec::new(), Vec::new());
            for row in q.fetch_all(&mut *tx).await? {
                ids.push(get::<String>(&row, "transfer_id")?);
                packet_slots.push(packet_slot(&get::<String>(&row, "packet_id")?)?);
                let payload = json!({"delivered_to": cell, "amount": get::<i64>(&row, "amount")?});
                rest.push((get::<i64>(&row, "slot")?, payload));
            }
            tx.fence_all(packet_slots).await?;
            let entries: Vec<EventEntry<'_>> = ids
                .iter()
                .zip(rest)
                .map(|(id, (slot, payload))| EventEntry {
                    slot,
                    event: Event::TransferCompleted,
                    entity_id: id,
                    payload,
                })
                .collect();
            append_events(&mut tx, &entries, now).await?;
            done += entries.len();
        }
        tx.commit().await?;
        Ok(done)
    }

    /// Pushes the next delivery attempt of `ids` to `next_at` and counts the failed attempt.
    /// Fenced on their packets' slots.
    pub async fn defer_transfers(
        &self,
        ids: &[String],
        next_at: i64,
        fence: &Fence,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin_fenced(fence).await?;
        for chunk in ids.chunks(256) {
            let sql = format!(
                "UPDATE transfers SET attempts = attempts + 1, next_attempt_at = $1 \
                 WHERE status = 'pending' AND transfer_id IN ({}) RETURNING packet_id",
                placeholders(2, chunk.len())
            );
            let mut q = sqlx::query(&sql).bind(next_at);
            for id in chunk {
                q = q.bind(id);
            }
            let mut packet_slots = Vec::new();
            for row in q.fetch_all(&mut *tx).await? {
                packet_slots.push(packet_slot(&get::<String>(&row, "packet_id")?)?);
            }
            tx.fence_all(packet_slots).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Credits transfers sent by other cells to users homed here, once per transfer id.
    /// Returns when the credits are durable: the sender may then mark them completed.
    /// Fenced on the claimers' slots (their wallets and credits); one fenced slot refuses the
    /// whole delivery, which the sender retries later, after its map has caught up.
    pub async fn receive_transfers(
        &self,
        items: &[DueTransfer],
        now: i64,
        fence: &Fence,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin_fenced(fence).await?;
        tx.fence_all(items.iter().map(|t| t.slot)).await?;
        let credits: Vec<Credit<'_>> = items.iter().map(DueTransfer::credit).collect();
        for chunk in credits.chunks(256) {
            credit_many(&mut tx, chunk, "transfer_in", now).await?;
        }
        let entries: Vec<EventEntry<'_>> = items
            .iter()
            .map(|t| EventEntry {
                slot: t.slot,
                event: Event::TransferReceived,
                entity_id: &t.transfer_id,
                payload: json!({"uid": t.to_uid, "amount": t.amount, "packet_id": t.packet_id}),
            })
            .collect();
        append_events(&mut tx, &entries, now).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Moves `worker`'s journal cursor to `seq`.
    pub async fn advance_cursor(&self, worker: &str, seq: i64) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        set_cursor(&mut tx, worker, seq).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Completes transfers whose claimer is homed in this cell: credits each wallet once
    /// (by transfer id) and marks the transfer completed, all in one transaction that also
    /// moves `worker`'s cursor to `cursor` when given. Returns how many were completed now.
    ///
    /// A handful of statements per chunk of 256, however many transfers: the worker must keep
    /// up with the claim path without taking the database from it.
    /// Locks: the pending transfer rows (the `UPDATE … RETURNING` takes and transitions them
    /// at once), then the slots' epoch rows (the fence: the packets' slots and the
    /// claimers'), then the claimers' wallet rows in uid order.
    pub async fn complete_transfers(
        &self,
        transfer_ids: &[String],
        cursor: Option<(&str, i64)>,
        now: i64,
        fence: &Fence,
    ) -> Result<usize, StoreError> {
        let mut tx = self.begin_fenced(fence).await?;
        let mut done = 0;
        for chunk in transfer_ids.chunks(256) {
            let sql = format!(
                "UPDATE transfers SET status = 'completed', completed_at = $1 \
                 WHERE status = 'pending' AND transfer_id IN ({}) \
                 RETURNING transfer_id, to_uid, amount, slot, packet_id",
                placeholders(2, chunk.len())
            );
            let mut q = sqlx::query(&sql).bind(now);
            for id in chunk {
                q = q.bind(id);
            }
            let mut due = Vec::new();
            for row in q.fetch_all(&mut *tx).await? {
                due.push(DueTransfer {
                    transfer_id: get(&row, "transfer_id")?,
                    to_uid: get(&row, "to_uid")?,
                    amount: get(&row, "amount")?,
                    slot: get(&row, "slot")?,
                    packet_id: get(&row, "packet_id")?,
                });
            }
            if due.is_empty() {
                continue;
            }
            let mut slots = Vec::with_capacity(due.len() * 2);
            for t in &due {
                slots.push(t.slot);
                slots.push(packet_slot(&t.packet_id)?);
            }
            tx.fence_all(slots).await?;
            let credits: Vec<Credit<'_>> = due.iter().map(DueTransfer::credit).collect();
            credit_many(&mut tx, &credits, "claim", now).await?;
            let entries: Vec<EventEntry<'_>> = due
                .iter()
                .map(|t| EventEntry {
                    slot: t.slot,
                    event: Event::TransferCompleted,
                    entity_id: &t.transfer_id,
                    payload: json!({"to_uid": t.to_uid, "amount": t.amount}),
                })
                .collect();
            append_events(&mut tx, &entries, now).await?;
            done += due.len();
        }
        if let Some((worker, seq)) = cursor {
            set_cursor(&mut tx, worker, seq).await?;
        }
        tx.commit().await?;
        Ok(done)
    }

    /// Marks active packets of live slots past their expiry `expired`, so claims learn it
    /// and refunds run. A packet whose slot the fence refuses is skipped (and counted).
    pub async fn expire_due_packets(
        &self,
        now: i64,
        limit: i64,
        fence: &Fence,
        live: &LiveSlots,
    ) -> Result<usize, StoreError> {
        let (only_live, slots) = live_filter("slot", live, 3);
        let sql = format!(
            "SELECT packet_id, slot FROM packets WHERE status = 'active' AND expires_at <= $1{only_live} LIMIT $2"
        );
        let mut q = sqlx::query(&sql).bind(now).bind(limit);
        for s in slots {
            q = q.bind(s);
        }
        let due = q.fetch_all(&self.read).await?;
        let mut n = 0;
        for row in &due {
            let packet_id: String = get(row, "packet_id")?;
            let mut tx = self.begin_fenced(fence).await?;
            if let Some(e) = fenced(tx.fence(get(row, "slot")?).await)? {
                fence::skipped("expiry", &packet_id, &e);
                continue;
            }
            let changed = sqlx::query(
                "UPDATE packets SET status = 'expired' WHERE packet_id = $1 AND status = 'active' \
                 AND expires_at <= $2 RETURNING slot, remaining_amount",
            )
            .bind(&packet_id)
            .bind(now)
            .fetch_optional(&mut *tx)
            .await?;
            if let Some(row) = changed {
                let slot: i64 = get(&row, "slot")?;
                let rest: i64 = get(&row, "remaining_amount")?;
                append_event(
                    &mut tx,
                    slot,
                    Event::PacketExpired,
                    &packet_id,
                    json!({"remaining_amount": rest}),
                    now,
                )
                .await?;
                n += 1;
            }
            tx.commit().await?;
        }
        Ok(n)
    }

    /// Refunds expired packets: the unclaimed rest goes to the sender's wallet (C2C) or back
    /// to the subsidy pool (B2C), once per packet (the refund's source id is the packet id).
    ///
    /// Only packets of live slots; one whose slot the fence refuses is skipped (and counted).
    ///
    /// Locks: the packet row, then its slot's epoch row (the fence), then the sender's
    /// wallet row.
    pub async fn refund_expired(
        &self,
        now: i64,
        limit: i64,
        fence: &Fence,
        live: &LiveSlots,
    ) -> Result<usize, StoreError> {
        let (only_live, slots) = live_filter("slot", live, 2);
        let sql =
            format!("SELECT packet_id FROM packets WHERE status = 'expired'{only_live} LIMIT $1");
        let mut q = sqlx::query(&sql).bind(limit);
        for s in slots {
            q = q.bind(s);
        }
        let due = q.fetch_all(&self.read).await?;
        let lock = format!(
            "SELECT slot, sender, kind, remaining_amount, status FROM packets WHERE packet_id = $1{}",
            self.for_update()
        );
        let mut n = 0;
        for row in &due {
            let packet_id: String = get(row, "packet_id")?;
            let mut tx = self.begin_fenced(fence).await?;
            let Some(row) = sqlx::query(&lock)
                .bind(&packet_id)
                .fetch_optional(&mut *tx)
                .await?
            else {
                continue;
            };
            if get::<String>(&row, "status")? != "expired" {
                continue;
            }
            let slot: i64 = get(&row, "slot")?;
            if let Some(e) = fenced(tx.fence(slot).await)? {
                fence::skipped("refunds", &packet_id, &e);
                continue;
            }
            let rest: i64 = get(&row, "remaining_amount")?;
            let source = format!("refund:{packet_id}");
            if rest > 0 {
                if get::<String>(&row, "kind")? == "c2c" {
                    let sender: String = get(&row, "sender")?;
                    let refund = Credit {
                        source_id: &source,
                        uid: &sender,
                        slot,
                        amount: rest,
                        packet_id: &packet_id,
                    };
                    credit(&mut tx, refund, "refund", now).await?;
                } else {
                    return_to_pool(&mut tx, &source, slot, rest, now).await?;
                }
            }
            sqlx::query(
                "UPDATE packets SET status = 'refunded', refunded_amount = $1 WHERE packet_id = $2",
            )
            .bind(rest)
            .bind(&packet_id)
            .execute(&mut *tx)
            .await?;
            append_event(
                &mut tx,
                slot,
                Event::PacketRefunded,
                &packet_id,
                json!({"amount": rest}),
                now,
            )
            .await?;
            tx.commit().await?;
            n += 1;
        }
        Ok(n)
    }

    /// Subsidies of live slots never used by their expiry go back to the pool; one whose
    /// slot the fence refuses is skipped (and counted).
    pub async fn expire_subsidies(
        &self,
        now: i64,
        limit: i64,
        fence: &Fence,
        live: &LiveSlots,
    ) -> Result<usize, StoreError> {
        let (only_live, slots) = live_filter("slot", live, 3);
        let sql = format!(
            "SELECT subsidy_id, slot FROM subsidies WHERE status = 'available' AND expires_at <= $1{only_live} LIMIT $2"
        );
        let mut q = sqlx::query(&sql).bind(now).bind(limit);
        for s in slots {
            q = q.bind(s);
        }
        let due = q.fetch_all(&self.read).await?;
        let mut n = 0;
        for row in &due {
            let subsidy_id: String = get(row, "subsidy_id")?;
            let mut tx = self.begin_fenced(fence).await?;
            if let Some(e) = fenced(tx.fence(get(row, "slot")?).await)? {
                fence::skipped("subsidy_expiry", &subsidy_id, &e);
                continue;
            }
            let changed = sqlx::query(
                "UPDATE subsidies SET status = 'expired' WHERE subsidy_id = $1 AND status = 'available' \
                 AND expires_at <= $2 RETURNING slot, amount",
            )
            .bind(&subsidy_id)
            .bind(now)
            .fetch_optional(&mut *tx)
            .await?;
            if let Some(row) = changed {
                let (slot, amount): (i64, i64) = (get(&row, "slot")?, get(&row, "amount")?);
                return_to_pool(&mut tx, &format!("subsidy:{subsidy_id}"), slot, amount, now)
                    .await?;
                append_event(
                    &mut tx,
                    slot,
                    Event::SubsidyExpired,
                    &subsidy_id,
                    json!({"amount": amount}),
                    now,
                )
                .await?;
                n += 1;
            }
            tx.commit().await?;
        }
        Ok(n)
    }
}

/// The slot of a packet, from its minted id (a transfer row names its claimer's slot).
fn packet_slot(packet_id: &str) -> Result<i64, StoreError> {
    topology::MintedId::parse(topology::IdKind::Packet, packet_id)
        .map(|id| i64::from(id.slot().get()))
        .map_err(|e| StoreError::Corrupt(format!("packet_id {packet_id}: {e}")))
}

/// Splits a fence check's result: `Ok(Some(refusal))` when the fence refused (the caller
/// skips the item; its transaction rolls back when dropped), `Err` for any other failure.
fn fenced(r: Result<(), StoreError>) -> Result<Option<crate::fence::FenceError>, StoreError> {
    match r {
        Ok(()) => Ok(None),
        Err(StoreError::Fenced(e)) => Ok(Some(e)),
        Err(e) => Err(e),
    }
}

/// One credit to apply: `source_id` makes it happen at most once, ever.
pub(super) struct Credit<'a> {
    pub source_id: &'a str,
    pub uid: &'a str,
    pub slot: i64,
    pub amount: i64,
    /// The packet the money comes from.
    pub packet_id: &'a str,
}

impl DueTransfer {
    /// The credit this transfer makes to its claimer.
    fn credit(&self) -> Credit<'_> {
        Credit {
            source_id: &self.transfer_id,
            uid: &self.to_uid,
            slot: self.slot,
            amount: self.amount,
            packet_id: &self.packet_id,
        }
    }
}

/// Credits `uid` once per `source_id`; a repeat is a no-op.
pub(super) async fn credit(
    tx: &mut WriteTx,
    credit: Credit<'_>,
    kind: &str,
    now: i64,
) -> Result<(), StoreError> {
    credit_many(tx, &[credit], kind, now).await
}

/// Applies credits that were never applied before (by source id) to their wallets.
pub(super) async fn credit_many(
    tx: &mut WriteTx,
    credits: &[Credit<'_>],
    kind: &str,
    now: i64,
) -> Result<(), StoreError> {
    let sql = format!(
        "INSERT INTO wallet_credits (source_id, slot, uid, amount, kind, created_at, packet_id) VALUES {} \
         ON CONFLICT DO NOTHING RETURNING source_id",
        values_list(credits.len(), 7, 1)
    );
    let mut q = sqlx::query(&sql);
    for c in credits {
        q = q
            .bind(c.source_id)
            .bind(c.slot)
            .bind(c.uid)
            .bind(c.amount)
            .bind(kind)
            .bind(now)
            .bind(c.packet_id);
    }
    let fresh: HashSet<String> = q
        .fetch_all(&mut **tx)
        .await?
        .iter()
        .map(|r| get(r, "source_id"))
        .collect::<Result<_, _>>()?;
    // One row per wallet (a statement may not upsert the same row twice), in uid order so
    // concurrent creditors lock wallets in the same order.
    let mut per_wallet: BTreeMap<&str, (i64, i64)> = BTreeMap::new();
    for c in credits.iter().filter(|c| fresh.contains(c.source_id)) {
        let entry = per_wallet.entry(c.uid).or_insert((c.slot, 0));
        entry.1 += c.amount;
    }
    if per_wallet.is_empty() {
        return Ok(());
    }
    let sql = format!(
        "INSERT INTO wallets (uid, slot, balance) VALUES {} \
         ON CONFLICT (uid) DO UPDATE SET balance = wallets.balance + excluded.balance",
        values_list(per_wallet.len(), 3, 1)
    );
    let mut q = sqlx::query(&sql);
    for (uid, (slot, amount)) in &per_wallet {
        q = q.bind(*uid).bind(*slot).bind(*amount);
    }
    q.execute(&mut **tx).await?;
    Ok(())
}

async fn return_to_pool(
    tx: &mut WriteTx,
    source_id: &str,
    slot: i64,
    amount: i64,
    now: i64,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO pool_returns (source_id, slot, amount, created_at) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
    )
    .bind(source_id)
    .bind(slot)
    .bind(amount)
    .bind(now)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

async fn set_cursor(tx: &mut WriteTx, worker: &str, seq: i64) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO worker_cursors (worker, seq) VALUES ($1, $2) \
         ON CONFLICT (worker) DO UPDATE SET seq = excluded.seq",
    )
    .bind(worker)
    .bind(seq)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// What a worker still has to do: how many items, and since when the oldest waits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Backlog {
    pub pending: i64,
    /// Milliseconds since the Unix epoch; `None` when nothing is pending.
    pub oldest: Option<i64>,
}

impl Store {
    /// Each worker's backlog at `now`: `(worker, backlog)`.
    pub async fn backlogs(&self, now: i64) -> Result<Vec<(&'static str, Backlog)>, StoreError> {
        // (worker, query, whether it binds `now` as $1)
        let queries: [(&'static str, &str, bool); 5] = [
            ("transfers", "SELECT COUNT(*) AS n, MIN(created_at) AS oldest FROM transfers WHERE status = 'pending'", false),
            ("payments", "SELECT COUNT(*) AS n, MIN(created_at) AS oldest FROM payments WHERE status = 'pending'", false),
            (
                "expiry",
                "SELECT COUNT(*) AS n, MIN(expires_at) AS oldest FROM packets WHERE status = 'active' AND expires_at <= $1",
                true,
            ),
            ("refunds", "SELECT COUNT(*) AS n, MIN(expires_at) AS oldest FROM packets WHERE status = 'expired'", false),
            (
                "grant_reservations",
                "SELECT COUNT(*) AS n, MIN(created_at) AS oldest FROM idem_order WHERE operation = 'grant' AND state = 'pending'",
                false,
            ),
        ];
        let mut out = Vec::with_capacity(queries.len());
        for (worker, sql, binds_now) in queries {
            let q = sqlx::query(sql);
            let q = if binds_now { q.bind(now) } else { q };
            let row = q.fetch_one(&self.read).await?;
            out.push((
                worker,
                Backlog {
                    pending: get(&row, "n")?,
                    oldest: get(&row, "oldest")?,
                },
            ));
        }
        Ok(out)
    }
}

//! The expiry sweeps: packets past their expiry, refunds of their unclaimed rest, and
//! unused subsidies returned to the pool.

use serde_json::json;

use super::fence::{bind_live, fenced, live_filter};
use super::journal::append_event;
use super::wallets::{credit, Credit};
use super::{get, Store, StoreError, WriteTx};
use crate::fence::{self, Fence, LiveSlots};
use crate::journal::Event;

impl Store {
    /// Marks active packets of live slots past their expiry `expired`, so claims learn it
    /// and refunds run. A packet whose slot the fence refuses is skipped (and counted).
    pub async fn expire_due_packets(
        &self,
        now: i64,
        limit: i64,
        fence: &Fence,
        live: &LiveSlots,
    ) -> Result<usize, StoreError> {
        let (only_live, slots) = live_filter(self.dialect, "slot", live, 3);
        let sql = format!(
            "SELECT packet_id, slot FROM packets WHERE status = 'active' AND expires_at <= $1{only_live} LIMIT $2"
        );
        let mut q = sqlx::query(&sql).bind(now).bind(limit);
        q = bind_live(q, slots);
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
        let (only_live, slots) = live_filter(self.dialect, "slot", live, 2);
        let sql =
            format!("SELECT packet_id FROM packets WHERE status = 'expired'{only_live} LIMIT $1");
        let mut q = sqlx::query(&sql).bind(limit);
        q = bind_live(q, slots);
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
        let (only_live, slots) = live_filter(self.dialect, "slot", live, 3);
        let sql = format!(
            "SELECT subsidy_id, slot FROM subsidies WHERE status = 'available' AND expires_at <= $1{only_live} LIMIT $2"
        );
        let mut q = sqlx::query(&sql).bind(now).bind(limit);
        q = bind_live(q, slots);
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

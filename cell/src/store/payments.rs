//! What the payment worker reads and writes: payments to register with the provider,
//! re-checks that are due, and payments past their deadline.

use super::fence::{bind_live, live_filter};
use super::{get, Store, StoreError};
use crate::fence::{Fence, LiveSlots};

/// A pending C2C payment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PendingPayment {
    pub payment_id: String,
    pub amount: i64,
    /// Re-checks so far (for backoff).
    pub checks: i64,
}

const COLS: &str = "payment_id, amount, registered";

fn pending(rows: &[sqlx::any::AnyRow]) -> Result<Vec<PendingPayment>, StoreError> {
    rows.iter()
        .map(|r| {
            Ok(PendingPayment {
                payment_id: get(r, "payment_id")?,
                amount: get(r, "amount")?,
                checks: get(r, "registered")?,
            })
        })
        .collect()
}

impl Store {
    /// Pending payments of `live` slots among `ids` that the provider has not been told
    /// about yet.
    pub async fn unregistered_payments(
        &self,
        ids: &[String],
        live: &LiveSlots,
    ) -> Result<Vec<PendingPayment>, StoreError> {
        let mut out = Vec::new();
        for chunk in ids.chunks(256) {
            let (only_live, slots) = live_filter(self.dialect, "slot", live, chunk.len() + 1);
            let sql = format!(
                "SELECT {COLS} FROM payments WHERE status = 'pending' AND registered = 0 AND payment_id IN ({}){only_live}",
                super::placeholders(1, chunk.len())
            );
            let mut q = sqlx::query(&sql);
            for id in chunk {
                q = q.bind(id);
            }
            q = bind_live(q, slots);
            out.extend(pending(&q.fetch_all(&self.read).await?)?);
        }
        Ok(out)
    }

    /// Pending payments of `live` slots never registered, created before `before` (the
    /// journal path failed).
    pub async fn stale_unregistered_payments(
        &self,
        before: i64,
        limit: i64,
        live: &LiveSlots,
    ) -> Result<Vec<PendingPayment>, StoreError> {
        self.pending_where(
            "registered = 0 AND created_at < $1",
            "created_at",
            before,
            limit,
            live,
        )
        .await
    }

    /// The provider knows the payment now. `registered` then counts the re-checks (≥ 1).
    pub async fn mark_registered(&self, payment_id: &str, fence: &Fence) -> Result<(), StoreError> {
        let mut tx = self.begin_fenced(fence).await?;
        let changed = sqlx::query(
            "UPDATE payments SET registered = 1 WHERE payment_id = $1 AND registered = 0 RETURNING slot",
        )
        .bind(payment_id)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(row) = changed {
            tx.fence(get(&row, "slot")?).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Pending, registered payments of `live` slots whose next re-check is due at `now`.
    pub async fn payments_due_check(
        &self,
        now: i64,
        limit: i64,
        live: &LiveSlots,
    ) -> Result<Vec<PendingPayment>, StoreError> {
        self.pending_where(
            "registered > 0 AND next_check_at <= $1",
            "next_check_at",
            now,
            limit,
            live,
        )
        .await
    }

    /// Pending payments of `live` slots whose deadline has passed at `now`.
    pub async fn payments_past_deadline(
        &self,
        now: i64,
        limit: i64,
        live: &LiveSlots,
    ) -> Result<Vec<PendingPayment>, StoreError> {
        self.pending_where(
            "deadline_at > 0 AND deadline_at <= $1",
            "deadline_at",
            now,
            limit,
            live,
        )
        .await
    }

    /// Pending payments of `live` slots meeting `condition` (on `$1` = `now`), oldest
    /// `order` first.
    async fn pending_where(
        &self,
        condition: &str,
        order: &str,
        now: i64,
        limit: i64,
        live: &LiveSlots,
    ) -> Result<Vec<PendingPayment>, StoreError> {
        let (only_live, slots) = live_filter(self.dialect, "slot", live, 3);
        let sql = format!("SELECT {COLS} FROM payments WHERE status = 'pending' AND {condition}{only_live} ORDER BY {order} LIMIT $2");
        let mut q = sqlx::query(&sql).bind(now).bind(limit);
        q = bind_live(q, slots);
        let rows = q.fetch_all(&self.read).await?;
        pending(&rows)
    }

    /// The provider had no answer yet: ask again at `at`.
    pub async fn reschedule_check(
        &self,
        payment_id: &str,
        at: i64,
        fence: &Fence,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin_fenced(fence).await?;
        let changed = sqlx::query(
            "UPDATE payments SET next_check_at = $1, registered = registered + 1 \
             WHERE payment_id = $2 AND status = 'pending' RETURNING slot",
        )
        .bind(at)
        .bind(payment_id)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(row) = changed {
            tx.fence(get(&row, "slot")?).await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

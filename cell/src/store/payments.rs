//! What the payment worker reads and writes: payments to register with the provider,
//! re-checks that are due, and payments past their deadline.

use super::{get, Store, StoreError};

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
    /// Pending payments among `ids` that the provider has not been told about yet.
    pub async fn unregistered_payments(
        &self,
        ids: &[String],
    ) -> Result<Vec<PendingPayment>, StoreError> {
        let mut out = Vec::new();
        for chunk in ids.chunks(256) {
            let sql = format!(
                "SELECT {COLS} FROM payments WHERE status = 'pending' AND registered = 0 AND payment_id IN ({})",
                super::placeholders(1, chunk.len())
            );
            let mut q = sqlx::query(&sql);
            for id in chunk {
                q = q.bind(id);
            }
            out.extend(pending(&q.fetch_all(&self.read).await?)?);
        }
        Ok(out)
    }

    /// Pending payments never registered, created before `before` (the journal path failed).
    pub async fn stale_unregistered_payments(
        &self,
        before: i64,
        limit: i64,
    ) -> Result<Vec<PendingPayment>, StoreError> {
        let sql = format!(
            "SELECT {COLS} FROM payments WHERE status = 'pending' AND registered = 0 AND created_at < $1 \
             ORDER BY created_at LIMIT $2"
        );
        let rows = sqlx::query(&sql)
            .bind(before)
            .bind(limit)
            .fetch_all(&self.read)
            .await?;
        pending(&rows)
    }

    /// The provider knows the payment now. `registered` then counts the re-checks (≥ 1).
    pub async fn mark_registered(&self, payment_id: &str) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        sqlx::query("UPDATE payments SET registered = 1 WHERE payment_id = $1 AND registered = 0")
            .bind(payment_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Pending, registered payments whose next re-check is due at `now`.
    pub async fn payments_due_check(
        &self,
        now: i64,
        limit: i64,
    ) -> Result<Vec<PendingPayment>, StoreError> {
        self.pending_where(
            "registered > 0 AND next_check_at <= $1",
            "next_check_at",
            now,
            limit,
        )
        .await
    }

    /// Pending payments whose deadline has passed at `now`.
    pub async fn payments_past_deadline(
        &self,
        now: i64,
        limit: i64,
    ) -> Result<Vec<PendingPayment>, StoreError> {
        self.pending_where(
            "deadline_at > 0 AND deadline_at <= $1",
            "deadline_at",
            now,
            limit,
        )
        .await
    }

    /// Pending payments meeting `condition` (on `$1` = `now`), oldest `order` first.
    async fn pending_where(
        &self,
        condition: &str,
        order: &str,
        now: i64,
        limit: i64,
    ) -> Result<Vec<PendingPayment>, StoreError> {
        let sql = format!("SELECT {COLS} FROM payments WHERE status = 'pending' AND {condition} ORDER BY {order} LIMIT $2");
        let rows = sqlx::query(&sql)
            .bind(now)
            .bind(limit)
            .fetch_all(&self.read)
            .await?;
        pending(&rows)
    }

    /// The provider had no answer yet: ask again at `at`.
    pub async fn reschedule_check(&self, payment_id: &str, at: i64) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        sqlx::query(
            "UPDATE payments SET next_check_at = $1, registered = registered + 1 \
             WHERE payment_id = $2 AND status = 'pending'",
        )
        .bind(at)
        .bind(payment_id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }
}

//! The workers' progress: journal cursors and backlogs.

use super::{get, Store, StoreError, WriteTx};

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

    /// Moves `worker`'s journal cursor to `seq`.
    pub async fn advance_cursor(&self, worker: &str, seq: i64) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        set_cursor(&mut tx, worker, seq).await?;
        tx.commit().await?;
        Ok(())
    }
}

pub(super) async fn set_cursor(tx: &mut WriteTx, worker: &str, seq: i64) -> Result<(), StoreError> {
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

//! Storage: the only module that speaks SQL.
//!
//! One SQL text serves both dialects through sqlx's `Any` driver (`$1` placeholders,
//! `RETURNING` and `ON CONFLICT` work on SQLite and Postgres alike); [`Dialect`] supplies the
//! few differences: the row lock (`FOR UPDATE` on Postgres; SQLite has none and relies on its
//! single writer connection instead) and the snapshot isolation of reconciliation.
//!
//! Durable: every table in `migrations/`. Nothing is cached here; the claim path's in-memory
//! packet summaries live in `claims/` and are rebuilt from the database on a miss.
//! Money is `i64` cents; times are `i64` milliseconds since the Unix epoch.

mod claims;
mod packets;
mod payments;
mod recon;
mod rows;
mod subsidies;
mod workers;

use std::str::FromStr;
use std::time::Duration;

use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{Any, AnyPool, Transaction};

pub use claims::{ClaimBatch, ClaimOutcome, PacketSummary};
pub use packets::{CallbackOutcome, HistoryPage, NewPacket, SendOutcome};
pub use payments::PendingPayment;
pub use recon::{Finding, Reconciliation, Totals};
pub use rows::{Claim, ClaimListItem, Packet, Payment, Subsidy};
pub use subsidies::{GrantOutcome, Reservation};
pub use workers::{Backlog, DueTransfer};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("unsupported database url (use sqlite:// or postgres://): {0}")]
    BadUrl(String),
    #[error("corrupt row: {0}")]
    Corrupt(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

/// Pool sizes and limits for [`Store::open`].
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// Postgres connections (SQLite always uses one writer and a few readers).
    pub max_connections: u32,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            max_connections: 16,
        }
    }
}

/// The cell's shard.
#[derive(Clone, Debug)]
pub struct Store {
    /// Writes. On SQLite this pool has exactly one connection, so write transactions queue
    /// in-process instead of failing with SQLITE_BUSY, and a read-then-write inside one
    /// transaction is as safe as Postgres' `FOR UPDATE`.
    write: AnyPool,
    /// Reads outside transactions. On SQLite, WAL lets these run beside the writer.
    read: AnyPool,
    dialect: Dialect,
}

impl Store {
    /// Opens (creating if needed) and migrates the shard at `url`.
    pub async fn open(url: &str, opts: &StoreOptions) -> Result<Store, StoreError> {
        sqlx::any::install_default_drivers();
        if url.starts_with("sqlite:") {
            let write = AnyPoolOptions::new()
                .max_connections(1)
                .acquire_timeout(Duration::from_secs(30))
                .after_connect(sqlite_pragmas)
                .connect(url)
                .await?;
            Self::migrate(&write, Dialect::Sqlite).await?;
            let read = AnyPoolOptions::new()
                .max_connections(4)
                .after_connect(sqlite_pragmas)
                .connect(url)
                .await?;
            Ok(Store {
                write,
                read,
                dialect: Dialect::Sqlite,
            })
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            let pool = AnyPoolOptions::new()
                .max_connections(opts.max_connections)
                .acquire_timeout(Duration::from_secs(5))
                .after_connect(postgres_session)
                .connect(url)
                .await?;
            Self::migrate(&pool, Dialect::Postgres).await?;
            Ok(Store {
                write: pool.clone(),
                read: pool,
                dialect: Dialect::Postgres,
            })
        } else {
            Err(StoreError::BadUrl(redact(url)))
        }
    }

    /// The SQLite URL of a shard kept in `data_dir`.
    pub fn sqlite_url(data_dir: &std::path::Path) -> String {
        format!(
            "sqlite://{}?mode=rwc",
            data_dir.join("cell.sqlite").display()
        )
    }

    async fn migrate(pool: &AnyPool, dialect: Dialect) -> Result<(), StoreError> {
        match dialect {
            Dialect::Sqlite => sqlx::migrate!("../migrations/sqlite").run(pool).await?,
            Dialect::Postgres => sqlx::migrate!("../migrations/postgres").run(pool).await?,
        }
        Ok(())
    }

    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    /// The row-lock clause for a `SELECT` inside a write transaction.
    fn for_update(&self) -> &'static str {
        match self.dialect {
            Dialect::Postgres => " FOR UPDATE",
            Dialect::Sqlite => "",
        }
    }

    async fn begin(&self) -> Result<Transaction<'static, Any>, StoreError> {
        Ok(self.write.begin().await?)
    }

    /// Is the database reachable? Used by `/readyz`.
    pub async fn ping(&self) -> bool {
        sqlx::query("SELECT 1").fetch_one(&self.read).await.is_ok()
    }

    pub async fn close(&self) {
        self.write.close().await;
        self.read.close().await;
    }
}

/// Durable against a process crash (SIGKILL) with WAL + synchronous=NORMAL: a committed
/// transaction is in the WAL file before COMMIT returns.
fn sqlite_pragmas(
    conn: &mut sqlx::AnyConnection,
    _meta: sqlx::pool::PoolConnectionMetadata,
) -> futures_core::future::BoxFuture<'_, Result<(), sqlx::Error>> {
    Box::pin(async move {
        use sqlx::Executor;
        conn.execute("PRAGMA journal_mode = WAL").await?;
        conn.execute("PRAGMA synchronous = NORMAL").await?;
        conn.execute("PRAGMA busy_timeout = 10000").await?;
        Ok(())
    })
}

/// Plans every prepared statement for its actual parameters. A hot packet is extreme skew:
/// with a generic plan Postgres looked up a batch's earlier claims by scanning every claim of
/// the packet (~100 ms per batch at 10k claims) instead of probing `(packet_id, uid)`.
fn postgres_session(
    conn: &mut sqlx::AnyConnection,
    _meta: sqlx::pool::PoolConnectionMetadata,
) -> futures_core::future::BoxFuture<'_, Result<(), sqlx::Error>> {
    Box::pin(async move {
        use sqlx::Executor;
        conn.execute("SET plan_cache_mode = force_custom_plan")
            .await?;
        Ok(())
    })
}

/// One journal entry to append.
struct Entry<'a> {
    slot: i64,
    kind: &'a str,
    entity_id: &'a str,
    payload: serde_json::Value,
}

/// Appends one journal entry inside the caller's transaction.
async fn journal(
    tx: &mut Transaction<'static, Any>,
    slot: i64,
    kind: &str,
    entity_id: &str,
    payload: &serde_json::Value,
    now: i64,
) -> Result<(), StoreError> {
    let entry = Entry {
        slot,
        kind,
        entity_id,
        payload: payload.clone(),
    };
    journal_many(tx, &[entry], now).await
}

/// Appends journal entries inside the caller's transaction, a few hundred per statement.
async fn journal_many(
    tx: &mut Transaction<'static, Any>,
    entries: &[Entry<'_>],
    now: i64,
) -> Result<(), StoreError> {
    for chunk in entries.chunks(512) {
        let sql = format!(
            "INSERT INTO journal (slot, kind, entity_id, payload, created_at) VALUES {}",
            values_list(chunk.len(), 5, 1)
        );
        let mut q = sqlx::query(&sql);
        for e in chunk {
            q = q
                .bind(e.slot)
                .bind(e.kind)
                .bind(e.entity_id)
                .bind(e.payload.to_string())
                .bind(now);
        }
        q.execute(&mut **tx).await?;
    }
    Ok(())
}

/// `($1, $2, …), (…)` for a multi-row insert of `rows` rows of `cols` columns, numbering
/// placeholders from `first`.
fn values_list(rows: usize, cols: usize, first: usize) -> String {
    let mut out = String::with_capacity(rows * cols * 5);
    for r in 0..rows {
        if r > 0 {
            out.push_str(", ");
        }
        out.push('(');
        for c in 0..cols {
            if c > 0 {
                out.push_str(", ");
            }
            out.push('$');
            out.push_str(&(first + r * cols + c).to_string());
        }
        out.push(')');
    }
    out
}

/// `$first, $first+1, …` (`n` placeholders) for an `IN (…)` list.
fn placeholders(first: usize, n: usize) -> String {
    (first..first + n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn get<T>(row: &AnyRow, col: &str) -> Result<T, StoreError>
where
    T: for<'r> sqlx::Decode<'r, Any> + sqlx::Type<Any>,
{
    use sqlx::Row;
    row.try_get(col)
        .map_err(|e| StoreError::Corrupt(format!("{col}: {e}")))
}

/// A URL safe to log: the password, if any, replaced.
pub fn redact(url: &str) -> String {
    match url::Url::from_str(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => url.chars().take(100).collect(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn values_list_numbers_placeholders() {
        assert_eq!(super::values_list(2, 2, 1), "($1, $2), ($3, $4)");
        assert_eq!(super::values_list(1, 3, 4), "($4, $5, $6)");
    }

    #[test]
    fn redact_hides_passwords() {
        assert_eq!(
            super::redact("postgres://u:pw@h/db"),
            "postgres://u:***@h/db"
        );
        assert_eq!(super::redact("sqlite://x"), "sqlite://x");
    }
}

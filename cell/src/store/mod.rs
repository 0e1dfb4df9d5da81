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
mod cursors;
mod expiry;
mod fence;
mod journal;
mod packets;
mod payments;
mod recon;
mod replica;
mod roles;
mod rows;
mod subsidies;
mod transfers;
mod wallets;

use std::str::FromStr;
use std::time::Duration;

use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{Any, AnyPool};
use tokio::sync::watch;

pub use claims::{ClaimBatch, ClaimOutcome, PacketSummary};
pub use cursors::Backlog;
pub use journal::WriteTx;
pub use packets::{CallbackOutcome, HistoryPage, NewPacket, SendOutcome};
pub use payments::PendingPayment;
pub use recon::{Finding, Reconciliation, Totals};
pub use replica::{digest_of, Applied, ApplyError, Digest, Snapshot};
pub use roles::{diverged_at, Promotion};
pub use rows::{Claim, ClaimListItem, Packet, Payment, Subsidy};
pub use subsidies::{GrantOutcome, Reservation};
pub use transfers::DueTransfer;

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
    /// The write was refused by the fence and rolled back (DESIGN §6.4).
    #[error("fenced: {0}")]
    Fenced(#[from] crate::fence::FenceError),
    /// The shard's writes are paused (a planned failover is moving it): nothing was written.
    #[error("the shard's writes are paused for a planned failover")]
    Paused,
}

impl StoreError {
    /// The fence's refusal, when this is one.
    pub fn fenced(&self) -> Option<&crate::fence::FenceError> {
        match self {
            StoreError::Fenced(e) => Some(e),
            _ => None,
        }
    }
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
    /// SQLite: fsync every commit (`synchronous = FULL`), as a replica must before it
    /// acknowledges. Otherwise a commit survives a process crash but not a power loss.
    pub fsync_commits: bool,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            max_connections: 16,
            fsync_commits: false,
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
    /// The last position this process committed, for long-polls (the database is the truth).
    head: std::sync::Arc<watch::Sender<journal::Position>>,
    /// The shard's slot epochs as last read, for the sweeps' choice of live slots only (the
    /// fence inside every write transaction reads the table itself): re-read after
    /// `EPOCHS_FRESH` or when this process raises them.
    epochs_seen: std::sync::Arc<std::sync::Mutex<Option<fence::SeenEpochs>>>,
    /// The pause of a planned failover. Every write of a slot's rows (a fenced
    /// [`WriteTx`]) holds a read permit for its whole transaction, taken without waiting:
    /// while the pause holds the write side (or waits for it) no such write can begin, and
    /// taking the write side waits for those in flight to end. So once [`Store::pause_writes`]
    /// returns, the journal head stands still until the pause is dropped.
    writes: std::sync::Arc<tokio::sync::RwLock<()>>,
}

/// How long a Postgres operation waits for a connection before the request answers 503
/// (hardening finding 9): with the database stopped, each connection attempt is refused
/// and retried until this bound, so it is what a client waits before `cell_unavailable`.
/// Transactions hold a connection for milliseconds (claims are batched per packet), so a
/// wait this long means the database is gone or the cell overloaded: either way the right
/// answer is a prompt 503 with Retry-After.
pub const POSTGRES_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(1);

impl Store {
    /// Opens (creating if needed) and migrates the shard at `url`.
    pub async fn open(url: &str, opts: &StoreOptions) -> Result<Store, StoreError> {
        sqlx::any::install_default_drivers();
        if url.starts_with("sqlite:") {
            let synchronous = if opts.fsync_commits { "FULL" } else { "NORMAL" };
            // No ping before each acquire (sqlx's default): on SQLite a ping is one more
            // hand-off to the connection's thread and back, on every transaction and read,
            // and a local file connection does not go stale the way a socket does.
            let write = AnyPoolOptions::new()
                .max_connections(1)
                .test_before_acquire(false)
                .acquire_timeout(Duration::from_secs(30))
                .after_connect(move |c, m| sqlite_pragmas(c, m, synchronous))
                .connect(url)
                .await?;
            Self::migrate(&write, Dialect::Sqlite).await?;
            let read = AnyPoolOptions::new()
                .max_connections(4)
                .test_before_acquire(false)
                .after_connect(move |c, m| sqlite_pragmas(c, m, synchronous))
                .connect(url)
                .await?;
            Store::with_head(write, read, Dialect::Sqlite).await
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            let pool = AnyPoolOptions::new()
                .max_connections(opts.max_connections)
                .acquire_timeout(POSTGRES_ACQUIRE_TIMEOUT)
                .after_connect(postgres_session)
                .connect(url)
                .await?;
            Self::migrate(&pool, Dialect::Postgres).await?;
            Store::with_head(pool.clone(), pool, Dialect::Postgres).await
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

    async fn with_head(
        write: AnyPool,
        read: AnyPool,
        dialect: Dialect,
    ) -> Result<Store, StoreError> {
        let store = Store {
            write,
            read,
            dialect,
            head: std::sync::Arc::new(watch::Sender::new(0)),
            epochs_seen: std::sync::Arc::default(),
            writes: std::sync::Arc::default(),
        };
        let head = store.journal_head().await?;
        store.head.send_replace(head);
        Ok(store)
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

    /// Stops every write of a slot's rows (see `writes`): waits up to `drain` for those in
    /// flight to end, then holds them off until the returned guard is dropped. `None` when
    /// they did not end in time (nothing is paused then).
    pub async fn pause_writes(
        &self,
        drain: Duration,
    ) -> Option<tokio::sync::OwnedRwLockWriteGuard<()>> {
        tokio::time::timeout(drain, self.writes.clone().write_owned())
            .await
            .ok()
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
/// transaction is in the WAL file before COMMIT returns. With FULL the WAL is also fsync'd
/// at every commit, so a commit survives the machine's crash too.
fn sqlite_pragmas<'c>(
    conn: &'c mut sqlx::AnyConnection,
    _meta: sqlx::pool::PoolConnectionMetadata,
    synchronous: &'static str,
) -> futures_core::future::BoxFuture<'c, Result<(), sqlx::Error>> {
    Box::pin(async move {
        use sqlx::Executor;
        conn.execute("PRAGMA journal_mode = WAL").await?;
        conn.execute(format!("PRAGMA synchronous = {synchronous}").as_str())
            .await?;
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

/// `($1, $2, …), (…)` for a multi-row insert of `rows` rows of `cols` columns: the
/// statement's only parameters, bound in order.
///
/// On SQLite the placeholders are anonymous (`(?, ?), (?, ?)`): SQLite finds a numbered
/// placeholder's name by a linear scan of the statement's names, both when it parses one
/// and when sqlx binds one (sqlx asks every parameter's name), so a statement of n numbered
/// placeholders costs O(n²). At the thousands of parameters of a replica's batch (or a claim
/// batch's journal append) that scan was most of the shard writer's time and grew with the
/// backlog it was trying to clear. Anonymous ones are numbered by position, with no names.
fn values_list(dialect: Dialect, rows: usize, cols: usize) -> String {
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
            match dialect {
                Dialect::Sqlite => out.push('?'),
                Dialect::Postgres => {
                    out.push('$');
                    out.push_str(&(1 + r * cols + c).to_string());
                }
            }
        }
        out.push(')');
    }
    out
}

/// `$1, $2, …` (`n` placeholders) for an `IN (…)` list that holds the statement's only
/// parameters, bound in order: anonymous on SQLite (see `values_list`).
fn only_placeholders(dialect: Dialect, n: usize) -> String {
    match dialect {
        Dialect::Sqlite => vec!["?"; n].join(", "),
        Dialect::Postgres => placeholders(1, n),
    }
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

/// The URL of the replica database of `shard` on the Postgres server of `own` (this cell's
/// own database URL): `<own database>_replica_<shard>`, created when missing.
pub async fn replica_database(own: &str, shard: &str) -> Result<String, StoreError> {
    use sqlx::Connection;
    let mut url = url::Url::parse(own).map_err(|_| StoreError::BadUrl(redact(own)))?;
    let own_db = url.path().trim_start_matches('/').to_owned();
    if own_db.is_empty() {
        return Err(StoreError::BadUrl(redact(own)));
    }
    // Shard names are 1-32 of a-z 0-9 - (topology::CellId); '-' is not an identifier char.
    let name = format!("{own_db}_replica_{}", shard.replace('-', "_"));
    let mut conn = sqlx::postgres::PgConnection::connect(own).await?;
    let exists = sqlx::query("SELECT 1 FROM pg_database WHERE datname = $1")
        .bind(&name)
        .fetch_optional(&mut conn)
        .await?
        .is_some();
    if !exists {
        // Two cells racing to create it: the loser's error is harmless, the database exists.
        if let Err(e) = sqlx::query(&format!("CREATE DATABASE \"{name}\""))
            .execute(&mut conn)
            .await
        {
            tracing::debug!(error = %e, "CREATE DATABASE {name} (it may exist already)");
        }
    }
    let _ = conn.close().await;
    url.set_path(&format!("/{name}"));
    Ok(url.to_string())
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
        use super::Dialect::{Postgres, Sqlite};
        assert_eq!(super::values_list(Postgres, 2, 2), "($1, $2), ($3, $4)");
        assert_eq!(super::values_list(Sqlite, 2, 2), "(?, ?), (?, ?)");
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

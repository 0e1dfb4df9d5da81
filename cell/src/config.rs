//! The `cell` binary's settings: defaults, then `REDCELL_…` environment, then flags.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, ValueEnum};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Switch {
    On,
    Off,
}

/// When a money-moving write is answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Acknowledge {
    /// After the backup cell has durably applied it (or as the shard's policy allows when
    /// the backup is unreachable). RPO 0.
    Backup,
    /// As soon as it commits here, whatever the backup has: a lost cell loses what its
    /// backup had not yet applied. For benchmarks (the baseline) and single-region tries.
    Local,
}

/// How to run one cell. Every flag also reads the environment variable it names.
#[derive(Clone, Debug, Args)]
pub struct Settings {
    /// Address to serve HTTP on; port 0 picks a free port (the bound address is printed).
    #[arg(long, env = "REDCELL_LISTEN", default_value = "127.0.0.1:7100")]
    pub listen: SocketAddr,

    /// Directory for this cell's files: the SQLite shard (when no --database-url) and the
    /// generated auth secret (when REDCELL_AUTH_SECRET is unset).
    #[arg(long, env = "REDCELL_DATA_DIR", default_value = "./data/cell")]
    pub data_dir: PathBuf,

    /// This cell's id in the map (1-32 characters from a-z 0-9 -).
    #[arg(long, env = "REDCELL_CELL_ID", default_value = "c1")]
    pub cell_id: String,

    /// Postgres URL of this cell's shard (postgres://…). Default: SQLite in --data-dir.
    #[arg(long, env = "REDCELL_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,

    /// Postgres connections in the pool (ignored for SQLite: one writer, four readers).
    #[arg(long, env = "REDCELL_DB_MAX_CONNECTIONS", default_value_t = 16)]
    pub db_max_connections: u32,

    /// Redis URL for the claim admission gate (redis://…). Default: an in-process gate with
    /// the same rule.
    #[arg(long, env = "REDCELL_REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,

    /// A static CellMap (JSON) to serve by. Default: this cell alone owns all 1024 slots.
    #[arg(long, env = "REDCELL_MAP")]
    pub map: Option<PathBuf>,

    /// raft-meta nodes (comma-separated HOST:PORT or http://HOST:PORT) to take the map from: the cell follows
    /// its watch, keeps the last map in DATA_DIR/map.json (so it serves on through a
    /// control-plane outage and after a restart), and heartbeats to it. Overrides --map.
    #[arg(long, env = "REDCELL_META", value_delimiter = ',')]
    pub meta: Vec<String>,

    /// How often to heartbeat to raft-meta, in milliseconds.
    #[arg(long, env = "REDCELL_HEARTBEAT_MS", default_value_t = 200)]
    pub heartbeat_ms: u64,

    /// HS256 secret that signs every token. Unset: generated once into DATA_DIR/auth-secret.
    #[arg(long, env = "REDCELL_AUTH_SECRET", hide_env_values = true)]
    pub auth_secret: Option<String>,

    /// A keys file (one secret per line, the minting one first) that replaces the secret once
    /// it exists and is re-read while the cell runs: how a key rotation reaches it.
    #[arg(long, env = "REDCELL_AUTH_KEYS_FILE")]
    pub auth_keys_file: Option<PathBuf>,

    /// Per-packet claim queue with group commit. `off` leaves only the database row lock
    /// (kept for the side-by-side benchmark).
    #[arg(long, env = "REDCELL_CLAIM_QUEUE", value_enum, default_value = "on")]
    pub claim_queue: Switch,

    /// Most claims one queue commits in one transaction.
    #[arg(long, env = "REDCELL_CLAIM_BATCH_MAX", default_value_t = 128)]
    pub claim_batch_max: usize,

    /// Largest packet or subsidy, in cents.
    #[arg(long, env = "REDCELL_MAX_TOTAL", default_value_t = 20_000)]
    pub max_total: i64,

    /// Most shares in one packet.
    #[arg(long, env = "REDCELL_MAX_COUNT", default_value_t = 100)]
    pub max_count: i64,

    /// How often workers look for due work when nothing wakes them, in milliseconds.
    #[arg(long, env = "REDCELL_WORKER_INTERVAL_MS", default_value_t = 500)]
    pub worker_interval_ms: u64,

    /// Base URL of the payment provider (the cashier) for C2C packets. Unset: payments are
    /// settled by the provider's callback alone, and the deadline cancels the rest.
    #[arg(long, env = "REDCELL_PAYMENT_PROVIDER")]
    pub payment_provider: Option<String>,

    /// First re-check of a payment whose callback has not come, in milliseconds (then with
    /// backoff).
    #[arg(long, env = "REDCELL_PAYMENT_RECHECK_MS", default_value_t = 10_000)]
    pub payment_recheck_ms: u64,

    /// A C2C payment not confirmed within this many seconds cancels its packet.
    #[arg(long, env = "REDCELL_PAYMENT_DEADLINE_S", default_value_t = 900)]
    pub payment_deadline_s: u64,

    /// How long a grant reservation may stay pending in this (order) cell before the sweep
    /// asks the home cell to settle it, in milliseconds.
    #[arg(long, env = "REDCELL_GRANT_SETTLE_AFTER_MS", default_value_t = 30_000)]
    pub grant_settle_after_ms: u64,

    /// When money-moving writes are answered: `backup` (semi-synchronous, the default) or
    /// `local` (no wait; loses acknowledged writes with the cell; the benchmarks' baseline).
    #[arg(
        long,
        env = "REDCELL_ACKNOWLEDGE",
        value_enum,
        default_value = "backup"
    )]
    pub acknowledge: Acknowledge,

    /// How long a money-moving write waits for the backup cell to confirm it before the
    /// shard's policy decides (raft-meta's `refuse_writes`: 503; `go_async`: ask raft-meta to
    /// run alone), in milliseconds. Only with a backup in the map.
    #[arg(long, env = "REDCELL_ACK_TIMEOUT_MS", default_value_t = 1_000)]
    pub ack_timeout_ms: u64,

    /// How long a journal commit is kept after the backup and the workers are past it, in
    /// seconds (the journal is pruned every `--journal-prune-every-ms`).
    #[arg(long, env = "REDCELL_JOURNAL_RETENTION_S", default_value_t = 60)]
    pub journal_retention_s: u64,

    /// How often the journal is pruned, in milliseconds.
    #[arg(long, env = "REDCELL_JOURNAL_PRUNE_EVERY_MS", default_value_t = 5_000)]
    pub journal_prune_every_ms: u64,

    /// Test-only crash point (never in production).
    #[arg(long, hide = true, value_enum)]
    pub test_fault: Option<crate::grants::Fault>,

    /// Enables `POST /v1/admin/clock` so tests can move this cell's clock. Never in production.
    #[arg(long, env = "REDCELL_TEST_CLOCK")]
    pub test_clock: bool,

    /// Time a client has to send its (at most 64 KiB) request body once the request head
    /// has arrived, in milliseconds; past it the answer is `408 request_timeout`.
    #[arg(long, env = "REDCELL_BODY_TIMEOUT_MS", default_value_t = 10_000)]
    pub body_timeout_ms: u64,

    /// Connection limits of the HTTP server (header/idle timeout, connection cap).
    #[command(flatten)]
    pub http: serve::Limits,
}

impl Settings {
    /// Checks what clap cannot: ranges and the shape of URLs.
    pub fn validate(&self) -> Result<(), String> {
        topology::CellId::parse(&self.cell_id).map_err(|e| e.to_string())?;
        self.http.validate()?;
        if !(1..=600_000).contains(&self.body_timeout_ms) {
            return Err("--body-timeout-ms must be 1..=600000".into());
        }
        if !(1..=i64::from(u32::MAX)).contains(&self.max_total) {
            return Err("--max-total must be at least 1".into());
        }
        if !(1..=1_000_000).contains(&self.max_count) {
            return Err("--max-count must be 1..=1000000".into());
        }
        if !(10..=60_000).contains(&self.ack_timeout_ms) {
            return Err("--ack-timeout-ms must be 10..=60000".into());
        }
        if !(1..=1024).contains(&self.claim_batch_max) {
            return Err("--claim-batch-max must be 1..=1024".into());
        }
        if let Some(url) = &self.database_url {
            if !(url.starts_with("postgres://")
                || url.starts_with("postgresql://")
                || url.starts_with("sqlite:"))
            {
                return Err("--database-url must start with postgres:// or sqlite:".into());
            }
        }
        for node in &self.meta {
            let addr = node.strip_prefix("http://").unwrap_or(node);
            if addr.is_empty() || addr.contains('/') || !addr.contains(':') {
                return Err(format!(
                    "--meta: {node:?} must be HOST:PORT or http://HOST:PORT"
                ));
            }
        }
        if let Some(url) = &self.payment_provider {
            if !url.starts_with("http://") && !url.starts_with("https://") {
                return Err("--payment-provider must be an http(s):// URL".into());
            }
        }
        if let Some(url) = &self.redis_url {
            if !url.starts_with("redis://") {
                return Err("--redis-url must start with redis://".into());
            }
        }
        if self.auth_secret.as_deref().is_some_and(|s| s.len() < 16) {
            return Err("REDCELL_AUTH_SECRET must be at least 16 characters".into());
        }
        Ok(())
    }
}

/// The deployment secret: the configured one, else the one stored in `data_dir`, else a new
/// one written there (mode 0600) so `cell token` and restarts agree.
pub fn auth_secret(
    configured: Option<&str>,
    data_dir: &std::path::Path,
) -> std::io::Result<String> {
    if let Some(s) = configured {
        return Ok(s.to_owned());
    }
    let path = data_dir.join("auth-secret");
    match std::fs::read_to_string(&path) {
        Ok(s) if !s.trim().is_empty() => return Ok(s.trim().to_owned()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    std::fs::create_dir_all(data_dir)?;
    let secret: String = {
        use rand::Rng;
        let bytes: [u8; 32] = rand::thread_rng().gen();
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    };
    let tmp = data_dir.join("auth-secret.tmp");
    std::fs::write(&tmp, &secret)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))?;
    }
    std::fs::rename(&tmp, &path)?;
    tracing::warn!(path = %path.display(), "REDCELL_AUTH_SECRET unset: generated a secret; mint tokens with `cell token UID --data-dir {}`", data_dir.display());
    Ok(secret)
}

//! The `router` binary's settings: defaults, then `REDCELL_…` environment, then flags.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Args;

/// How to run one router. Every flag also reads the environment variable it names.
#[derive(Clone, Debug, Args)]
pub struct Settings {
    /// Address to serve HTTP on; port 0 picks a free port (the bound address is printed as
    /// the first stdout line, `listening on http://ADDR`).
    #[arg(long, env = "REDCELL_ROUTER_LISTEN", default_value = "127.0.0.1:7000")]
    pub listen: SocketAddr,

    /// raft-meta nodes, `host:port` (or `http://host:port`), comma separated. The router
    /// follows their map watch; any one node answering is enough.
    #[arg(long, env = "REDCELL_META", value_delimiter = ',')]
    pub meta: Vec<String>,

    /// A static CellMap (JSON) to route by until raft-meta answers (or for ever, without
    /// --meta). A persisted map from raft-meta takes precedence.
    #[arg(long, env = "REDCELL_ROUTER_MAP")]
    pub map: Option<PathBuf>,

    /// Directory where the last map from raft-meta is persisted (`map.json`), so a restart
    /// routes even while raft-meta is unreachable.
    #[arg(
        long,
        env = "REDCELL_ROUTER_STATE_DIR",
        default_value = "./data/router"
    )]
    pub state_dir: PathBuf,

    /// HS256 secret that signs every token (at least 16 characters; never printed).
    #[arg(
        long,
        env = "REDCELL_AUTH_SECRET",
        hide_env_values = true,
        default_value = ""
    )]
    pub auth_secret: String,

    /// A keys file (one secret per line, the minting one first) that replaces the secret once
    /// it exists and is re-read while the router runs: how a key rotation reaches it.
    #[arg(long, env = "REDCELL_AUTH_KEYS_FILE")]
    pub auth_keys_file: Option<PathBuf>,

    /// Time a cell has to answer with its response headers, per attempt, in milliseconds.
    #[arg(long, env = "REDCELL_ROUTER_TIMEOUT_MS", default_value_t = 5_000)]
    pub timeout_ms: u64,

    /// Time to open a TCP connection to a cell, in milliseconds.
    #[arg(
        long,
        env = "REDCELL_ROUTER_CONNECT_TIMEOUT_MS",
        default_value_t = 1_000
    )]
    pub connect_timeout_ms: u64,

    /// How long, in milliseconds, the router keeps retrying a request whose cell answers
    /// `503` with `Retry-After` (a shard pausing writes for a failover or a slot move, a
    /// backup not confirming yet), waiting what the cell asks between tries and following
    /// the map; the client sees the first other answer, or the last 503. 0: never retry.
    #[arg(
        long,
        env = "REDCELL_ROUTER_RETRY_UNAVAILABLE_MS",
        default_value_t = 2_000
    )]
    pub retry_unavailable_ms: u64,

    /// Time a client has to send its (at most 64 KiB) request body, in milliseconds.
    #[arg(long, env = "REDCELL_ROUTER_BODY_TIMEOUT_MS", default_value_t = 10_000)]
    pub body_timeout_ms: u64,

    /// Requests per second the whole router admits (bursts up to one second's worth);
    /// 0 disables the global limit.
    #[arg(long, env = "REDCELL_ROUTER_RATE_GLOBAL", default_value_t = 0)]
    pub rate_global: u32,

    /// Requests per second one uid may make (bursts up to one second's worth); 0 disables.
    #[arg(long, env = "REDCELL_ROUTER_RATE_PER_UID", default_value_t = 0)]
    pub rate_per_uid: u32,

    /// Threads serving requests (the async runtime's workers); 0: one per CPU core. Where
    /// the router shares its cores with busy neighbours, fewer threads, each kept busier,
    /// spend less CPU per request (BENCHMARKS.md).
    #[arg(long, env = "REDCELL_ROUTER_WORKERS", default_value_t = 0)]
    pub workers: usize,

    /// Verified tokens the router remembers, so a token seen before (an app sends the same
    /// one with every request) is not verified again until it expires; 0: verify every time.
    #[arg(long, env = "REDCELL_ROUTER_TOKEN_CACHE", default_value_t = 100_000)]
    pub token_cache: usize,

    /// Redis URL (redis://…) to count rate limits in, cluster-wide across routers. Unset:
    /// each router counts alone. While Redis cannot answer, the local counts apply.
    #[arg(long, env = "REDCELL_ROUTER_REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,

    /// Connection limits of the HTTP server (header/idle timeout, connection cap).
    #[command(flatten)]
    pub http: serve::Limits,
}

impl Settings {
    /// Checks what clap cannot.
    pub fn validate(&self) -> Result<(), String> {
        self.http.validate()?;
        if self.auth_keys_file.is_none() && self.auth_secret.len() < 16 {
            return Err("REDCELL_AUTH_SECRET must be at least 16 characters".into());
        }
        if self.meta.is_empty() && self.map.is_none() {
            return Err("give --meta (raft-meta nodes) or --map (a static map), or both".into());
        }
        if self.workers > 1024 {
            return Err("--workers must be at most 1024".into());
        }
        for ms in [
            self.timeout_ms,
            self.connect_timeout_ms,
            self.body_timeout_ms,
        ] {
            if !(1..=600_000).contains(&ms) {
                return Err("timeouts must be 1..=600000 ms".into());
            }
        }
        Ok(())
    }

    /// Worker threads to run: `--workers`, or one per CPU core.
    pub fn workers(&self) -> usize {
        match self.workers {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        }
    }

    /// The raft-meta nodes as `host:port`, the form the client takes.
    pub fn meta_nodes(&self) -> Vec<String> {
        self.meta
            .iter()
            .map(|m| m.trim())
            .filter(|m| !m.is_empty())
            .map(|m| {
                m.trim_start_matches("http://")
                    .trim_end_matches('/')
                    .to_owned()
            })
            .collect()
    }
}

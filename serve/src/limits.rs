//! What a connection may cost the process, as flags every binary takes.

use std::time::Duration;

use clap::Args;

/// Request URIs (path and query) longer than this get `414 uri_too_long`. Every route of
/// API.md fits in a few hundred bytes. Hyper itself answers a bare 414 (no body, no hook to
/// change it) past 65,534 bytes; this limit is well below, so a client sees problem+json.
pub const MAX_URI_BYTES: usize = 8 * 1024;

/// Requests with more header fields than this get `431 too_many_headers`.
pub const MAX_HEADERS: usize = 100;

/// Requests whose header names and values together exceed this get `431 headers_too_large`.
pub const MAX_HEADER_BYTES: usize = 32 * 1024;

/// The header count hyper itself accepts. Above it hyper writes a bare 431 before any code
/// of ours runs (it has no hook for that response), so it sits above [`MAX_HEADERS`] to let
/// 101 to 128 headers reach our problem+json answer. Hyper also answers a bare 431 for a
/// request head over its read buffer (about 400 KiB).
pub const HYPER_MAX_HEADERS: usize = 128;

/// The serving limits of one process. The same flags (and `REDCELL_HTTP_…` variables) in
/// the cell, the router and raft-meta.
#[derive(Clone, Debug, Args)]
pub struct Limits {
    /// Time a client has to send a whole request head, in milliseconds, counted from when
    /// the connection opens or, on a keep-alive connection, from the end of the previous
    /// response, so it is also the idle keep-alive bound. Past it the connection is closed
    /// (a slowloris client holds it no longer). 0 disables it (tests only). The default sits
    /// above the 30 s idle time of our own clients' pools (router → cell, cell → cell,
    /// raft-meta), so none of them reuses a connection the server is just closing.
    #[arg(
        long = "http-header-timeout-ms",
        env = "REDCELL_HTTP_HEADER_TIMEOUT_MS",
        default_value_t = 40_000
    )]
    pub header_timeout_ms: u64,

    /// Connections this process keeps open at once. A connection past it is answered
    /// `503 overloaded` (problem+json, `Retry-After: 1`) and closed.
    #[arg(
        long = "http-max-connections",
        env = "REDCELL_HTTP_MAX_CONNECTIONS",
        default_value_t = 4096
    )]
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            header_timeout_ms: 40_000,
            max_connections: 4096,
        }
    }
}

impl Limits {
    pub fn validate(&self) -> Result<(), String> {
        if self.header_timeout_ms > 600_000 {
            return Err("--http-header-timeout-ms must be at most 600000".into());
        }
        // A tokio semaphore holds at most u32::MAX >> 3 permits; far more than fds anyway.
        if !(1..=1_000_000).contains(&self.max_connections) {
            return Err("--http-max-connections must be 1..=1000000".into());
        }
        Ok(())
    }

    /// The header timeout, or `None` when disabled.
    pub fn header_timeout(&self) -> Option<Duration> {
        (self.header_timeout_ms > 0).then(|| Duration::from_millis(self.header_timeout_ms))
    }
}

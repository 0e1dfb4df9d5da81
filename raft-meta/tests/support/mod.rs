//! raft-meta's test kit: clusters of real `raft-meta` processes on loopback (the `harness`
//! launcher: each node with its own temp dir, log file and port; logs printed when a test
//! fails), tokens, and the one-at-a-time lock.
#![allow(dead_code)]

use tokio::sync::{Mutex, MutexGuard};

pub use harness::meta::MetaCluster as Cluster;

pub const SECRET: &str = "raft-meta-test-secret";

/// Cluster tests run one at a time: on a 2-core machine, parallel clusters starve each
/// other's heartbeats and cause elections no test asked for.
static SERIAL: Mutex<()> = Mutex::const_new(());

pub async fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().await
}

/// Starts `n` voters of this package's `raft-meta` with `extra` flags on each, and waits
/// until every one is ready.
pub async fn cluster(n: u64, extra: &[&str]) -> Cluster {
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_raft-meta"));
    Cluster::start(bin, SECRET, n, extra).await
}

pub fn admin_token() -> String {
    topology::auth::mint(SECRET.as_bytes(), "svc:test-ops", Some("admin"), 3600)
}

pub fn internal_token() -> String {
    topology::auth::mint(SECRET.as_bytes(), "svc:test-cell", Some("internal"), 3600)
}

//! The `raft-meta` binary's settings: defaults, then env (`REDCELL_…`), then flags.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;

use crate::NodeId;

/// Runs one raft-meta node.
///
/// First start of a new cluster: start every node with the same `--peers`, and `--init` on
/// exactly one of them. Restarts need no `--init` (it is ignored once the node has state).
/// A new node joins by starting with no `--init` and being added through
/// `POST /v1/cluster/learners` then `POST /v1/cluster/membership`.
#[derive(Clone, Debug, Parser)]
#[command(name = "raft-meta", version)]
pub struct Settings {
    /// This node's Raft id (a positive integer, unique for the life of the cluster).
    #[arg(long, env = "REDCELL_META_ID")]
    pub id: NodeId,
    /// Address to listen on (HTTP API and Raft RPCs), e.g. `127.0.0.1:7001`; port 0 picks one.
    #[arg(long, env = "REDCELL_META_LISTEN", default_value = "127.0.0.1:7001")]
    pub listen: SocketAddr,
    /// Address peers and clients use to reach this node; defaults to the bound address.
    #[arg(long, env = "REDCELL_META_ADVERTISE")]
    pub advertise: Option<String>,
    /// Directory for the log, vote and snapshots. Never wipe it and rejoin under the same id.
    #[arg(long, env = "REDCELL_META_DATA_DIR")]
    pub data_dir: PathBuf,
    /// The initial voters, `1=127.0.0.1:7001,2=127.0.0.1:7002,3=127.0.0.1:7003`; used by `--init`.
    #[arg(long, env = "REDCELL_META_PEERS", value_parser = parse_peers, default_value = "")]
    pub peers: Peers,
    /// Initialize the cluster with `--peers` as voters (exactly one node, first start only).
    #[arg(long)]
    pub init: bool,
    /// Raft heartbeat interval, milliseconds. openraft also uses it as the timeout of one
    /// AppendEntries RPC, so it must leave room for a batch under load.
    #[arg(long, env = "REDCELL_META_HEARTBEAT_MS", default_value_t = 100)]
    pub heartbeat_ms: u64,
    /// Election timeout lower bound, milliseconds (upper bound is twice this). openraft waits
    /// one upper bound of leader lease plus a random timeout in [lower, upper] before it
    /// elects, so 150 gives a failover of roughly 450-600 ms plus the election round trip.
    #[arg(long, env = "REDCELL_META_ELECTION_MS", default_value_t = 150)]
    pub election_ms: u64,
    /// Build a snapshot (and purge the log behind it) every this many applied entries.
    #[arg(long, env = "REDCELL_META_SNAPSHOT_EVERY", default_value_t = 1000)]
    pub snapshot_every: u64,
    /// How long a write may wait for commit before answering 503, milliseconds.
    #[arg(long, env = "REDCELL_META_WRITE_TIMEOUT_MS", default_value_t = 3000)]
    pub write_timeout_ms: u64,
    /// A cell is `suspect` after this long without a heartbeat, milliseconds.
    #[arg(long, env = "REDCELL_META_SUSPECT_MS", default_value_t = 800)]
    pub suspect_ms: u64,
    /// A cell is `down` after this long without a heartbeat, milliseconds.
    #[arg(long, env = "REDCELL_META_DOWN_MS", default_value_t = 1500)]
    pub down_ms: u64,
    /// A shard running alone (its backup unreachable, under a run-alone grant) is given
    /// another backup once its grant has stood this long on the leader, milliseconds.
    #[arg(long, env = "REDCELL_META_REPROTECT_AFTER_MS", default_value_t = 2000)]
    pub reprotect_after_ms: u64,
    /// The deployment secret for HS256 tokens. Never printed.
    #[arg(
        long,
        env = "REDCELL_AUTH_SECRET",
        hide_env_values = true,
        default_value = ""
    )]
    pub auth_secret: String,
    /// A keys file (one secret per line, the minting one first) that replaces the secret once
    /// it exists and is re-read while the node runs: how a key rotation reaches it.
    #[arg(long, env = "REDCELL_AUTH_KEYS_FILE")]
    pub auth_keys_file: Option<std::path::PathBuf>,
    /// Test only: enables `POST /internal/fault` to cut this node off from its peers.
    #[arg(long, hide = true)]
    pub fault_hooks: bool,
    /// Connection limits of the HTTP server (header/idle timeout, connection cap).
    #[command(flatten)]
    pub http: serve::Limits,
}

/// The `--peers` list: node id → address.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Peers(pub BTreeMap<NodeId, String>);

fn parse_peers(s: &str) -> Result<Peers, String> {
    let mut peers = BTreeMap::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (id, addr) = part
            .split_once('=')
            .ok_or_else(|| format!("{part:?}: expected ID=ADDR"))?;
        let id: NodeId = id
            .parse()
            .map_err(|_| format!("{id:?}: node id must be a positive integer"))?;
        if id == 0 || addr.is_empty() {
            return Err(format!("{part:?}: expected ID=ADDR with ID > 0"));
        }
        if peers.insert(id, addr.to_owned()).is_some() {
            return Err(format!("node {id} is listed twice"));
        }
    }
    Ok(Peers(peers))
}

/// Settings that cannot work.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("--id must be positive")]
    ZeroId,
    #[error("--init needs --peers listing this node ({0})")]
    InitWithoutSelf(NodeId),
    #[error("REDCELL_AUTH_SECRET must not be empty (or give REDCELL_AUTH_KEYS_FILE)")]
    WeakSecret,
    #[error("--heartbeat-ms must be below --election-ms")]
    Timing,
    #[error("--suspect-ms must be below --down-ms")]
    Detector,
}

impl Settings {
    pub fn validate(&self) -> Result<(), SettingsError> {
        if self.id == 0 {
            return Err(SettingsError::ZeroId);
        }
        if self.init && !self.peers.0.contains_key(&self.id) {
            return Err(SettingsError::InitWithoutSelf(self.id));
        }
        if self.auth_secret.is_empty() && self.auth_keys_file.is_none() {
            return Err(SettingsError::WeakSecret);
        }
        if self.heartbeat_ms == 0 || self.heartbeat_ms >= self.election_ms {
            return Err(SettingsError::Timing);
        }
        if self.suspect_ms >= self.down_ms {
            return Err(SettingsError::Detector);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_parse() {
        let p = parse_peers("1=127.0.0.1:1,2=h:2").unwrap();
        assert_eq!(p.0[&2], "h:2");
        assert!(parse_peers("1=a,1=b").is_err());
        assert!(parse_peers("x=a").is_err());
        assert!(parse_peers("0=a").is_err());
        assert_eq!(parse_peers("").unwrap(), Peers::default());
    }
}

//! raft-meta: the Raft-backed authority on which cell owns which slot.
//!
//! It owns the map (cells, slot owners with their epochs, the map version, switches, failover
//! policies and cell liveness) and is its **only writer**: every change is a [`state::Command`]
//! committed through openraft and applied identically on every node. It never routes user
//! traffic and never touches a cell's data.
//!
//! Crate map:
//! - [`state`]: the replicated state and the pure, deterministic `apply` of each command. The
//!   forms it publishes (map view, switches, policies, liveness, grants) and the problem body
//!   are the `wire` crate's; `state` and `api` re-export them.
//! - [`store`]: durable Raft storage: an fsync'd append-only log file, the vote file, and the
//!   state machine with its on-disk snapshots.
//! - [`network`]: Raft RPCs to peers over HTTP (internal routes, `internal`-scope token).
//! - [`api`]: the HTTP API (map, watch, operator commands, cluster, internal Raft routes).
//! - [`app`]: wiring: [`app::App::build`] binds the listener, [`app::App::run_until_stopped`]
//!   serves until SIGTERM; forwarding of leader-only operations lives here.
//! - [`detector`]: the failure detector (heartbeats in memory, state changes in the log).
//! - [`reprotect`]: the leader's loop that names another backup for a shard running alone.
//! - [`client`]: the client library for routers and cells (leader discovery, retries, watch).
//! - [`follow`]: the map follower cells and routers share (watch, `map.json`, their hooks).
//! - [`files`]: crash-safe file writes (write, fsync, rename, fsync the directory).
//! - [`keys`]: every process's signing keys, and the keys file it follows during a rotation.
//! - [`settings`]: the binary's `Settings` (defaults, env, flags).
#![forbid(unsafe_code)]

use std::io::Cursor;

pub mod api;
pub mod app;
pub mod client;
pub mod detector;
pub mod files;
pub mod follow;
pub mod keys;
pub mod network;
pub mod reprotect;
pub mod settings;
pub mod state;
pub mod store;

/// A Raft node id (`--id`).
pub type NodeId = u64;

openraft::declare_raft_types!(
    /// The openraft type configuration of raft-meta: commands in, outcomes out.
    pub TypeConfig:
        D = state::Command,
        R = state::Outcome,
);

/// The Raft handle of this crate's configuration.
pub type Raft = openraft::Raft<TypeConfig>;

//! The red-packet service of one cell: the whole API of API.md for the slots this cell owns,
//! its shard (SQLite by default, Postgres in production), the claim queue and admission
//! gate, the journal and the workers it drives.
//!
//! Map of the crate: `api/` (HTTP, one file per resource; `error.rs` alone picks statuses),
//! `domain/` (money, the split, validation; pure), `store/` (the only SQL), `claims/` (gate,
//! per-packet queues, group commit), `workers/` (transfers, expiry and refunds,
//! reconciliation), `ownership.rs` (which slots we serve), `meta.rs` (the cell's hook on
//! raft-meta's shared map follower, and its heartbeats), `fence.rs` (the per-slot epoch
//! every write checks inside its transaction), `config.rs`, `app.rs`.
//!
//! A cell never decides ownership: it obeys the map it is given and refuses (421) requests
//! for slots it does not own. It never trusts a header to say who the caller is.
#![forbid(unsafe_code)]

pub mod api;
pub mod app;
pub mod claims;
pub mod clock;
pub mod config;
pub mod domain;
pub mod fence;
pub mod grants;
pub mod journal;
pub mod meta;
pub mod ownership;
pub mod payments;
pub mod peer;
pub mod replication;
pub mod roles;
pub mod shards;
pub mod store;
pub mod workers;

pub use app::{App, StartError};
pub use config::Settings;

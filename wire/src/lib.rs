//! wire: the types that cross redcell's processes, and nothing else.
//!
//! It owns the JSON forms that raft-meta, cells, routers and `cellctl` exchange or persist:
//! the map view with its switches, policies, liveness and run-alone grants ([`map`]), the
//! payment-provider breaker's thresholds ([`breaker`]), the
//! problem+json bodies one process parses from another ([`problem`]), and the names of the
//! headers a router and a cell agree on ([`headers`]), and the public API's OpenAPI document
//! ([`openapi`]). Every form here is a contract: changing
//! one byte of it breaks a peer running the previous release, or a file persisted by it, so
//! each type carries a round-trip test against a JSON literal.
//!
//! It must never do I/O, hold state or decide anything: no HTTP, no files, no async. It depends
//! only on `topology` (the shared vocabulary) and `serde`. Raft-meta's commands and replicated
//! state stay in raft-meta; how a process follows the map lives in `raft_meta::follow`.
#![forbid(unsafe_code)]

pub mod breaker;
pub mod headers;
pub mod map;
pub mod openapi;
pub mod problem;

pub use breaker::BreakerPolicy;
pub use map::{
    AloneGrant, BackupUnreachable, FailoverKind, FailoverPolicy, FailoverRecord, Liveness, MapView,
    Switch,
};
pub use problem::{Problem, WrongCell};

//! `harness`: what every redcell test suite, bench and drill shares, in one place.
//!
//! - [`procs`]: real processes on loopback — building the binaries a test needs, spawning
//!   one with its log in a file, learning its address, polling its readiness, signalling,
//!   freezing and stopping it;
//! - [`meta`]: a raft-meta cluster of such processes;
//! - [`up`]: a whole deployment by `cellctl up` on a temporary data dir;
//! - [`api`]: a typed client of the public API (API.md);
//! - [`schedule`] and [`load`]: the one open-loop load engine (due times from the start,
//!   latency from the due time, drops counted), whose flows retry with the same
//!   idempotency key and record every acknowledged write in a
//! - [`ledger`], which reads each back through the router afterwards and counts what was
//!   lost and what was duplicated.
//!
//! It never opens a cell's database and never sends traffic anywhere but the loopback
//! deployment it was pointed at. It is a library for tests and tools, not part of any
//! service.
#![forbid(unsafe_code)]

pub mod api;
pub mod ledger;
pub mod load;
pub mod meta;
pub mod procs;
pub mod schedule;
pub mod up;

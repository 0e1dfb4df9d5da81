//! What the fuzz targets assert, one module per target, each a `check(data: &[u8])` that
//! panics on an input breaking the module's stated property.
//!
//! `fuzz/` (its own workspace, nightly, cargo-fuzz) hands these to libFuzzer for long runs
//! (`scripts/fuzz`); `tests/smoke.rs` here replays every committed seed and a bounded number
//! of mutations of them on the stable toolchain, inside `cargo test` (the CI smoke: it
//! shares the workspace's build instead of a cold instrumented build of everything).
//! This crate only checks: it must never hold product logic of its own.

#![forbid(unsafe_code)]

pub mod bodies;
pub mod ids;
pub mod journal;
pub mod map_json;
pub mod meta_commands;
pub mod token;

/// A target: panics on an input that breaks its property.
pub type Check = fn(&[u8]);

/// Every target by name (the names of `fuzz/fuzz_targets/` and `fuzz/seeds/`).
pub const TARGETS: &[(&str, Check)] = &[
    ("ids", ids::check),
    ("token", token::check),
    ("bodies", bodies::check),
    ("map_json", map_json::check),
    ("meta_commands", meta_commands::check),
    ("journal", journal::check),
];

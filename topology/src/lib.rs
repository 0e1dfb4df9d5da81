//! The shared vocabulary of redcell: slots, the ids the system mints (each carries its slot),
//! user ids, credentials (JWT claims and their verification, the key ring a rotation swaps), cells the `CellMap` (slots → shards → cells) with its JSON form, and the placement of slots onto cells.
//!
//! Everything here is pure: no I/O, no clocks, no global state. Every other crate depends on
//! these types (and, for the JSON that crosses processes, on `wire`, built on them) and on
//! nothing else of each other's. `topology` never decides ownership by
//! itself at run time: it computes a proposal (`placement`) that raft-meta stores explicitly.
#![forbid(unsafe_code)]

pub mod auth;
mod ids;
pub mod keys;
mod map;
pub mod placement;
mod slot;
mod uid;

pub use ids::{IdKind, MintedId, ParseIdError};
pub use map::{
    check_shards, legacy_shards, CellId, CellInfo, CellMap, CellStatus, Epoch, LegacyCell,
    MapError, Region, ShardId, ShardInfo, SlotOwner,
};
pub use slot::{Slot, SLOT_COUNT};
pub use uid::{BadUid, Uid};

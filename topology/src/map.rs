//! The map: which cell owns each slot, at which epoch, and what each cell is.
//!
//! raft-meta is its only writer; cells and routers hold read-only copies. The JSON form is the
//! serde form of [`CellMap`]: `{"version", "cells": {id: CellInfo}, "slots": [{"cell","epoch"}; 1024]}`.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::{Slot, SLOT_COUNT};

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 32
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

macro_rules! name_type {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Parses a name: 1–32 characters from `a–z 0–9 -`.
            pub fn parse(s: &str) -> Result<Self, MapError> {
                if valid_name(s) {
                    Ok($name(s.to_owned()))
                } else {
                    Err(MapError::BadName { what: $what, name: s.chars().take(40).collect() })
                }
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = MapError;
            fn try_from(s: String) -> Result<Self, MapError> {
                $name::parse(&s)
            }
        }

        impl From<$name> for String {
            fn from(n: $name) -> String {
                n.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

name_type!(
    /// A cell's name, e.g. `c1`.
    CellId,
    "cell id"
);
name_type!(
    /// A region's name (a failure domain), e.g. `east`.
    Region,
    "region"
);

/// Per-slot ownership counter, bumped whenever the slot changes owner. Fences stale owners.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
#[serde(transparent)]
pub struct Epoch(pub u64);

impl Epoch {
    pub fn next(self) -> Epoch {
        Epoch(self.0 + 1)
    }
}

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// What raft-meta believes of a cell.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum CellStatus {
    #[default]
    Active,
    Draining,
    Down,
    Retired,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CellInfo {
    pub id: CellId,
    pub region: Region,
    /// Base URL of the cell's HTTP API, e.g. `http://127.0.0.1:7101`.
    pub url: String,
    #[serde(default)]
    pub status: CellStatus,
    /// The cell in another region that holds a copy of this cell's journal.
    #[serde(default)]
    pub backup: Option<CellId>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotOwner {
    pub cell: CellId,
    pub epoch: Epoch,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MapError {
    #[error("invalid {what} {name:?}: use 1-32 characters from a-z 0-9 -")]
    BadName { what: &'static str, name: String },
    #[error("the map must have exactly {SLOT_COUNT} slots, it has {0}")]
    SlotCount(usize),
    #[error("slot {slot} is owned by unknown cell {cell}")]
    UnknownOwner { slot: u16, cell: String },
    #[error("cell {cell} names unknown backup {backup}")]
    UnknownBackup { cell: String, backup: String },
    #[error("cell {cell} and its backup {backup} are both in region {region}")]
    BackupSameRegion {
        cell: String,
        backup: String,
        region: String,
    },
    #[error("cell {0} cannot back itself up")]
    SelfBackup(String),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RawMap")]
pub struct CellMap {
    /// Bumped on every change; watchers ask for versions after the one they hold.
    pub version: u64,
    pub cells: BTreeMap<CellId, CellInfo>,
    /// Exactly `SLOT_COUNT` entries, indexed by slot number.
    pub slots: Vec<SlotOwner>,
}

/// The unchecked JSON form; `CellMap` is only ever built from it through `validate`.
#[derive(Deserialize)]
struct RawMap {
    version: u64,
    cells: BTreeMap<CellId, CellInfo>,
    slots: Vec<SlotOwner>,
}

impl TryFrom<RawMap> for CellMap {
    type Error = MapError;
    fn try_from(raw: RawMap) -> Result<Self, MapError> {
        let map = CellMap {
            version: raw.version,
            cells: raw.cells,
            slots: raw.slots,
        };
        map.validate()?;
        Ok(map)
    }
}

impl CellMap {
    /// One cell that owns every slot at epoch 1: what a lone `cell` process starts with.
    pub fn single(cell: CellInfo) -> CellMap {
        let owner = SlotOwner {
            cell: cell.id.clone(),
            epoch: Epoch(1),
        };
        CellMap {
            version: 1,
            slots: vec![owner; usize::from(SLOT_COUNT)],
            cells: BTreeMap::from([(cell.id.clone(), cell)]),
        }
    }

    /// Builds a map from cells and a proposed owner per slot (all at epoch 1).
    pub fn from_assignment(cells: Vec<CellInfo>, owners: Vec<CellId>) -> Result<CellMap, MapError> {
        let map = CellMap {
            version: 1,
            cells: cells.into_iter().map(|c| (c.id.clone(), c)).collect(),
            slots: owners
                .into_iter()
                .map(|cell| SlotOwner {
                    cell,
                    epoch: Epoch(1),
                })
                .collect(),
        };
        map.validate()?;
        Ok(map)
    }

    pub fn owner(&self, slot: Slot) -> &SlotOwner {
        &self.slots[slot.index()]
    }

    pub fn cell(&self, id: &CellId) -> Option<&CellInfo> {
        self.cells.get(id)
    }

    /// The slots a cell owns, in order.
    pub fn slots_of<'a>(&'a self, cell: &'a CellId) -> impl Iterator<Item = Slot> + 'a {
        Slot::all().filter(move |s| &self.owner(*s).cell == cell)
    }

    /// The epoch of a cell's shard: the highest epoch among the slots it owns (0 when it
    /// owns none). Any takeover or move of one of its slots raises it, so a grant made at one
    /// shard epoch (raft-meta's "run alone" grant, DESIGN §6.3) lapses when ownership moves.
    pub fn shard_epoch(&self, cell: &CellId) -> Epoch {
        self.slots
            .iter()
            .filter(|o| &o.cell == cell)
            .map(|o| o.epoch)
            .max()
            .unwrap_or_default()
    }

    /// Checks the invariants every map must hold; a map that fails is never served.
    pub fn validate(&self) -> Result<(), MapError> {
        if self.slots.len() != usize::from(SLOT_COUNT) {
            return Err(MapError::SlotCount(self.slots.len()));
        }
        for (n, owner) in self.slots.iter().enumerate() {
            if !self.cells.contains_key(&owner.cell) {
                return Err(MapError::UnknownOwner {
                    slot: n as u16,
                    cell: owner.cell.to_string(),
                });
            }
        }
        for cell in self.cells.values() {
            let Some(backup_id) = &cell.backup else {
                continue;
            };
            if backup_id == &cell.id {
                return Err(MapError::SelfBackup(cell.id.to_string()));
            }
            let backup = self
                .cells
                .get(backup_id)
                .ok_or_else(|| MapError::UnknownBackup {
                    cell: cell.id.to_string(),
                    backup: backup_id.to_string(),
                })?;
            if backup.region == cell.region {
                return Err(MapError::BackupSameRegion {
                    cell: cell.id.to_string(),
                    backup: backup_id.to_string(),
                    region: cell.region.to_string(),
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(id: &str, region: &str, backup: Option<&str>) -> CellInfo {
        CellInfo {
            id: CellId::parse(id).unwrap(),
            region: Region::parse(region).unwrap(),
            url: format!("http://127.0.0.1/{id}"),
            status: CellStatus::Active,
            backup: backup.map(|b| CellId::parse(b).unwrap()),
        }
    }

    #[test]
    fn single_map_round_trips_through_json() {
        let map = CellMap::single(info("c1", "east", None));
        let text = serde_json::to_string(&map).unwrap();
        let back: CellMap = serde_json::from_str(&text).unwrap();
        assert_eq!(back, map);
        assert_eq!(back.slots_of(&CellId::parse("c1").unwrap()).count(), 1024);
    }

    #[test]
    fn invalid_maps_are_refused() {
        let mut map = CellMap::single(info("c1", "east", None));
        map.slots.pop();
        assert_eq!(map.validate(), Err(MapError::SlotCount(1023)));

        let same_region = vec![info("c1", "east", Some("c2")), info("c2", "east", None)];
        let owners = vec![CellId::parse("c1").unwrap(); 1024];
        assert!(matches!(
            CellMap::from_assignment(same_region, owners.clone()),
            Err(MapError::BackupSameRegion { .. })
        ));
        let ok = vec![
            info("c1", "east", Some("c2")),
            info("c2", "west", Some("c1")),
        ];
        assert!(CellMap::from_assignment(ok, owners).is_ok());

        let text = r#"{"version":1,"cells":{},"slots":[]}"#;
        assert!(serde_json::from_str::<CellMap>(text).is_err());
        assert!(CellId::parse("C1").is_err());
        assert!(CellId::parse("").is_err());
    }
}

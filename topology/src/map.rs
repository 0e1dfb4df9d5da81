//! The map: which shard holds each slot and at which epoch, which cell serves each shard and
//! which backs it up, and what each cell is (DESIGN §6.1).
//!
//! raft-meta is its only writer; cells and routers hold read-only copies. The JSON form is the
//! serde form of [`CellMap`]: `{"version", "cells": {id: CellInfo}, "shards": {id: ShardInfo},
//! "slots": [{"shard","epoch"}; 1024]}`; maps written before shards (`slots` naming cells,
//! `backup` on the cell) are still read, and migrated on load.

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

name_type!(
    /// A shard's name. Each cell starts with one shard of its own name (`c1`, DESIGN §6.1);
    /// the name stays with the shard when another cell takes it over.
    ShardId,
    "shard id"
);

impl ShardId {
    /// The shard a cell starts with: the one that has its name.
    pub fn own(cell: &CellId) -> ShardId {
        ShardId(cell.as_str().to_owned())
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CellInfo {
    pub id: CellId,
    pub region: Region,
    /// Base URL of the cell's HTTP API, e.g. `http://127.0.0.1:7101`.
    pub url: String,
    #[serde(default)]
    pub status: CellStatus,
}

/// One shard: the database holding a set of slots' rows, who serves it and who keeps its
/// replica (DESIGN §6.1).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardInfo {
    pub id: ShardId,
    /// The cell that serves the shard's slots and writes its journal.
    pub primary: CellId,
    /// The cell, in another region, that hosts the shard's replica; `None` for a shard with
    /// no backup (a lone cell, a test map).
    #[serde(default)]
    pub backup: Option<CellId>,
    /// The journal position the backup had durably applied when the primary last reported
    /// it to raft-meta (0 until then). Informational: acknowledgement never reads it.
    #[serde(default)]
    pub position: u64,
}

/// Where a slot lives: its shard, and the epoch it is held at (bumped whenever the slot
/// moves to another shard or its shard to another cell).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SlotOwner {
    pub shard: ShardId,
    pub epoch: Epoch,
}

/// A slot as JSON: `{"shard", "epoch"}`, or `{"cell", "epoch"}` in maps written before shards
/// (the cell's own shard has its name, so the name carries over).
#[derive(Deserialize)]
struct RawSlot {
    #[serde(default)]
    shard: Option<ShardId>,
    #[serde(default)]
    cell: Option<CellId>,
    epoch: Epoch,
}

impl<'de> Deserialize<'de> for SlotOwner {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<SlotOwner, D::Error> {
        let raw = RawSlot::deserialize(d)?;
        let shard = match (raw.shard, raw.cell) {
            (Some(shard), _) => shard,
            (None, Some(cell)) => ShardId::own(&cell),
            (None, None) => return Err(serde::de::Error::missing_field("shard")),
        };
        Ok(SlotOwner {
            shard,
            epoch: raw.epoch,
        })
    }
}

/// A cell as JSON, with the `backup` that maps written before shards kept on the cell.
#[derive(Deserialize)]
pub struct LegacyCell {
    #[serde(flatten)]
    pub info: CellInfo,
    #[serde(default)]
    pub backup: Option<CellId>,
}

/// The shards of a map written before shards existed: one per cell, of the cell's name,
/// served by it, backed up by the backup the cell named.
pub fn legacy_shards(cells: &BTreeMap<CellId, LegacyCell>) -> BTreeMap<ShardId, ShardInfo> {
    cells
        .values()
        .map(|c| {
            let id = ShardId::own(&c.info.id);
            let shard = ShardInfo {
                id: id.clone(),
                primary: c.info.id.clone(),
                backup: c.backup.clone(),
                position: 0,
            };
            (id, shard)
        })
        .collect()
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MapError {
    #[error("invalid {what} {name:?}: use 1-32 characters from a-z 0-9 -")]
    BadName { what: &'static str, name: String },
    #[error("the map must have exactly {SLOT_COUNT} slots, it has {0}")]
    SlotCount(usize),
    #[error("slot {slot} is in unknown shard {shard}")]
    UnknownShard { slot: u16, shard: String },
    #[error("shard {shard} is served by unknown cell {cell}")]
    UnknownPrimary { shard: String, cell: String },
    #[error("shard {shard} names unknown backup {backup}")]
    UnknownBackup { shard: String, backup: String },
    #[error("shard {shard}'s primary {primary} and backup {backup} are both in region {region}")]
    BackupSameRegion {
        shard: String,
        primary: String,
        backup: String,
        region: String,
    },
    #[error("shard {0}'s primary cannot be its backup too")]
    SelfBackup(String),
    #[error("shard {shard} is keyed as {key}")]
    ShardKey { key: String, shard: String },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RawMap")]
pub struct CellMap {
    /// Bumped on every change; watchers ask for versions after the one they hold.
    pub version: u64,
    pub cells: BTreeMap<CellId, CellInfo>,
    /// Every shard, by name. A shard may hold no slot (a new cell's before placement gives
    /// it some, one emptied by moves).
    pub shards: BTreeMap<ShardId, ShardInfo>,
    /// Exactly `SLOT_COUNT` entries, indexed by slot number.
    pub slots: Vec<SlotOwner>,
}

/// The unchecked JSON form; `CellMap` is only ever built from it through `validate`. A map
/// without `shards` was written before shards existed and is migrated ([`legacy_shards`]).
#[derive(Deserialize)]
struct RawMap {
    version: u64,
    cells: BTreeMap<CellId, LegacyCell>,
    #[serde(default)]
    shards: Option<BTreeMap<ShardId, ShardInfo>>,
    slots: Vec<SlotOwner>,
}

impl TryFrom<RawMap> for CellMap {
    type Error = MapError;
    fn try_from(raw: RawMap) -> Result<Self, MapError> {
        let shards = match raw.shards {
            Some(shards) => shards,
            None => legacy_shards(&raw.cells),
        };
        let map = CellMap {
            version: raw.version,
            cells: raw.cells.into_iter().map(|(k, c)| (k, c.info)).collect(),
            shards,
            slots: raw.slots,
        };
        map.validate()?;
        Ok(map)
    }
}

impl CellMap {
    /// One cell that owns every slot, in its own shard, at epoch 1: what a lone `cell`
    /// process starts with.
    pub fn single(cell: CellInfo) -> CellMap {
        let owners = vec![cell.id.clone(); usize::from(SLOT_COUNT)];
        let mut map = CellMap::from_assignment(vec![cell], owners, &BTreeMap::new())
            .expect("one cell owning every slot is a valid map");
        map.version = 1;
        map
    }

    /// Builds a map from cells, a proposed owner cell per slot (each slot in its owner's own
    /// shard, all at epoch 1) and each cell's shard's backup.
    pub fn from_assignment(
        cells: Vec<CellInfo>,
        owners: Vec<CellId>,
        backups: &BTreeMap<CellId, CellId>,
    ) -> Result<CellMap, MapError> {
        let cells: BTreeMap<CellId, CellInfo> =
            cells.into_iter().map(|c| (c.id.clone(), c)).collect();
        let shards = cells
            .keys()
            .map(|id| {
                let shard = ShardInfo {
                    id: ShardId::own(id),
                    primary: id.clone(),
                    backup: backups.get(id).cloned(),
                    position: 0,
                };
                (shard.id.clone(), shard)
            })
            .collect();
        let map = CellMap {
            version: 1,
            cells,
            shards,
            slots: owners
                .iter()
                .map(|cell| SlotOwner {
                    shard: ShardId::own(cell),
                    epoch: Epoch(1),
                })
                .collect(),
        };
        map.validate()?;
        Ok(map)
    }

    /// The slot's shard and epoch.
    pub fn owner(&self, slot: Slot) -> &SlotOwner {
        &self.slots[slot.index()]
    }

    pub fn cell(&self, id: &CellId) -> Option<&CellInfo> {
        self.cells.get(id)
    }

    pub fn shard(&self, id: &ShardId) -> Option<&ShardInfo> {
        self.shards.get(id)
    }

    /// The cell serving `slot`: its shard's primary (a valid map always has one).
    pub fn serving(&self, slot: Slot) -> &CellId {
        &self.shards[&self.owner(slot).shard].primary
    }

    /// The serving cell's entry for `slot`.
    pub fn serving_cell(&self, slot: Slot) -> Option<&CellInfo> {
        self.cells.get(self.serving(slot))
    }

    /// Whether `cell` serves `slot` from `shard`: the slot lives in that shard and the shard's
    /// primary is that cell. The one rule for "this process writes that slot".
    pub fn serves_from(&self, slot: Slot, cell: &CellId, shard: &ShardId) -> bool {
        &self.owner(slot).shard == shard && self.serving(slot) == cell
    }

    /// The slots in a shard, in order.
    pub fn slots_in<'a>(&'a self, shard: &'a ShardId) -> impl Iterator<Item = Slot> + 'a {
        Slot::all().filter(move |s| &self.owner(*s).shard == shard)
    }

    /// The slots a cell serves (those of every shard it is the primary of), in order.
    pub fn slots_served_by<'a>(&'a self, cell: &'a CellId) -> impl Iterator<Item = Slot> + 'a {
        Slot::all().filter(move |s| self.serving(*s) == cell)
    }

    /// The shards a cell is the primary of.
    pub fn shards_served_by<'a>(
        &'a self,
        cell: &'a CellId,
    ) -> impl Iterator<Item = &'a ShardInfo> + 'a {
        self.shards.values().filter(move |s| &s.primary == cell)
    }

    /// The shards a cell hosts the replica of.
    pub fn shards_backed_up_by<'a>(
        &'a self,
        cell: &'a CellId,
    ) -> impl Iterator<Item = &'a ShardInfo> + 'a {
        self.shards
            .values()
            .filter(move |s| s.backup.as_ref() == Some(cell))
    }

    /// The epoch of a shard: the highest epoch among its slots (0 when it has none). Any
    /// takeover of the shard or move of one of its slots raises it, so a grant made at one
    /// shard epoch (raft-meta's "run alone" grant, DESIGN §6.3) lapses when ownership moves.
    pub fn shard_epoch(&self, shard: &ShardId) -> Epoch {
        self.slots
            .iter()
            .filter(|o| &o.shard == shard)
            .map(|o| o.epoch)
            .max()
            .unwrap_or_default()
    }

    /// Checks the invariants every map must hold; a map that fails is never served: every
    /// slot in a known shard, every shard served by a known cell and backed up, if at all,
    /// by another known cell in another region.
    pub fn validate(&self) -> Result<(), MapError> {
        if self.slots.len() != usize::from(SLOT_COUNT) {
            return Err(MapError::SlotCount(self.slots.len()));
        }
        for (n, owner) in self.slots.iter().enumerate() {
            if !self.shards.contains_key(&owner.shard) {
                return Err(MapError::UnknownShard {
                    slot: n as u16,
                    shard: owner.shard.to_string(),
                });
            }
        }
        check_shards(&self.cells, &self.shards)
    }
}

/// The shard rules of [`CellMap::validate`], for a state that has no slot table yet: every
/// shard served by a known cell and backed up, if at all, by another known cell in another
/// region.
pub fn check_shards(
    cells: &BTreeMap<CellId, CellInfo>,
    shards: &BTreeMap<ShardId, ShardInfo>,
) -> Result<(), MapError> {
    for (key, shard) in shards {
        if key != &shard.id {
            return Err(MapError::ShardKey {
                key: key.to_string(),
                shard: shard.id.to_string(),
            });
        }
        let Some(primary) = cells.get(&shard.primary) else {
            return Err(MapError::UnknownPrimary {
                shard: shard.id.to_string(),
                cell: shard.primary.to_string(),
            });
        };
        let Some(backup_id) = &shard.backup else {
            continue;
        };
        if backup_id == &shard.primary {
            return Err(MapError::SelfBackup(shard.id.to_string()));
        }
        let backup = cells
            .get(backup_id)
            .ok_or_else(|| MapError::UnknownBackup {
                shard: shard.id.to_string(),
                backup: backup_id.to_string(),
            })?;
        if backup.region == primary.region {
            return Err(MapError::BackupSameRegion {
                shard: shard.id.to_string(),
                primary: primary.id.to_string(),
                backup: backup_id.to_string(),
                region: primary.region.to_string(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cell(s: &str) -> CellId {
        CellId::parse(s).unwrap()
    }

    fn info(id: &str, region: &str) -> CellInfo {
        CellInfo {
            id: cell(id),
            region: Region::parse(region).unwrap(),
            url: format!("http://127.0.0.1/{id}"),
            status: CellStatus::Active,
        }
    }

    #[test]
    fn single_map_round_trips_through_json() {
        let map = CellMap::single(info("c1", "east"));
        let text = serde_json::to_string(&map).unwrap();
        let back: CellMap = serde_json::from_str(&text).unwrap();
        assert_eq!(back, map);
        assert_eq!(back.slots_served_by(&cell("c1")).count(), 1024);
        let shard = ShardId::own(&cell("c1"));
        assert_eq!(back.slots_in(&shard).count(), 1024);
        assert_eq!(back.shard_epoch(&shard), Epoch(1));
    }

    #[test]
    fn invalid_maps_are_refused() {
        let mut map = CellMap::single(info("c1", "east"));
        map.slots.pop();
        assert_eq!(map.validate(), Err(MapError::SlotCount(1023)));

        let same_region = vec![info("c1", "east"), info("c2", "east")];
        let owners = vec![cell("c1"); 1024];
        let c1_to_c2 = BTreeMap::from([(cell("c1"), cell("c2"))]);
        assert!(matches!(
            CellMap::from_assignment(same_region, owners.clone(), &c1_to_c2),
            Err(MapError::BackupSameRegion { .. })
        ));
        let ok = vec![info("c1", "east"), info("c2", "west")];
        let both = BTreeMap::from([(cell("c1"), cell("c2")), (cell("c2"), cell("c1"))]);
        let map = CellMap::from_assignment(ok, owners, &both).unwrap();
        assert_eq!(map.shards_backed_up_by(&cell("c2")).count(), 1);

        let mut orphan = map.clone();
        orphan.shards.remove(&ShardId::own(&cell("c1")));
        assert!(matches!(
            orphan.validate(),
            Err(MapError::UnknownShard { slot: 0, .. })
        ));
        let mut self_backup = map.clone();
        let c1 = ShardId::own(&cell("c1"));
        self_backup.shards.get_mut(&c1).unwrap().backup = Some(cell("c1"));
        assert_eq!(
            self_backup.validate(),
            Err(MapError::SelfBackup("c1".into()))
        );

        let text = r#"{"version":1,"cells":{},"slots":[]}"#;
        assert!(serde_json::from_str::<CellMap>(text).is_err());
        assert!(CellId::parse("C1").is_err());
        assert!(CellId::parse("").is_err());
    }

    /// A map persisted before shards (slots name cells, cells name their backup) loads as the
    /// same ownership: each cell's own shard, backed up where the cell said.
    #[test]
    fn maps_from_before_shards_are_migrated_on_load() {
        let slots: Vec<String> = (0..1024)
            .map(|n| {
                let (c, e) = if n % 2 == 0 { ("c1", 1) } else { ("c2", 3) };
                format!(r#"{{"cell":"{c}","epoch":{e}}}"#)
            })
            .collect();
        let text = format!(
            concat!(
                r#"{{"version":7,"cells":{{"#,
                r#""c1":{{"id":"c1","region":"east","url":"http://127.0.0.1:1","status":"active","backup":"c2"}},"#,
                r#""c2":{{"id":"c2","region":"west","url":"http://127.0.0.1:2","status":"active","backup":null}}}},"#,
                r#""slots":[{}]}}"#
            ),
            slots.join(",")
        );
        let map: CellMap = serde_json::from_str(&text).unwrap();
        let (c1, c2) = (ShardId::own(&cell("c1")), ShardId::own(&cell("c2")));
        assert_eq!(map.shards[&c1].primary, cell("c1"));
        assert_eq!(map.shards[&c1].backup, Some(cell("c2")));
        assert_eq!(map.shards[&c2].backup, None);
        assert_eq!(map.slots_in(&c1).count(), 512);
        assert_eq!(map.shard_epoch(&c2), Epoch(3));
        assert_eq!(map.serving(Slot::new(1).unwrap()), &cell("c2"));
        // It is written back in the new form, which loads to the same map.
        let again: CellMap = serde_json::from_str(&serde_json::to_string(&map).unwrap()).unwrap();
        assert_eq!(again, map);
        assert!(!serde_json::to_string(&map).unwrap().contains(r#""cell":"#));
    }

    /// A shard served by another cell than the one of its name (after a takeover): slots
    /// follow the shard, not the name.
    #[test]
    fn a_cell_may_serve_another_shard() {
        let cells = vec![info("c1", "east"), info("c2", "west")];
        let owners: Vec<CellId> = (0..1024)
            .map(|n| cell(if n < 300 { "c1" } else { "c2" }))
            .collect();
        let mut map = CellMap::from_assignment(cells, owners, &BTreeMap::new()).unwrap();
        let c1 = ShardId::own(&cell("c1"));
        map.shards.get_mut(&c1).unwrap().primary = cell("c2");
        map.validate().unwrap();
        assert_eq!(map.slots_served_by(&cell("c2")).count(), 1024);
        assert_eq!(map.slots_served_by(&cell("c1")).count(), 0);
        assert_eq!(map.shards_served_by(&cell("c2")).count(), 2);
        assert_eq!(map.slots_in(&c1).count(), 300);
    }
}

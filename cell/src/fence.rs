//! Fencing inside the write transaction (DESIGN §6.4; Kleppmann's fencing tokens, Neon's
//! generations): the map a cell follows can be stale, so ownership checked when a request
//! enters is not enough. The shard itself says, per slot, the epoch it is held at
//! (`slot_epochs`, bumped by a takeover or a slot move), and every write checks it.
//!
//! Invariant: a write transaction that writes rows of slot `s` carries the epoch `E` this
//! cell's map gave for `s` when the request (or sweep pass, or claim batch) started — a
//! [`Fence`] — and commits only if, inside that transaction and before its commit, the
//! shard's `slot_epochs` row for `s` exists with epoch exactly `E`. The row is read
//! `FOR SHARE` on Postgres (SQLite has one writer), so a concurrent bump waits for the write
//! to commit, or the write sees the bump and rolls back. So once the shard's epoch of `s`
//! has moved past `E`, nothing written under `E` ever commits again.
//!
//! A missing row means "not held by this shard": the cell raises its shard's epochs to its
//! map's synchronously before it serves (at start-up, and before a new map from raft-meta
//! is installed), so a slot this cell owns always has its row by the time a write comes.
//!
//! This module holds the rule and its error; the SQL is `store/fence.rs`. At the HTTP edge a
//! [`FenceError`] is a 421 `stale_epoch` (`api/error.rs`); in workers the item is skipped,
//! logged and counted (`redcell_fenced_writes_total`), and is not retried until the map or
//! the shard changes.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use topology::{CellId, CellMap, ShardId, Slot, SlotOwner, SLOT_COUNT};

/// Why a write was refused by the fence.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FenceError {
    /// The shard holds the slot at another epoch than this cell's map: one of them is stale
    /// (a takeover or move happened that this cell's map does not know yet).
    #[error(
        "slot {slot} moved on: this cell's map gives epoch {map_epoch}, the shard holds it at epoch {shard_epoch}"
    )]
    StaleEpoch {
        slot: i64,
        map_epoch: i64,
        shard_epoch: i64,
    },
    /// The shard has no epoch for the slot: it does not hold it.
    #[error("slot {slot} is not held by this shard (this cell's map gives epoch {map_epoch})")]
    NotHeld { slot: i64, map_epoch: i64 },
    /// This cell's map (when the write started) does not give the slot to this cell.
    #[error("slot {slot} is not this cell's in its map")]
    NotOwned { slot: i64 },
    /// This cell has no map yet: it owns nothing.
    #[error("this cell has no map yet")]
    NoMap,
}

/// The epochs a write may commit under: this cell's map as it was when the request, sweep
/// pass or claim batch started. Cheap to clone (the map is shared).
#[derive(Clone, Debug)]
pub struct Fence {
    me: CellId,
    /// The shard the write goes to: a slot is writable only if the map puts it in this shard
    /// and makes this cell the shard's primary.
    shard: ShardId,
    map: Option<Arc<CellMap>>,
}

impl Fence {
    pub fn new(me: CellId, shard: ShardId, map: Option<Arc<CellMap>>) -> Fence {
        Fence { me, shard, map }
    }

    /// The slot's entry when the map puts it in this fence's shard, served by this cell.
    fn held_here<'a>(&self, map: &'a CellMap, slot: Slot) -> Option<&'a SlotOwner> {
        map.serves_from(slot, &self.me, &self.shard)
            .then(|| map.owner(slot))
    }

    /// The epoch this cell's map gives for `slot`, if the map gives the slot to this cell.
    pub fn map_epoch(&self, slot: i64) -> Result<i64, FenceError> {
        let map = self.map.as_ref().ok_or(FenceError::NoMap)?;
        let owner = u16::try_from(slot)
            .ok()
            .and_then(Slot::new)
            .and_then(|s| self.held_here(map, s))
            .ok_or(FenceError::NotOwned { slot })?;
        Ok(owner.epoch.0 as i64)
    }

    /// The rule: `slot` may be written when the map gives it to this cell at the very epoch
    /// the shard holds it at (`shard_epoch`, `None` when the shard has no row for it).
    pub fn judge(&self, slot: i64, shard_epoch: Option<i64>) -> Result<(), FenceError> {
        let map_epoch = self.map_epoch(slot)?;
        match shard_epoch {
            Some(e) if e == map_epoch => Ok(()),
            Some(shard_epoch) => Err(FenceError::StaleEpoch {
                slot,
                map_epoch,
                shard_epoch,
            }),
            None => Err(FenceError::NotHeld { slot, map_epoch }),
        }
    }

    /// `(slot, epoch)` of every slot the map gives this cell: what the shard must hold.
    pub fn owned_epochs(&self) -> Vec<(i64, i64)> {
        let Some(map) = &self.map else {
            return Vec::new();
        };
        Slot::all()
            .filter_map(|slot| self.held_here(map, slot).map(|o| (slot, o)))
            .map(|(slot, o)| (i64::from(slot.get()), o.epoch.0 as i64))
            .collect()
    }

    /// The slots a sweep may touch: owned by this cell in its map at the epoch the shard
    /// holds (`shard`: the shard's `slot_epochs`). A sweep selects only rows of these, so
    /// fenced slots' rows are never picked up (and cannot crowd out the others); each write
    /// is still checked in its transaction, in case an epoch moves during the pass.
    pub fn live_slots(&self, shard: &HashMap<i64, i64>) -> LiveSlots {
        let slots: BTreeSet<i64> = self
            .owned_epochs()
            .into_iter()
            .filter(|(slot, epoch)| shard.get(slot) == Some(epoch))
            .map(|(slot, _)| slot)
            .collect();
        LiveSlots { slots }
    }
}

/// The slots a sweep may touch this pass (see [`Fence::live_slots`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LiveSlots {
    slots: BTreeSet<i64>,
}

impl LiveSlots {
    /// Every slot is live (the lone cell's common case): no filter is needed.
    pub fn all(&self) -> bool {
        self.slots.len() == usize::from(SLOT_COUNT)
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    pub fn contains(&self, slot: i64) -> bool {
        self.slots.contains(&slot)
    }

    pub fn iter(&self) -> impl Iterator<Item = i64> + '_ {
        self.slots.iter().copied()
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }
}

/// Logs and counts a worker's write the fence refused. The item stays as it is; the sweep
/// does not pick it up again while its slot is fenced (it is not live).
pub fn skipped(worker: &'static str, item: &str, e: &FenceError) {
    metrics::counter!("redcell_fenced_writes_total", "worker" => worker).increment(1);
    tracing::warn!(worker, item, error = %e, "write refused by the fence; item skipped");
}

#[cfg(test)]
mod tests {
    use super::*;
    use topology::{CellInfo, CellStatus, Epoch, Region};

    fn fence() -> Fence {
        let me = CellId::parse("c1").unwrap();
        let info = CellInfo {
            id: me.clone(),
            region: Region::parse("local").unwrap(),
            url: "http://x".into(),
            status: CellStatus::Active,
        };
        let mut map = CellMap::single(info);
        map.slots[7].epoch = Epoch(3);
        Fence::new(me.clone(), ShardId::own(&me), Some(Arc::new(map)))
    }

    #[test]
    fn the_shard_must_hold_the_slot_at_the_maps_epoch() {
        let f = fence();
        assert_eq!(f.judge(7, Some(3)), Ok(()));
        assert_eq!(
            f.judge(7, Some(4)),
            Err(FenceError::StaleEpoch {
                slot: 7,
                map_epoch: 3,
                shard_epoch: 4
            })
        );
        assert_eq!(
            f.judge(7, None),
            Err(FenceError::NotHeld {
                slot: 7,
                map_epoch: 3
            })
        );
        assert_eq!(
            f.judge(5000, Some(1)),
            Err(FenceError::NotOwned { slot: 5000 })
        );
        let c1 = CellId::parse("c1").unwrap();
        let none = Fence::new(c1.clone(), ShardId::own(&c1), None);
        assert_eq!(none.judge(1, Some(1)), Err(FenceError::NoMap));
    }

    #[test]
    fn live_slots_leave_out_fenced_ones() {
        let f = fence();
        let mut shard: HashMap<i64, i64> = (0..1024).map(|s| (s, 1)).collect();
        shard.insert(7, 3);
        assert!(f.live_slots(&shard).all());
        shard.insert(7, 4);
        shard.remove(&9);
        let live = f.live_slots(&shard);
        assert!(!live.all() && !live.contains(7) && !live.contains(9) && live.contains(8));
        assert_eq!(live.len(), 1022);
    }
}

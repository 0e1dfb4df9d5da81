//! One shard's view of the map. The cell never decides ownership: it reads the map (static
//! `--map`, raft-meta's watch, or its lone default); every shard this process serves has an
//! [`Ownership`] naming it, and all of them share one installed map, so a new map reaches
//! every shard at once. Which shard a request goes to is `shards.rs`'s (slot → shard →
//! the shard this process serves, or 421/503).

use std::sync::{Arc, RwLock};

use axum::http::StatusCode;
use topology::{CellId, CellInfo, CellMap, CellStatus, Epoch, Region, ShardId, Slot};
use wire::WrongCell;

use crate::api::error::ApiError;
use crate::fence::Fence;

pub struct Ownership {
    me: CellId,
    /// The shard this view is for: the cell's own at first, or one it took over.
    shard: ShardId,
    /// Shared by every shard of the process. Swapped whole when a new map arrives; readers
    /// clone the `Arc` and never block writers. `None` until the first map arrives (only
    /// with `--meta` and nothing persisted): then the cell serves nothing.
    map: Arc<RwLock<Option<Arc<CellMap>>>>,
}

impl Ownership {
    pub fn new(me: CellId, map: Option<CellMap>) -> Ownership {
        Ownership {
            shard: ShardId::own(&me),
            me,
            map: Arc::new(RwLock::new(map.map(Arc::new))),
        }
    }

    /// The same cell and map, for another shard.
    pub fn for_shard(&self, shard: ShardId) -> Ownership {
        Ownership {
            me: self.me.clone(),
            shard,
            map: self.map.clone(),
        }
    }

    /// The map of a lone cell that owns every slot.
    pub fn alone(me: CellId, url: String) -> Ownership {
        let info = CellInfo {
            id: me.clone(),
            region: Region::parse("local").expect("'local' is a valid region"),
            url,
            status: CellStatus::Active,
        };
        Ownership::new(me, Some(CellMap::single(info)))
    }

    pub fn map(&self) -> Option<Arc<CellMap>> {
        self.map.read().expect("map lock poisoned").clone()
    }

    /// Takes a newer map; an older or equal version is ignored (watches may repeat).
    pub fn update(&self, map: CellMap) -> bool {
        let mut current = self.map.write().expect("map lock poisoned");
        if current.as_ref().is_some_and(|m| m.version >= map.version) {
            return false;
        }
        *current = Some(Arc::new(map));
        true
    }

    /// The shard `slot` is served from here: `Ok(shard)` when the map makes this cell the
    /// primary of the slot's shard (at `epoch` too, when the caller says which epoch it
    /// routed by: a mismatch means one of us holds a stale map); otherwise 421 naming the
    /// cell that serves it. Whether this process holds that shard is `Shards`' question.
    pub fn route_at(&self, slot: Slot, epoch: Option<Epoch>) -> Result<ShardId, ApiError> {
        let Some(map) = self.map() else {
            return Err(ApiError::unavailable("this cell has no map yet"));
        };
        let owner = map.owner(slot);
        let serving = map.serving(slot);
        if serving == &self.me && epoch.is_none_or(|e| e == owner.epoch) {
            return Ok(owner.shard.clone());
        }
        let url = map.cell(serving).map(|c| c.url.clone());
        let mut err = ApiError::new(
            StatusCode::MISDIRECTED_REQUEST,
            "wrong_cell",
            format!(
                "slot {slot} is in shard {}, served by cell {} at epoch {} (map version {})",
                owner.shard, serving, owner.epoch, map.version
            ),
        );
        let hint = WrongCell {
            slot,
            owner: serving.clone(),
            owner_url: url,
            epoch: Some(owner.epoch),
        };
        err.extra = Some(serde_json::to_value(hint).expect("a 421 hint always serializes"));
        Err(err)
    }

    /// Where work for `slot` goes, by slot → shard → serving cell: `None` when its shard is
    /// the one this process holds and the map makes this cell its primary, otherwise the
    /// serving cell and its URL (which may be this cell's own, for a shard it serves but this
    /// process does not hold: that cell answers 503 until it does). `None` without a map.
    pub fn peer_for(&self, map: &CellMap, slot: Slot) -> Option<(CellId, String)> {
        if map.serves_from(slot, &self.me, &self.shard) {
            return None;
        }
        let serving = map.serving(slot);
        let url = map.cell(serving).map(|c| c.url.clone()).unwrap_or_default();
        Some((serving.clone(), url))
    }

    /// The epochs a write starting now may commit under (see `crate::fence`): this map, as
    /// it is now, whatever later updates bring.
    pub fn fence(&self) -> Fence {
        Fence::new(self.me.clone(), self.shard.clone(), self.map())
    }

    /// As [`fence`](Self::fence), under `map` instead of the one installed.
    pub fn fence_with(&self, map: Arc<CellMap>) -> Fence {
        Fence::new(self.me.clone(), self.shard.clone(), Some(map))
    }

    pub fn cell_id(&self) -> &CellId {
        &self.me
    }

    /// The shard this process holds (its own).
    pub fn shard(&self) -> &ShardId {
        &self.shard
    }

    /// The cell that backs up this process's shard, per the map as it is now.
    pub fn backup(&self) -> Option<CellId> {
        self.map()?.shard(&self.shard)?.backup.clone()
    }

    /// Whether the map as it is now makes this cell the primary of this shard.
    pub fn is_primary(&self) -> bool {
        self.map()
            .and_then(|m| m.shard(&self.shard).map(|s| s.primary == self.me))
            .unwrap_or(false)
    }

    /// This shard's epoch per the map as it is now (0 without a map).
    pub fn shard_epoch(&self) -> Epoch {
        self.map()
            .map(|m| m.shard_epoch(&self.shard))
            .unwrap_or_default()
    }
}

//! Which slots this cell serves. The cell never decides ownership: it reads the map (static
//! `--map`, raft-meta's watch, or its lone default) and refuses every request for a slot it
//! does not own at the epoch it knows, whatever the router says (fencing).

use std::sync::{Arc, RwLock};

use axum::http::StatusCode;
use topology::{CellId, CellInfo, CellMap, CellStatus, Epoch, Region, Slot};
use wire::WrongCell;

use crate::api::error::ApiError;
use crate::fence::Fence;

pub struct Ownership {
    me: CellId,
    /// Swapped whole when a new map arrives; readers clone the `Arc` and never block
    /// writers. `None` until the first map arrives (only with `--meta` and nothing persisted):
    /// then the cell serves nothing.
    map: RwLock<Option<Arc<CellMap>>>,
}

impl Ownership {
    pub fn new(me: CellId, map: Option<CellMap>) -> Ownership {
        Ownership {
            me,
            map: RwLock::new(map.map(Arc::new)),
        }
    }

    /// The map of a lone cell that owns every slot.
    pub fn alone(me: CellId, url: String) -> Ownership {
        let info = CellInfo {
            id: me.clone(),
            region: Region::parse("local").expect("'local' is a valid region"),
            url,
            status: CellStatus::Active,
            backup: None,
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

    /// Ok when this cell owns `slot`; otherwise 421 naming the owner.
    pub fn check(&self, slot: Slot) -> Result<(), ApiError> {
        self.check_at(slot, None)
    }

    /// As [`check`](Self::check), and when the caller (the router) says which epoch it
    /// routed by, that epoch must be ours too: a mismatch means one of us holds a stale map.
    pub fn check_at(&self, slot: Slot, epoch: Option<Epoch>) -> Result<(), ApiError> {
        let Some(map) = self.map() else {
            return Err(ApiError::unavailable("this cell has no map yet"));
        };
        let owner = map.owner(slot);
        if owner.cell == self.me && epoch.is_none_or(|e| e == owner.epoch) {
            return Ok(());
        }
        let url = map.cell(&owner.cell).map(|c| c.url.clone());
        let mut err = ApiError::new(
            StatusCode::MISDIRECTED_REQUEST,
            "wrong_cell",
            format!(
                "slot {slot} is owned by cell {} at epoch {} (map version {})",
                owner.cell, owner.epoch, map.version
            ),
        );
        let hint = WrongCell {
            slot,
            owner: owner.cell.clone(),
            owner_url: url,
            epoch: Some(owner.epoch),
        };
        err.extra = Some(serde_json::to_value(hint).expect("a 421 hint always serializes"));
        Err(err)
    }

    /// The epochs a write starting now may commit under (see `crate::fence`): this map, as
    /// it is now, whatever later updates bring.
    pub fn fence(&self) -> Fence {
        Fence::new(self.me.clone(), self.map())
    }

    pub fn cell_id(&self) -> &CellId {
        &self.me
    }
}

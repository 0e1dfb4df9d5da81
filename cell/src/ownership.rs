//! Which slots this cell serves. The cell never decides ownership: it reads the map
//! (static `--map`, or its lone default) and refuses every request for a slot it does not
//! own, whatever the router says (fencing).

use std::sync::{Arc, RwLock};

use axum::http::StatusCode;
use serde_json::json;
use topology::{CellId, CellInfo, CellMap, CellStatus, Region, Slot};

use crate::api::error::ApiError;

pub struct Ownership {
    me: CellId,
    /// Swapped whole when a new map arrives; readers clone the `Arc` and never block writers.
    map: RwLock<Arc<CellMap>>,
}

impl Ownership {
    pub fn new(me: CellId, map: CellMap) -> Ownership {
        Ownership {
            me,
            map: RwLock::new(Arc::new(map)),
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
        Ownership::new(me, CellMap::single(info))
    }

    pub fn map(&self) -> Arc<CellMap> {
        self.map.read().expect("map lock poisoned").clone()
    }

    /// Ok when this cell owns `slot`; otherwise 421 naming the owner.
    pub fn check(&self, slot: Slot) -> Result<(), ApiError> {
        let map = self.map();
        let owner = map.owner(slot);
        if owner.cell == self.me {
            return Ok(());
        }
        let url = map.cell(&owner.cell).map(|c| c.url.clone());
        let mut err = ApiError::new(
            StatusCode::MISDIRECTED_REQUEST,
            "wrong_cell",
            format!(
                "slot {slot} is owned by cell {} at epoch {}",
                owner.cell, owner.epoch
            ),
        );
        err.extra = Some(
            json!({"slot": slot, "owner": owner.cell, "owner_url": url, "epoch": owner.epoch}),
        );
        Err(err)
    }

    pub fn cell_id(&self) -> &CellId {
        &self.me
    }
}

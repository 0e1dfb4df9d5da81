//! The map JSON: what raft-meta serves (`GET /v1/map`, the watch) and cells and routers
//! persist (`map.json`), the map alone, raft-meta's snapshot of its state, and its log
//! entries (commands, also the body of `/internal/leader-op`). The first byte picks the
//! form, the rest is the JSON. Parsing never panics; a map that parses is valid (every slot
//! in a known shard served by a known cell) and answers every query about it; everything
//! that parses survives printing and parsing again unchanged.

use std::collections::BTreeMap;

use raft_meta::state::{Command, MetaState};
use serde::de::DeserializeOwned;
use serde::Serialize;
use topology::{CellMap, Slot};
use wire::MapView;

/// Printed and parsed again, `value` is itself.
fn round_trip<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(value: &T) {
    let text = serde_json::to_string(value).unwrap();
    let again: T = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    assert_eq!(&again, value);
}

fn queries(map: &CellMap) {
    map.validate().unwrap();
    let mut epochs = BTreeMap::new();
    for slot in Slot::all() {
        let owner = map.owner(slot);
        let shard = map.shard(&owner.shard).expect("a slot's shard is known");
        let cell = map.serving_cell(slot).expect("a slot's cell is known");
        assert_eq!(&cell.id, map.serving(slot));
        assert_eq!(shard.primary, cell.id);
        assert!(map.serves_from(slot, &cell.id, &shard.id));
        let epoch = epochs
            .entry(&shard.id)
            .or_insert_with(|| map.shard_epoch(&shard.id));
        assert!(*epoch >= owner.epoch);
    }
    let mut served = 0;
    for id in map.cells.keys() {
        for shard in map.shards_served_by(id) {
            assert_eq!(&shard.primary, id);
        }
        let _ = map.shards_backed_up_by(id).count();
        served += map.slots_served_by(id).count();
    }
    assert_eq!(served, Slot::all().count());
}

/// The target: panics (an assertion) on an input that breaks what the module says.
pub fn check(data: &[u8]) {
    let Some((&which, json)) = data.split_first() else {
        return;
    };
    match which % 4 {
        0 => {
            let Ok(view) = serde_json::from_slice::<MapView>(json) else {
                return;
            };
            if let Some(map) = &view.map {
                queries(map);
            }
            round_trip(&view);
        }
        1 => {
            let Ok(map) = serde_json::from_slice::<CellMap>(json) else {
                return;
            };
            queries(&map);
            round_trip(&map);
        }
        2 => {
            let Ok(state) = serde_json::from_slice::<MetaState>(json) else {
                return;
            };
            round_trip(&state);
        }
        _ => {
            let Ok(cmd) = serde_json::from_slice::<Command>(json) else {
                return;
            };
            let _ = cmd.check_shape();
            round_trip(&cmd);
        }
    }
}

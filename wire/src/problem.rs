//! problem+json bodies (RFC 9457) that one process parses from another.

use serde::{Deserialize, Serialize};
use topology::{CellId, Epoch, Slot};

/// A problem+json body as raft-meta writes it; also what its client library and its
/// forwarding to the leader parse back. Members in this order: `type`, `title`, `status`,
/// `code`, `detail`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    /// The stable code callers match on (`stale_epoch`, `no_leader`, …).
    pub code: String,
    pub detail: String,
}

/// The members a cell adds to its `421 wrong_cell` problem: who owns the slot, as this cell's
/// map says. The router reads `owner` (and `epoch`) to retry once on the right cell.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WrongCell {
    pub slot: Slot,
    pub owner: CellId,
    /// The owner's URL; `null` when the owner is not in the cell's map.
    pub owner_url: Option<String>,
    /// The epoch the owner holds the slot at. Always written by cells; optional when read, so
    /// that a hint without it still names the owner.
    #[serde(default)]
    pub epoch: Option<Epoch>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problem_round_trips_byte_for_byte() {
        let text = r#"{"type":"https://redcell.dev/problems/stale_epoch","title":"Conflict","status":409,"code":"stale_epoch","detail":"epoch 3 is not the shard's epoch 4"}"#;
        let problem: Problem = serde_json::from_str(text).unwrap();
        assert_eq!(problem.kind, "https://redcell.dev/problems/stale_epoch");
        assert_eq!(problem.status, 409);
        assert_eq!(problem.code, "stale_epoch");
        assert_eq!(serde_json::to_string(&problem).unwrap(), text);
    }

    #[test]
    fn wrong_cell_round_trips_and_reads_without_epoch() {
        let text = r#"{"slot":7,"owner":"c2","owner_url":"http://127.0.0.1:7002","epoch":3}"#;
        let hint: WrongCell = serde_json::from_str(text).unwrap();
        assert_eq!(hint.slot.get(), 7);
        assert_eq!(hint.owner.as_str(), "c2");
        assert_eq!(hint.epoch, Some(Epoch(3)));
        assert_eq!(serde_json::to_string(&hint).unwrap(), text);

        let unknown = r#"{"slot":7,"owner":"c9","owner_url":null,"epoch":1}"#;
        let hint: WrongCell = serde_json::from_str(unknown).unwrap();
        assert_eq!(hint.owner_url, None);
        assert_eq!(serde_json::to_string(&hint).unwrap(), unknown);

        let bare: WrongCell = serde_json::from_str(r#"{"slot":7,"owner":"c2"}"#).unwrap();
        assert_eq!(bare.epoch, None);
        assert!(serde_json::from_str::<WrongCell>(r#"{"slot":7,"owner":"Not A Cell"}"#).is_err());
    }
}

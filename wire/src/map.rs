//! The map as raft-meta publishes it (`GET /v1/map`, the watch) and as cells and routers
//! persist it, with the per-cell settings that travel with it.
//!
//! These types are also fields of raft-meta's replicated state, so their JSON is in Raft
//! snapshots on disk too: a field added here needs `#[serde(default)]`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use topology::{CellId, CellMap, ShardId};

/// A named on/off flag read by routers for degradation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Switch {
    pub on: bool,
    pub message: String,
    /// The map version at which this switch last changed.
    pub version: u64,
}

/// What a cell does when its backup is unreachable (DESIGN.md §6).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum BackupUnreachable {
    /// Refuse money-moving writes until the backup is back.
    #[default]
    RefuseWrites,
    /// Keep serving asynchronously and raise an alarm.
    GoAsync,
}

/// A shard's failover policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct FailoverPolicy {
    /// Whether raft-meta may fail this shard over on its own when the detector says its
    /// primary is `down`.
    #[serde(default)]
    pub auto_failover: bool,
    #[serde(default)]
    pub on_backup_unreachable: BackupUnreachable,
}

/// What the failure detector believes of a cell. Only changes are written to the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Liveness {
    Alive,
    Suspect,
    Down,
}

/// A Raft-committed permission for a cell's shard to acknowledge money writes without its
/// backup (DESIGN.md §6.3, "Going asynchronous" in FAILOVER-LESSONS.md).
///
/// **Invariants** (kept by raft-meta's apply, see `raft-meta/src/state/alone.rs`): a grant
/// exists only for a shard whose policy says `go_async`, and only at the shard's current
/// epoch (`CellMap::shard_epoch`); the apply that moves the epoch on or sets the policy back
/// to refuse drops it. While it stands, raft-meta does not fail the shard over
/// automatically: the backup lacks acknowledged data.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AloneGrant {
    /// The shard epoch the grant was made at; the cell may acknowledge alone only for writes
    /// at this epoch.
    pub epoch: u64,
    /// The map version that committed the grant (its identity: a later grant, even at the
    /// same epoch after a withdrawal, has another).
    pub since_version: u64,
    /// The shard's backup when the grant was made: the one its primary could not reach.
    /// Re-protection never chooses it again for this grant.
    #[serde(default)]
    pub backup_at_grant: Option<CellId>,
    /// The backup re-protection named for this grant (`None` until it has). The grant stays
    /// until the primary withdraws it, once that backup has caught up.
    #[serde(default)]
    pub reprotected_to: Option<CellId>,
}

/// Why a shard moved to its backup (DESIGN §6.5).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailoverKind {
    /// An operator's switchover: the primary paused and the backup caught up first; the old
    /// primary becomes the backup.
    Planned,
    /// An operator's move away from a primary that is dead or cut off; the backup promotes
    /// what it durably has; the old primary serves nothing until rebuilt.
    Emergency,
    /// The leader's own emergency failover, after the detector saw the primary down.
    Automatic,
}

/// The last failover of a shard, as raft-meta committed it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailoverRecord {
    pub kind: FailoverKind,
    /// The cell that served the shard before, and the one that serves it since.
    pub from: CellId,
    pub to: CellId,
    /// The epoch every slot of the shard holds since the move.
    pub epoch: u64,
    /// The map version that committed it.
    pub version: u64,
    /// The proposer's wall clock at the decision, in milliseconds since the Unix epoch.
    pub at_ms: u64,
}

/// The public JSON form of one version of raft-meta's state (`GET /v1/map`, watch), and what
/// cells and routers persist as their last map (`map.json`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MapView {
    pub version: u64,
    /// `null` until the first cell registers.
    pub map: Option<CellMap>,
    pub switches: BTreeMap<String, Switch>,
    /// Failover policies by shard (keyed by cell before shards: the same names).
    pub policies: BTreeMap<ShardId, FailoverPolicy>,
    pub liveness: BTreeMap<CellId, Liveness>,
    /// Shards running alone under a grant (absent from older nodes' answers).
    #[serde(default)]
    pub alone: BTreeMap<ShardId, AloneGrant>,
    /// The last failover of each shard that has had one (absent from older nodes' answers).
    #[serde(default)]
    pub failovers: BTreeMap<ShardId, FailoverRecord>,
    /// The payment-provider breaker's thresholds, for every cell (absent from older nodes'
    /// answers: the defaults).
    #[serde(default)]
    pub breaker: crate::BreakerPolicy,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> CellId {
        CellId::parse(s).unwrap()
    }

    /// Asserts `text` parses into `expected` and serializes back to exactly `text`.
    fn round_trip<T>(text: &str, expected: &T)
    where
        T: Serialize + for<'de> Deserialize<'de> + PartialEq + std::fmt::Debug,
    {
        let parsed: T = serde_json::from_str(text).unwrap();
        assert_eq!(&parsed, expected);
        assert_eq!(serde_json::to_string(&parsed).unwrap(), text);
    }

    #[test]
    fn switch() {
        round_trip(
            r#"{"on":false,"message":"maintenance","version":4}"#,
            &Switch {
                on: false,
                message: "maintenance".into(),
                version: 4,
            },
        );
    }

    #[test]
    fn backup_unreachable_and_policy() {
        round_trip(r#""refuse_writes""#, &BackupUnreachable::RefuseWrites);
        round_trip(r#""go_async""#, &BackupUnreachable::GoAsync);
        round_trip(
            r#"{"auto_failover":true,"on_backup_unreachable":"go_async"}"#,
            &FailoverPolicy {
                auto_failover: true,
                on_backup_unreachable: BackupUnreachable::GoAsync,
            },
        );
        // Both members default (policies written before they existed, `cellctl policy`).
        let empty: FailoverPolicy = serde_json::from_str("{}").unwrap();
        assert_eq!(empty, FailoverPolicy::default());
    }

    #[test]
    fn liveness() {
        round_trip(r#""alive""#, &Liveness::Alive);
        round_trip(r#""suspect""#, &Liveness::Suspect);
        round_trip(r#""down""#, &Liveness::Down);
    }

    #[test]
    fn alone_grant() {
        round_trip(
            r#"{"epoch":3,"since_version":17,"backup_at_grant":"c2","reprotected_to":null}"#,
            &AloneGrant {
                epoch: 3,
                since_version: 17,
                backup_at_grant: Some(id("c2")),
                reprotected_to: None,
            },
        );
        // A grant from before re-protection existed.
        let old: AloneGrant = serde_json::from_str(r#"{"epoch":3,"since_version":17}"#).unwrap();
        assert_eq!(old.backup_at_grant, None);
        assert_eq!(old.reprotected_to, None);
    }

    #[test]
    fn map_view() {
        let slots = vec![r#"{"shard":"c1","epoch":1}"#; 1024].join(",");
        let text = format!(
            concat!(
                r#"{{"version":9,"map":{{"version":9,"cells":{{"#,
                r#""c1":{{"id":"c1","region":"east","url":"http://127.0.0.1:7001","status":"active"}},"#,
                r#""c2":{{"id":"c2","region":"west","url":"http://127.0.0.1:7002","status":"active"}}}},"#,
                r#""shards":{{"c1":{{"id":"c1","primary":"c1","backup":"c2","position":40}}}},"#,
                r#""slots":[{}]}},"#,
                r#""switches":{{"claims":{{"on":true,"message":"","version":2}}}},"#,
                r#""policies":{{"c1":{{"auto_failover":false,"on_backup_unreachable":"go_async"}}}},"#,
                r#""liveness":{{"c1":"alive","c2":"suspect"}},"#,
                r#""alone":{{"c1":{{"epoch":1,"since_version":9,"backup_at_grant":"c2","reprotected_to":null}}}},"#,
                r#""failovers":{{"c2":{{"kind":"planned","from":"c2","to":"c1","epoch":4,"version":8,"at_ms":1700000000000}}}},"#,
                r#""breaker":{{"enabled":true,"window_s":30,"min_calls":10,"max_error_pct":50,"max_p90_ms":2000,"open_s":5,"probes":3}}}}"#,
            ),
            slots
        );
        let view: MapView = serde_json::from_str(&text).unwrap();
        let map = view.map.as_ref().unwrap();
        assert_eq!(map.version, 9);
        assert_eq!(map.slots_served_by(&id("c1")).count(), 1024);
        let c1 = ShardId::own(&id("c1"));
        assert_eq!(map.shard(&c1).unwrap().backup, Some(id("c2")));
        assert_eq!(map.shard(&c1).unwrap().position, 40);
        assert!(view.switches["claims"].on);
        assert_eq!(
            view.policies[&c1].on_backup_unreachable,
            BackupUnreachable::GoAsync
        );
        assert_eq!(view.liveness[&id("c2")], Liveness::Suspect);
        assert_eq!(view.alone[&c1].since_version, 9);
        assert_eq!(serde_json::to_string(&view).unwrap(), text);
    }

    #[test]
    fn map_view_before_the_first_cell_and_from_older_nodes() {
        round_trip(
            r#"{"version":0,"map":null,"switches":{},"policies":{},"liveness":{},"alone":{},"failovers":{},"breaker":{"enabled":false,"window_s":30,"min_calls":10,"max_error_pct":50,"max_p90_ms":2000,"open_s":5,"probes":3}}"#,
            &MapView {
                version: 0,
                map: None,
                switches: BTreeMap::new(),
                policies: BTreeMap::new(),
                liveness: BTreeMap::new(),
                alone: BTreeMap::new(),
                failovers: BTreeMap::new(),
                breaker: crate::BreakerPolicy {
                    enabled: false,
                    ..Default::default()
                },
            },
        );
        // Nodes from before run-alone grants answer without `alone`.
        let old: MapView = serde_json::from_str(
            r#"{"version":1,"map":null,"switches":{},"policies":{},"liveness":{}}"#,
        )
        .unwrap();
        assert!(old.alone.is_empty());
        // ... and without `breaker`: every cell follows the default thresholds.
        assert_eq!(old.breaker, crate::BreakerPolicy::default());
    }
}

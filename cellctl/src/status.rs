//! `cellctl status`: every process with its health, the raft leader, the map version, slots
//! per cell and the backup pairs, from `deployment.json` and the processes' own answers.
//!
//! Health: **green** = `/readyz` answers 200 (and, for a cell, raft-meta sees it alive);
//! **amber** = the process answers but is not ready, or raft-meta suspects the cell;
//! **red** = no answer (stopped, crashed, restarting) or raft-meta has it down.
//!
//! The shard table has one row per cell as primary of its own shard, from each cell's
//! `GET /v1/internal/replication` (admin token) and the map; its alarm rules are
//! [`shard_alarm`] (pure) and fold into the deployment's health.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::deployment::{self, Layout, Record};
use crate::policy::BackupPolicy;
use crate::up::admin_client;

/// A backup further behind than this many records is amber.
pub const LAG_RECORDS_AMBER: i64 = 1_000;
/// A backup that has not pulled for longer than this (milliseconds) is amber.
pub const SILENT_MS_AMBER: i64 = 5_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    Green,
    Amber,
    Red,
}

impl Health {
    fn worst(self, other: Health) -> Health {
        use Health::*;
        match (self, other) {
            (Red, _) | (_, Red) => Red,
            (Amber, _) | (_, Amber) => Amber,
            _ => Green,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct Status {
    pub health: Health,
    pub router: Process,
    pub meta: Vec<Process>,
    pub cells: Vec<CellStatus>,
    /// One row per cell as primary of its shard.
    pub shards: Vec<ShardStatus>,
    pub leader: Option<u64>,
    pub term: Option<u64>,
    pub map_version: Option<u64>,
    pub switches_off: BTreeMap<String, String>,
}

#[derive(Debug, Serialize)]
pub struct Process {
    pub name: String,
    /// Its failure domain: a cell's region, a raft-meta voter's (the tie-breaker's has no
    /// cells), `-` where none is planned (the router, older plans).
    pub region: String,
    pub url: String,
    pub pid: Option<u32>,
    pub health: Health,
    pub detail: String,
    pub restarts: u32,
}

#[derive(Debug, Serialize)]
pub struct CellStatus {
    /// With the cell's region in it.
    #[serde(flatten)]
    pub process: Process,
    pub backup: Option<String>,
    pub slots: usize,
    /// raft-meta's view from the cell's heartbeats: alive, suspect, down (or unknown).
    pub liveness: String,
}

/// One shard: its primary, its backup and how far behind that backup is.
#[derive(Debug, Serialize)]
pub struct ShardStatus {
    pub shard: String,
    pub primary: String,
    /// The backup raft-meta names (re-protection may have moved it from the plan's).
    pub backup: Option<String>,
    /// The primary's journal head (`null`: the primary did not answer).
    pub head: Option<i64>,
    /// The position the backup last acknowledged as durable.
    pub acked: Option<i64>,
    /// The acknowledged position as raft-meta's map has it (reported with the primary's
    /// heartbeats, written every few seconds; `null` without a map).
    pub reported: Option<u64>,
    pub lag_records: Option<i64>,
    /// The backup's own view: how old its oldest unapplied commit is (`null`: unknown).
    pub lag_ms: Option<i64>,
    /// Milliseconds since the backup last pulled (`null`: never, or unknown).
    pub last_pull_ms_ago: Option<i64>,
    /// `refuse` or `async` (raft-meta's `on_backup_unreachable`).
    pub policy: String,
    /// A run-alone grant stands for the shard (from the map).
    pub alone: bool,
    /// The primary's own durability report (`{"policy","alone","at_risk","state"}`) when it
    /// gives one.
    pub durability: Option<serde_json::Value>,
    pub alarm: Health,
    /// Why the alarm is not green.
    pub reasons: Vec<String>,
}

/// `GET /v1/internal/replication` of a cell; only what the status reads. Unknown fields are
/// ignored, so a newer cell's answer still parses.
#[derive(Debug, Clone, Deserialize)]
pub struct Replication {
    pub shard: String,
    pub head: i64,
    pub backup: Option<BackupSide>,
    #[serde(default)]
    pub replicas: Vec<ReplicaSide>,
    #[serde(default)]
    pub durability: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct BackupSide {
    pub cell: String,
    pub acked: i64,
    pub lag_records: i64,
    /// Wall-clock milliseconds of the backup's last pull, 0 before the first.
    pub last_contact_ms: i64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ReplicaSide {
    pub shard: String,
    #[serde(default)]
    pub lag_ms: i64,
}

/// What the alarm of one shard is decided from.
#[derive(Debug, Clone, Default)]
pub struct AlarmFacts {
    /// The primary answered its replication status.
    pub primary_answered: bool,
    /// The name of the backup raft-meta gives the shard, if any.
    pub backup: Option<String>,
    /// The backup cell answered its own replication status.
    pub backup_answered: bool,
    pub policy: Option<BackupPolicy>,
    pub alone: bool,
    pub lag_records: Option<i64>,
    /// Milliseconds since the backup last pulled; `None` if it never has.
    pub last_pull_ms_ago: Option<i64>,
}

/// The alarm rules of a shard (DESIGN.md §6.3, §8):
/// - **red**: the backup cell is unreachable and the policy is `refuse` (money writes are
///   refused), or the primary does not answer;
/// - **amber**: a run-alone grant stands, or the backup lags more than
///   [`LAG_RECORDS_AMBER`] records, or it has not pulled for more than [`SILENT_MS_AMBER`]
///   (or never has);
/// - else green. A shard without a backup (one region) raises no backup alarm.
pub fn shard_alarm(f: &AlarmFacts) -> (Health, Vec<String>) {
    let mut health = Health::Green;
    let mut reasons = Vec::new();
    let mut raise = |h: Health, why: String| {
        health = health.worst(h);
        reasons.push(why);
    };
    if !f.primary_answered {
        raise(Health::Red, "primary unreachable".into());
    }
    if f.alone {
        raise(
            Health::Amber,
            "running alone under a raft-meta grant".into(),
        );
    }
    if let Some(backup) = &f.backup {
        if !f.backup_answered {
            if f.policy == Some(BackupPolicy::Refuse) {
                raise(
                    Health::Red,
                    format!("backup {backup} unreachable and policy refuse: money writes refused"),
                );
            } else {
                raise(Health::Amber, format!("backup {backup} unreachable"));
            }
        }
        if f.primary_answered {
            if let Some(lag) = f.lag_records.filter(|l| *l > LAG_RECORDS_AMBER) {
                raise(Health::Amber, format!("backup lags {lag} records"));
            }
            match f.last_pull_ms_ago {
                None => raise(Health::Amber, "backup has not pulled yet".into()),
                Some(ms) if ms > SILENT_MS_AMBER => raise(
                    Health::Amber,
                    format!("backup has not pulled for {:.1} s", ms as f64 / 1000.0),
                ),
                Some(_) => {}
            }
        }
    }
    (health, reasons)
}

/// Asks a cell for its replication status; `None` when it does not answer well.
async fn replication(http: &reqwest::Client, url: &str, token: &str) -> Option<Replication> {
    let resp = http
        .get(format!("{url}/v1/internal/replication"))
        .bearer_auth(token)
        .send()
        .await
        .ok()?;
    if !resp.status().is_success() {
        return None;
    }
    resp.json::<Replication>().await.ok()
}

fn wall_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The shard rows, from each cell's replication status (by cell id) and the map.
pub fn shard_rows(
    record: &Record,
    view: Option<&wire::MapView>,
    answers: &BTreeMap<String, Replication>,
    now_ms: i64,
) -> Vec<ShardStatus> {
    let mut rows = Vec::new();
    for c in &record.cells {
        let id = topology::CellId::parse(&c.id).ok();
        // Each cell of the plan has its own shard, of its name.
        let id = id.map(|c| topology::ShardId::own(&c));
        let info = view
            .and_then(|v| v.map.as_ref())
            .zip(id.as_ref())
            .and_then(|(m, id)| m.shard(id));
        let backup = match (view.and_then(|v| v.map.as_ref()), info) {
            (Some(_), Some(info)) => info.backup.as_ref().map(|b| b.to_string()),
            // No map to read: the plan's pairing.
            _ => c.backup.clone(),
        };
        let policy = view.zip(id.as_ref()).map(|(v, id)| {
            BackupPolicy::of(
                v.policies
                    .get(id)
                    .copied()
                    .unwrap_or_default()
                    .on_backup_unreachable,
            )
        });
        let alone = view
            .zip(id.as_ref())
            .is_some_and(|(v, id)| v.alone.contains_key(id));
        let me = answers.get(&c.id);
        let shard = me.map(|r| r.shard.clone()).unwrap_or_else(|| c.id.clone());
        let side = me.and_then(|r| r.backup.as_ref());
        let backup_answer = backup.as_ref().and_then(|b| answers.get(b));
        let lag_ms = backup_answer
            .and_then(|b| b.replicas.iter().find(|r| r.shard == shard))
            .map(|r| r.lag_ms);
        let last_pull_ms_ago = side
            .filter(|s| s.last_contact_ms > 0)
            .map(|s| (now_ms - s.last_contact_ms).max(0));
        let facts = AlarmFacts {
            primary_answered: me.is_some(),
            backup: backup.clone(),
            backup_answered: backup_answer.is_some(),
            policy,
            alone,
            lag_records: side.map(|s| s.lag_records),
            last_pull_ms_ago,
        };
        let (alarm, reasons) = shard_alarm(&facts);
        rows.push(ShardStatus {
            shard,
            // The map's word once there is one (a failover moves a shard to another cell).
            primary: info
                .map(|i| i.primary.to_string())
                .unwrap_or_else(|| c.id.clone()),
            backup,
            head: me.map(|r| r.head),
            acked: side.map(|s| s.acked),
            reported: info.map(|i| i.position),
            lag_records: side.map(|s| s.lag_records),
            lag_ms,
            last_pull_ms_ago,
            policy: policy.map(|p| p.name()).unwrap_or("?").to_owned(),
            alone,
            durability: me.and_then(|r| r.durability.clone()),
            alarm,
            reasons,
        });
    }
    rows
}

/// Probes every process of the deployment recorded under `layout`.
pub async fn gather(layout: &Layout) -> anyhow::Result<Status> {
    let record: Record = deployment::read_json(&layout.deployment())?;
    let secret = deployment::secret(layout, false)?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()?;
    let restarts = |name: &str| record.restarts.get(name).copied().unwrap_or(0);
    // Held down by `cellctl stop`: said so, instead of "not running".
    let held = |name: &str| crate::hold::is_held(layout, name);

    // Every process at once: a deployment that is down answers after one timeout, not one
    // per process.
    let spawn_probe = |name: String, url: &str, pid: Option<u32>, restarts: u32| {
        let (http, url) = (http.clone(), url.to_owned());
        tokio::spawn(async move { probe(&http, &name, &url, pid, restarts).await })
    };
    let router = spawn_probe(
        "router".into(),
        &record.router.url,
        record.router.pid,
        restarts("router"),
    );
    let meta: Vec<_> = record
        .meta
        .iter()
        .map(|m| {
            let name = format!("meta{}", m.id);
            let r = restarts(&name);
            spawn_probe(name, &m.url, m.pid, r)
        })
        .collect();
    let cell_probes: Vec<_> = record
        .cells
        .iter()
        .map(|c| {
            spawn_probe(
                c.id.clone(),
                &c.url,
                c.pid,
                restarts(&format!("cell-{}", c.id)),
            )
        })
        .collect();

    let token = topology::auth::mint(secret.as_bytes(), "svc:cellctl", Some("admin"), 300);
    let replications: Vec<_> = record
        .cells
        .iter()
        .map(|c| {
            let (http, url, token, id) = (http.clone(), c.url.clone(), token.clone(), c.id.clone());
            tokio::spawn(async move { (id, replication(&http, &url, &token).await) })
        })
        .collect();

    let client = admin_client(record.meta_nodes(), &secret).with_deadline(Duration::from_secs(3));
    let (cluster, view) = tokio::join!(client.cluster(), client.map(false));
    let cluster = cluster.ok();
    let view = view.ok();
    let note_hold = |p: &mut Process, name: &str| {
        if held(name) {
            p.detail = format!("{}, held down by `cellctl stop`", p.detail);
        }
    };
    let mut router = router.await?;
    note_hold(&mut router, "router");
    let mut meta = join_all(meta).await?;
    for (m, planned) in meta.iter_mut().zip(&record.meta) {
        let name = m.name.clone();
        note_hold(m, &name);
        if !planned.region.is_empty() {
            m.region = planned.region.clone();
        }
    }
    let leader = cluster.as_ref().and_then(|c| c.leader);
    for m in &mut meta {
        if leader.is_some_and(|l| m.name == format!("meta{l}")) {
            m.detail = format!("{}, leader", m.detail);
        }
    }

    let mut cells = Vec::new();
    for (c, mut process) in record.cells.iter().zip(join_all(cell_probes).await?) {
        note_hold(&mut process, &format!("cell-{}", c.id));
        process.region = c.region.clone();
        let id = topology::CellId::parse(&c.id).ok();
        let slots = view
            .as_ref()
            .and_then(|v| v.map.as_ref())
            .zip(id.as_ref())
            .map(|(m, id)| m.slots_served_by(id).count())
            .unwrap_or(0);
        let liveness = view
            .as_ref()
            .and_then(|v| id.as_ref().and_then(|id| v.liveness.get(id)))
            .and_then(|l| serde_json::to_value(l).ok())
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_else(|| "unknown".into());
        let seen = match liveness.as_str() {
            "down" => Health::Red,
            "suspect" => Health::Amber,
            _ => Health::Green,
        };
        if seen != Health::Green {
            process.detail = format!("{}, raft-meta: {liveness}", process.detail);
        }
        process.health = process.health.worst(seen);
        let backup = view
            .as_ref()
            .and_then(|v| v.map.as_ref())
            .zip(id.as_ref())
            .and_then(|(m, id)| m.shard(&topology::ShardId::own(id)))
            .map(|info| info.backup.as_ref().map(|b| b.to_string()))
            .unwrap_or_else(|| c.backup.clone());
        cells.push(CellStatus {
            process,
            backup,
            slots,
            liveness,
        });
    }

    let answers: BTreeMap<String, Replication> = join_all(replications)
        .await?
        .into_iter()
        .filter_map(|(id, r)| r.map(|r| (id, r)))
        .collect();
    let shards = shard_rows(&record, view.as_ref(), &answers, wall_ms());

    let mut health = router.health;
    for p in meta.iter().chain(cells.iter().map(|c| &c.process)) {
        health = health.worst(p.health);
    }
    for s in &shards {
        health = health.worst(s.alarm);
    }
    if leader.is_none() {
        health = Health::Red;
    }
    Ok(Status {
        health,
        router,
        meta,
        cells,
        shards,
        leader,
        term: cluster.as_ref().map(|c| c.term),
        map_version: view.as_ref().map(|v| v.version),
        switches_off: view
            .map(|v| {
                v.switches
                    .into_iter()
                    .filter(|(_, s)| !s.on)
                    .map(|(name, s)| (name, s.message))
                    .collect()
            })
            .unwrap_or_default(),
    })
}

async fn join_all<T>(tasks: Vec<tokio::task::JoinHandle<T>>) -> anyhow::Result<Vec<T>> {
    let mut out = Vec::with_capacity(tasks.len());
    for t in tasks {
        out.push(t.await?);
    }
    Ok(out)
}

async fn probe(
    http: &reqwest::Client,
    name: &str,
    url: &str,
    pid: Option<u32>,
    restarts: u32,
) -> Process {
    let (health, detail) = match http.get(format!("{url}/readyz")).send().await {
        Ok(r) if r.status().is_success() => (Health::Green, "ready".to_owned()),
        Ok(r) => (
            Health::Amber,
            format!("not ready ({})", r.status().as_u16()),
        ),
        Err(_) if pid.is_none() => (Health::Red, "not running".to_owned()),
        Err(e) if e.is_timeout() => (Health::Red, "no answer within 2 s".to_owned()),
        Err(_) => (Health::Red, "unreachable".to_owned()),
    };
    Process {
        name: name.to_owned(),
        region: "-".to_owned(),
        url: url.to_owned(),
        pid,
        health,
        detail,
        restarts,
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mark = |h: Health| match h {
            Health::Green => "green",
            Health::Amber => "AMBER",
            Health::Red => "RED  ",
        };
        let pid = |p: Option<u32>| p.map(|p| p.to_string()).unwrap_or_else(|| "-".into());
        writeln!(f, "deployment: {}", mark(self.health).trim())?;
        writeln!(
            f,
            "raft: leader {}, term {}, map version {}",
            self.leader
                .map(|l| format!("meta{l}"))
                .unwrap_or_else(|| "NONE".into()),
            self.term
                .map(|t| t.to_string())
                .unwrap_or_else(|| "?".into()),
            self.map_version
                .map(|v| v.to_string())
                .unwrap_or_else(|| "?".into()),
        )?;
        writeln!(f)?;
        writeln!(
            f,
            "{:<7} {:<8} {:<9} {:<8} {:<28} {:>8}  detail",
            "health", "process", "region", "pid", "url", "restarts"
        )?;
        for p in std::iter::once(&self.router).chain(&self.meta) {
            writeln!(
                f,
                "{:<7} {:<8} {:<9} {:<8} {:<28} {:>8}  {}",
                mark(p.health),
                p.name,
                p.region,
                pid(p.pid),
                p.url,
                p.restarts,
                p.detail
            )?;
        }
        for c in &self.cells {
            let p = &c.process;
            writeln!(
                f,
                "{:<7} {:<8} {:<9} {:<8} {:<28} {:>8}  {}",
                mark(p.health),
                format!("cell {}", p.name),
                p.region,
                pid(p.pid),
                p.url,
                p.restarts,
                p.detail
            )?;
        }
        writeln!(f)?;
        writeln!(
            f,
            "{:<6} {:<8} {:>6}  {:<7} liveness",
            "cell", "region", "slots", "backup"
        )?;
        for c in &self.cells {
            writeln!(
                f,
                "{:<6} {:<8} {:>6}  {:<7} {}",
                c.process.name,
                c.process.region,
                c.slots,
                c.backup.as_deref().unwrap_or("-"),
                c.liveness
            )?;
        }
        writeln!(f)?;
        writeln!(
            f,
            "{:<6} {:<8} {:<7} {:>9} {:>9} {:>8} {:>8}  {:<7} alarm",
            "shard", "primary", "backup", "head", "acked", "lag", "lag_ms", "policy"
        )?;
        let num = |v: Option<i64>| v.map(|v| v.to_string()).unwrap_or_else(|| "?".into());
        for s in &self.shards {
            let mut alarm = mark(s.alarm).trim().to_owned();
            if !s.reasons.is_empty() {
                alarm = format!("{alarm}: {}", s.reasons.join("; "));
            }
            writeln!(
                f,
                "{:<6} {:<8} {:<7} {:>9} {:>9} {:>8} {:>8}  {:<7} {alarm}",
                s.shard,
                s.primary,
                s.backup.as_deref().unwrap_or("-"),
                num(s.head),
                num(s.acked),
                num(s.lag_records),
                num(s.lag_ms),
                if s.alone {
                    format!("{} ALONE", s.policy)
                } else {
                    s.policy.clone()
                },
            )?;
        }
        if !self.switches_off.is_empty() {
            writeln!(f)?;
            for (name, message) in &self.switches_off {
                writeln!(f, "switch {name} is OFF: {message}")?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn healthy() -> AlarmFacts {
        AlarmFacts {
            primary_answered: true,
            backup: Some("c3".into()),
            backup_answered: true,
            policy: Some(BackupPolicy::Async),
            alone: false,
            lag_records: Some(3),
            last_pull_ms_ago: Some(200),
        }
    }

    #[test]
    fn a_caught_up_backup_is_green() {
        assert_eq!(shard_alarm(&healthy()), (Health::Green, vec![]));
        let no_backup = AlarmFacts {
            backup: None,
            backup_answered: false,
            lag_records: None,
            last_pull_ms_ago: None,
            ..healthy()
        };
        assert_eq!(shard_alarm(&no_backup).0, Health::Green);
    }

    #[test]
    fn running_alone_lag_and_silence_are_amber() {
        let cases = [
            AlarmFacts {
                alone: true,
                ..healthy()
            },
            AlarmFacts {
                lag_records: Some(LAG_RECORDS_AMBER + 1),
                ..healthy()
            },
            AlarmFacts {
                last_pull_ms_ago: Some(SILENT_MS_AMBER + 1),
                ..healthy()
            },
            AlarmFacts {
                last_pull_ms_ago: None,
                ..healthy()
            },
            AlarmFacts {
                backup_answered: false,
                ..healthy()
            },
        ];
        for f in cases {
            let (h, why) = shard_alarm(&f);
            assert_eq!(h, Health::Amber, "{f:?}");
            assert_eq!(why.len(), 1, "{why:?}");
        }
        // At the bounds, still green.
        let edge = AlarmFacts {
            lag_records: Some(LAG_RECORDS_AMBER),
            last_pull_ms_ago: Some(SILENT_MS_AMBER),
            ..healthy()
        };
        assert_eq!(shard_alarm(&edge).0, Health::Green);
    }

    #[test]
    fn an_unreachable_backup_under_refuse_is_red() {
        let f = AlarmFacts {
            backup_answered: false,
            policy: Some(BackupPolicy::Refuse),
            ..healthy()
        };
        let (h, why) = shard_alarm(&f);
        assert_eq!(h, Health::Red);
        assert!(why[0].contains("refuse"), "{why:?}");
        let primary_gone = AlarmFacts {
            primary_answered: false,
            lag_records: None,
            ..healthy()
        };
        assert_eq!(shard_alarm(&primary_gone).0, Health::Red);
    }

    #[test]
    fn rows_read_the_backup_lag_ms_from_the_backups_replica_entry() {
        // Arrange: c1 backed up by c3 (per the plan; no map), both answering.
        let record: Record = serde_json::from_value(serde_json::json!({
            "router": {"url": "http://r", "pid": null},
            "meta": [],
            "cells": [
                {"id": "c1", "region": "east", "url": "http://a", "pid": 1, "backup": "c3"},
                {"id": "c3", "region": "west", "url": "http://b", "pid": 2, "backup": "c1"}
            ]
        }))
        .unwrap();
        let parse = |v: serde_json::Value| serde_json::from_value::<Replication>(v).unwrap();
        let answers = BTreeMap::from([
            (
                "c1".to_owned(),
                parse(serde_json::json!({
                    "shard": "c1", "head": 120,
                    "journal": {"oldest": 1, "commits": 10, "records": 120},
                    "backup": {"cell": "c3", "acked": 100, "lag_records": 20, "last_contact_ms": 9_000},
                    "replicas": [{"shard": "c3", "primary_url": "http://b", "state": "tailing",
                                  "applied": 5, "primary_head": 5, "lag_records": 0, "lag_ms": 0,
                                  "last_error": null, "last_contact_ms": 9_000}],
                    "durability": {"policy": "go_async", "alone": false, "at_risk": 0, "state": "sync"}
                })),
            ),
            (
                "c3".to_owned(),
                parse(serde_json::json!({
                    "shard": "c3", "head": 5, "backup": null,
                    "replicas": [{"shard": "c1", "lag_ms": 42}]
                })),
            ),
        ]);

        // Act
        let rows = shard_rows(&record, None, &answers, 10_000);

        // Assert
        let c1 = &rows[0];
        assert_eq!(
            (c1.head, c1.acked, c1.lag_records),
            (Some(120), Some(100), Some(20))
        );
        assert_eq!(c1.lag_ms, Some(42));
        assert_eq!(c1.last_pull_ms_ago, Some(1_000));
        assert_eq!(c1.durability.as_ref().unwrap()["state"], "sync");
        assert_eq!(c1.alarm, Health::Green, "{:?}", c1.reasons);
        // c3 has no backup side in its answer although the plan names c1: never pulled.
        assert_eq!(rows[1].alarm, Health::Amber);
    }
}

//! `cellctl status`: every process with its health, the raft leader, the map version, slots
//! per cell and the backup pairs, from `deployment.json` and the processes' own answers.
//!
//! Health: **green** = `/readyz` answers 200 (and, for a cell, raft-meta sees it alive);
//! **amber** = the process answers but is not ready, or raft-meta suspects the cell;
//! **red** = no answer (stopped, crashed, restarting) or raft-meta has it down.
//!
//! The shard table has one row per shard of the map (each cell's own shard before there is
//! a map), from its primary's and its backup's `GET /v1/internal/replication` (admin token)
//! and the map: positions, lag, policy, the last failover (when, why, how long) and a pause
//! in progress; its alarm rules are [`shard_alarm`] (pure) and fold into the deployment's
//! health. A cell that lost its shard at a failover and serves nothing is shown fenced.

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
    /// The worse of the two.
    pub fn worst(self, other: Health) -> Health {
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
    /// One row per shard.
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
    /// The shards this cell serves as primary (its answer; the map's word when it does not
    /// answer).
    pub serving: Vec<String>,
    /// Set when the cell lost a shard at a failover and is neither its primary nor its
    /// backup: it serves nothing of it until `cellctl rebuild` makes it the backup again.
    pub fenced: Option<String>,
    /// Its payment-provider breaker: `closed`, `open`, `half_open` (`-`: no answer).
    pub payments: String,
}

/// A shard's last failover, as raft-meta recorded it, and how long it took.
#[derive(Debug, Clone, Serialize)]
pub struct LastFailover {
    /// `planned`, `emergency` or `automatic`.
    pub kind: String,
    pub from: String,
    pub to: String,
    pub epoch: u64,
    /// Wall clock of the decision, milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// From the decision to the new primary holding the shard (its promotion), when the new
    /// primary reports the promotion.
    pub took_ms: Option<i64>,
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
    /// The primary's writes are paused: a planned failover is in progress.
    pub paused: bool,
    /// The last failover of the shard, if it had one.
    pub last_failover: Option<LastFailover>,
    pub alarm: Health,
    /// Why the alarm is not green.
    pub reasons: Vec<String>,
}

/// `GET /v1/internal/replication` of a cell; only what the status reads. Unknown fields are
/// ignored, so a newer cell's answer still parses.
#[derive(Debug, Clone, Deserialize)]
pub struct Replication {
    /// Every shard the cell serves as primary (absent from cells that served one shard
    /// only: then the top-level fields are that shard's).
    #[serde(default)]
    pub shards: Vec<ShardSide>,
    #[serde(flatten)]
    pub own: OwnSide,
    #[serde(default)]
    pub replicas: Vec<ReplicaSide>,
    /// Divergent tails this cell found and set aside.
    #[serde(default)]
    pub divergent: Vec<serde_json::Value>,
    /// The cell's payment-provider breaker (absent from cells before it).
    #[serde(default)]
    pub payment_breaker: Option<BreakerSide>,
}

/// A cell's payment-provider breaker, from its replication answer.
#[derive(Debug, Clone, Deserialize)]
pub struct BreakerSide {
    /// `closed`, `open` or `half_open`.
    pub state: String,
    #[serde(default)]
    pub reason: String,
    #[serde(default)]
    pub retry_after_s: u32,
}

/// What the status says of a cell's payments: `None` while its breaker is closed; else why
/// C2C sends are degraded (amber: the cell serves, minus C2C sends).
pub fn payments_note(b: &BreakerSide) -> Option<String> {
    match b.state.as_str() {
        "closed" => None,
        "open" => Some(format!(
            "C2C sends degraded (payment provider: {}; probes in {} s)",
            b.reason, b.retry_after_s
        )),
        other => Some(format!(
            "C2C sends degraded (payment provider {other}: probing; last: {})",
            b.reason
        )),
    }
}

/// The top-level fields: the cell's own shard, when it serves it.
#[derive(Debug, Clone, Deserialize)]
pub struct OwnSide {
    pub shard: String,
    pub head: Option<i64>,
    #[serde(default)]
    pub backup: Option<BackupSide>,
    #[serde(default)]
    pub durability: Option<serde_json::Value>,
}

/// One served shard of a cell's answer.
#[derive(Debug, Clone, Deserialize)]
pub struct ShardSide {
    pub shard: String,
    pub head: i64,
    pub backup: Option<BackupSide>,
    #[serde(default)]
    pub durability: Option<serde_json::Value>,
    #[serde(default)]
    pub paused: bool,
    /// The shard's promotions (`{"pos","cell","epoch","promoted_at",...}`).
    #[serde(default)]
    pub history: Vec<serde_json::Value>,
}

impl Replication {
    /// The served shards, from either form of the answer.
    pub fn served(&self) -> Vec<ShardSide> {
        if !self.shards.is_empty() {
            return self.shards.clone();
        }
        match self.own.head {
            Some(head) => vec![ShardSide {
                shard: self.own.shard.clone(),
                head,
                backup: self.own.backup.clone(),
                durability: self.own.durability.clone(),
                paused: false,
                history: Vec::new(),
            }],
            None => Vec::new(),
        }
    }

    /// The served shard `id`, if the cell serves it.
    pub fn serving(&self, id: &str) -> Option<ShardSide> {
        self.served().into_iter().find(|s| s.shard == id)
    }
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
    /// `starting`, `bootstrapping`, `tailing`, `held` or `error`.
    #[serde(default)]
    pub state: String,
    #[serde(default)]
    pub applied: i64,
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
    /// A planned failover has paused the primary's writes.
    pub paused: bool,
    /// The shard has no backup though the deployment has cells in other regions (after an
    /// emergency failover, until a rebuild): every acknowledgement is unprotected.
    pub unprotected: bool,
}

/// The alarm rules of a shard (DESIGN.md §6.3, §8):
/// - **red**: the backup cell is unreachable and the policy is `refuse` (money writes are
///   refused), or the primary does not answer;
/// - **amber**: a run-alone grant stands, or the backup lags more than
///   [`LAG_RECORDS_AMBER`] records, or it has not pulled for more than [`SILENT_MS_AMBER`]
///   (or never has), or a planned failover has paused it, or it has no backup although
///   another region could hold one;
/// - else green. A shard without a backup in a one-region deployment raises no alarm.
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
    if f.paused {
        raise(
            Health::Amber,
            "writes paused: planned failover in progress".into(),
        );
    }
    if f.unprotected {
        raise(
            Health::Amber,
            "no backup: acknowledgements unprotected (cellctl rebuild)".into(),
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

/// The shard rows, from each cell's replication status (by cell id) and the map: one per
/// shard of the map, or per cell of the plan (its own shard) while there is no map.
pub fn shard_rows(
    record: &Record,
    view: Option<&wire::MapView>,
    answers: &BTreeMap<String, Replication>,
    now_ms: i64,
) -> Vec<ShardStatus> {
    let map = view.and_then(|v| v.map.as_ref());
    let shards = record.shards(map);
    let regions: std::collections::BTreeSet<&str> =
        record.cells.iter().map(|c| c.region.as_str()).collect();
    let mut rows = Vec::new();
    for (shard, primary, backup) in shards {
        let id = topology::ShardId::parse(&shard).ok();
        let info = map.zip(id.as_ref()).and_then(|(m, id)| m.shard(id));
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
        let me = answers.get(&primary).and_then(|r| r.serving(&shard));
        let side = me.as_ref().and_then(|r| r.backup.as_ref());
        let backup_answer = backup.as_ref().and_then(|b| answers.get(b));
        let lag_ms = backup_answer
            .and_then(|b| b.replicas.iter().find(|r| r.shard == shard))
            .map(|r| r.lag_ms);
        let last_pull_ms_ago = side
            .filter(|s| s.last_contact_ms > 0)
            .map(|s| (now_ms - s.last_contact_ms).max(0));
        let paused = me.as_ref().is_some_and(|m| m.paused);
        let facts = AlarmFacts {
            primary_answered: me.is_some(),
            backup: backup.clone(),
            backup_answered: backup_answer.is_some(),
            policy,
            alone,
            lag_records: side.map(|s| s.lag_records),
            last_pull_ms_ago,
            paused,
            unprotected: backup.is_none() && regions.len() > 1,
        };
        let (alarm, reasons) = shard_alarm(&facts);
        let last_failover = view
            .zip(id.as_ref())
            .and_then(|(v, id)| v.failovers.get(id))
            .map(|f| {
                // The new primary's promotion for that failover's epoch.
                let promoted_at = me.as_ref().and_then(|m| {
                    m.history
                        .iter()
                        .rev()
                        .find(|p| p["epoch"].as_u64() == Some(f.epoch))
                        .and_then(|p| p["promoted_at"].as_i64())
                });
                LastFailover {
                    kind: serde_json::to_value(f.kind)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_owned))
                        .unwrap_or_default(),
                    from: f.from.to_string(),
                    to: f.to.to_string(),
                    epoch: f.epoch,
                    at_ms: f.at_ms,
                    took_ms: promoted_at.map(|p| (p - f.at_ms as i64).max(0)),
                }
            });
        rows.push(ShardStatus {
            shard,
            primary,
            backup,
            head: me.as_ref().map(|r| r.head),
            acked: side.map(|s| s.acked),
            reported: info.map(|i| i.position),
            lag_records: side.map(|s| s.lag_records),
            lag_ms,
            last_pull_ms_ago,
            policy: policy.map(|p| p.name()).unwrap_or("?").to_owned(),
            alone,
            durability: me.as_ref().and_then(|r| r.durability.clone()),
            paused,
            last_failover,
            alarm,
            reasons,
        });
    }
    rows
}

/// Why a cell is fenced, when it is: it lost a shard at a failover and the map makes it
/// neither that shard's primary nor its backup (it serves nothing of it until rebuilt).
fn fenced(view: Option<&wire::MapView>, cell: &str) -> Option<String> {
    let view = view?;
    let map = view.map.as_ref()?;
    let lost: Vec<String> = view
        .failovers
        .iter()
        .filter(|(_, f)| f.from.as_str() == cell)
        .filter(|(shard, _)| {
            map.shard(shard).is_some_and(|s| {
                s.primary.as_str() != cell && s.backup.as_ref().map(|b| b.as_str()) != Some(cell)
            })
        })
        .map(|(shard, f)| {
            format!("shard {shard} ({:?} failover to {})", f.kind, f.to).to_lowercase()
        })
        .collect();
    (!lost.is_empty()).then(|| {
        format!(
            "fenced: lost {}; `cellctl rebuild {cell}` makes it a backup again",
            lost.join(", ")
        )
    })
}

/// Probes every process of the deployment recorded under `layout`.
pub async fn gather(layout: &Layout) -> anyhow::Result<Status> {
    Ok(gather_with(layout, Duration::from_secs(2)).await?.0)
}

/// [`gather`] with each process given `timeout` to answer, and raft-meta's map view it read
/// (`None` when raft-meta did not answer): the console draws from both.
pub async fn gather_with(
    layout: &Layout,
    timeout: Duration,
) -> anyhow::Result<(Status, Option<wire::MapView>)> {
    let record: Record = deployment::read_json(&layout.deployment())?;
    let secret = deployment::secret(layout, false)?;
    let http = reqwest::Client::builder().timeout(timeout).build()?;
    let restarts = |name: &str| record.restarts.get(name).copied().unwrap_or(0);
    // Held down by `cellctl stop`: said so, instead of "not running".
    let held = |name: &str| crate::hold::is_held(layout, name);

    // Every process at once: a deployment that is down answers after one timeout, not one
    // per process.
    let spawn_probe = |name: String, url: &str, pid: Option<u32>, restarts: u32| {
        let (http, url) = (http.clone(), url.to_owned());
        tokio::spawn(async move { probe(&http, timeout, &name, &url, pid, restarts).await })
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
        let fenced = fenced(view.as_ref(), &c.id);
        if let Some(why) = &fenced {
            process.detail = format!("{}, {why}", process.detail);
            process.health = process.health.worst(Health::Amber);
        }
        cells.push(CellStatus {
            process,
            backup,
            slots,
            liveness,
            serving: Vec::new(),
            fenced,
            payments: "-".into(),
        });
    }

    let answers: BTreeMap<String, Replication> = join_all(replications)
        .await?
        .into_iter()
        .filter_map(|(id, r)| r.map(|r| (id, r)))
        .collect();
    for c in &mut cells {
        if let Some(b) = answers
            .get(&c.process.name)
            .and_then(|r| r.payment_breaker.as_ref())
        {
            c.payments = b.state.clone();
            if let Some(note) = payments_note(b) {
                c.process.detail = format!("{}, {note}", c.process.detail);
                c.process.health = c.process.health.worst(Health::Amber);
            }
        }
        c.serving = match answers.get(&c.process.name) {
            Some(r) => r.served().into_iter().map(|s| s.shard).collect(),
            None => view
                .as_ref()
                .and_then(|v| v.map.as_ref())
                .map(|m| {
                    m.shards
                        .values()
                        .filter(|s| s.primary.as_str() == c.process.name)
                        .map(|s| s.id.to_string())
                        .collect()
                })
                .unwrap_or_default(),
        };
    }
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
    let status = Status {
        health,
        router,
        meta,
        cells,
        shards,
        leader,
        term: cluster.as_ref().map(|c| c.term),
        map_version: view.as_ref().map(|v| v.version),
        switches_off: view
            .as_ref()
            .map(|v| {
                v.switches
                    .iter()
                    .filter(|(_, s)| !s.on)
                    .map(|(name, s)| (name.clone(), s.message.clone()))
                    .collect()
            })
            .unwrap_or_default(),
    };
    Ok((status, view))
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
    timeout: Duration,
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
        Err(e) if e.is_timeout() => (
            Health::Red,
            format!("no answer within {}", humanize(timeout)),
        ),
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

/// `2 s`, `1.5 s`, `800 ms`.
fn humanize(d: Duration) -> String {
    if d.as_millis().is_multiple_of(1000) {
        format!("{} s", d.as_secs())
    } else if d >= Duration::from_secs(1) {
        format!("{:.1} s", d.as_secs_f64())
    } else {
        format!("{} ms", d.as_millis())
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
            "{:<6} {:<8} {:>6}  {:<9} {:<9} {:<9} serving",
            "cell", "region", "slots", "backup", "liveness", "payments"
        )?;
        for c in &self.cells {
            writeln!(
                f,
                "{:<6} {:<8} {:>6}  {:<9} {:<9} {:<9} {}",
                c.process.name,
                c.process.region,
                c.slots,
                c.backup.as_deref().unwrap_or("-"),
                c.liveness,
                c.payments,
                if c.serving.is_empty() {
                    "-".to_owned()
                } else {
                    c.serving.join(",")
                }
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
        let failovers: Vec<&ShardStatus> = self
            .shards
            .iter()
            .filter(|s| s.last_failover.is_some())
            .collect();
        if !failovers.is_empty() {
            writeln!(f)?;
            writeln!(f, "last failover per shard:")?;
            for s in failovers {
                let lf = s.last_failover.as_ref().expect("filtered above");
                let ago = (wall_ms() - lf.at_ms as i64).max(0) / 1000;
                writeln!(
                    f,
                    "  {:<6} {:<9} {} -> {} at epoch {}, {} s ago, took {}",
                    s.shard,
                    lf.kind,
                    lf.from,
                    lf.to,
                    lf.epoch,
                    ago,
                    lf.took_ms
                        .map(|t| format!("{t} ms"))
                        .unwrap_or_else(|| "?".into())
                )?;
            }
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
            paused: false,
            unprotected: false,
        }
    }

    #[test]
    fn a_degraded_cells_payments_are_named() {
        let side = |state: &str| BreakerSide {
            state: state.into(),
            reason: "6 of the last 8 calls to the payment provider failed".into(),
            retry_after_s: 3,
        };
        assert_eq!(payments_note(&side("closed")), None);
        let open = payments_note(&side("open")).unwrap();
        assert!(open.starts_with("C2C sends degraded"), "{open}");
        assert!(
            open.contains("6 of the last 8") && open.contains("3 s"),
            "{open}"
        );
        assert!(payments_note(&side("half_open"))
            .unwrap()
            .contains("probing"));
        // A cell's answer from before the breaker still parses.
        let r: Replication =
            serde_json::from_str(r#"{"shard":"c1","head":3,"backup":null}"#).unwrap();
        assert!(r.payment_breaker.is_none());
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
            AlarmFacts {
                paused: true,
                ..healthy()
            },
            AlarmFacts {
                backup: None,
                backup_answered: false,
                unprotected: true,
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

//! `cellctl status`: every process with its health, the raft leader, the map version, slots
//! per cell and the backup pairs, from `deployment.json` and the processes' own answers.
//!
//! Health: **green** = `/readyz` answers 200 (and, for a cell, raft-meta sees it alive);
//! **amber** = the process answers but is not ready, or raft-meta suspects the cell;
//! **red** = no answer (stopped, crashed, restarting) or raft-meta has it down.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

use crate::deployment::{self, Layout, Record};
use crate::up::admin_client;

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
    pub leader: Option<u64>,
    pub term: Option<u64>,
    pub map_version: Option<u64>,
    pub switches_off: BTreeMap<String, String>,
}

#[derive(Debug, Serialize)]
pub struct Process {
    pub name: String,
    pub url: String,
    pub pid: Option<u32>,
    pub health: Health,
    pub detail: String,
    pub restarts: u32,
}

#[derive(Debug, Serialize)]
pub struct CellStatus {
    #[serde(flatten)]
    pub process: Process,
    pub region: String,
    pub backup: Option<String>,
    pub slots: usize,
    /// raft-meta's view from the cell's heartbeats: alive, suspect, down (or unknown).
    pub liveness: String,
}

/// Probes every process of the deployment recorded under `layout`.
pub async fn gather(layout: &Layout) -> anyhow::Result<Status> {
    let record: Record = deployment::read_json(&layout.deployment())?;
    let secret = deployment::secret(layout, false)?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()?;
    let restarts = |name: &str| record.restarts.get(name).copied().unwrap_or(0);

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

    let client = admin_client(record.meta_nodes(), &secret).with_deadline(Duration::from_secs(3));
    let (cluster, view) = tokio::join!(client.cluster(), client.map(false));
    let cluster = cluster.ok();
    let view = view.ok();
    let router = router.await?;
    let mut meta = join_all(meta).await?;
    let leader = cluster.as_ref().and_then(|c| c.leader);
    for m in &mut meta {
        if leader.is_some_and(|l| m.name == format!("meta{l}")) {
            m.detail = format!("{}, leader", m.detail);
        }
    }

    let mut cells = Vec::new();
    for (c, mut process) in record.cells.iter().zip(join_all(cell_probes).await?) {
        let id = topology::CellId::parse(&c.id).ok();
        let slots = view
            .as_ref()
            .and_then(|v| v.map.as_ref())
            .map(|m| {
                m.slots
                    .iter()
                    .filter(|s| Some(&s.cell) == id.as_ref())
                    .count()
            })
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
        cells.push(CellStatus {
            process,
            region: c.region.clone(),
            backup: c.backup.clone(),
            slots,
            liveness,
        });
    }

    let mut health = router.health;
    for p in meta.iter().chain(cells.iter().map(|c| &c.process)) {
        health = health.worst(p.health);
    }
    if leader.is_none() {
        health = Health::Red;
    }
    Ok(Status {
        health,
        router,
        meta,
        cells,
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
            "{:<7} {:<8} {:<8} {:<28} {:>8}  detail",
            "health", "process", "pid", "url", "restarts"
        )?;
        for p in std::iter::once(&self.router).chain(&self.meta) {
            writeln!(
                f,
                "{:<7} {:<8} {:<8} {:<28} {:>8}  {}",
                mark(p.health),
                p.name,
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
                "{:<7} {:<8} {:<8} {:<28} {:>8}  {}",
                mark(p.health),
                format!("cell {}", p.name),
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
                c.region,
                c.slots,
                c.backup.as_deref().unwrap_or("-"),
                c.liveness
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

//! One trial of a drill: steady state, load, fault, guard, recovery, verdicts, restore.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use harness::api::{Client, Reconciliation};
use harness::ledger::{Ledger, Verification};
use harness::load::{self, LoadArgs, Options, Retry, Target};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::Serialize;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use topology::{CellId, CellMap, ShardId};

use super::inject::{Injector, Undo};
use super::timeline::{self, Rec, Second, Stats};
use super::{DrillArgs, Scenario};
use crate::deployment::{self, Layout, Record};
use crate::failover::{self, Ctl, FailoverArgs};
use crate::status::{self, Health};
use crate::{rebuild, verify};

/// What every trial shares.
pub struct Ctx {
    pub layout: Layout,
    pub args: DrillArgs,
    pub injector: Injector,
    pub router_url: String,
    pub secret: String,
    /// Distinguishes this drill's users from every other drill's (its start, in ms).
    pub nonce: u64,
}

/// A moment of the trial, from the load's start.
#[derive(Clone, Debug, Serialize)]
pub struct Event {
    pub at_ms: u64,
    pub what: String,
}

/// One guarantee and whether it held.
#[derive(Clone, Debug, Serialize)]
pub struct Verdict {
    pub name: String,
    pub ok: bool,
    pub detail: String,
}

/// The load as the engine reported it.
#[derive(Clone, Debug, Default, Serialize)]
pub struct LoadSummary {
    pub scheduled: u64,
    pub completed: u64,
    pub ok: u64,
    pub expected: u64,
    /// Operations whose last request failed (after the client's retries).
    pub errors: u64,
    pub dropped: u64,
    pub achieved_rate: f64,
}

/// One trial's findings. `ok` only when every verdict held.
#[derive(Debug, Serialize)]
pub struct Trial {
    pub ok: bool,
    pub trial: u32,
    pub scenario: Scenario,
    pub seed: u64,
    /// The cell, shard, region or raft-meta voter hit.
    pub target: Option<String>,
    /// Why the drill did not inject (the deployment was not in a steady state).
    pub refused: Option<String>,
    /// Why the drill stopped early (a guard tripped, an injection failed, Ctrl-C).
    pub aborted: Option<String>,
    /// Shards whose primary or backup was hit; the others are healthy. A request counts as
    /// the affected shards' when any shard it touched is one of them.
    pub affected_shards: Vec<String>,
    pub healthy_shards: Vec<String>,
    pub fault_at_ms: Option<u64>,
    /// The slowest affected shard's recovery time (fault → first success for its users).
    pub rto_ms: Option<u64>,
    pub rto_by_shard: BTreeMap<String, Option<u64>>,
    pub acknowledged: u64,
    pub acknowledged_lost: u64,
    pub duplicated: u64,
    /// Writes whose last answer was none or a 5xx: may or may not have happened (allowed).
    pub unknown: u64,
    /// Acknowledged writes that could not be read back (nothing can be said of them).
    pub unverified: u64,
    pub money_conserved: bool,
    pub replicas_equal: bool,
    /// Success ratio of the healthy shards' requests after the fault (`null`: none).
    pub healthy_success_ratio: Option<f64>,
    /// Before the fault, every shard.
    pub baseline: Stats,
    pub healthy_after_fault: Stats,
    pub affected_after_fault: Stats,
    /// The bound the healthy shards' p99 was held to.
    pub healthy_p99_bound_ms: Option<f64>,
    /// kill-backup: whether raft-meta named another backup and it caught up.
    pub reprotected: Option<bool>,
    /// planned-failover: the failover's own report.
    pub failover: Option<failover::Report>,
    /// Whether the deployment was put back (green again) after the trial.
    pub restored: bool,
    pub restore_steps: Vec<String>,
    pub verdicts: Vec<Verdict>,
    /// Client-visible errors (every attempt) by code.
    pub errors_by_code: BTreeMap<String, u64>,
    pub load: LoadSummary,
    pub events: Vec<Event>,
    pub lost_items: Vec<Value>,
    pub duplicated_items: Vec<Value>,
    pub timeline: Vec<Second>,
}

impl Trial {
    fn new(k: u32, scenario: Scenario, seed: u64) -> Trial {
        Trial {
            ok: false,
            trial: k,
            scenario,
            seed,
            target: None,
            refused: None,
            aborted: None,
            affected_shards: Vec::new(),
            healthy_shards: Vec::new(),
            fault_at_ms: None,
            rto_ms: None,
            rto_by_shard: BTreeMap::new(),
            acknowledged: 0,
            acknowledged_lost: 0,
            duplicated: 0,
            unknown: 0,
            unverified: 0,
            money_conserved: false,
            replicas_equal: false,
            healthy_success_ratio: None,
            baseline: Stats::default(),
            healthy_after_fault: Stats::default(),
            affected_after_fault: Stats::default(),
            healthy_p99_bound_ms: None,
            reprotected: None,
            failover: None,
            restored: false,
            restore_steps: Vec::new(),
            verdicts: Vec::new(),
            errors_by_code: BTreeMap::new(),
            load: LoadSummary::default(),
            events: Vec::new(),
            lost_items: Vec::new(),
            duplicated_items: Vec::new(),
            timeline: Vec::new(),
        }
    }

    fn refuse(mut self, why: String) -> Trial {
        self.verdicts.push(Verdict {
            name: "steady state before the fault".into(),
            ok: false,
            detail: why.clone(),
        });
        self.refused = Some(why);
        self.restored = true; // nothing was done
        self
    }
}

/// The fault a trial injects, decided before the load starts.
struct Plan {
    target: String,
    /// Processes to SIGKILL and hold down (`cell-c1`, `meta2`).
    kill: Vec<String>,
    /// A cell to freeze.
    freeze: Option<String>,
    /// A shard to fail over (planned).
    switch: Option<String>,
    affected: BTreeSet<String>,
    healthy: BTreeSet<String>,
    /// kill-backup: the shard whose backup is killed, and that backup.
    reprotect: Option<(String, String)>,
    /// isolate-cell: the cell cut off, and the cells (its backup) it is cut off from.
    isolate: Option<(String, Vec<String>)>,
}

/// Why the deployment is not green, in a line.
fn not_green(s: &status::Status) -> String {
    let mut why = Vec::new();
    for p in std::iter::once(&s.router).chain(&s.meta) {
        if p.health != Health::Green {
            why.push(format!("{}: {}", p.name, p.detail));
        }
    }
    for c in &s.cells {
        if c.process.health != Health::Green {
            why.push(format!("{}: {}", c.process.name, c.process.detail));
        }
    }
    for sh in &s.shards {
        if sh.alarm != Health::Green {
            why.push(format!("shard {}: {}", sh.shard, sh.reasons.join("; ")));
        }
    }
    if why.is_empty() {
        why.push(format!("{:?}", s.health).to_lowercase());
    }
    why.join(", ")
}

/// Picks the target (named, or drawn by the seed) and what the fault touches.
fn plan(
    scenario: Scenario,
    named: Option<&str>,
    seed: u64,
    map: &CellMap,
    record: &Record,
    leader: Option<u64>,
) -> anyhow::Result<Plan> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    // Shards that hold slots, with (primary, backup).
    let shards: Vec<(String, String, Option<String>)> = map
        .shards
        .values()
        .filter(|s| map.slots_in(&s.id).next().is_some())
        .map(|s| {
            (
                s.id.to_string(),
                s.primary.to_string(),
                s.backup.as_ref().map(|b| b.to_string()),
            )
        })
        .collect();
    let touching = |cells: &[String]| -> BTreeSet<String> {
        shards
            .iter()
            .filter(|(_, p, b)| cells.contains(p) || b.as_ref().is_some_and(|b| cells.contains(b)))
            .map(|(s, _, _)| s.clone())
            .collect()
    };
    let pick = |choices: Vec<String>, what: &str, rng: &mut rand::rngs::StdRng| {
        let mut choices = choices;
        choices.sort();
        choices.dedup();
        match named {
            Some(n) if choices.iter().any(|c| c == n) => Ok(n.to_owned()),
            Some(n) => anyhow::bail!(
                "--target {n:?} is not {what} (choices now: {})",
                choices.join(", ")
            ),
            None => choices
                .choose(rng)
                .cloned()
                .with_context(|| format!("the deployment has no {what}")),
        }
    };
    let protected: Vec<&(String, String, Option<String>)> =
        shards.iter().filter(|(_, _, b)| b.is_some()).collect();
    let mut p = Plan {
        target: String::new(),
        kill: Vec::new(),
        freeze: None,
        switch: None,
        affected: BTreeSet::new(),
        healthy: BTreeSet::new(),
        reprotect: None,
        isolate: None,
    };
    match scenario {
        Scenario::KillCell | Scenario::FreezeCell => {
            let cell = pick(
                protected.iter().map(|(_, p, _)| p.clone()).collect(),
                "a primary cell of a shard with a backup",
                &mut rng,
            )?;
            p.affected = touching(std::slice::from_ref(&cell));
            if scenario == Scenario::KillCell {
                p.kill.push(format!("cell-{cell}"));
            } else {
                p.freeze = Some(cell.clone());
            }
            p.target = cell;
        }
        Scenario::IsolateCell => {
            let cell = pick(
                protected.iter().map(|(_, p, _)| p.clone()).collect(),
                "a primary cell of a shard with a backup",
                &mut rng,
            )?;
            // Its backups: of every shard it is primary of.
            let backups: Vec<String> = shards
                .iter()
                .filter(|(_, p, _)| *p == cell)
                .filter_map(|(_, _, b)| b.clone())
                .collect();
            p.affected = touching(std::slice::from_ref(&cell));
            p.isolate = Some((cell.clone(), backups));
            p.target = cell;
        }
        Scenario::PlannedFailover => {
            let shard = pick(
                protected.iter().map(|(s, _, _)| s.clone()).collect(),
                "a shard with a backup",
                &mut rng,
            )?;
            // Both cells of the switchover work for it (the pause, the catch-up, the
            // promotion): every shard on either is affected.
            let (_, primary, backup) = shards
                .iter()
                .find(|(s, _, _)| *s == shard)
                .expect("picked among the shards");
            let backup = backup.clone().expect("picked among shards with a backup");
            p.affected = touching(&[primary.clone(), backup]);
            p.switch = Some(shard.clone());
            p.target = shard;
        }
        Scenario::KillBackup => {
            let shard = pick(
                protected.iter().map(|(s, _, _)| s.clone()).collect(),
                "a shard with a backup",
                &mut rng,
            )?;
            let backup = shards
                .iter()
                .find(|(s, _, _)| *s == shard)
                .and_then(|(_, _, b)| b.clone())
                .expect("picked among shards with a backup");
            p.affected = touching(std::slice::from_ref(&backup));
            p.kill.push(format!("cell-{backup}"));
            p.reprotect = Some((shard.clone(), backup));
            p.target = shard;
        }
        Scenario::KillRegion => {
            let region = pick(
                record.cells.iter().map(|c| c.region.clone()).collect(),
                "a region with cells",
                &mut rng,
            )?;
            let cells: Vec<String> = record
                .cells
                .iter()
                .filter(|c| c.region == region)
                .map(|c| c.id.clone())
                .collect();
            p.affected = touching(&cells);
            p.kill.extend(cells.iter().map(|c| format!("cell-{c}")));
            p.kill.extend(
                record
                    .meta
                    .iter()
                    .filter(|m| m.region == region)
                    .map(|m| format!("meta{}", m.id)),
            );
            p.target = region;
        }
        Scenario::KillMetaLeader => {
            let id = leader.context("raft-meta has no leader now")?;
            p.kill.push(format!("meta{id}"));
            p.target = format!("meta{id}");
        }
    }
    p.healthy = shards
        .iter()
        .map(|(s, _, _)| s.clone())
        .filter(|s| !p.affected.contains(s))
        .collect();
    Ok(p)
}

/// raft-meta's `AUTO_COOLDOWN_MS` (raft-meta/src/state/failover.rs): a shard that failed
/// over is not failed over automatically again within it.
const AUTO_COOLDOWN: Duration = Duration::from_secs(60);

/// The shard the fault would need raft-meta to fail over on its own that is still within
/// its cooldown, and how long until the cooldown ends (plus a second).
fn cooling_down(
    plan: &Plan,
    map: &CellMap,
    failovers: &BTreeMap<ShardId, wire::FailoverRecord>,
) -> Option<(String, Duration)> {
    let hit: Vec<&str> = plan
        .kill
        .iter()
        .filter_map(|p| p.strip_prefix("cell-"))
        .chain(plan.freeze.as_deref())
        .chain(plan.isolate.as_ref().map(|(c, _)| c.as_str()))
        .collect();
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    map.shards
        .values()
        .filter(|s| hit.contains(&s.primary.as_str()))
        .filter_map(|s| {
            let last = failovers.get(&s.id)?;
            let ends = last.at_ms + AUTO_COOLDOWN.as_millis() as u64 + 1_000;
            (ends > now_ms).then(|| (s.id.to_string(), Duration::from_millis(ends - now_ms)))
        })
        .max_by_key(|(_, d)| *d)
}

fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

/// Runs trial `k`. Errors only when the drill cannot run at all (no deployment, no map);
/// everything that goes wrong in the deployment is a finding of the trial.
pub async fn run(ctx: &Ctx, k: u32, seed: u64) -> anyhow::Result<Trial> {
    let args = &ctx.args;
    let mut trial = Trial::new(k, args.scenario, seed);

    // 1. Steady state.
    let status = status::gather(&ctx.layout).await?;
    if status.health != Health::Green {
        return Ok(trial.refuse(format!(
            "the deployment is not green: {}",
            not_green(&status)
        )));
    }
    let ctl = Ctl::open(&ctx.layout)?;
    let view = view(&ctl).await?;
    let map = view.map.clone().context("raft-meta has no map yet")?;
    let record: Record = deployment::read_json(&ctx.layout.deployment())?;
    let plan = plan(
        args.scenario,
        args.target.as_deref(),
        seed,
        &map,
        &record,
        status.leader,
    )?;
    trial.target = Some(plan.target.clone());
    trial.affected_shards = plan.affected.iter().cloned().collect();
    trial.healthy_shards = plan.healthy.iter().cloned().collect();
    let mut waited = None;
    if let Some((shard, wait)) = cooling_down(&plan, &map, &view.failovers) {
        // raft-meta does not fail a shard over on its own twice within its cooldown: a
        // drill then would test a deployment that deliberately does not recover.
        tracing::info!(
            "shard {shard} failed over less than {} s ago: waiting {} ms before the fault",
            AUTO_COOLDOWN.as_secs(),
            wait.as_millis()
        );
        tokio::time::sleep(wait).await;
        waited = Some(format!(
            "waited {} ms before the load: shard {shard} had failed over within raft-meta's {} s cooldown of automatic failovers",
            wait.as_millis(),
            AUTO_COOLDOWN.as_secs()
        ));
    }

    // 2. The load, with its ledger and a tap of every finished operation.
    let ledger = Arc::new(Ledger::new());
    let (tap, mut taps) = mpsc::unbounded_channel();
    let stop = CancellationToken::new();
    let (started_tx, started_rx) = oneshot::channel();
    let load_args = LoadArgs {
        rate: args.rate,
        duration: args.duration,
        mix: args.mix,
        users: args.users,
        warmup: Duration::ZERO,
        max_in_flight: 4096,
        timeout: Duration::from_secs(10),
        seed: Some(seed),
        initial_packets: 16,
        json: true,
    };
    let target = Target {
        router_url: ctx.router_url.clone(),
        secret: ctx.secret.clone(),
    };
    let opts = Options {
        // Fresh users for every trial of every drill (a seed may be run again): their
        // wallets start empty, so the ledger accounts for every cent credited to them.
        user_prefix: Some(format!("drill{:x}t{k}-", ctx.nonce)),
        retry: Some(Retry {
            attempts: 40,
            backoff_ms: 100,
        }),
        ledger: Some(ledger.clone()),
        tap: Some(tap),
        stop: Some(stop.clone()),
        started: Some(started_tx),
        keys: None,
    };
    let mut load = tokio::spawn(async move { load::run_with(&load_args, &target, opts).await });
    let origin: Instant = match started_rx.await {
        Ok(at) => at,
        Err(_) => {
            let why = match (&mut load).await {
                Ok(Err(e)) => format!("{e:#}"),
                _ => "the load did not start".into(),
            };
            return Ok(trial.refuse(format!("the load could not start: {why}")));
        }
    };
    let recs: Arc<Mutex<Vec<Rec>>> = Arc::default();
    let collector = {
        let (recs, map) = (recs.clone(), map.clone());
        tokio::spawn(async move {
            while let Some(f) = taps.recv().await {
                let mut recs = recs.lock().expect("records lock");
                for s in &f.steps {
                    if let Some(r) = timeline::rec_of(&map, origin, s) {
                        recs.push(r);
                    }
                }
            }
        })
    };
    let event = |trial: &mut Trial, what: String| {
        tracing::info!(trial = k, "{what}");
        trial.events.push(Event {
            at_ms: ms(origin.elapsed()),
            what,
        });
    };
    if let Some(w) = waited {
        trial.events.push(Event { at_ms: 0, what: w });
    }
    event(&mut trial, format!("load started at {} ops/s", args.rate));

    // 3. The baseline, then the fault.
    let interrupted = tokio::select! {
        _ = tokio::time::sleep_until(origin + args.fault_at) => false,
        _ = tokio::signal::ctrl_c() => true,
    };
    let fault = args.fault_at;
    let baseline = {
        let recs = recs.lock().expect("records lock");
        timeline::stats(recs.iter().filter(|r| r.started < fault))
    };
    trial.baseline = baseline.clone();
    let refusal = if interrupted {
        Some("interrupted (Ctrl-C) before the fault".to_owned())
    } else if baseline.requests == 0 {
        Some("no request finished before the fault: no baseline".to_owned())
    } else if 1.0 - baseline.success_ratio.unwrap_or(0.0) > args.max_baseline_errors {
        Some(format!(
            "the baseline error ratio {:.4} is above {} ({:?})",
            1.0 - baseline.success_ratio.unwrap_or(0.0),
            args.max_baseline_errors,
            baseline.errors_by_code
        ))
    } else if baseline.p99_ms.unwrap_or(0.0) > args.max_baseline_p99_ms {
        Some(format!(
            "the baseline p99 {:.1} ms is above {} ms",
            baseline.p99_ms.unwrap_or(0.0),
            args.max_baseline_p99_ms
        ))
    } else {
        None
    };
    if let Some(why) = refusal {
        stop.cancel();
        let _ = load.await;
        let _ = collector.await;
        return Ok(trial.refuse(why));
    }
    trial.verdicts.push(Verdict {
        name: "steady state before the fault".into(),
        ok: true,
        detail: format!(
            "green; baseline {} requests, success {:.4}, p99 {:.1} ms",
            baseline.requests,
            baseline.success_ratio.unwrap_or(0.0),
            baseline.p99_ms.unwrap_or(0.0)
        ),
    });

    let mut undo = Undo::new(&ctx.layout);
    trial.fault_at_ms = Some(ms(origin.elapsed()));
    let mut thaw_at = None;
    let mut reconnect_at = None;
    let mut rto_from = args.fault_at;
    let injected: anyhow::Result<()> = async {
        if !plan.kill.is_empty() {
            let mut lines = Vec::new();
            for p in &plan.kill {
                lines.push(ctx.injector.kill(p, &mut undo).await?);
            }
            event(&mut trial, lines.join("; "));
        }
        if let Some(cell) = &plan.freeze {
            let line = ctx.injector.freeze(cell, &mut undo)?;
            event(&mut trial, line);
            thaw_at = Some(origin + fault + args.freeze_for);
        }
        if let Some((cell, from)) = &plan.isolate {
            let line = ctx.injector.isolate(cell, from, &mut undo).await?;
            // Recovery is timed from the cut applied (the proxies confirm within their poll).
            rto_from = origin.elapsed();
            event(&mut trial, line);
            reconnect_at = Some(origin + fault + args.isolate_for);
        }
        if let Some(shard) = &plan.switch {
            event(&mut trial, format!("planned failover of shard {shard}"));
            let id = ShardId::parse(shard)?;
            let before = map.shard(&id).map(|i| i.primary.clone());
            let mut tries = 0;
            let report = loop {
                tries += 1;
                match ctx.injector.planned_failover(shard, None).await {
                    Ok(r) => break r,
                    Err(e) if tries < 3 => {
                        // Asked again only while the shard has not moved (a failover that
                        // failed before its move, e.g. a map read without a quorum).
                        let now = self::view(&ctl).await?;
                        let primary = now
                            .map
                            .as_ref()
                            .and_then(|m| m.shard(&id))
                            .map(|i| i.primary.clone());
                        if primary != before {
                            return Err(e.context("the failover failed after moving the shard"));
                        }
                        event(
                            &mut trial,
                            format!("the planned failover failed, again: {e:#}"),
                        );
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                    Err(e) => return Err(e),
                }
            };
            event(
                &mut trial,
                format!(
                    "shard {shard} moved {} → {} (unavailable {} ms)",
                    report.from, report.to, report.unavailable_ms
                ),
            );
            trial.failover = Some(report);
        }
        Ok(())
    }
    .await;
    if let Err(e) = injected {
        trial.aborted = Some(format!("the injection failed: {e:#}"));
        stop.cancel();
    }

    // 4. The guard, the thaw, until the load is done.
    let guard_from = origin + fault + Duration::from_secs(2);
    let report = loop {
        tokio::select! {
            r = &mut load => break r,
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
            _ = tokio::signal::ctrl_c(), if trial.aborted.is_none() => {
                trial.aborted = Some("interrupted (Ctrl-C)".into());
                stop.cancel();
                let done = undo.restore().await.unwrap_or_else(|e| vec![format!("{e:#}")]);
                event(&mut trial, format!("aborted; restored: {}", done.join("; ")));
            }
        }
        if thaw_at.is_some_and(|t| Instant::now() >= t) {
            thaw_at = None;
            let done = undo.thaw();
            event(&mut trial, done.join("; "));
        }
        if reconnect_at.is_some_and(|t| Instant::now() >= t) {
            reconnect_at = None;
            let done = undo.reconnect();
            event(&mut trial, done.join("; "));
        }
        let now = Instant::now();
        if trial.aborted.is_none() && now >= guard_from {
            let (n, ratio) = timeline::healthy_window(
                &recs.lock().expect("records lock"),
                &plan.affected,
                (now - Duration::from_secs(2)).saturating_duration_since(origin),
                now.saturating_duration_since(origin),
            );
            if n >= 20 && ratio < args.guard_min_success {
                let why = format!(
                    "guard: the healthy shards' success ratio over 2 s fell to {ratio:.3} (< {}) over {n} requests",
                    args.guard_min_success
                );
                event(&mut trial, why.clone());
                trial.aborted = Some(why);
                stop.cancel();
                let done = undo
                    .restore()
                    .await
                    .unwrap_or_else(|e| vec![format!("{e:#}")]);
                event(&mut trial, format!("restored: {}", done.join("; ")));
            }
        }
    };
    let mut done = undo.thaw();
    done.extend(undo.reconnect());
    if !done.is_empty() {
        event(&mut trial, done.join("; "));
    }
    let _ = collector.await;
    match report {
        Ok(Ok(r)) => {
            trial.load = LoadSummary {
                scheduled: r.scheduled,
                completed: r.completed,
                ok: r.ok,
                expected: r.expected,
                errors: r.errors,
                dropped: r.dropped,
                achieved_rate: r.achieved_rate,
            }
        }
        Ok(Err(e)) => trial.aborted = Some(format!("the load failed: {e:#}")),
        Err(e) => trial.aborted = Some(format!("the load task failed: {e}")),
    }
    event(&mut trial, "load finished".into());

    // 5. Recovery: transfers settled and the books balanced (bounded).
    let token = topology::auth::mint(ctx.secret.as_bytes(), "svc:cellctl", Some("admin"), 3600);
    if let Some((cell, _)) = plan.isolate.as_ref().filter(|_| trial.aborted.is_none()) {
        let url = record
            .cells
            .iter()
            .find(|c| c.id == *cell)
            .map(|c| c.url.clone())
            .unwrap_or_default();
        let v = super::isolate::fenced(&ctl, &map, cell, &url, &token, args.recovery_timeout).await;
        event(&mut trial, format!("fencing: {}", v.detail));
        trial.verdicts.push(v);
    }
    let client = Client::new(&ctx.router_url, Duration::from_secs(10), 16)?;
    let (money, money_detail) = settled(&client, &token, args.recovery_timeout).await;
    trial.money_conserved = money;
    event(&mut trial, format!("reconciliation: {money_detail}"));
    trial.verdicts.push(Verdict {
        name: "money conserved".into(),
        ok: money,
        detail: money_detail,
    });

    // 6. Every acknowledged write read back.
    let v: Verification = ledger
        .verify(&client, &token, 8, Duration::from_secs(20))
        .await;
    trial.acknowledged = v.acknowledged;
    trial.acknowledged_lost = v.acknowledged_lost;
    trial.duplicated = v.duplicated;
    trial.unknown = v.unknown;
    trial.unverified = v.unverified;
    trial.lost_items = v.lost_items.clone();
    trial.duplicated_items = v.duplicated_items.clone();
    trial.verdicts.push(Verdict {
        name: "no acknowledged operation lost".into(),
        ok: v.acknowledged > 0 && v.acknowledged_lost == 0,
        detail: format!(
            "{} acknowledged ({:?}), {} lost",
            v.acknowledged, v.acknowledged_by_op, v.acknowledged_lost
        ),
    });
    trial.verdicts.push(Verdict {
        name: "no effect duplicated".into(),
        ok: v.duplicated == 0,
        detail: format!(
            "{} duplicated; {} wallets checked against their claims",
            v.duplicated, v.wallets_checked
        ),
    });
    trial.verdicts.push(Verdict {
        name: "every acknowledged operation read back".into(),
        ok: v.unverified == 0,
        detail: format!(
            "{} could not be read; {} writes unanswered (may or may not have happened)",
            v.unverified, v.unknown
        ),
    });

    // 7. kill-backup: re-protection, before the killed backup comes back.
    if let Some((shard, old)) = &plan.reprotect {
        let ok = reprotected(&ctl, shard, old, args.recovery_timeout).await;
        trial.reprotected = Some(ok.is_ok());
        let detail = match &ok {
            Ok(b) => format!("shard {shard}: backup {old} → {b}, caught up"),
            Err(e) => format!("shard {shard}: {e:#}"),
        };
        event(&mut trial, format!("re-protection: {detail}"));
        trial.verdicts.push(Verdict {
            name: "re-protection completed".into(),
            ok: ok.is_ok(),
            detail,
        });
    }

    // 8. Put the deployment back.
    let restored: anyhow::Result<Vec<String>> = async {
        let mut steps = undo.restore().await?;
        // Each step of the heal looks before it acts, so it can be run again after a
        // transient error (a raft-meta read without a quorum on a busy machine).
        let mut tries = 0;
        loop {
            tries += 1;
            match heal(&ctx.layout, args.recovery_timeout).await {
                Ok(done) => {
                    steps.extend(done);
                    break;
                }
                Err(e) if tries < 3 => {
                    steps.push(format!("heal attempt {tries} failed, again: {e:#}"));
                    tokio::time::sleep(Duration::from_secs(2)).await;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(steps)
    }
    .await;
    match restored {
        Ok(steps) => {
            trial.restored = true;
            trial.restore_steps = steps;
        }
        Err(e) => trial.restore_steps.push(format!("FAILED: {e:#}")),
    }
    let line = format!("restore {}", if trial.restored { "done" } else { "failed" });
    event(&mut trial, line);
    trial.verdicts.push(Verdict {
        name: "deployment restored".into(),
        ok: trial.restored,
        detail: trial.restore_steps.join("; "),
    });

    // 9. Replicas equal their primaries (after the restore: a shard that failed over has
    // no backup until its old primary is rebuilt).
    let (equal, detail) = replicas_equal(&ctx.layout, args.recovery_timeout).await;
    trial.replicas_equal = equal;
    trial.verdicts.push(Verdict {
        name: "replicas equal".into(),
        ok: equal,
        detail,
    });

    // 10. Recovery times and the blast radius.
    let recs = std::mem::take(&mut *recs.lock().expect("records lock"));
    for shard in &plan.affected {
        let rto = timeline::rto(&recs, shard, rto_from).map(ms);
        trial.rto_by_shard.insert(shard.clone(), rto);
    }
    let all_recovered = trial.rto_by_shard.values().all(Option::is_some);
    trial.rto_ms = trial.rto_by_shard.values().flatten().max().copied();
    if !plan.affected.is_empty() {
        trial.verdicts.push(Verdict {
            name: "every affected shard recovered".into(),
            ok: all_recovered,
            detail: trial
                .rto_by_shard
                .iter()
                .map(|(s, r)| match r {
                    Some(r) => format!("{s}: RTO {r} ms"),
                    None => format!("{s}: no success after the fault"),
                })
                .collect::<Vec<_>>()
                .join(", "),
        });
    }
    // A request is the affected shards' when it touched one of them at all.
    let healthy = |r: &&Rec| !r.hits(&plan.affected);
    trial.healthy_after_fault =
        timeline::stats(recs.iter().filter(|r| r.started >= fault).filter(healthy));
    trial.affected_after_fault = timeline::stats(
        recs.iter()
            .filter(|r| r.started >= fault && r.hits(&plan.affected)),
    );
    trial.healthy_success_ratio = trial.healthy_after_fault.success_ratio;
    let healthy_base = timeline::stats(recs.iter().filter(|r| r.started < fault).filter(healthy));
    let h = &trial.healthy_after_fault;
    if h.requests > 0 {
        let ratio = h.success_ratio.unwrap_or(0.0);
        trial.verdicts.push(Verdict {
            name: format!(
                "healthy shards ≥ {}% success",
                args.min_healthy_success * 100.0
            ),
            ok: ratio >= args.min_healthy_success,
            detail: format!(
                "{:.4} over {} requests ({})",
                ratio,
                h.requests,
                trial.healthy_shards.join(", ")
            ),
        });
        if let (Some(base), Some(p99)) = (healthy_base.p99_ms, h.p99_ms) {
            let bound = (base * args.max_p99_factor).max(base + args.p99_slack_ms);
            let name = format!("healthy p99 ≤ {}× baseline", args.max_p99_factor);
            let detail = format!(
                "p99 {p99:.1} ms after the fault; baseline {base:.1} ms; bound {bound:.1} ms"
            );
            let fewest = healthy_base.requests.min(h.requests);
            if fewest >= args.min_p99_samples {
                trial.healthy_p99_bound_ms = Some(bound);
                trial.verdicts.push(Verdict {
                    name,
                    ok: p99 <= bound,
                    detail,
                });
            } else {
                // A p99 of a hundred requests is their maximum: noise, not a bound.
                trial.verdicts.push(Verdict {
                    name,
                    ok: true,
                    detail: format!(
                        "not judged: {} requests before the fault and {} after, fewer than --min-p99-samples {} ({detail})",
                        healthy_base.requests, h.requests, args.min_p99_samples
                    ),
                });
            }
        }
    } else {
        trial.verdicts.push(Verdict {
            name: "healthy shards".into(),
            ok: true,
            detail: "none: every shard had its primary or its backup hit".into(),
        });
    }
    if let Some(why) = &trial.aborted {
        trial.verdicts.push(Verdict {
            name: "ran to the end".into(),
            ok: false,
            detail: why.clone(),
        });
    }
    for r in &recs {
        if let Some(code) = &r.error {
            *trial.errors_by_code.entry(code.clone()).or_default() += 1;
        }
    }
    trial.timeline = timeline::seconds(&recs, &plan.affected);
    trial.ok = trial.verdicts.iter().all(|v| v.ok);
    Ok(trial)
}

/// raft-meta's map (a linearizable read), asked again for up to 20 s: on a busy machine the
/// leader may fail to confirm its quorum for a moment.
async fn view(ctl: &Ctl) -> anyhow::Result<wire::MapView> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match ctl.view().await {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
}

/// Waits for reconciliation to be ok with nothing in flight; (ok, what it last said).
async fn settled(client: &Client, token: &str, within: Duration) -> (bool, String) {
    let deadline = Instant::now() + within;
    loop {
        let reply = client.reconciliation(token).await;
        if let Some(r) = reply.parse::<Reconciliation>() {
            let t = &r.totals;
            let last = format!(
                "{}: funded {} = wallets {} + escrow {} + in_flight {}{}",
                if r.ok { "ok" } else { "NOT OK" },
                t.funded,
                t.wallets,
                t.escrow,
                t.in_flight,
                if r.findings.is_empty() {
                    String::new()
                } else {
                    format!("; findings {:?}", r.findings)
                }
            );
            if r.ok && t.in_flight == 0 {
                return (true, last);
            }
            if Instant::now() >= deadline {
                return (false, format!("not settled within {within:?}: {last}"));
            }
        } else if Instant::now() >= deadline {
            return (
                false,
                format!(
                    "not settled within {within:?}: the router answered {}",
                    reply.answer
                ),
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Waits until raft-meta names `shard` another backup than `old` and the run-alone grant is
/// withdrawn (the new backup caught up). Returns the new backup.
async fn reprotected(
    ctl: &Ctl,
    shard: &str,
    old: &str,
    within: Duration,
) -> anyhow::Result<String> {
    let id = ShardId::parse(shard)?;
    failover::wait_for(
        &format!("another backup than {old} caught up on shard {shard}"),
        within,
        || async {
            let view = ctl.view().await.ok()?;
            let backup = view.map.as_ref()?.shard(&id)?.backup.as_ref()?.to_string();
            (backup != old && !view.alone.contains_key(&id)).then_some(backup)
        },
    )
    .await
}

/// Puts the deployment back after a fault: every cell that lost shards at a failover is
/// rebuilt as their backup, every shard is failed back to its home cell (the cell of its
/// name), and the deployment is green again. Returns what it did.
pub async fn heal(layout: &Layout, within: Duration) -> anyhow::Result<Vec<String>> {
    let mut done = Vec::new();
    let record: Record = deployment::read_json(&layout.deployment())?;
    let cells: Vec<String> = record.cells.iter().map(|c| c.id.clone()).collect();
    // Every cell alive in raft-meta's view.
    let ctl = Ctl::open(layout)?;
    failover::wait_for("every cell alive in raft-meta's view", within, || async {
        let view = ctl.view().await.ok()?;
        cells
            .iter()
            .all(|c| {
                CellId::parse(c)
                    .is_ok_and(|id| view.liveness.get(&id) == Some(&wire::Liveness::Alive))
            })
            .then_some(())
    })
    .await?;
    for cell in &cells {
        let view = view(&ctl).await?;
        let map = view.map.as_ref().context("raft-meta has no map")?;
        let id = CellId::parse(cell)?;
        let lost = view.failovers.iter().any(|(s, f)| {
            f.from == id
                && map
                    .shard(s)
                    .is_some_and(|i| i.primary != id && i.backup.as_ref() != Some(&id))
        });
        if lost {
            let r = rebuild::run(layout, cell).await?;
            for s in &r.shards {
                done.push(format!(
                    "rebuilt {cell} as the backup of shard {}{}",
                    s.shard,
                    if s.divergent.is_some() {
                        " (a divergent tail set aside)"
                    } else {
                        ""
                    }
                ));
            }
        }
    }
    let view = view(&ctl).await?;
    let map = view.map.as_ref().context("raft-meta has no map")?;
    for info in map.shards.values() {
        let home = info.id.to_string();
        if !cells.contains(&home) || info.primary.as_str() == home {
            continue;
        }
        if info.backup.as_ref().map(|b| b.as_str()) != Some(home.as_str()) {
            done.push(format!(
                "shard {home} left on {}: its home cell is not its backup",
                info.primary
            ));
            continue;
        }
        let args = FailoverArgs {
            shard: home.clone(),
            planned: true,
            emergency: false,
            to: Some(home.clone()),
            json: true,
        };
        let r = failover::run(layout, &args).await?;
        done.push(format!(
            "failed shard {home} back {} → {} ({} ms)",
            r.from, r.to, r.unavailable_ms
        ));
    }
    let last = Mutex::new(String::new());
    let green = failover::wait_for("the deployment green again", within, || async {
        let why = match status::gather(layout).await {
            Ok(s) if s.health == Health::Green => return Some(()),
            Ok(s) => not_green(&s),
            Err(e) => format!("{e:#}"),
        };
        *last.lock().expect("last lock") = why;
        None
    })
    .await;
    green.with_context(|| format!("still: {}", last.lock().expect("last lock")))?;
    done.push("green".into());
    Ok(done)
}

/// `cellctl verify` until every shard matches (bounded); (ok, what it said).
async fn replicas_equal(layout: &Layout, within: Duration) -> (bool, String) {
    let deadline = Instant::now() + within;
    loop {
        let (ok, detail) = match verify::run(layout, None).await {
            Ok(r) => {
                let bad: Vec<String> = r
                    .shards
                    .iter()
                    .filter(|s| !s.equal)
                    .map(|s| {
                        format!(
                            "{}: {}",
                            s.shard,
                            s.error
                                .clone()
                                .unwrap_or_else(|| format!("{} differences", s.differences.len()))
                        )
                    })
                    .collect();
                let n = r.shards.len();
                (
                    r.ok,
                    if bad.is_empty() {
                        format!("{n} shards equal to their primaries")
                    } else {
                        bad.join("; ")
                    },
                )
            }
            Err(e) => (false, format!("{e:#}")),
        };
        if ok || Instant::now() >= deadline {
            return (ok, detail);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

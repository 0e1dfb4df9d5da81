//! Failover recovery time, measured on real deployments (`cellctl up`, release binaries):
//!
//! ```sh
//! cargo bench -p e2e --bench failover -- --trials 5 --rate 200
//! cargo bench -p e2e --bench failover -- --soak-s 600 --rate 1000   # no spurious failover
//! ```
//!
//! Each trial starts a fresh deployment, runs the mixed load through the router with a
//! ledger (the client retries with the same key, as a real one would), injects the fault
//! 4 s in, and measures:
//! - `planned`: `cellctl failover c1 --planned`'s `unavailable_ms` (first paused write →
//!   first write served by the new primary);
//! - `kill` (SIGKILL of c2, kept down), `freeze` (SIGSTOP of c3 for 10 s), `region` (c3, c4
//!   and the west raft-meta voter killed): the RTO, from the fault to the first successful
//!   read through the router by a user of each affected shard (probes every 20 ms), with
//!   automatic failover;
//!
//! then after the load, every acknowledged write is read back (lost, duplicated). The soak
//! runs one deployment under the load for `--soak-s` and counts the failovers raft-meta made
//! (there must be none: no cell was down). On Postgres with `REDCELL_TEST_DATABASE_URL`.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use common::*;
use harness::api::Client;
use harness::up::{token, Backend, Up};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;
use tempfile::TempDir;

#[derive(Parser)]
#[command(about = "failover RTO over trials, and a soak with no fault")]
struct Args {
    /// Trials per scenario, each on a fresh deployment.
    #[arg(long, default_value_t = 5)]
    trials: usize,
    /// Open-loop load through the router, operations per second.
    #[arg(long, default_value_t = 200.0)]
    rate: f64,
    /// Scenarios to run: planned, kill, freeze, region.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "planned,kill,freeze,region"
    )]
    scenarios: Vec<String>,
    /// Instead of the scenarios: run the load this many seconds and count failovers.
    #[arg(long)]
    soak_s: Option<u64>,
    /// Passed by `cargo bench`.
    #[arg(long, hide = true)]
    bench: bool,
}

/// What one trial measured.
struct Trial {
    rto_ms: u64,
    acknowledged: u64,
    lost: u64,
    duplicated: u64,
    client_errors: u64,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 4)]
async fn main() {
    let args = Args::parse();
    let backend = Backend::from_env();
    if let Some(secs) = args.soak_s {
        soak(&backend, args.rate, Duration::from_secs(secs)).await;
        return;
    }
    let mut summary = Vec::new();
    for scenario in &args.scenarios {
        let mut trials = Vec::new();
        for n in 0..args.trials {
            let t = trial(&backend, scenario, args.rate, n).await;
            eprintln!(
                "{scenario} #{n}: rto {} ms, {} acknowledged, {} lost, {} duplicated, {} client errors",
                t.rto_ms, t.acknowledged, t.lost, t.duplicated, t.client_errors
            );
            trials.push(t);
        }
        summary.push((scenario.clone(), trials));
    }
    println!(
        "\n| scenario | trials | RTO p50 ms | RTO max ms | each trial ms | acknowledged | lost | duplicated | client errors |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for (scenario, trials) in &summary {
        let mut rto: Vec<u64> = trials.iter().map(|t| t.rto_ms).collect();
        let each = rto
            .iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        rto.sort_unstable();
        let sum = |f: fn(&Trial) -> u64| trials.iter().map(f).sum::<u64>();
        println!(
            "| {scenario} | {} | {} | {} | {each} | {} | {} | {} | {} |",
            trials.len(),
            rto[(rto.len() - 1) / 2],
            rto[rto.len() - 1],
            sum(|t| t.acknowledged),
            sum(|t| t.lost),
            sum(|t| t.duplicated),
            sum(|t| t.client_errors),
        );
    }
}

async fn trial(backend: &Backend, scenario: &str, rate: f64, n: usize) -> Trial {
    let tmp = TempDir::new().expect("temp dir");
    let up = Up::start(&tmp.path().join("d"), &backend.args()).await;
    let load = Load::start(
        &up,
        rate,
        Duration::from_secs(16),
        true,
        &format!("{scenario}{n}-"),
    );
    tokio::time::sleep(Duration::from_secs(4)).await;
    let rto_ms = match scenario {
        "planned" => {
            let report = cellctl_json(&up, &["failover", "c1", "--planned", "--json"]);
            report["unavailable_ms"].as_u64().expect("unavailable_ms")
        }
        "kill" => {
            let probe = Probe::new(&up, &["c2"]).await;
            let (code, out) = up.cellctl(&["stop", "c2", "--kill"]);
            assert_eq!(code, 0, "{out}");
            probe.until_served(&up, Instant::now()).await
        }
        "freeze" => {
            let probe = Probe::new(&up, &["c3"]).await;
            let pid = Pid::from_raw(cell_pid(&up, "c3"));
            kill(pid, Signal::SIGSTOP).expect("SIGSTOP");
            let rto = probe.until_served(&up, Instant::now()).await;
            tokio::time::sleep(Duration::from_secs(10).saturating_sub(Duration::from_millis(rto)))
                .await;
            kill(pid, Signal::SIGCONT).expect("SIGCONT");
            rto
        }
        "region" => {
            let west_meta = up.record()["meta"]
                .as_array()
                .expect("meta")
                .iter()
                .find(|m| m["region"] == "west")
                .map(|m| format!("meta{}", m["id"]))
                .expect("a raft-meta voter in the west");
            let probe = Probe::new(&up, &["c3", "c4"]).await;
            let at = Instant::now();
            for p in ["c3", "c4", west_meta.as_str()] {
                let (code, out) = up.cellctl(&["stop", p, "--kill"]);
                assert_eq!(code, 0, "{p}: {out}");
            }
            probe.until_served(&up, at).await
        }
        other => panic!("unknown scenario {other} (planned, kill, freeze, region)"),
    };
    let (report, ledger) = load.finish().await;
    let v = verify(&up, &ledger).await;
    if !v.lost_items.is_empty() {
        eprintln!(
            "lost: {}",
            serde_json::to_string(&v.lost_items).unwrap_or_default()
        );
    }
    Trial {
        rto_ms,
        acknowledged: v.acknowledged,
        lost: v.acknowledged_lost,
        duplicated: v.duplicated,
        client_errors: report.errors,
    }
}

/// Reads through the router by one user of each affected shard.
struct Probe {
    users: Vec<String>,
}

impl Probe {
    async fn new(up: &Up, shards: &[&str]) -> Probe {
        let mut users = Vec::new();
        for s in shards {
            users.push(uid_in_shard(up, s).await);
        }
        Probe { users }
    }

    /// Milliseconds from `fault` until every user has had a 200 from a read sent after the
    /// fault: a read is started every 20 ms per user (each may wait on a frozen cell; the
    /// first to succeed counts).
    async fn until_served(&self, up: &Up, fault: Instant) -> u64 {
        let mut worst = 0;
        for uid in &self.users {
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
            let mut tick = tokio::time::interval(Duration::from_millis(20));
            let deadline = fault + Duration::from_secs(60);
            let served = loop {
                tokio::select! {
                    _ = tick.tick() => {
                        assert!(Instant::now() < deadline, "{uid}'s shard not served 60 s after the fault");
                        let (http, url, tok, tx) = (up.http.clone(), format!("{}/v1/users/{uid}/wallet", up.router()), token(uid, None), tx.clone());
                        tokio::spawn(async move {
                            let ok = http.get(url).bearer_auth(tok).timeout(Duration::from_secs(10)).send().await
                                .is_ok_and(|r| r.status().is_success());
                            if ok { let _ = tx.send(Instant::now()); }
                        });
                    }
                    Some(at) = rx.recv() => break at,
                }
            };
            worst = worst.max(served.saturating_duration_since(fault).as_millis() as u64);
        }
        worst
    }
}

/// The ledger read back, without failing the run (the table reports it).
async fn verify(up: &Up, ledger: &Arc<harness::ledger::Ledger>) -> harness::ledger::Verification {
    let client = Client::new(&up.router(), Duration::from_secs(10), 16).expect("client");
    // Transfers settle first (a claim's credit reaches the claimer's home cell): the
    // reconciliation is ok with nothing in flight, within 5 minutes (after a saturating run
    // the transfer backlog takes a while).
    let settled = Instant::now();
    loop {
        let (code, out) = up.cellctl(&["reconcile", "--json"]);
        let body: Value = serde_json::from_str(&out).unwrap_or_default();
        if code == 0 && body["ok"] == true && body["totals"]["in_flight"] == 0 {
            break;
        }
        if settled.elapsed() > Duration::from_secs(300) {
            eprintln!("not settled after 5 minutes: {out}");
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    eprintln!("settled in {} ms", settled.elapsed().as_millis());
    ledger
        .verify(
            &client,
            &token("svc:bench", Some("admin")),
            8,
            Duration::from_secs(30),
        )
        .await
}

async fn soak(backend: &Backend, rate: f64, duration: Duration) {
    let tmp = TempDir::new().expect("temp dir");
    let up = Up::start(&tmp.path().join("d"), &backend.args()).await;
    let before: Value = up.view().await;
    let load = Load::start(&up, rate, duration, true, "soak-");
    let (report, ledger) = load.finish().await;
    let after = up.view().await;
    let v = verify(&up, &ledger).await;
    if !v.lost_items.is_empty() {
        eprintln!(
            "lost: {}",
            serde_json::to_string(&v.lost_items).unwrap_or_default()
        );
    }
    let failovers = after["failovers"].as_object().map_or(0, |f| f.len());
    let not_alive: Vec<String> = after["liveness"]
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(_, l)| *l != "alive")
        .map(|(c, l)| format!("{c}={l}"))
        .collect();
    let all = report
        .operations
        .iter()
        .find(|r| r.name == "all")
        .expect("the all row");
    println!(
        "\nsoak {} s at {rate} ops/s: achieved {:.0} ops/s, {} completed, {} errors, p50 {:.1} ms, p99 {:.1} ms, p99.9 {:.1} ms, max {:.1} ms",
        duration.as_secs(),
        report.achieved_rate,
        report.completed,
        report.errors,
        all.p50_ms,
        all.p99_ms,
        all.p999_ms,
        all.max_ms
    );
    // Every suspicion the leaders raised during the run, from raft-meta's logs.
    let mut suspicions = 0;
    for entry in std::fs::read_dir(up.dir.join("logs"))
        .expect("logs")
        .flatten()
    {
        let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
        suspicions += text
            .lines()
            .filter(|l| l.contains("cell liveness changed") && !l.contains("Alive"))
            .count();
    }
    println!(
        "failovers: {failovers} (map version {} → {}); suspect/down marks: {suspicions}; cells not alive at the end: {:?}; acknowledged {} lost {} duplicated {}",
        before["version"], after["version"], not_alive, v.acknowledged, v.acknowledged_lost, v.duplicated
    );
}

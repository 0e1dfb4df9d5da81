//! `cell-bench`: the hot-packet claim benchmark. Spawns real `cell` processes on Postgres,
//! one per variant (claim queue on, and `--claim-queue off`), in one run, and drives one hot
//! packet with concurrent claimers: closed-loop for throughput, then open-loop at a fixed
//! rate for latency (timed from each request's scheduled start, so coordinated omission is
//! accounted for). Prints claims/s, p50/p99/p99.9/max, errors by status, and the ratios.
//!
//!     cargo run --release -p cell --bin cell-bench -- --clients 256 --duration-s 10
//!
//! With `--ack backup,local` the variants are instead how claims are acknowledged: each
//! spawns a primary cell and its backup cell (a replica on its own database), the primary
//! answering after the backup has the claim (`backup`) or at once (`local`, the baseline).
//! It also prints the primary's acknowledgement-wait quantiles and the replication lag the
//! backup reported, sampled every 100 ms during the open loop.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use hdrhistogram::Histogram;
use serde_json::{json, Value};

const SECRET: &str = "bench-secret-0123456789abcdef";

#[derive(Parser, Debug)]
#[command(about = "Hot-packet claim benchmark: claim queue on vs off, side by side, on Postgres")]
struct Args {
    /// Admin URL of the Postgres server; a fresh database is created per variant.
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/test")]
    database_url: String,
    /// Redis for the admission gate (omit for the in-process gate).
    #[arg(long)]
    redis_url: Option<String>,
    /// Concurrent claimers in the closed-loop phase.
    #[arg(long, default_value_t = 256)]
    clients: usize,
    /// Seconds of measured closed-loop load per variant (after warm-up).
    #[arg(long, default_value_t = 10)]
    duration_s: u64,
    /// Seconds of unmeasured warm-up per variant.
    #[arg(long, default_value_t = 2)]
    warmup_s: u64,
    /// Fixed rate (claims/s) of the open-loop phase; 0 skips it.
    #[arg(long, default_value_t = 1000)]
    rate: u64,
    /// Seconds of the open-loop phase per variant.
    #[arg(long, default_value_t = 10)]
    rate_duration_s: u64,
    /// Variants to run, in order.
    #[arg(long, value_delimiter = ',', default_value = "on,off")]
    queue: Vec<String>,
    /// Acknowledgement variants instead (`backup`, `local`), claim queue on, each with a
    /// backup cell replicating the primary.
    #[arg(long, value_delimiter = ',')]
    ack: Vec<String>,
    /// Drive an already running cell (started with the bench's secret) instead of spawning
    /// one per variant; for profiling.
    #[arg(long)]
    attach: Option<String>,
    /// The `cell` binary (default: next to this one).
    #[arg(long)]
    cell_bin: Option<PathBuf>,
}

struct Cell {
    child: Child,
    url: String,
    admin: String,
    db: String,
    /// The backup cell of an acknowledgement variant.
    backup: Option<Box<Cell>>,
}

impl Drop for Cell {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = Command::new("psql")
            .arg(&self.admin)
            .arg("-qc")
            .arg(format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.db))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        // A backup cell's replica of c1 (see cell::replication).
        let _ = Command::new("psql")
            .arg(&self.admin)
            .arg("-qc")
            .arg(format!(
                "DROP DATABASE IF EXISTS {}_replica_c1 WITH (FORCE)",
                self.db
            ))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// A primary `c1` (east) backed up by `c2` (west) on a static map; `ack` is the primary's
/// `--acknowledge`.
async fn spawn_pair(args: &Args, ack: &str, logs: &std::path::Path) -> Result<Cell> {
    let (p1, p2) = (free_port()?, free_port()?);
    let map = json!({
        "version": 1,
        "cells": {
            "c1": {"id": "c1", "region": "east", "url": format!("http://127.0.0.1:{p1}"), "backup": "c2"},
            "c2": {"id": "c2", "region": "west", "url": format!("http://127.0.0.1:{p2}")},
        },
        "slots": vec![json!({"cell": "c1", "epoch": 1}); 1024],
    });
    let path = logs.join(format!("map-{ack}.json"));
    std::fs::write(&path, map.to_string())?;
    let map_arg = path.display().to_string();
    let backup = spawn_cell_with(
        args,
        &format!("{ack}_backup"),
        &logs.join(format!("cell-{ack}-backup.log")),
        &[
            "--listen",
            &format!("127.0.0.1:{p2}"),
            "--cell-id",
            "c2",
            "--map",
            &map_arg,
        ],
    )
    .await?;
    let mut primary = spawn_cell_with(
        args,
        ack,
        &logs.join(format!("cell-{ack}.log")),
        &[
            "--listen",
            &format!("127.0.0.1:{p1}"),
            "--cell-id",
            "c1",
            "--map",
            &map_arg,
            "--acknowledge",
            ack,
        ],
    )
    .await?;
    primary.backup = Some(Box::new(backup));
    Ok(primary)
}

async fn spawn_cell(args: &Args, queue: &str, log: &std::path::Path) -> Result<Cell> {
    spawn_cell_with(
        args,
        queue,
        log,
        &["--listen", "127.0.0.1:0", "--claim-queue", queue],
    )
    .await
}

async fn spawn_cell_with(
    args: &Args,
    name: &str,
    log: &std::path::Path,
    extra: &[&str],
) -> Result<Cell> {
    use sqlx::Connection;
    let db = format!("redcell_bench_{name}_{:x}", rand::random::<u32>());
    let mut conn = sqlx::PgConnection::connect(&args.database_url)
        .await
        .context("connect to Postgres")?;
    sqlx::query(&format!("CREATE DATABASE {db}"))
        .execute(&mut conn)
        .await?;
    let base = args
        .database_url
        .rsplit_once('/')
        .map(|(b, _)| b)
        .context("database url has no database")?;
    let bin = match &args.cell_bin {
        Some(b) => b.clone(),
        None => std::env::current_exe()?.with_file_name("cell"),
    };
    let data = tempfile::tempdir()?.keep();
    let mut cmd = Command::new(&bin);
    cmd.args(extra)
        .args(["--max-count", "1000000", "--max-total", "1000000000"])
        .arg("--data-dir")
        .arg(&data)
        .arg("--database-url")
        .arg(format!("{base}/{db}"))
        .env("REDCELL_AUTH_SECRET", SECRET)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::from(std::fs::File::create(log)?));
    if let Some(r) = &args.redis_url {
        cmd.arg("--redis-url").arg(r);
    }
    let mut child = cmd
        .spawn()
        .with_context(|| format!("spawn {}", bin.display()))?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().context("stdout")?).read_line(&mut line)?;
    let Some(url) = line.trim().strip_prefix("listening on ") else {
        bail!("cell did not start; see {}", log.display());
    };
    Ok(Cell {
        child,
        url: url.to_owned(),
        admin: args.database_url.clone(),
        db,
        backup: None,
    })
}

/// The quantiles of the histogram `metric` (seconds, shown in ms) from `url`'s `/metrics`.
async fn quantiles(http: &reqwest::Client, url: &str, metric: &str) -> String {
    let Ok(res) = http.get(format!("{url}/metrics")).send().await else {
        return "metrics unavailable".into();
    };
    let text = res.text().await.unwrap_or_default();
    let q: Vec<String> = text
        .lines()
        .filter(|l| l.starts_with(metric))
        .filter_map(|l| {
            let (name, v) = l.rsplit_once(' ')?;
            let v: f64 = v.parse().ok()?;
            let label = name
                .split("quantile=\"")
                .nth(1)
                .map(|q| format!("q{}", q.trim_end_matches("\"}")))
                .unwrap_or_else(|| {
                    name.trim_start_matches("redcell_ack_wait_seconds")
                        .to_owned()
                });
            Some(if label.starts_with('q') && metric.ends_with("_seconds") {
                format!("{label} {:.2} ms", v * 1000.0)
            } else if label.starts_with('q') {
                format!("{label} {v:.0}")
            } else {
                format!("{label} {v}")
            })
        })
        .collect();
    if q.is_empty() {
        "none recorded".into()
    } else {
        q.join(", ")
    }
}

/// Samples the backup's reported replication lag (ms) every 100 ms until `stop`.
async fn sample_lag(http: reqwest::Client, backup: String, stop: Arc<AtomicBool>) -> Vec<u64> {
    let mut out = Vec::new();
    let admin = token("svc:bench", Some("admin"));
    while !stop.load(Ordering::Relaxed) {
        if let Ok(r) = http
            .get(format!("{backup}/v1/internal/replication"))
            .bearer_auth(&admin)
            .send()
            .await
        {
            if let Ok(v) = r.json::<Value>().await {
                if let Some(l) = v["replicas"][0]["lag_ms"].as_u64() {
                    out.push(l);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    out
}

fn token(sub: &str, scope: Option<&str>) -> String {
    topology::auth::mint(SECRET.as_bytes(), sub, scope, 3600)
}

/// A paid C2C packet with `count` shares.
async fn hot_packet(http: &reqwest::Client, url: &str, count: i64) -> Result<String> {
    let res = http
        .post(format!("{url}/v1/packets"))
        .bearer_auth(token("bench-sender", None))
        .header(
            "idempotency-key",
            format!("bench-{:x}", rand::random::<u64>()),
        )
        .json(&json!({"kind": "c2c", "total": count * 50, "count": count}))
        .send()
        .await?;
    let v: Value = res.json().await?;
    let packet = v["packet_id"].as_str().context("packet id")?.to_owned();
    let payment = v["payment"]["payment_id"].as_str().context("payment id")?;
    let res = http
        .post(format!("{url}/v1/payments/{payment}/callback"))
        .bearer_auth(token("svc:payments", Some("payment:callback")))
        .json(&json!({"status": "succeeded"}))
        .send()
        .await?;
    if !res.status().is_success() {
        bail!("callback failed: {}", res.status());
    }
    Ok(packet)
}

#[derive(Default)]
struct Tally {
    hist: Option<Histogram<u64>>,
    statuses: BTreeMap<String, u64>,
}

impl Tally {
    fn new() -> Tally {
        Tally {
            hist: Some(Histogram::new_with_bounds(1, 120_000_000, 3).expect("histogram bounds")),
            statuses: BTreeMap::new(),
        }
    }
    fn record(&mut self, us: u64, status: String) {
        if let Some(h) = &mut self.hist {
            let _ = h.record(us.max(1));
        }
        *self.statuses.entry(status).or_default() += 1;
    }
    fn merge(&mut self, other: Tally) {
        if let (Some(a), Some(b)) = (&mut self.hist, &other.hist) {
            let _ = a.add(b);
        }
        for (k, v) in other.statuses {
            *self.statuses.entry(k).or_default() += v;
        }
    }
}

struct Outcome {
    rate: f64,
    tally: Tally,
}

async fn claim(http: &reqwest::Client, url: &str, packet: &str, uid: &str) -> String {
    match http
        .post(format!("{url}/v1/packets/{packet}/claims"))
        .bearer_auth(token(uid, None))
        .send()
        .await
    {
        Ok(r) => r.status().as_u16().to_string(),
        Err(e) if e.is_timeout() => "timeout".into(),
        Err(_) => "connect".into(),
    }
}

/// `clients` claimers, each claiming as a fresh user again and again.
async fn closed_loop(
    http: &reqwest::Client,
    url: &str,
    packet: &str,
    clients: usize,
    warmup: Duration,
    measure: Duration,
) -> Outcome {
    let stop = Arc::new(AtomicBool::new(false));
    let measuring = Arc::new(AtomicBool::new(false));
    let seq = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for c in 0..clients {
        let (http, url, packet) = (http.clone(), url.to_owned(), packet.to_owned());
        let (stop, measuring, seq) = (stop.clone(), measuring.clone(), seq.clone());
        tasks.push(tokio::spawn(async move {
            let mut tally = Tally::new();
            while !stop.load(Ordering::Relaxed) {
                let uid = format!("u{c}-{}", seq.fetch_add(1, Ordering::Relaxed));
                let started = Instant::now();
                let status = claim(&http, &url, &packet, &uid).await;
                if measuring.load(Ordering::Relaxed) {
                    tally.record(started.elapsed().as_micros() as u64, status);
                }
            }
            tally
        }));
    }
    tokio::time::sleep(warmup).await;
    measuring.store(true, Ordering::Relaxed);
    let started = Instant::now();
    tokio::time::sleep(measure).await;
    measuring.store(false, Ordering::Relaxed);
    let elapsed = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let mut tally = Tally::new();
    for t in tasks {
        if let Ok(t) = t.await {
            tally.merge(t);
        }
    }
    let ok = tally.statuses.get("201").copied().unwrap_or(0);
    Outcome {
        rate: ok as f64 / elapsed.as_secs_f64(),
        tally,
    }
}

/// Claims started at a fixed rate whatever the answers; latency counts from each claim's
/// scheduled start, so a stall shows up in the percentiles instead of hiding.
async fn open_loop(
    http: &reqwest::Client,
    url: &str,
    packet: &str,
    rate: u64,
    duration: Duration,
) -> Outcome {
    let tally = Arc::new(Mutex::new(Tally::new()));
    let total = rate * duration.as_secs();
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(total as usize);
    for i in 0..total {
        let scheduled = start + Duration::from_nanos(i * 1_000_000_000 / rate);
        tokio::time::sleep_until(scheduled.into()).await;
        let (http, url, packet, tally) = (
            http.clone(),
            url.to_owned(),
            packet.to_owned(),
            tally.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let status = claim(&http, &url, &packet, &format!("o{i}")).await;
            let us = scheduled.elapsed().as_micros() as u64;
            tally.lock().expect("tally").record(us, status);
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let elapsed = start.elapsed();
    let tally = std::mem::take(&mut *tally.lock().expect("tally"));
    let ok = tally.statuses.get("201").copied().unwrap_or(0);
    Outcome {
        rate: ok as f64 / elapsed.as_secs_f64(),
        tally,
    }
}

fn row(label: &str, o: &Outcome) -> String {
    let h = o.tally.hist.as_ref().expect("histogram");
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    let errors: Vec<String> = o
        .tally
        .statuses
        .iter()
        .filter(|(k, _)| k.as_str() != "201")
        .map(|(k, v)| format!("{k}×{v}"))
        .collect();
    format!(
        "| {label} | {:.0} | {:.1} | {:.1} | {:.1} | {:.1} | {} | {} |",
        o.rate,
        ms(0.5),
        ms(0.99),
        ms(0.999),
        h.max() as f64 / 1000.0,
        h.len(),
        if errors.is_empty() {
            "none".to_owned()
        } else {
            errors.join(" ")
        }
    )
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(args.clients * 2)
        .timeout(Duration::from_secs(30))
        .build()?;
    let logs = tempfile::tempdir()?.keep();
    println!("cell-bench: {} clients, {} s measured (+{} s warm-up), open loop {} claims/s for {} s, gate {}, logs in {}",
        args.clients, args.duration_s, args.warmup_s, args.rate, args.rate_duration_s,
        if args.redis_url.is_some() { "redis" } else { "in-process" }, logs.display());
    let mut closed = Vec::new();
    let mut open = Vec::new();
    let by_ack = !args.ack.is_empty();
    let variants = if args.attach.is_some() {
        vec!["attached".to_owned()]
    } else if by_ack {
        args.ack.clone()
    } else {
        args.queue.clone()
    };
    let mut ack_notes = Vec::new();
    for variant in &variants {
        let cell = match &args.attach {
            Some(_) => None,
            None if by_ack => Some(spawn_pair(&args, variant, &logs).await?),
            None => {
                Some(spawn_cell(&args, variant, &logs.join(format!("cell-{variant}.log"))).await?)
            }
        };
        let url = args
            .attach
            .clone()
            .or_else(|| cell.as_ref().map(|c| c.url.clone()))
            .expect("a cell");
        let packet = hot_packet(&http, &url, 1_000_000).await?;
        eprintln!("queue {variant}: closed loop…");
        let c = closed_loop(
            &http,
            &url,
            &packet,
            args.clients,
            Duration::from_secs(args.warmup_s),
            Duration::from_secs(args.duration_s),
        )
        .await;
        eprintln!("queue {variant}: {:.0} claims/s", c.rate);
        closed.push((variant.clone(), c));
        if args.rate > 0 {
            eprintln!("queue {variant}: open loop at {} claims/s…", args.rate);
            let stop = Arc::new(AtomicBool::new(false));
            let backup_url = cell
                .as_ref()
                .and_then(|c| c.backup.as_ref())
                .map(|b| b.url.clone())
                .unwrap_or_default();
            let lag = cell
                .as_ref()
                .and_then(|c| c.backup.as_ref())
                .map(|b| tokio::spawn(sample_lag(http.clone(), b.url.clone(), stop.clone())));
            let o = open_loop(
                &http,
                &url,
                &packet,
                args.rate,
                Duration::from_secs(args.rate_duration_s),
            )
            .await;
            open.push((variant.clone(), o));
            stop.store(true, Ordering::Relaxed);
            if let Some(lag) = lag {
                let mut samples = lag.await.unwrap_or_default();
                samples.sort_unstable();
                let q = |f: f64| {
                    samples
                        .get(
                            ((samples.len() as f64 * f) as usize)
                                .min(samples.len().saturating_sub(1)),
                        )
                        .copied()
                        .unwrap_or(0)
                };
                ack_notes.push(format!(
                    "{variant}: backup lag during the open loop ({} samples): p50 {} ms, p99 {} ms, max {} ms\n  primary's acknowledgement wait: {}\n  backup's pull (fetch): {}\n  backup's apply: {}\n  commits per pull: {}",
                    samples.len(), q(0.5), q(0.99), samples.last().copied().unwrap_or(0),
                    quantiles(&http, &url, "redcell_ack_wait_seconds").await,
                    quantiles(&http, &backup_url, "redcell_replica_fetch_seconds").await,
                    quantiles(&http, &backup_url, "redcell_replica_apply_seconds").await,
                    quantiles(&http, &backup_url, "redcell_replica_batch_commits").await,
                ));
            }
        }
        drop(cell);
    }
    println!(
        "\nclosed loop, {} concurrent claimers on one packet (latency per claim, ms)\n",
        args.clients
    );
    println!("| claim queue | claims/s | p50 | p99 | p99.9 | max | samples | non-201 |");
    println!("|---|---|---|---|---|---|---|---|");
    for (v, o) in &closed {
        println!("{}", row(v, o));
    }
    if !open.is_empty() {
        println!(
            "\nopen loop at {} claims/s (latency from scheduled start, ms)\n",
            args.rate
        );
        println!("| claim queue | claims/s | p50 | p99 | p99.9 | max | samples | non-201 |");
        println!("|---|---|---|---|---|---|---|---|");
        for (v, o) in &open {
            println!("{}", row(v, o));
        }
    }
    for n in &ack_notes {
        println!("\n{n}");
    }
    if let (Some((_, b)), Some((_, l))) = (
        closed.iter().find(|(v, _)| v == "backup"),
        closed.iter().find(|(v, _)| v == "local"),
    ) {
        println!(
            "\nratio ack after backup / ack local (closed-loop throughput): {:.2}×",
            b.rate / l.rate.max(1.0)
        );
    }
    if let (Some((_, b)), Some((_, l))) = (
        open.iter().find(|(v, _)| v == "backup"),
        open.iter().find(|(v, _)| v == "local"),
    ) {
        let h = |o: &Outcome, q: f64| {
            o.tally
                .hist
                .as_ref()
                .expect("histogram")
                .value_at_quantile(q) as f64
                / 1000.0
        };
        println!(
            "added latency of ack after backup at {} claims/s: p50 {:+.2} ms, p99 {:+.2} ms",
            args.rate,
            h(b, 0.5) - h(l, 0.5),
            h(b, 0.99) - h(l, 0.99)
        );
    }
    if let (Some((_, on)), Some((_, off))) = (
        closed.iter().find(|(v, _)| v == "on"),
        closed.iter().find(|(v, _)| v == "off"),
    ) {
        println!(
            "\nratio queue on / off (closed-loop throughput): {:.1}×",
            on.rate / off.rate.max(1.0)
        );
    }
    Ok(())
}

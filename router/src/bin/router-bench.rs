//! `router-bench`: the cost of the router (issue #5). Starts one cell (SQLite) with a router in
//! front of it (static map) and, with `--nginx`, nginx as a plain keep-alive reverse proxy to
//! the same cell. Then, in one run and with one load generator, it measures two workloads at
//! each of the three targets (the cell direct, the router, nginx):
//!
//! - `get`: `GET /v1/packets/{id}` of one active packet (a user token);
//! - `claim`: `POST /v1/packets/{id}/claims` by a fresh uid every time (each a new `201`
//!   claim, never the `200` repeat), round-robin over a few large packets made for each run.
//!
//! Phase A, closed loop: `--clients` connections each send the next request when the last
//! answer is in; throughput is the targets' maximum. Phase B, open loop: requests are started
//! at a fixed rate (half the cell's own phase-A throughput unless `--rate-*` is given), the
//! same for every target, and latency counts from each request's *scheduled* start, so a
//! stall shows in the percentiles (coordinated omission accounted for). Targets run one after
//! another, their order rotated every round (`--rounds`), and the bench waits for the cell to
//! go idle before each measurement, so background work (claim transfers) and machine noise do
//! not all land on one target. Results of all rounds are merged per target. Both phases also
//! print the CPU time the cell and the proxy (router or nginx, workers included) spent per
//! answered request (from `/proc`), which the machine's noise disturbs less than throughput.
//! Phase B names, on stderr, the 100 ms windows in which requests took over 10 ms.
//!
//! Build in release and run from the target dir:
//! `cargo build --release -p router -p cell --bins && target/release/router-bench --nginx`.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use axum::http::{header, HeaderValue, Method, Request, Uri};
use bytes::Bytes;
use clap::Parser;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};
use topology::{CellId, CellInfo, CellMap, CellStatus, Region};

const SECRET: &str = "router-bench-secret-0123456789";
/// Shares in each packet made for the claim workload (the cell runs with a larger
/// `--max-count`), so no run ever exhausts one.
const SHARES: i64 = 100_000;

#[derive(Parser)]
#[command(about = "The router vs the cell direct vs nginx: GET of a packet and POST of a claim")]
struct Cli {
    /// Seconds of each closed-loop measurement (phase A), per target and round.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Concurrent connections of the closed loop.
    #[arg(long, default_value_t = 32)]
    clients: usize,
    /// Seconds of each open-loop measurement (phase B), per target and round; 0 skips phase B.
    #[arg(long, default_value_t = 10)]
    open_seconds: u64,
    /// Open-loop rate for `get`, requests/s; 0: half of the cell's phase-A throughput.
    #[arg(long, default_value_t = 0)]
    rate_get: u64,
    /// Open-loop rate for `claim`, requests/s; 0: half of the cell's phase-A throughput.
    #[arg(long, default_value_t = 0)]
    rate_claim: u64,
    /// Rounds; each round measures every target once per workload and phase, in a rotated
    /// order.
    #[arg(long, default_value_t = 2)]
    rounds: usize,
    /// Workloads to run: `get`, `claim`.
    #[arg(long, value_delimiter = ',', default_value = "get,claim")]
    workloads: Vec<String>,
    /// Most connections the open loop keeps to a target; a request that finds them all busy
    /// waits for one (and that wait counts in its latency), as it would behind a real
    /// client's pool.
    #[arg(long, default_value_t = 256)]
    open_connections: usize,
    /// Packets the claims of one measurement are spread over (round-robin).
    #[arg(long, default_value_t = 8)]
    packets: usize,
    /// Also measure nginx as a plain reverse proxy (needs `nginx` on PATH).
    #[arg(long)]
    nginx: bool,
    /// nginx's `worker_processes` (`auto`: one per core).
    #[arg(long, default_value = "auto")]
    nginx_workers: String,
    /// Router log filter (`RUST_LOG` of the router process); its default is the router's.
    #[arg(long, default_value = "info")]
    router_log: String,
    /// Extra environment for the router process only, `KEY=VALUE` (repeatable), e.g. to try
    /// its settings (`REDCELL_ROUTER_…`).
    #[arg(long)]
    router_env: Vec<String>,
    /// A command to run the router under, split on spaces (for profiling), e.g.
    /// `"valgrind --tool=callgrind --callgrind-out-file=/tmp/router.cg"`.
    #[arg(long)]
    router_wrapper: Option<String>,
    /// Start the targets, print their URLs, the `get` path and a token, then wait for Ctrl-C
    /// instead of measuring: for driving them with another tool (wrk, perf, strace).
    #[arg(long)]
    hold: bool,
}

struct Proc(Child);

impl Drop for Proc {
    /// SIGTERM first, so a router run under a profiler exits cleanly and its profile is
    /// written; SIGKILL after 10 s.
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_listening(mut cmd: Command, log: &Path) -> anyhow::Result<(Proc, String)> {
    let file = std::fs::File::create(log)?;
    let mut child = cmd
        .env("REDCELL_AUTH_SECRET", SECRET)
        .stdout(Stdio::piped())
        .stderr(Stdio::from(file))
        .spawn()
        .context("spawn")?;
    let mut line = String::new();
    let stdout = child.stdout.take().context("stdout")?;
    let mut reader = BufReader::new(stdout);
    reader.read_line(&mut line)?;
    std::thread::spawn(move || {
        let mut sink = String::new();
        while reader.read_line(&mut sink).map(|n| n > 0).unwrap_or(false) {
            sink.clear();
        }
    });
    let url = line
        .trim()
        .strip_prefix("listening on ")
        .with_context(|| format!("first line {line:?}; see {}", log.display()))?
        .to_owned();
    Ok((Proc(child), url))
}

async fn wait_ready(http: &reqwest::Client, url: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(r) = http.get(format!("{url}/readyz")).send().await {
            if r.status().is_success() {
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    bail!("{url} not ready")
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// nginx as Debian ships it, configured only as a keep-alive reverse proxy to the cell.
fn start_nginx(dir: &Path, cell_url: &str, workers: &str) -> anyhow::Result<(Proc, String)> {
    if workers != "auto" && workers.parse::<u16>().is_err() {
        bail!("--nginx-workers: `auto` or a number, not {workers:?}");
    }
    let port = free_port()?;
    let upstream = cell_url.trim_start_matches("http://");
    let conf = format!(
        "worker_processes {workers};\npid {dir}/nginx.pid;\nerror_log {dir}/nginx-error.log;\n\
         events {{ worker_connections 4096; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {dir};\n  proxy_temp_path {dir};\n\
         upstream cell {{ server {upstream}; keepalive 256; }}\n\
         server {{\n    listen 127.0.0.1:{port};\n    location / {{\n      proxy_pass http://cell;\n\
         proxy_http_version 1.1;\n      proxy_set_header Connection \"\";\n    }}\n  }}\n}}\n",
        dir = dir.display()
    );
    let path = dir.join("nginx.conf");
    std::fs::write(&path, conf)?;
    let child = Command::new("nginx")
        .arg("-c")
        .arg(&path)
        .args(["-g", "daemon off;"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("spawn nginx")?;
    Ok((Proc(child), format!("http://127.0.0.1:{port}")))
}

/// CPU seconds a process has used so far (user + system), from `/proc`.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

/// CPU seconds of several processes together; `None` if one has gone.
fn cpu_seconds_of(pids: &[u32]) -> Option<f64> {
    pids.iter().map(|&p| cpu_seconds(p)).sum()
}

/// The children of `parent` (nginx's workers), from `/proc`.
fn children_of(parent: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| {
                    let rest = s.rsplit_once(')')?.1.to_owned();
                    rest.split_whitespace().nth(1)?.parse::<u32>().ok()
                })
                == Some(parent)
        })
        .collect()
}

/// CPU time of the cell and of a target's proxy at the start of a measurement.
struct CpuMark {
    cell_pid: u32,
    proxy: Vec<u32>,
    at: (Option<f64>, Option<f64>),
}

impl CpuMark {
    fn now(cell_pid: u32, proxy: &[u32]) -> CpuMark {
        CpuMark {
            cell_pid,
            proxy: proxy.to_vec(),
            at: (cpu_seconds(cell_pid), cpu_seconds_of(proxy)),
        }
    }

    /// Adds the CPU time used since the mark to the target's total.
    fn charge(self, m: &mut Merged) {
        if let ((Some(c0), Some(p0)), Some(c1), Some(p1)) = (
            self.at,
            cpu_seconds(self.cell_pid),
            cpu_seconds_of(&self.proxy),
        ) {
            m.cpu.0 += c1 - c0;
            m.cpu.1 += p1 - p0;
        }
    }
}

/// Waits (at most 15 s) until the cell uses under 5% of a core over 300 ms: the claims of
/// the previous measurement are credited in the background, and that work must not be
/// charged to the next target.
async fn settle(pid: u32) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        let Some(before) = cpu_seconds(pid) else {
            return;
        };
        tokio::time::sleep(Duration::from_millis(300)).await;
        let Some(after) = cpu_seconds(pid) else {
            return;
        };
        if (after - before) / 0.3 < 0.05 {
            return;
        }
    }
    eprintln!("  (the cell did not go idle within 15 s)");
}

fn token(sub: &str, scope: Option<&str>) -> String {
    topology::auth::mint(SECRET.as_bytes(), sub, scope, 24 * 3600)
}

/// A paid (active) C2C packet with `count` shares, made at the cell directly.
async fn active_packet(http: &reqwest::Client, cell: &str, count: i64) -> anyhow::Result<String> {
    let res = http
        .post(format!("{cell}/v1/packets"))
        .bearer_auth(token("bench-sender", None))
        .header(
            "idempotency-key",
            format!("bench-{:x}", rand::random::<u64>()),
        )
        .json(&json!({"kind": "c2c", "total": count * 10, "count": count}))
        .send()
        .await?;
    let status = res.status();
    let v: Value = res.json().await?;
    if status.as_u16() != 201 {
        bail!("packet not created: {status} {v}");
    }
    let packet = v["packet_id"].as_str().context("packet id")?.to_owned();
    let payment = v["payment"]["payment_id"].as_str().context("payment id")?;
    let res = http
        .post(format!("{cell}/v1/payments/{payment}/callback"))
        .bearer_auth(token("svc:payments", Some("payment:callback")))
        .json(&json!({"status": "succeeded"}))
        .send()
        .await?;
    if !res.status().is_success() {
        bail!("payment callback failed: {}", res.status());
    }
    Ok(packet)
}

type Http = Client<HttpConnector, Full<Bytes>>;

fn client() -> Http {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(4096)
        .build(connector)
}

/// One kind of request, ready to send at a target.
#[derive(Clone)]
enum Work {
    /// `GET /v1/packets/{id}` with one user's token.
    Get { path: String, auth: HeaderValue },
    /// `POST /v1/packets/{id}/claims` by a new uid each time, over `packets` in turn.
    Claim {
        packets: Arc<Vec<String>>,
        prefix: String,
        seq: Arc<AtomicU64>,
    },
}

impl Work {
    fn expected(&self) -> u16 {
        match self {
            Work::Get { .. } => 200,
            Work::Claim { .. } => 201,
        }
    }

    fn request(&self, base: &str) -> Request<Full<Bytes>> {
        let (method, path, auth) = match self {
            Work::Get { path, auth } => (Method::GET, path.clone(), auth.clone()),
            Work::Claim {
                packets,
                prefix,
                seq,
            } => {
                let n = seq.fetch_add(1, Ordering::Relaxed);
                let packet = &packets[n as usize % packets.len()];
                let bearer = format!("Bearer {}", token(&format!("{prefix}-{n}"), None));
                (
                    Method::POST,
                    format!("/v1/packets/{packet}/claims"),
                    HeaderValue::from_str(&bearer).expect("a token is header-safe"),
                )
            }
        };
        let uri: Uri = format!("{base}{path}").parse().expect("a valid uri");
        Request::builder()
            .method(method)
            .uri(uri)
            .header(header::AUTHORIZATION, auth)
            .body(Full::new(Bytes::new()))
            .expect("a valid request")
    }
}

/// Latencies of the expected answers and a count of every other outcome.
struct Tally {
    hist: Histogram<u64>,
    errors: BTreeMap<String, u64>,
}

impl Tally {
    fn new() -> Tally {
        Tally {
            hist: Histogram::new_with_bounds(1, 120_000_000, 3).expect("histogram bounds"),
            errors: BTreeMap::new(),
        }
    }

    fn merge(&mut self, other: &Tally) {
        let _ = self.hist.add(&other.hist);
        for (k, v) in &other.errors {
            *self.errors.entry(k.clone()).or_default() += v;
        }
    }

    fn error_text(&self) -> String {
        if self.errors.is_empty() {
            return "0".into();
        }
        let parts: Vec<String> = self
            .errors
            .iter()
            .map(|(k, v)| format!("{k}×{v}"))
            .collect();
        parts.join(" ")
    }
}

/// Sends one request and returns its outcome: `Ok(())` for the expected status.
async fn send(http: &Http, req: Request<Full<Bytes>>, expected: u16) -> Result<(), String> {
    let fut = async {
        let resp = http
            .request(req)
            .await
            .map_err(|_| "transport".to_owned())?;
        let status = resp.status().as_u16();
        resp.into_body()
            .collect()
            .await
            .map_err(|_| "body".to_owned())?;
        if status == expected {
            Ok(())
        } else {
            Err(status.to_string())
        }
    };
    match tokio::time::timeout(Duration::from_secs(10), fut).await {
        Ok(r) => r,
        Err(_) => Err("timeout".into()),
    }
}

/// One measurement's result.
struct Outcome {
    /// Expected answers per second of wall time.
    rps: f64,
    tally: Tally,
    /// Open loop only: how late the generator itself started requests (µs).
    lag: Option<Histogram<u64>>,
    seconds: f64,
}

/// `clients` connections, each sending its next request as soon as the last is answered.
async fn closed_loop(
    http: &Http,
    base: &str,
    work: &Work,
    clients: usize,
    seconds: u64,
) -> Outcome {
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (http, base, work, stop) = (http.clone(), base.to_owned(), work.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut tally = Tally::new();
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                match send(&http, work.request(&base), work.expected()).await {
                    Ok(()) => {
                        let _ = tally.hist.record((t.elapsed().as_micros() as u64).max(1));
                    }
                    Err(e) => *tally.errors.entry(e).or_default() += 1,
                }
            }
            tally
        }));
    }
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let mut tally = Tally::new();
    for t in tasks {
        if let Ok(t) = t.await {
            tally.merge(&t);
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    Outcome {
        rps: tally.hist.len() as f64 / elapsed,
        tally,
        lag: None,
        seconds: elapsed,
    }
}

/// Requests started at `rate` per second whatever the answers, by a pacing thread (finer
/// than the runtime's millisecond timer); latency from each request's scheduled start.
async fn open_loop(
    http: &Http,
    base: &str,
    work: &Work,
    rate: u64,
    seconds: u64,
    connections: usize,
) -> Outcome {
    let handle = tokio::runtime::Handle::current();
    let pool = Arc::new(tokio::sync::Semaphore::new(connections));
    let (http2, base2, work2) = (http.clone(), base.to_owned(), work.clone());
    let pacer = std::thread::spawn(move || {
        let total = rate * seconds;
        let start = Instant::now();
        let mut lag = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("bounds");
        let mut tasks = Vec::with_capacity(total as usize);
        for i in 0..total {
            let scheduled = start + Duration::from_nanos(i * 1_000_000_000 / rate);
            let now = Instant::now();
            if scheduled > now {
                std::thread::sleep(scheduled - now);
            }
            let _ = lag.record((scheduled.elapsed().as_micros() as u64).max(1));
            let req = work2.request(&base2);
            let (http, expected, pool) = (http2.clone(), work2.expected(), pool.clone());
            tasks.push(handle.spawn(async move {
                let _connection = pool.acquire_owned().await.expect("never closed");
                let r = send(&http, req, expected).await;
                (scheduled - start, scheduled.elapsed().as_micros() as u64, r)
            }));
        }
        (start, tasks, lag)
    });
    let (start, tasks, lag) = tokio::task::spawn_blocking(move || pacer.join())
        .await
        .expect("pacer joined")
        .expect("pacer did not panic");
    let mut tally = Tally::new();
    // Requests slower than 10 ms, by the 100 ms window they were due in: where the tail comes
    // from (a few stalls, or a steady share).
    let mut slow: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
    for t in tasks {
        match t.await {
            Ok((due, us, Ok(()))) => {
                let _ = tally.hist.record(us.max(1));
                if us > 10_000 {
                    let w = slow.entry(due.as_millis() as u64 / 100).or_default();
                    w.0 += 1;
                    w.1 = w.1.max(us);
                }
            }
            Ok((_, _, Err(e))) => *tally.errors.entry(e).or_default() += 1,
            Err(_) => *tally.errors.entry("task".into()).or_default() += 1,
        }
    }
    if !slow.is_empty() {
        let windows: Vec<String> = slow
            .iter()
            .map(|(w, (n, max))| format!("{:.1}s:{n}(max {}ms)", *w as f64 / 10.0, max / 1000))
            .collect();
        eprintln!(
            "  requests over 10 ms by when they were due: {}",
            windows.join(" ")
        );
    }
    let elapsed = start.elapsed().as_secs_f64();
    Outcome {
        rps: tally.hist.len() as f64 / elapsed,
        tally,
        lag: Some(lag),
        seconds: elapsed,
    }
}

/// Per target: the merged outcome of every round.
struct Merged {
    tally: Tally,
    ok: u64,
    seconds: f64,
    rounds: Vec<f64>,
    lag: Option<Histogram<u64>>,
    /// CPU seconds the cell and the proxy (router or nginx) used during the measurements.
    cpu: (f64, f64),
}

impl Merged {
    fn new() -> Merged {
        Merged {
            tally: Tally::new(),
            ok: 0,
            seconds: 0.0,
            rounds: Vec::new(),
            lag: None,
            cpu: (0.0, 0.0),
        }
    }

    fn add(&mut self, o: &Outcome) {
        self.tally.merge(&o.tally);
        self.ok += o.tally.hist.len();
        self.seconds += o.seconds;
        self.rounds.push(o.rps);
        if let Some(l) = &o.lag {
            match &mut self.lag {
                Some(mine) => {
                    let _ = mine.add(l);
                }
                None => self.lag = Some(l.clone()),
            }
        }
    }

    fn rps(&self) -> f64 {
        self.ok as f64 / self.seconds.max(f64::MIN_POSITIVE)
    }

    /// CPU µs per answered request: (cell, proxy).
    fn cpu_per_request(&self) -> (f64, f64) {
        let n = self.ok.max(1) as f64;
        (self.cpu.0 * 1e6 / n, self.cpu.1 * 1e6 / n)
    }

    fn q(&self, q: f64) -> u64 {
        self.tally.hist.value_at_quantile(q)
    }
}

struct Target {
    name: &'static str,
    base: String,
    /// The processes that do the proxy's work (none for the cell direct): their CPU time is
    /// the proxy's cost.
    proxy_pids: Vec<u32>,
}

/// Builds the work of one measurement (fresh packets and uids for claims).
async fn work_for(
    kind: &str,
    setup: &reqwest::Client,
    cell: &str,
    get_packet: &str,
    packets: usize,
    tag: &str,
) -> anyhow::Result<Work> {
    Ok(match kind {
        "get" => Work::Get {
            path: format!("/v1/packets/{get_packet}"),
            auth: HeaderValue::from_str(&format!("Bearer {}", token("bench-reader", None)))?,
        },
        "claim" => {
            let mut ids = Vec::with_capacity(packets);
            for _ in 0..packets {
                ids.push(active_packet(setup, cell, SHARES).await?);
            }
            Work::Claim {
                packets: Arc::new(ids),
                prefix: format!("{tag}-{:x}", rand::random::<u32>()),
                seq: Arc::new(AtomicU64::new(0)),
            }
        }
        other => bail!("unknown workload {other:?} (get, claim)"),
    })
}

fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 {
        format!("{:.2}×", a / b)
    } else {
        "—".into()
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let bin_dir: PathBuf = std::env::current_exe()?
        .parent()
        .context("exe dir")?
        .to_path_buf();
    let dir = tempfile::tempdir()?;
    let setup = reqwest::Client::new();

    let mut cell_cmd = Command::new(bin_dir.join("cell"));
    cell_cmd
        .args(["--listen", "127.0.0.1:0", "--cell-id", "c1"])
        .args(["--max-count", "1000000", "--max-total", "1000000000"])
        .arg("--data-dir")
        .arg(dir.path().join("cell"))
        .env("RUST_LOG", "warn");
    let (cell, cell_url) = spawn_listening(cell_cmd, &dir.path().join("cell.log"))?;
    let cell_pid = cell.0.id();
    wait_ready(&setup, &cell_url).await?;

    let map = CellMap::single(CellInfo {
        id: CellId::parse("c1")?,
        region: Region::parse("local")?,
        url: cell_url.clone(),
        status: CellStatus::Active,
    });
    let map_file = dir.path().join("map.json");
    std::fs::write(&map_file, serde_json::to_vec(&map)?)?;
    let mut wrapper = cli.router_wrapper.iter().flat_map(|w| w.split_whitespace());
    let mut router_cmd = match wrapper.next() {
        Some(program) => {
            let mut c = Command::new(program);
            c.args(wrapper).arg(bin_dir.join("router"));
            c
        }
        None => Command::new(bin_dir.join("router")),
    };
    router_cmd
        .args(["--listen", "127.0.0.1:0", "--map"])
        .arg(&map_file)
        .arg("--state-dir")
        .arg(dir.path().join("router"))
        .env("RUST_LOG", &cli.router_log);
    for kv in &cli.router_env {
        let (k, v) = kv
            .split_once('=')
            .with_context(|| format!("--router-env {kv:?}: KEY=VALUE"))?;
        router_cmd.env(k, v);
    }
    let (router, router_url) = spawn_listening(router_cmd, &dir.path().join("router.log"))?;
    // Under a wrapper (a profiler) this is the wrapper's pid, which is the router's too
    // for valgrind.
    let router_pid = router.0.id();
    wait_ready(&setup, &router_url).await?;

    let mut targets = vec![
        Target {
            name: "direct",
            base: cell_url.clone(),
            proxy_pids: Vec::new(),
        },
        Target {
            name: "router",
            base: router_url,
            proxy_pids: vec![router_pid],
        },
    ];
    let _nginx = if cli.nginx {
        let (p, url) = start_nginx(dir.path(), &cell_url, &cli.nginx_workers)?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while setup.get(format!("{url}/healthz")).send().await.is_err() {
            if Instant::now() > deadline {
                bail!("nginx did not start");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // The master only supervises; the workers proxy. Both are counted.
        let mut proxy_pids = vec![p.0.id()];
        proxy_pids.extend(children_of(p.0.id()));
        targets.push(Target {
            name: "nginx",
            base: url,
            proxy_pids,
        });
        Some(p)
    } else {
        None
    };

    let http = client();
    let get_packet = active_packet(&setup, &cell_url, 100).await?;
    if cli.hold {
        for t in &targets {
            println!("{}: {} (proxy pids {:?})", t.name, t.base, t.proxy_pids);
        }
        println!("get path: /v1/packets/{get_packet}");
        println!("authorization: Bearer {}", token("bench-reader", None));
        println!("holding; Ctrl-C stops every process");
        tokio::signal::ctrl_c().await?;
        return Ok(());
    }
    println!(
        "router-bench: {} clients × {} s closed loop, {} s open loop, {} rounds, targets {}",
        cli.clients,
        cli.seconds,
        cli.open_seconds,
        cli.rounds,
        targets
            .iter()
            .map(|t| t.name)
            .collect::<Vec<_>>()
            .join(", ")
    );
    let n = targets.len();
    for kind in &cli.workloads {
        let kind = kind.as_str();
        // Warm every path up (connections, caches) before measuring anything.
        for t in &targets {
            let w = work_for(kind, &setup, &cell_url, &get_packet, 1, "warm").await?;
            let o = closed_loop(&http, &t.base, &w, cli.clients, 1).await;
            eprintln!("{kind} warm-up {}: {} answered", t.name, o.tally.hist.len());
        }
        let mut closed: Vec<Merged> = (0..n).map(|_| Merged::new()).collect();
        for round in 0..cli.rounds {
            for k in 0..n {
                let i = (k + round) % n;
                let w = work_for(kind, &setup, &cell_url, &get_packet, cli.packets, "c").await?;
                settle(cell_pid).await;
                let cpu = CpuMark::now(cell_pid, &targets[i].proxy_pids);
                let o = closed_loop(&http, &targets[i].base, &w, cli.clients, cli.seconds).await;
                cpu.charge(&mut closed[i]);
                eprintln!(
                    "{kind} closed round {round} {}: {:.0}/s ({} answered) errors {}",
                    targets[i].name,
                    o.rps,
                    o.tally.hist.len(),
                    o.tally.error_text()
                );
                closed[i].add(&o);
            }
        }
        println!(
            "\n### {kind}: phase A, closed loop, {} connections (µs)\n",
            cli.clients
        );
        println!(
            "| target | req/s | per round | cell CPU µs/req | proxy CPU µs/req | p50 | p99 | p99.9 | max | errors |"
        );
        println!("|---|---|---|---|---|---|---|---|---|---|");
        for (t, m) in targets.iter().zip(&closed) {
            let rounds: Vec<String> = m.rounds.iter().map(|r| format!("{r:.0}")).collect();
            let (cell_cpu, proxy_cpu) = m.cpu_per_request();
            println!(
                "| {} | {:.0} | {} | {cell_cpu:.1} | {proxy_cpu:.1} | {} | {} | {} | {} | {} |",
                t.name,
                m.rps(),
                rounds.join(", "),
                m.q(0.5),
                m.q(0.99),
                m.q(0.999),
                m.tally.hist.max(),
                m.tally.error_text()
            );
        }
        let direct = closed[0].rps();
        let router = closed[1].rps();
        let nginx = closed.get(2).map(|m| m.rps());
        println!(
            "\nthroughput: router/direct {}, nginx/direct {}, router/nginx {}",
            ratio(router, direct),
            nginx.map_or("—".into(), |x| ratio(x, direct)),
            nginx.map_or("—".into(), |x| ratio(router, x)),
        );

        if cli.open_seconds == 0 {
            continue;
        }
        let fixed = if kind == "get" {
            cli.rate_get
        } else {
            cli.rate_claim
        };
        let rate = if fixed > 0 {
            fixed
        } else {
            ((direct / 2.0) as u64).max(1)
        };
        let mut open: Vec<Merged> = (0..n).map(|_| Merged::new()).collect();
        for round in 0..cli.rounds {
            for k in 0..n {
                let i = (k + round) % n;
                let w = work_for(kind, &setup, &cell_url, &get_packet, cli.packets, "o").await?;
                settle(cell_pid).await;
                let cpu = CpuMark::now(cell_pid, &targets[i].proxy_pids);
                let o = open_loop(
                    &http,
                    &targets[i].base,
                    &w,
                    rate,
                    cli.open_seconds,
                    cli.open_connections,
                )
                .await;
                cpu.charge(&mut open[i]);
                eprintln!(
                    "{kind} open round {round} {}: p50 {} p99 {} errors {}",
                    targets[i].name,
                    o.tally.hist.value_at_quantile(0.5),
                    o.tally.hist.value_at_quantile(0.99),
                    o.tally.error_text()
                );
                open[i].add(&o);
            }
        }
        println!(
            "\n### {kind}: phase B, open loop at {rate} req/s (µs from the scheduled start)\n"
        );
        println!(
            "| target | answered/s | cell CPU µs/req | proxy CPU µs/req | p50 | p99 | p99.9 | max | errors | added p50 | added p99 | pacer lag p99 |"
        );
        println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
        let (d50, d99) = (open[0].q(0.5) as i64, open[0].q(0.99) as i64);
        for (t, m) in targets.iter().zip(&open) {
            let added = |v: u64, base: i64| {
                if t.name == "direct" {
                    "—".to_owned()
                } else {
                    format!("{:+}", v as i64 - base)
                }
            };
            let (cell_cpu, proxy_cpu) = m.cpu_per_request();
            println!(
                "| {} | {:.0} | {cell_cpu:.1} | {proxy_cpu:.1} | {} | {} | {} | {} | {} | {} | {} | {} |",
                t.name,
                m.rps(),
                m.q(0.5),
                m.q(0.99),
                m.q(0.999),
                m.tally.hist.max(),
                m.tally.error_text(),
                added(m.q(0.5), d50),
                added(m.q(0.99), d99),
                m.lag.as_ref().map_or(0, |l| l.value_at_quantile(0.99)),
            );
        }
    }
    drop(router);
    drop(cell);
    Ok(())
}

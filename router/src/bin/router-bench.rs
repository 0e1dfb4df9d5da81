//! `router-bench`: the cost of the router. Starts one cell (SQLite) and a router in front of
//! it (and nginx as a plain reverse proxy, when `--nginx` is given), then runs the same
//! closed-loop load of `GET /v1/users/{uid}/wallet` straight at the cell, through the router,
//! and through nginx, and prints throughput and latency percentiles for each.
//!
//! Build in release and run from the target dir: `cargo build --release -p router -p cell
//! --bins && target/release/router-bench --seconds 10 --clients 1,32 --nginx`.
#![forbid(unsafe_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use hdrhistogram::Histogram;
use topology::{CellId, CellInfo, CellMap, CellStatus, Region};

const SECRET: &str = "router-bench-secret-0123456789";

#[derive(Parser)]
struct Cli {
    /// Seconds of load per target and concurrency.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Concurrent clients (closed loop), comma separated.
    #[arg(long, value_delimiter = ',', default_value = "1,32")]
    clients: Vec<usize>,
    /// Also measure nginx as a plain reverse proxy (needs `nginx` on PATH).
    #[arg(long)]
    nginx: bool,
}

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_listening(mut cmd: Command, log: &Path) -> anyhow::Result<(Proc, String)> {
    let file = std::fs::File::create(log)?;
    let mut child = cmd
        .env("REDCELL_AUTH_SECRET", SECRET)
        .env("RUST_LOG", "warn")
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

fn start_nginx(dir: &Path, cell_url: &str) -> anyhow::Result<(Proc, String)> {
    let port = free_port()?;
    let upstream = cell_url.trim_start_matches("http://");
    let conf = format!(
        "worker_processes 1;\npid {dir}/nginx.pid;\nerror_log {dir}/nginx-error.log;\n\
         events {{ worker_connections 1024; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {dir};\n  proxy_temp_path {dir};\n\
         upstream cell {{ server {upstream}; keepalive 64; }}\n\
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

struct Outcome {
    rps: f64,
    hist: Histogram<u64>,
    errors: u64,
}

async fn load(url: &str, clients: usize, seconds: u64) -> anyhow::Result<Outcome> {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(clients)
        .tcp_nodelay(true)
        .build()?;
    let token = topology::auth::mint(SECRET.as_bytes(), "u1", None, 3600);
    let target = Arc::new(format!("{url}/v1/users/u1/wallet"));
    let end = Instant::now() + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (http, token, target) = (http.clone(), token.clone(), target.clone());
        tasks.push(tokio::spawn(async move {
            let mut hist = Histogram::<u64>::new(3).expect("histogram");
            let mut errors = 0u64;
            while Instant::now() < end {
                let t = Instant::now();
                let ok = match http.get(target.as_str()).bearer_auth(&token).send().await {
                    Ok(r) => r.status().is_success() && r.bytes().await.is_ok(),
                    Err(_) => false,
                };
                if ok {
                    let _ = hist.record(t.elapsed().as_micros() as u64);
                } else {
                    errors += 1;
                }
            }
            (hist, errors)
        }));
    }
    let mut hist = Histogram::<u64>::new(3)?;
    let mut errors = 0;
    for t in tasks {
        let (h, e) = t.await?;
        hist.add(h)?;
        errors += e;
    }
    Ok(Outcome {
        rps: hist.len() as f64 / seconds as f64,
        hist,
        errors,
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let bin_dir: PathBuf = std::env::current_exe()?
        .parent()
        .context("exe dir")?
        .to_path_buf();
    let dir = tempfile::tempdir()?;
    let http = reqwest::Client::new();

    let mut cell_cmd = Command::new(bin_dir.join("cell"));
    cell_cmd
        .args(["--listen", "127.0.0.1:0", "--cell-id", "c1", "--data-dir"])
        .arg(dir.path().join("cell"));
    let (_cell, cell_url) = spawn_listening(cell_cmd, &dir.path().join("cell.log"))?;
    wait_ready(&http, &cell_url).await?;

    let map = CellMap::single(CellInfo {
        id: CellId::parse("c1")?,
        region: Region::parse("local")?,
        url: cell_url.clone(),
        status: CellStatus::Active,
        backup: None,
    });
    let map_file = dir.path().join("map.json");
    std::fs::write(&map_file, serde_json::to_vec(&map)?)?;
    let mut router_cmd = Command::new(bin_dir.join("router"));
    router_cmd
        .args(["--listen", "127.0.0.1:0", "--map"])
        .arg(&map_file)
        .arg("--state-dir")
        .arg(dir.path().join("router"));
    let (_router, router_url) = spawn_listening(router_cmd, &dir.path().join("router.log"))?;
    wait_ready(&http, &router_url).await?;

    let mut targets = vec![("cell (direct)", cell_url.clone()), ("router", router_url)];
    let _nginx = if cli.nginx {
        let (p, url) = start_nginx(dir.path(), &cell_url)?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while http.get(format!("{url}/healthz")).send().await.is_err() {
            if Instant::now() > deadline {
                bail!("nginx did not start");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        targets.push(("nginx", url));
        Some(p)
    } else {
        None
    };

    println!("| target | clients | req/s | p50 µs | p99 µs | p99.9 µs | errors |");
    println!("|---|---|---|---|---|---|---|");
    for clients in &cli.clients {
        for (name, url) in &targets {
            load(url, *clients, 1).await?; // warm-up
            let o = load(url, *clients, cli.seconds).await?;
            println!(
                "| {name} | {clients} | {:.0} | {} | {} | {} | {} |",
                o.rps,
                o.hist.value_at_quantile(0.5),
                o.hist.value_at_quantile(0.99),
                o.hist.value_at_quantile(0.999),
                o.errors
            );
        }
    }
    Ok(())
}

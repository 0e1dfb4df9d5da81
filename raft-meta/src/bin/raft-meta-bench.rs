//! `raft-meta-bench`: spawns a real raft-meta cluster on loopback (the `raft-meta` binary next
//! to this one) and measures map writes/s, commit latency with 1 and with N clients, leader
//! failover time (SIGKILL to the first successful write) and watch delivery latency.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use hdrhistogram::Histogram;
use raft_meta::client::MetaClient;
use tokio::sync::Mutex;

#[derive(Parser, Debug)]
#[command(name = "raft-meta-bench")]
struct Args {
    /// Cluster size.
    #[arg(long, default_value_t = 3)]
    nodes: u64,
    /// Seconds each write phase runs.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Concurrent writers per phase, comma-separated.
    #[arg(long, default_value = "1,64", value_delimiter = ',')]
    clients: Vec<usize>,
    /// How many leader kills to time.
    #[arg(long, default_value_t = 5)]
    failovers: usize,
    /// How many writes to time through a watcher.
    #[arg(long, default_value_t = 200)]
    watch_writes: usize,
    /// Where the nodes keep their data (default: a fresh temp dir).
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

struct Node {
    addr: String,
    dir: PathBuf,
    child: Option<Child>,
}

struct Bench {
    bin: PathBuf,
    peers: String,
    nodes: Vec<Node>,
    secret: String,
    token: String,
    http: reqwest::Client,
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl Bench {
    fn spawn(&mut self, i: usize, init: bool) -> anyhow::Result<()> {
        let n = &mut self.nodes[i];
        let log = std::fs::File::create(n.dir.join("node.log"))?;
        let mut cmd = Command::new(&self.bin);
        cmd.arg("--id")
            .arg((i + 1).to_string())
            .arg("--listen")
            .arg(&n.addr)
            .arg("--data-dir")
            .arg(&n.dir)
            .arg("--peers")
            .arg(&self.peers)
            .env("REDCELL_AUTH_SECRET", &self.secret)
            .env(
                "RUST_LOG",
                std::env::var("BENCH_NODE_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        if init {
            cmd.arg("--init");
        }
        n.child = Some(cmd.spawn().context("spawn raft-meta")?);
        Ok(())
    }

    fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    async fn wait_ready(&self, i: usize) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let url = format!("http://{}/readyz", self.nodes[i].addr);
        while Instant::now() < deadline {
            if let Ok(r) = self
                .http
                .get(&url)
                .timeout(Duration::from_millis(300))
                .send()
                .await
            {
                if r.status().is_success() {
                    return Ok(());
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        bail!("node {} never ready", i + 1)
    }

    fn client(&self, idx: &[usize]) -> MetaClient {
        MetaClient::new(
            idx.iter().map(|i| self.nodes[*i].addr.clone()).collect(),
            self.token.clone(),
        )
    }

    async fn leader(&self, among: &[usize]) -> anyhow::Result<usize> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(v) = self.client(among).cluster().await {
                if let Some(l) = v.leader {
                    let i = (l - 1) as usize;
                    if among.contains(&i) {
                        return Ok(i);
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        bail!("no leader")
    }

    /// One write straight to `addr`; returns the map version.
    async fn put_switch(&self, addr: &str, name: &str, message: &str) -> anyhow::Result<u64> {
        let r = self
            .http
            .put(format!("http://{addr}/v1/switches/{name}"))
            .bearer_auth(&self.token)
            .json(&serde_json::json!({"on": true, "message": message}))
            .timeout(Duration::from_secs(5))
            .send()
            .await?;
        if !r.status().is_success() {
            bail!("{}", r.status());
        }
        let v: serde_json::Value = r.json().await?;
        v["version"].as_u64().context("no version")
    }
}

/// Histograms hold microseconds; reports are in milliseconds.
fn ms(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

fn print_hist(label: &str, h: &Histogram<u64>) {
    println!(
        "{label}: n={} p50={:.2}ms p99={:.2}ms p99.9={:.2}ms max={:.2}ms",
        h.len(),
        ms(h, 0.5),
        ms(h, 0.99),
        ms(h, 0.999),
        h.max() as f64 / 1000.0
    );
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let bin = std::env::current_exe()?
        .parent()
        .context("exe dir")?
        .join("raft-meta");
    if !bin.exists() {
        bail!(
            "{} not found: build the raft-meta binary first",
            bin.display()
        );
    }
    let tmp = tempfile::TempDir::new()?;
    let root = args
        .data_dir
        .clone()
        .unwrap_or_else(|| tmp.path().to_owned());
    let mut nodes = Vec::new();
    for i in 0..args.nodes {
        let dir = root.join(format!("node{}", i + 1));
        std::fs::create_dir_all(&dir)?;
        nodes.push(Node {
            addr: format!("127.0.0.1:{}", free_port()?),
            dir,
            child: None,
        });
    }
    let peers = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| format!("{}={}", i + 1, n.addr))
        .collect::<Vec<_>>()
        .join(",");
    let secret = format!("bench-{}", std::process::id());
    let token = topology::auth::mint(secret.as_bytes(), "svc:bench", Some("admin"), 24 * 3600);
    let http = reqwest::Client::builder().tcp_nodelay(true).build()?;
    let mut b = Bench {
        bin,
        peers,
        nodes,
        secret,
        token,
        http,
    };
    let all: Vec<usize> = (0..args.nodes as usize).collect();
    for i in all.clone() {
        b.spawn(i, i == 0)?;
    }
    for i in all.clone() {
        b.wait_ready(i).await?;
    }
    println!(
        "cluster: {} nodes on loopback, fsync on, data in {}",
        args.nodes,
        root.display()
    );

    let result = run(&mut b, &args, &all).await;
    for i in all {
        b.kill(i);
    }
    result
}

async fn run(b: &mut Bench, args: &Args, all: &[usize]) -> anyhow::Result<()> {
    // Writes: each writer sends PUT /v1/switches/w{k} to the leader, one at a time.
    let leader = b.leader(all).await?;
    for &clients in &args.clients {
        let term_before = b.client(all).cluster().await?.term;
        let addr = b.nodes[leader].addr.clone();
        let stop_at = Instant::now() + Duration::from_secs(args.seconds);
        let mut tasks = Vec::new();
        let started = Instant::now();
        for k in 0..clients {
            let http = b.http.clone();
            let token = b.token.clone();
            let addr = addr.clone();
            tasks.push(tokio::spawn(async move {
                let mut h = Histogram::<u64>::new(3).expect("histogram");
                let mut errors = 0u64;
                let mut n = 0u64;
                while Instant::now() < stop_at {
                    let t = Instant::now();
                    // Each writer owns one switch and gives it a new message every time, so
                    // every write changes the map (a new version) and the map stays the size
                    // of a real one (tens of switches), not one that grows with the run.
                    let r = http
                        .put(format!("http://{addr}/v1/switches/w{k}"))
                        .bearer_auth(&token)
                        .json(&serde_json::json!({"on": true, "message": format!("{n}")}))
                        .timeout(Duration::from_secs(5))
                        .send()
                        .await;
                    match r {
                        Ok(r) if r.status().is_success() => {
                            let _ = r.bytes().await;
                            h.record(t.elapsed().as_micros() as u64).ok();
                        }
                        _ => errors += 1,
                    }
                    n += 1;
                }
                (h, errors)
            }));
        }
        let mut h = Histogram::<u64>::new(3)?;
        let mut errors = 0;
        for t in tasks {
            let (th, e) = t.await?;
            h.add(th)?;
            errors += e;
        }
        let secs = started.elapsed().as_secs_f64();
        println!(
            "writes, {clients} client(s), {}s: {:.0} writes/s, errors={errors}",
            args.seconds,
            h.len() as f64 / secs
        );
        print_hist(&format!("  commit latency ({clients} client(s))"), &h);
        let term_after = b.client(all).cluster().await?.term;
        println!("  raft term {term_before} -> {term_after} (a change means an election during the phase)");
    }

    // Watch delivery: a watcher long-polls a follower; time from sending a write to the
    // watcher receiving that version.
    let leader = b.leader(all).await?;
    let follower = *all.iter().find(|i| **i != leader).context("a follower")?;
    // Start from where the leader is, once the follower has caught up with it.
    let start = b.client(&[leader]).map(true).await?.version;
    let deadline = Instant::now() + Duration::from_secs(30);
    while b.client(&[follower]).map(false).await?.version < start {
        if Instant::now() > deadline {
            bail!("follower never caught up");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let deliveries: Arc<Mutex<HashMap<u64, Instant>>> = Arc::default();
    let watcher = {
        let client = b.client(&[follower]);
        let deliveries = deliveries.clone();
        tokio::spawn(async move {
            let mut w = client.watch(start);
            loop {
                let v = w.next().await;
                deliveries.lock().await.insert(v.version, Instant::now());
            }
        })
    };
    let mut sent = Vec::new();
    let mut werr = 0;
    let laddr = b.nodes[leader].addr.clone();
    for i in 0..args.watch_writes {
        let t = Instant::now();
        // A new message each time, so every write makes a new version.
        match b
            .put_switch(&laddr, &format!("watch-{}", i % 20), &format!("m{i}"))
            .await
        {
            Ok(v) => sent.push((v, t)),
            Err(_) => werr += 1,
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    watcher.abort();
    let got = deliveries.lock().await;
    let mut h = Histogram::<u64>::new(3)?;
    let mut missing = 0;
    for (v, t) in &sent {
        match got.get(v) {
            Some(d) => h.record(d.saturating_duration_since(*t).as_micros() as u64)?,
            None => missing += 1,
        }
    }
    println!(
        "watch delivery (write sent -> version received by a watcher on a follower): missing={missing} write_errors={werr}"
    );
    print_hist("  watch delivery", &h);
    drop(got);

    // Failover: SIGKILL the leader; time until a write through the survivors succeeds.
    let mut h = Histogram::<u64>::new(3)?;
    for round in 0..args.failovers {
        let leader = b.leader(all).await?;
        let survivors: Vec<usize> = all.iter().copied().filter(|i| *i != leader).collect();
        // Both survivors caught up before the kill, so either may win the election.
        let client = b.client(&survivors).with_deadline(Duration::from_secs(30));
        client.set_switch("failover", round & 1 == 0, "pre").await?;
        b.kill(leader);
        let t = Instant::now();
        let mut attempts = 0;
        loop {
            attempts += 1;
            let addrs: Vec<String> = survivors.iter().map(|i| b.nodes[*i].addr.clone()).collect();
            let mut ok = false;
            for a in &addrs {
                let r = b
                    .http
                    .put(format!("http://{a}/v1/switches/after-failover-{round}"))
                    .bearer_auth(&b.token)
                    .json(&serde_json::json!({"on": true}))
                    .timeout(Duration::from_secs(2))
                    .send()
                    .await;
                if matches!(r, Ok(ref r) if r.status().is_success()) {
                    ok = true;
                    break;
                }
            }
            if ok {
                break;
            }
            if t.elapsed() > Duration::from_secs(30) {
                bail!("no write 30s after killing the leader");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let took = t.elapsed();
        h.record(took.as_micros() as u64)?;
        println!(
            "  failover round {round}: killed node {}, first write after {:.0}ms ({attempts} attempts)",
            leader + 1,
            took.as_secs_f64() * 1000.0
        );
        b.spawn(leader, false)?;
        b.wait_ready(leader).await?;
        // Let the restarted node catch up before the next round.
        let target = b.client(&survivors).map(true).await?.version;
        let deadline = Instant::now() + Duration::from_secs(30);
        while b
            .client(&[leader])
            .map(false)
            .await
            .map(|m| m.version)
            .unwrap_or(0)
            < target
        {
            if Instant::now() > deadline {
                bail!("restarted node never caught up");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    print_hist("failover (SIGKILL leader -> first successful write)", &h);
    Ok(())
}

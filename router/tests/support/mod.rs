//! Spawns real processes for the router's tests: a 3-node raft-meta cluster, cells and
//! routers, each on loopback with its own temp dir, port and log. Logs' tails are printed
//! when a test fails (or always with `ROUTER_TEST_LOGS=1`).
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use raft_meta::client::MetaClient;
use reqwest::{Method, StatusCode};
use serde_json::Value;
use tempfile::TempDir;
use tokio::sync::{Mutex, MutexGuard};
use topology::{CellId, CellMap, Region};

pub const SECRET: &str = "router-test-secret-0123456789";

/// Deployments run one at a time: on a 2-core machine parallel clusters starve each other.
static SERIAL: Mutex<()> = Mutex::const_new(());

pub async fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().await
}

pub fn token(sub: &str, scope: Option<&str>) -> String {
    topology::auth::mint(SECRET.as_bytes(), sub, scope, 3600)
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind an ephemeral port")
        .local_addr()
        .expect("local addr")
        .port()
}

/// The `cell` and `raft-meta` binaries, built once per test process (a package's test only
/// gets its own binaries built by cargo; a no-op when fresh).
pub fn bin(name: &str) -> PathBuf {
    let path = e2e::built(&["cell", "raft-meta"]).join(name);
    assert!(path.exists(), "{} missing", path.display());
    path
}

/// One spawned process; killed when dropped, its log's tail printed if the test failed.
pub struct Proc {
    pub name: String,
    pub url: String,
    pub log: PathBuf,
    child: Option<Child>,
}

impl Proc {
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then wait for the exit; returns whether it exited cleanly.
    pub fn terminate(&mut self) -> bool {
        let Some(mut c) = self.child.take() else {
            return false;
        };
        e2e::terminate(&mut c, Duration::from_secs(15)).is_ok_and(|s| s.success())
    }

    pub fn dump_log(&self) {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(60).collect();
        eprintln!("----- {} log ({}) -----", self.name, self.log.display());
        for l in tail.into_iter().rev() {
            eprintln!("{l}");
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if std::thread::panicking() || std::env::var_os("ROUTER_TEST_LOGS").is_some() {
            self.dump_log();
        }
        self.kill9();
    }
}

/// Spawns `cmd` with stderr to `log`, reads the first stdout line (`listening on URL`).
async fn spawn_listening(name: &str, mut cmd: Command, log: PathBuf) -> Proc {
    let file = std::fs::File::create(&log).expect("log file");
    let mut child = cmd
        .env("REDCELL_AUTH_SECRET", SECRET)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(file))
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {name}: {e}"));
    let stdout = child.stdout.take().expect("piped stdout");
    let line = tokio::task::spawn_blocking(move || {
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        let _ = reader.read_line(&mut line);
        // Keep draining so the child never blocks on a full pipe.
        std::thread::spawn(move || {
            let mut sink = String::new();
            while reader.read_line(&mut sink).map(|n| n > 0).unwrap_or(false) {
                sink.clear();
            }
        });
        line
    })
    .await
    .expect("read first line");
    let mut proc = Proc {
        name: name.to_owned(),
        url: String::new(),
        log,
        child: Some(child),
    };
    match line.trim().strip_prefix("listening on ") {
        Some(url) => {
            proc.url = url.to_owned();
            proc
        }
        None => {
            proc.dump_log();
            panic!("{name} did not start: first line {line:?}");
        }
    }
}

pub async fn wait_ready(url: &str, what: &str) {
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = http
            .get(format!("{url}/readyz"))
            .timeout(Duration::from_millis(500))
            .send()
            .await
        {
            if r.status().is_success() {
                return;
            }
        }
        assert!(Instant::now() < deadline, "{what} at {url} never ready");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A 3-node raft-meta cluster.
pub struct Meta {
    pub nodes: Vec<Proc>,
    pub addrs: Vec<String>,
    dir: TempDir,
}

impl Meta {
    pub async fn start() -> Meta {
        let dir = TempDir::new().expect("temp dir");
        let addrs: Vec<String> = (0..3)
            .map(|_| format!("127.0.0.1:{}", free_port()))
            .collect();
        let peers = addrs
            .iter()
            .enumerate()
            .map(|(i, a)| format!("{}={a}", i + 1))
            .collect::<Vec<_>>()
            .join(",");
        let mut nodes = Vec::new();
        for (i, addr) in addrs.iter().enumerate() {
            let id = i + 1;
            let data = dir.path().join(format!("meta{id}"));
            std::fs::create_dir_all(&data).expect("meta dir");
            let log = dir.path().join(format!("meta{id}.log"));
            let file = std::fs::File::create(&log).expect("log");
            let mut cmd = Command::new(bin("raft-meta"));
            cmd.args(["--id", &id.to_string(), "--listen", addr, "--peers", &peers])
                .arg("--data-dir")
                .arg(&data)
                .env("REDCELL_AUTH_SECRET", SECRET)
                .stdin(Stdio::null())
                .stdout(file.try_clone().expect("log fd"))
                .stderr(file);
            if id == 1 {
                cmd.arg("--init");
            }
            let child = cmd.spawn().expect("spawn raft-meta");
            nodes.push(Proc {
                name: format!("meta{id}"),
                url: format!("http://{addr}"),
                log,
                child: Some(child),
            });
        }
        for n in &nodes {
            wait_ready(&n.url, &n.name).await;
        }
        Meta { nodes, addrs, dir }
    }

    pub fn client(&self) -> MetaClient {
        MetaClient::new(self.addrs.clone(), token("svc:test-ops", Some("admin")))
    }

    pub fn arg(&self) -> String {
        self.addrs.join(",")
    }

    pub fn kill_all(&mut self) {
        for n in &mut self.nodes {
            n.kill9();
        }
    }
}

/// How a test cell learns the map.
pub enum CellMapSource<'a> {
    /// Follows raft-meta (`--meta`), as in production.
    Meta(&'a str),
    /// Serves by a fixed map file (`--map`).
    Static(&'a Path),
}

pub async fn spawn_cell(id: &str, port: u16, source: CellMapSource<'_>, dir: &Path) -> Proc {
    let data = dir.join(format!("cell-{id}"));
    std::fs::create_dir_all(&data).expect("cell dir");
    let mut cmd = Command::new(bin("cell"));
    cmd.args(["--listen", &format!("127.0.0.1:{port}"), "--cell-id", id])
        .arg("--data-dir")
        .arg(&data)
        .env("RUST_LOG", "info,sqlx=warn");
    match source {
        CellMapSource::Meta(nodes) => cmd.args(["--meta", nodes]),
        CellMapSource::Static(file) => cmd.arg("--map").arg(file),
    };
    let p = spawn_listening(
        &format!("cell {id}"),
        cmd,
        dir.join(format!("cell-{id}.log")),
    )
    .await;
    wait_ready(&p.url, &p.name).await;
    p
}

/// Writes a map in which one cell `c1` at `127.0.0.1:port` owns every slot, as `DIR/NAME.json`,
/// and starts a router on it with `extra` flags, its state and log named after `name` too.
pub async fn router_on_one_cell(dir: &Path, name: &str, port: u16, extra: &[String]) -> Proc {
    let map = CellMap::single(topology::CellInfo {
        id: CellId::parse("c1").unwrap(),
        region: Region::parse("east").unwrap(),
        url: format!("http://127.0.0.1:{port}"),
        status: topology::CellStatus::Active,
    });
    let file = dir.join(format!("{name}.json"));
    std::fs::write(&file, serde_json::to_vec(&map).unwrap()).unwrap();
    let mut args = vec!["--map".to_owned(), file.display().to_string()];
    args.extend_from_slice(extra);
    spawn_router(
        &args,
        &dir.join(format!("{name}-state")),
        dir.join(format!("{name}.log")),
    )
    .await
}

pub async fn spawn_router(args: &[String], state_dir: &Path, log: PathBuf) -> Proc {
    spawn_router_env(args, state_dir, log, &[]).await
}

pub async fn spawn_router_env(
    args: &[String],
    state_dir: &Path,
    log: PathBuf,
    envs: &[(&str, &str)],
) -> Proc {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_router"));
    cmd.envs(envs.iter().copied());
    cmd.args(["--listen", "127.0.0.1:0"])
        .args(args)
        .arg("--state-dir")
        .arg(state_dir)
        .env("RUST_LOG", "info,router=debug");
    spawn_listening("router", cmd, log).await
}

/// Raft-meta, two cells (c1 east, c2 west) registered in it and following it, and a router
/// following it.
pub struct Deployment {
    pub meta: Meta,
    pub cells: Vec<Proc>,
    pub router: Proc,
    pub map: CellMap,
    pub dir: TempDir,
    pub http: reqwest::Client,
}

impl Deployment {
    pub async fn start() -> Deployment {
        let dir = TempDir::new().expect("temp dir");
        let meta = Meta::start().await;
        let client = meta.client();
        let ports = [free_port(), free_port()];
        for (i, (id, region)) in [("c1", "east"), ("c2", "west")].into_iter().enumerate() {
            client
                .register_cell(
                    &CellId::parse(id).unwrap(),
                    &Region::parse(region).unwrap(),
                    &format!("http://127.0.0.1:{}", ports[i]),
                    None,
                    None,
                )
                .await
                .expect("register cell");
        }
        let map = client
            .map(true)
            .await
            .expect("map")
            .map
            .expect("cells registered");
        let mut cells = Vec::new();
        let nodes = meta.arg();
        for (i, id) in ["c1", "c2"].into_iter().enumerate() {
            let source = CellMapSource::Meta(&nodes);
            cells.push(spawn_cell(id, ports[i], source, dir.path()).await);
        }
        let router = spawn_router(
            &["--meta".into(), meta.arg()],
            &dir.path().join("router-state"),
            dir.path().join("router.log"),
        )
        .await;
        wait_ready(&router.url, "router").await;
        Deployment {
            meta,
            cells,
            router,
            map,
            dir,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(20))
                .build()
                .unwrap(),
        }
    }

    pub fn router_state(&self) -> PathBuf {
        self.dir.path().join("router-state")
    }

    /// A uid whose home slot `map` gives to `cell`, not in `avoid`.
    pub fn uid_on(&self, cell: &str, avoid: &[&str]) -> String {
        uid_on(&self.map, cell, avoid)
    }
}

pub use e2e::uid_on;

/// `GET /v1/users/{uid}/wallet` as the user itself, through [`call`].
pub async fn own_wallet(
    http: &reqwest::Client,
    base: &str,
    uid: &str,
) -> (
    StatusCode,
    Option<String>,
    Value,
    reqwest::header::HeaderMap,
) {
    let path = format!("/v1/users/{uid}/wallet");
    call(
        http,
        base,
        Method::GET,
        &path,
        Some(&token(uid, None)),
        None,
        None,
    )
    .await
}

/// One call: status, the answering cell (`x-redcell-cell`), the JSON body (or Null).
pub async fn call(
    http: &reqwest::Client,
    base: &str,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
    idem: Option<&str>,
) -> (
    StatusCode,
    Option<String>,
    Value,
    reqwest::header::HeaderMap,
) {
    let mut req = http.request(method, format!("{base}{path}"));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(k) = idem {
        req = req.header("idempotency-key", k);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.expect("router answers");
    let status = resp.status();
    let headers = resp.headers().clone();
    let cell = headers
        .get(wire::headers::CELL)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let bytes = resp.bytes().await.expect("body");
    let value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (status, cell, value, headers)
}

/// A throwaway `redis-server` on an ephemeral port, or `None` when it is not installed.
pub async fn spawn_redis(dir: &Path) -> Option<Proc> {
    let port = free_port();
    let log = dir.join("redis.log");
    let file = std::fs::File::create(&log).expect("log");
    let child = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdin(Stdio::null())
        .stdout(file.try_clone().expect("log fd"))
        .stderr(file)
        .spawn()
        .ok()?;
    let proc = Proc {
        name: "redis".into(),
        url: format!("redis://127.0.0.1:{port}"),
        log,
        child: Some(child),
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "redis-server never listened");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Some(proc)
}

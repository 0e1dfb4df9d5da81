//! Spawns real processes for the router's tests (through the `harness` launchers): a 3-node
//! raft-meta cluster, cells and routers, each on loopback with its own temp dir, port and
//! log. Logs' tails are printed when a test fails (or always with `HARNESS_LOGS=1`).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use harness::meta::MetaCluster;
pub use harness::procs::{free_port, wait_ready, Proc};
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

/// The `cell` and `raft-meta` binaries, built once per test process (a package's test only
/// gets its own binaries built by cargo; a no-op when fresh).
pub fn bin(name: &str) -> PathBuf {
    let path = harness::procs::built(&["cell", "raft-meta"]).join(name);
    assert!(path.exists(), "{} missing", path.display());
    path
}

/// A 3-node raft-meta cluster.
pub type Meta = MetaCluster;

/// Starts [`Meta`] with the tests' secret.
pub async fn start_meta() -> Meta {
    MetaCluster::start(&bin("raft-meta"), SECRET, 3, &[]).await
}

/// Spawns `cmd` signed with the tests' secret, its address from its first line.
async fn spawn_listening(name: &str, mut cmd: Command, log: PathBuf) -> Proc {
    cmd.env("REDCELL_AUTH_SECRET", SECRET);
    Proc::spawn_listening(name, cmd, &log).await
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
        let meta = start_meta().await;
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

pub use harness::up::uid_on;

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
    which("redis-server")?;
    let port = free_port();
    let mut cmd = Command::new("redis-server");
    cmd.args([
        "--port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
    ]);
    let url = format!("redis://127.0.0.1:{port}");
    let proc = Proc::spawn("redis", &url, cmd, &dir.join("redis.log"));
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "redis-server never listened");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Some(proc)
}

/// The program `name` on PATH, if there is one.
fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|p| p.join(name))
        .find(|p| p.is_file())
}

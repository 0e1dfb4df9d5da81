//! A whole deployment started by `cellctl up` on a temporary data dir (loopback, free
//! ports), for the end-to-end tests and the drill's tests: it is talked to only as its users
//! do — HTTP through the router, and `cellctl`. It never opens a cell's database.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;
use topology::{CellMap, Slot};

use crate::procs::{built, terminate};

pub const SECRET: &str = "e2e-secret-0123456789abcdef";

/// Directory of the freshly built binaries of the whole deployment (same profile as this
/// test).
pub fn bin_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| built(&["cellctl", "cell", "router", "raft-meta"]))
}

pub fn token(sub: &str, scope: Option<&str>) -> String {
    topology::auth::mint(SECRET.as_bytes(), sub, scope, 3600)
}

/// A `cellctl up` on a data dir, stopped (SIGTERM, as Ctrl-C would) when dropped.
pub struct Up {
    pub dir: PathBuf,
    child: Option<Child>,
    pub http: reqwest::Client,
}

impl Up {
    /// Starts `cellctl up` (4 cells over 2 regions unless `extra` says otherwise) and waits
    /// until the router is ready.
    pub async fn start(dir: &Path, extra: &[&str]) -> Up {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.with_extension("cellctl.log"))
            .expect("cellctl log");
        let child = Command::new(bin_dir().join("cellctl"))
            .arg("--data-dir")
            .arg(dir)
            .args(["up", "--base-port", "0", "--router-listen", "127.0.0.1:0"])
            .arg("--bin-dir")
            .arg(bin_dir())
            .args(["--cell-arg=--worker-interval-ms=100"])
            .args(extra)
            .env("REDCELL_AUTH_SECRET", SECRET)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn cellctl up");
        let up = Up {
            dir: dir.to_path_buf(),
            child: Some(child),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(20))
                .build()
                .unwrap(),
        };
        let started = Instant::now();
        loop {
            if let Some(r) = up.try_record() {
                if r["router"]["pid"].as_u64().is_some() {
                    let url = format!("{}/readyz", up.router());
                    if up
                        .http
                        .get(url)
                        .send()
                        .await
                        .is_ok_and(|r| r.status().is_success())
                    {
                        return up;
                    }
                }
            }
            if started.elapsed() > Duration::from_secs(120) {
                up.dump_log();
                panic!("cellctl up not ready after 120 s");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn dump_log(&self) {
        let text =
            std::fs::read_to_string(self.dir.with_extension("cellctl.log")).unwrap_or_default();
        eprintln!("--- cellctl up log ---\n{text}");
    }

    fn try_record(&self) -> Option<Value> {
        let text = std::fs::read_to_string(self.dir.join("deployment.json")).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// The deployment's keys file (`cellctl rotate-secret` writes it; absent before).
    pub fn keys_file(&self) -> PathBuf {
        self.dir.join("auth-keys")
    }

    /// The secret tokens are minted with now: the keys file's first once a rotation wrote
    /// one, else [`SECRET`].
    pub fn current_secret(&self) -> String {
        std::fs::read_to_string(self.keys_file())
            .ok()
            .and_then(|text| {
                text.lines()
                    .map(str::trim)
                    .find(|l| !l.is_empty() && !l.starts_with('#'))
                    .map(str::to_owned)
            })
            .unwrap_or_else(|| SECRET.to_owned())
    }

    /// [`token`], minted with the [`Up::current_secret`].
    pub fn token(&self, sub: &str, scope: Option<&str>) -> String {
        topology::auth::mint(self.current_secret().as_bytes(), sub, scope, 3600)
    }

    /// `deployment.json` as written now.
    pub fn record(&self) -> Value {
        self.try_record().expect("deployment.json")
    }

    pub fn router(&self) -> String {
        self.record()["router"]["url"]
            .as_str()
            .expect("router url")
            .to_owned()
    }

    /// Runs `cellctl ARGS --data-dir DIR` to completion: (exit code, stdout).
    pub fn cellctl(&self, args: &[&str]) -> (i32, String) {
        let out = Command::new(bin_dir().join("cellctl"))
            .arg("--data-dir")
            .arg(&self.dir)
            .args(args)
            .env("REDCELL_AUTH_SECRET", SECRET)
            .env("RUST_LOG", "warn")
            .output()
            .expect("run cellctl");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() {
            eprintln!(
                "cellctl {args:?}: {}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        (out.status.code().unwrap_or(-1), stdout)
    }

    /// raft-meta's whole view (`GET /v1/map` of the first node): the map, switches,
    /// policies, liveness, grants and the failover records.
    pub async fn view(&self) -> Value {
        let meta = self.record()["meta"][0]["url"]
            .as_str()
            .expect("meta url")
            .to_owned();
        let (_, body) = self
            .call(
                "GET",
                &format!("{meta}/v1/map"),
                &token("svc:e2e", Some("admin")),
                None,
            )
            .await;
        body
    }

    /// The map as raft-meta has it now.
    pub async fn map(&self) -> CellMap {
        serde_json::from_value(self.view().await["map"].clone()).expect("a map")
    }

    /// One HTTP call; `path` is a path on the router or a whole URL.
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        self.call_with(method, path, token, body, &[]).await
    }

    pub async fn call_with(
        &self,
        method: &str,
        path: &str,
        token: &str,
        body: Option<Value>,
        headers: &[(&str, &str)],
    ) -> (u16, Value) {
        let url = if path.starts_with("http") {
            path.to_owned()
        } else {
            format!("{}{path}", self.router())
        };
        let mut req = self
            .http
            .request(method.parse().unwrap(), url)
            .bearer_auth(token);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        match req.send().await {
            Ok(resp) => {
                let status = resp.status().as_u16();
                let body = resp.json::<Value>().await.unwrap_or(Value::Null);
                (status, body)
            }
            Err(e) => (0, Value::String(e.to_string())),
        }
    }

    /// Stops the deployment as Ctrl-C would and waits for `cellctl up` to exit.
    pub fn stop(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        match terminate(&mut child, Duration::from_secs(60)) {
            Ok(status) => Some(status),
            Err(killed) => {
                self.kill_children();
                Some(killed)
            }
        }
    }

    fn kill_children(&self) {
        let Some(r) = self.try_record() else { return };
        let mut pids = vec![r["router"]["pid"].as_i64()];
        for group in ["meta", "cells"] {
            for p in r[group].as_array().into_iter().flatten() {
                pids.push(p["pid"].as_i64());
            }
        }
        for pid in pids.into_iter().flatten() {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
        }
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.dump_log();
        }
        self.stop();
    }
}

/// The first uid `u0, u1, …` whose slot `cell` owns, skipping `avoid`.
pub fn uid_on(map: &CellMap, cell: &str, avoid: &[&str]) -> String {
    (0..100_000)
        .map(|n| format!("u{n}"))
        .find(|u| {
            map.serving(Slot::of(u.as_bytes())).as_str() == cell && !avoid.contains(&u.as_str())
        })
        .expect("some uid lands on every cell")
}

/// The servers the deployment runs on: SQLite and in-process gates by default; Postgres and
/// Redis when `REDCELL_TEST_DATABASE_URL` / `REDCELL_TEST_REDIS_URL` are set (as the test
/// command's second pass sets them). Drops the cells' databases when dropped.
pub struct Backend {
    args: Vec<String>,
    postgres: Option<(String, String)>,
}

impl Backend {
    pub fn from_env() -> Backend {
        let get = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let mut args = Vec::new();
        let mut postgres = None;
        if let Some(url) = get("REDCELL_TEST_DATABASE_URL") {
            let prefix = format!("e2e_{:08x}", rand_u32());
            args.extend([
                "--postgres".into(),
                url.clone(),
                "--db-prefix".into(),
                prefix.clone(),
            ]);
            postgres = Some((url, prefix));
        }
        if let Some(url) = get("REDCELL_TEST_REDIS_URL") {
            args.extend(["--redis".into(), url]);
        }
        Backend { args, postgres }
    }

    /// Flags for `cellctl up`.
    pub fn args(&self) -> Vec<&str> {
        self.args.iter().map(String::as_str).collect()
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        let Some((url, prefix)) = &self.postgres else {
            return;
        };
        // Each cell's database, and the replicas the cells hosted (`NAME_replica_SHARD`).
        let mut names: Vec<String> = (1..=8).map(|n| format!("{prefix}_c{n}")).collect();
        if let Ok(out) = Command::new("psql")
            .arg(url)
            .arg("-tAc")
            .arg(format!(
                "SELECT datname FROM pg_database WHERE datname LIKE '{prefix}\\_c%\\_replica\\_%'"
            ))
            .output()
        {
            names.extend(
                String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .map(str::to_owned),
            );
        }
        for name in names.iter().filter(|n| !n.is_empty()) {
            let _ = Command::new("psql")
                .arg(url)
                .arg("-qc")
                .arg(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

fn rand_u32() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    h.finish() as u32
}

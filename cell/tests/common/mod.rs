//! Spawns real `cell` processes for tests: each gets its own temp dir, ephemeral port, and
//! (when `REDCELL_TEST_DATABASE_URL` is set) its own Postgres database; Redis is used when
//! `REDCELL_TEST_REDIS_URL` is set. Logs are printed when a test fails.
#![allow(dead_code)]

pub mod cashier;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use harness::meta::MetaCluster;
use harness::procs::Proc;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

pub const SECRET: &str = "test-secret-0123456789abcdef";

/// Which storage the suite runs on, from the environment.
#[derive(Clone, Debug)]
pub struct Backend {
    /// Admin URL of a Postgres server, e.g. postgres://postgres@127.0.0.1:5432/test.
    pub postgres: Option<String>,
    pub redis: Option<String>,
}

impl Backend {
    pub fn from_env() -> Backend {
        let get = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        Backend {
            postgres: get("REDCELL_TEST_DATABASE_URL"),
            redis: get("REDCELL_TEST_REDIS_URL"),
        }
    }
}

#[derive(Default)]
pub struct CellOptions {
    pub extra_args: Vec<String>,
    /// A fixed listen address (kept across restarts); default: an ephemeral port.
    pub listen: Option<String>,
    /// On Postgres: reach the cell's database through this `host:port` (a test's proxy)
    /// instead of the server's own address.
    pub database_via: Option<String>,
}

pub struct TestCell {
    pub url: String,
    proc: Option<Proc>,
    dir: tempfile::TempDir,
    database_url: Option<String>,
    database_name: Option<String>,
    admin_url: Option<String>,
    args: Vec<String>,
    listen: String,
    pub http: reqwest::Client,
    restarts: u32,
}

pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}_{:x}_{:x}",
        std::process::id(),
        rand::random::<u64>()
    )
}

pub async fn create_database(admin: &str, name: &str) -> String {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(admin)
        .await
        .expect("connect to the test Postgres");
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await
        .expect("create test database");
    let base = admin
        .rsplit_once('/')
        .map(|(b, _)| b)
        .expect("admin url has a database");
    format!("{base}/{name}")
}

impl TestCell {
    pub async fn spawn() -> TestCell {
        TestCell::spawn_with(CellOptions::default()).await
    }

    pub async fn spawn_with(opts: CellOptions) -> TestCell {
        let backend = Backend::from_env();
        let dir = tempfile::Builder::new()
            .prefix("redcell-cell-")
            .tempdir()
            .expect("temp dir");
        let mut args = vec![
            "--data-dir".to_owned(),
            dir.path().display().to_string(),
            "--test-clock".to_owned(),
            "--worker-interval-ms".to_owned(),
            "100".to_owned(),
        ];
        let (mut database_url, mut database_name) = (None, None);
        if let Some(admin) = &backend.postgres {
            let name = unique("redcell_t");
            let mut url = create_database(admin, &name).await;
            if let Some(via) = &opts.database_via {
                let (scheme, rest) = url.split_once("://").expect("a URL");
                let (auth, path) = rest.split_once('@').map_or(("", rest), |(a, p)| (a, p));
                let (_, db) = path.split_once('/').expect("a database in the URL");
                let auth = if auth.is_empty() {
                    String::new()
                } else {
                    format!("{auth}@")
                };
                url = format!("{scheme}://{auth}{via}/{db}");
            }
            args.extend(["--database-url".to_owned(), url.clone()]);
            database_url = Some(url);
            database_name = Some(name);
        }
        if let Some(redis) = &backend.redis {
            args.extend(["--redis-url".to_owned(), redis.clone()]);
        }
        args.extend(opts.extra_args);
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(64)
            .timeout(Duration::from_secs(60))
            .build()
            .expect("http client");
        let mut cell = TestCell {
            url: String::new(),
            proc: None,
            dir,
            database_url,
            database_name,
            admin_url: backend.postgres,
            args,
            listen: opts.listen.unwrap_or_else(|| "127.0.0.1:0".to_owned()),
            http,
            restarts: 0,
        };
        cell.start().await;
        cell
    }

    /// The cell's own Postgres database, when the suite runs on Postgres.
    pub fn database_url(&self) -> Option<&str> {
        self.database_url.as_deref()
    }

    /// The URL of the replica of `shard` this cell hosts (see `cell::replication`).
    pub fn replica_url(&self, shard: &str) -> String {
        match &self.database_url {
            Some(url) => {
                let (base, name) = url.rsplit_once('/').expect("database url");
                format!("{base}/{name}_replica_{shard}")
            }
            None => format!(
                "sqlite://{}?mode=rw",
                self.data_dir()
                    .join("replicas")
                    .join(format!("{shard}.sqlite"))
                    .display()
            ),
        }
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join(format!("cell-{}.log", self.restarts))
    }

    async fn start(&mut self) {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_cell"));
        cmd.arg("--listen")
            .arg(&self.listen)
            .args(&self.args)
            .env("REDCELL_AUTH_SECRET", SECRET)
            .env("RUST_LOG", "info,sqlx=warn");
        // The log is private like everything the cell writes there (tests/files.rs checks
        // the dir); `dump_log` prints every restart's, so the process' own is not printed.
        let proc = Proc::spawn_listening("cell", cmd, &self.log_path()).await;
        self.url = proc.url.clone();
        self.proc = Some(proc);
        if let Err(e) =
            harness::procs::wait_path(&self.url, "/readyz", "cell", Duration::from_secs(30)).await
        {
            self.dump_log();
            panic!("{e}");
        }
    }

    /// The running process' id, for killing it from another task.
    pub fn pid(&self) -> Option<u32> {
        self.proc.as_ref().and_then(Proc::pid)
    }

    /// SIGKILL: no chance to flush or drain.
    pub fn kill9(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill9();
        }
    }

    /// SIGTERM, then wait for a clean exit; returns the exit status' success.
    pub fn terminate(&mut self) -> bool {
        self.proc
            .take()
            .is_some_and(|mut p| p.terminate(Duration::from_secs(20)))
    }

    /// Removes a flag and its value from the arguments of later restarts.
    pub fn drop_arg(&mut self, flag: &str) {
        if let Some(i) = self.args.iter().position(|a| a == flag) {
            self.args.drain(i..(i + 2).min(self.args.len()));
        }
    }

    /// Starts the cell again on the same data (after `kill9` or `terminate`).
    pub async fn restart(&mut self) {
        self.kill9();
        self.restarts += 1;
        self.start().await;
    }

    pub fn dump_log(&self) {
        for i in 0..=self.restarts {
            let path = self.dir.path().join(format!("cell-{i}.log"));
            if let Ok(text) = std::fs::read_to_string(&path) {
                let lines: Vec<&str> = text.lines().collect();
                let tail = &lines[lines.len().saturating_sub(60)..];
                eprintln!(
                    "---- {} (last {} lines) ----\n{}",
                    path.display(),
                    tail.len(),
                    tail.join("\n")
                );
            }
        }
    }

    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self.http.request(method, format!("{}{path}", self.url));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let res = req.send().await.expect("request");
        let status = res.status();
        let text = res.text().await.expect("body");
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    pub async fn get(&self, path: &str, token: &str) -> (StatusCode, Value) {
        self.call(Method::GET, path, Some(token), None).await
    }

    pub async fn post(&self, path: &str, token: &str, body: Value) -> (StatusCode, Value) {
        self.call(Method::POST, path, Some(token), Some(body)).await
    }

    /// Grants a subsidy and returns its id.
    pub async fn grant(&self, grant_id: &str, uid: &str, amount: i64) -> String {
        let (s, v) = self
            .post("/v1/subsidies", &activity(), json!({"grant_id": grant_id, "uid": uid, "amount": amount, "expires_at": "2099-01-01T00:00:00Z"}))
            .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        v["subsidy_id"].as_str().expect("subsidy_id").to_owned()
    }

    /// Sends a C2C packet and pays it; returns the packet id.
    pub async fn paid_packet(&self, sender: &str, total: i64, count: i64) -> String {
        let key = unique("k");
        let res = self
            .http
            .post(format!("{}/v1/packets", self.url))
            .bearer_auth(user(sender))
            .header("idempotency-key", key)
            .json(&json!({"kind": "c2c", "total": total, "count": count}))
            .send()
            .await
            .expect("send");
        assert_eq!(res.status(), StatusCode::CREATED);
        let v: Value = res.json().await.expect("json");
        let payment = v["payment"]["payment_id"].as_str().expect("payment id");
        let (s, _) = self
            .post(
                &format!("/v1/payments/{payment}/callback"),
                &payments(),
                json!({"status": "succeeded"}),
            )
            .await;
        assert_eq!(s, StatusCode::OK);
        v["packet_id"].as_str().expect("packet id").to_owned()
    }

    /// Polls reconciliation until nothing is in flight; returns the final report.
    pub async fn settled(&self) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (s, v) = self.get("/v1/admin/reconciliation", &admin()).await;
            assert_eq!(s, StatusCode::OK, "{v}");
            if v["totals"]["in_flight"] == 0 || Instant::now() > deadline {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn advance_clock(&self, seconds: i64) {
        let (s, v) = self
            .post("/v1/admin/clock", &admin(), json!({"advance_s": seconds}))
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
    }
}

impl Drop for TestCell {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.dump_log();
        }
        self.kill9();
        if let (Some(admin), Some(name)) = (&self.admin_url, &self.database_name) {
            // Its own database and the replicas it hosted (`NAME_replica_SHARD`).
            let mut names = vec![name.clone()];
            if let Ok(out) = Command::new("psql")
                .arg(admin)
                .arg("-tAc")
                .arg(format!(
                    "SELECT datname FROM pg_database WHERE datname LIKE '{name}_replica_%'"
                ))
                .output()
            {
                names.extend(
                    String::from_utf8_lossy(&out.stdout)
                        .lines()
                        .map(str::to_owned),
                );
            }
            for n in names.iter().filter(|n| !n.is_empty()) {
                let _ = Command::new("psql")
                    .arg(admin)
                    .arg("-qc")
                    .arg(format!("DROP DATABASE IF EXISTS {n} WITH (FORCE)"))
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
            }
        }
        let _ = &self.database_url;
    }
}

pub fn token(sub: &str, scope: Option<&str>) -> String {
    topology::auth::mint(SECRET.as_bytes(), sub, scope, 3600)
}

pub fn user(uid: &str) -> String {
    token(uid, None)
}

pub fn admin() -> String {
    token("svc:ops", Some("admin"))
}

pub fn activity() -> String {
    token("svc:activity", Some("subsidy:grant"))
}

pub fn payments() -> String {
    token("svc:payments", Some("payment:callback"))
}

/// The `raft-meta` binary, built once per test process (cargo builds only this package's
/// binaries for its tests; raft-meta is another package).
pub fn raft_meta_bin() -> PathBuf {
    harness::procs::built(&["raft-meta"]).join("raft-meta")
}

/// One raft-meta node forming a cluster of one, for tests of cells that follow the map.
pub struct MetaNode {
    pub url: String,
    cluster: MetaCluster,
}

impl MetaNode {
    pub async fn start() -> MetaNode {
        let cluster = MetaCluster::start(&raft_meta_bin(), SECRET, 1, &[]).await;
        cluster.leader().await;
        MetaNode {
            url: cluster.url(1),
            cluster,
        }
    }

    pub fn client(&self) -> raft_meta::client::MetaClient {
        self.cluster.client()
    }

    pub fn pid(&self) -> u32 {
        self.cluster.pid(1)
    }

    pub fn kill9(&mut self) {
        self.cluster.kill(1);
    }
}

/// Polls `f` until it holds, failing the test after 20 s with `what`.
pub async fn wait_until<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the cell's `/metrics` has exactly the line `line`.
pub async fn wait_for_metric(cell: &TestCell, line: &str) {
    wait_until(line, || async {
        let text = cell
            .http
            .get(format!("{}/metrics", cell.url))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines().any(|l| l == line)
    })
    .await;
}

/// Claims `packet` as `uid`, retrying `429 claim_busy` after its Retry-After, until a final
/// answer; returns the status and body.
pub async fn claim_until_final(cell: &TestCell, packet: &str, uid: &str) -> (StatusCode, Value) {
    let token = user(uid);
    for _ in 0..600 {
        let res = cell
            .http
            .post(format!("{}/v1/packets/{packet}/claims", cell.url))
            .bearer_auth(&token)
            .send()
            .await
            .expect("claim");
        let status = res.status();
        if status == StatusCode::TOO_MANY_REQUESTS {
            let wait: u64 = res
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())
                .expect("429 carries Retry-After");
            // Jitter keeps retries from arriving in one wave.
            let jitter = rand::random::<u64>() % 250;
            tokio::time::sleep(Duration::from_millis(wait * 1000 + jitter)).await;
            continue;
        }
        let body: Value = res.json().await.expect("json");
        return (status, body);
    }
    panic!("claim on {packet} by {uid} never got a final answer");
}

/// Sends `signal` (e.g. `STOP`, `CONT`) to `pid`: freezing a process leaves its sockets open
/// but unanswered, as a partition or a stalled machine does.
pub fn signal(pid: u32, signal: &str) {
    if let Err(e) = harness::procs::signal_named(pid, signal) {
        panic!("kill -{signal} {pid}: {e}");
    }
}

/// A free loopback port (for cells that must know each other's address before they start).
pub fn free_port() -> u16 {
    harness::procs::free_port()
}

//! Spawns real `raft-meta` processes on loopback, each with its own temp dir, log file and
//! port. Logs are printed when a test fails.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs::File;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use raft_meta::client::{ClusterView, MetaClient};
use tempfile::TempDir;
use tokio::sync::{Mutex, MutexGuard};

pub const SECRET: &str = "raft-meta-test-secret";

/// Cluster tests run one at a time: on a 2-core machine, parallel clusters starve each
/// other's heartbeats and cause elections no test asked for.
static SERIAL: Mutex<()> = Mutex::const_new(());

pub async fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().await
}

pub fn admin_token() -> String {
    topology::auth::mint(SECRET.as_bytes(), "svc:test-ops", Some("admin"), 3600)
}

pub fn internal_token() -> String {
    topology::auth::mint(SECRET.as_bytes(), "svc:test-cell", Some("internal"), 3600)
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind an ephemeral port")
        .local_addr()
        .expect("local addr")
        .port()
}

pub struct Proc {
    pub addr: String,
    pub dir: PathBuf,
    pub log: PathBuf,
    child: Option<Child>,
    stopped: bool,
}

pub struct Cluster {
    tmp: TempDir,
    pub nodes: BTreeMap<u64, Proc>,
    peers: String,
    extra: Vec<String>,
    starts: u32,
}

impl Cluster {
    /// Starts `n` voters (`--init` on node 1) and waits until every one is ready.
    pub async fn start(n: u64, extra: &[&str]) -> Cluster {
        let tmp = TempDir::new().expect("temp dir");
        let mut nodes = BTreeMap::new();
        for id in 1..=n {
            nodes.insert(id, Self::proc_for(&tmp, id));
        }
        let peers = nodes
            .iter()
            .map(|(id, p)| format!("{id}={}", p.addr))
            .collect::<Vec<_>>()
            .join(",");
        let mut c = Cluster {
            tmp,
            nodes,
            peers,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            starts: 0,
        };
        for id in 1..=n {
            c.spawn(id, id == 1);
        }
        for id in 1..=n {
            c.wait_ready(id).await;
        }
        c
    }

    fn proc_for(tmp: &TempDir, id: u64) -> Proc {
        let dir = tmp.path().join(format!("node{id}"));
        std::fs::create_dir_all(&dir).expect("node dir");
        Proc {
            addr: format!("127.0.0.1:{}", free_port()),
            log: tmp.path().join(format!("node{id}.log")),
            dir,
            child: None,
            stopped: false,
        }
    }

    /// Adds a node that is not a member yet (to be added as a learner).
    pub fn add_node(&mut self, id: u64) {
        let p = Self::proc_for(&self.tmp, id);
        self.nodes.insert(id, p);
        self.spawn(id, false);
    }

    pub fn spawn(&mut self, id: u64, init: bool) {
        self.starts += 1;
        let peers = self.peers.clone();
        let extra = self.extra.clone();
        let p = self.nodes.get_mut(&id).expect("known node");
        let log = File::options()
            .create(true)
            .append(true)
            .open(&p.log)
            .expect("log file");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_raft-meta"));
        cmd.arg("--id")
            .arg(id.to_string())
            .arg("--listen")
            .arg(&p.addr)
            .arg("--data-dir")
            .arg(&p.dir)
            .arg("--peers")
            .arg(&peers)
            .args(&extra)
            .env("REDCELL_AUTH_SECRET", SECRET)
            .env("RUST_LOG", "info,openraft=info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log);
        if init {
            cmd.arg("--init");
        }
        p.child = Some(cmd.spawn().expect("spawn raft-meta"));
        p.stopped = false;
    }

    pub fn addr(&self, id: u64) -> String {
        self.nodes[&id].addr.clone()
    }

    pub fn pid(&self, id: u64) -> u32 {
        self.nodes[&id].child.as_ref().expect("running").id()
    }

    /// SIGKILL.
    pub fn kill(&mut self, id: u64) {
        let p = self.nodes.get_mut(&id).expect("known node");
        if let Some(mut child) = p.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn signal(&mut self, id: u64, sig: &str) {
        let pid = self.pid(id);
        let ok = Command::new("kill")
            .arg(sig)
            .arg(pid.to_string())
            .status()
            .expect("run kill")
            .success();
        assert!(ok, "kill {sig} {pid}");
    }

    pub fn sigstop(&mut self, id: u64) {
        self.signal(id, "-STOP");
        self.nodes.get_mut(&id).expect("node").stopped = true;
    }

    pub fn sigcont(&mut self, id: u64) {
        self.signal(id, "-CONT");
        self.nodes.get_mut(&id).expect("node").stopped = false;
    }

    /// Sends SIGTERM and waits for a clean exit.
    pub fn terminate(&mut self, id: u64) -> std::process::ExitStatus {
        self.signal(id, "-TERM");
        let p = self.nodes.get_mut(&id).expect("known node");
        let mut child = p.child.take().expect("running");
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "node {id} ignored SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn client(&self) -> MetaClient {
        MetaClient::new(
            self.nodes.values().map(|p| p.addr.clone()).collect(),
            admin_token(),
        )
    }

    /// A client that knows only these nodes.
    pub fn client_for(&self, ids: &[u64]) -> MetaClient {
        MetaClient::new(ids.iter().map(|id| self.addr(*id)).collect(), admin_token())
    }

    pub async fn wait_ready(&self, id: u64) {
        self.wait_path(id, "/readyz", Duration::from_secs(20)).await
    }

    pub async fn wait_healthy(&self, id: u64) {
        self.wait_path(id, "/healthz", Duration::from_secs(20))
            .await
    }

    async fn wait_path(&self, id: u64, path: &str, limit: Duration) {
        let http = reqwest::Client::new();
        let deadline = Instant::now() + limit;
        let url = format!("http://{}{path}", self.addr(id));
        loop {
            if let Ok(r) = http
                .get(&url)
                .timeout(Duration::from_millis(500))
                .send()
                .await
            {
                if r.status().is_success() {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "node {id}: {path} never succeeded"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    pub async fn cluster_view(&self, id: u64) -> Option<ClusterView> {
        self.client_for(&[id])
            .with_deadline(Duration::from_millis(500))
            .cluster()
            .await
            .ok()
    }

    /// The leader that every given node agrees on.
    pub async fn agreed_leader(&self, ids: &[u64]) -> u64 {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let mut leaders = Vec::new();
            for id in ids {
                leaders.push(self.cluster_view(*id).await.and_then(|v| v.leader));
            }
            if let Some(Some(l)) = leaders.first() {
                if leaders.iter().all(|x| *x == Some(*l)) && ids.contains(l) {
                    return *l;
                }
            }
            assert!(Instant::now() < deadline, "no agreed leader: {leaders:?}");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Waits until node `id` has applied at least map version `v`.
    pub async fn wait_applied(&self, id: u64, v: u64) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(view) = self.cluster_view(id).await {
                if view.map_version >= v {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "node {id} never reached version {v}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    fn dump_logs(&self) {
        for (id, p) in &self.nodes {
            let text = std::fs::read_to_string(&p.log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let tail = &lines[lines.len().saturating_sub(80)..];
            eprintln!(
                "===== node {id} ({}) last {} lines =====",
                p.addr,
                tail.len()
            );
            for l in tail {
                eprintln!("{l}");
            }
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.dump_logs();
        }
        let ids: Vec<u64> = self.nodes.keys().copied().collect();
        for id in ids {
            if self.nodes[&id].stopped {
                self.sigcont(id);
            }
            self.kill(id);
        }
        // Kept on failure, or on request (`RAFT_META_TEST_KEEP=1`) to read the nodes' logs.
        if std::thread::panicking() || std::env::var_os("RAFT_META_TEST_KEEP").is_some() {
            let path = std::mem::replace(&mut self.tmp, TempDir::new().expect("temp dir"));
            eprintln!("cluster dir kept: {}", path.keep().display());
        }
    }
}

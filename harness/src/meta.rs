//! A raft-meta cluster of real processes on loopback: `n` voters, each with its own data dir,
//! port and log under one temp dir; killed when dropped (logs' tails printed on a failure,
//! the dir kept with `HARNESS_KEEP=1`). One launcher for the cell's, the router's and
//! raft-meta's own tests.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use raft_meta::client::{ClusterView, MetaClient};
use tempfile::TempDir;

use crate::procs::{free_port, wait_path, Proc};

/// One voter: its address, data dir, log and process.
pub struct Node {
    pub addr: String,
    pub dir: PathBuf,
    pub proc: Proc,
}

pub struct MetaCluster {
    tmp: TempDir,
    pub nodes: BTreeMap<u64, Node>,
    peers: String,
    extra: Vec<String>,
    bin: PathBuf,
    secret: String,
    /// An operator's token, for the readiness and leader polls.
    admin: String,
}

impl MetaCluster {
    /// Starts voters `1..=n` of the `raft-meta` binary at `bin` (`--init` on node 1), signed
    /// with `secret`, with `extra` flags on every node, and waits until each is ready.
    pub async fn start(bin: &Path, secret: &str, n: u64, extra: &[&str]) -> MetaCluster {
        let tmp = TempDir::new().expect("temp dir");
        let mut addrs = BTreeMap::new();
        for id in 1..=n {
            addrs.insert(id, format!("127.0.0.1:{}", free_port()));
        }
        let peers = addrs
            .iter()
            .map(|(id, a)| format!("{id}={a}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut c = MetaCluster {
            tmp,
            nodes: BTreeMap::new(),
            peers,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            bin: bin.to_path_buf(),
            secret: secret.to_owned(),
            admin: topology::auth::mint(secret.as_bytes(), "svc:test-ops", Some("admin"), 3600),
        };
        for (id, addr) in addrs {
            c.launch(id, addr, id == 1);
        }
        for id in 1..=n {
            c.wait_ready(id).await;
        }
        c
    }

    fn command(&self, id: u64, addr: &str, dir: &Path, init: bool) -> Command {
        let mut cmd = Command::new(&self.bin);
        cmd.arg("--id")
            .arg(id.to_string())
            .arg("--listen")
            .arg(addr)
            .arg("--data-dir")
            .arg(dir)
            .arg("--peers")
            .arg(&self.peers)
            .args(&self.extra)
            .env("REDCELL_AUTH_SECRET", &self.secret)
            .env("RUST_LOG", "info,openraft=info");
        if init {
            cmd.arg("--init");
        }
        cmd
    }

    fn launch(&mut self, id: u64, addr: String, init: bool) {
        let dir = self.tmp.path().join(format!("node{id}"));
        std::fs::create_dir_all(&dir).expect("node dir");
        let log = self.tmp.path().join(format!("node{id}.log"));
        let cmd = self.command(id, &addr, &dir, init);
        let proc = Proc::spawn(&format!("meta{id}"), &format!("http://{addr}"), cmd, &log);
        self.nodes.insert(id, Node { addr, dir, proc });
    }

    /// Starts a node that is not a member yet (to be added as a learner).
    pub fn add_node(&mut self, id: u64) {
        let addr = format!("127.0.0.1:{}", free_port());
        self.launch(id, addr, false);
    }

    /// Starts node `id` again on its data dir (after `kill` or `terminate`).
    pub fn spawn(&mut self, id: u64, init: bool) {
        let node = &self.nodes[&id];
        let cmd = self.command(id, &node.addr, &node.dir, init);
        self.nodes
            .get_mut(&id)
            .expect("known node")
            .proc
            .respawn(cmd);
    }

    pub fn addr(&self, id: u64) -> String {
        self.nodes[&id].addr.clone()
    }

    /// Every node's `host:port`.
    pub fn addrs(&self) -> Vec<String> {
        self.nodes.values().map(|n| n.addr.clone()).collect()
    }

    /// The `--meta` argument of a cell or router: `host:port,…`.
    pub fn arg(&self) -> String {
        self.addrs().join(",")
    }

    pub fn url(&self, id: u64) -> String {
        format!("http://{}", self.addr(id))
    }

    pub fn pid(&self, id: u64) -> u32 {
        self.nodes[&id].proc.pid().expect("running")
    }

    /// SIGKILL.
    pub fn kill(&mut self, id: u64) {
        self.node(id).proc.kill9();
    }

    pub fn kill_all(&mut self) {
        for n in self.nodes.values_mut() {
            n.proc.kill9();
        }
    }

    pub fn sigstop(&mut self, id: u64) {
        self.node(id).proc.freeze();
    }

    pub fn sigcont(&mut self, id: u64) {
        self.node(id).proc.thaw();
    }

    /// Sends SIGTERM and waits (15 s at most) for a clean exit.
    pub fn terminate(&mut self, id: u64) -> bool {
        self.node(id).proc.terminate(Duration::from_secs(15))
    }

    fn node(&mut self, id: u64) -> &mut Node {
        self.nodes.get_mut(&id).expect("known node")
    }

    /// A client of every node, with an operator's token.
    pub fn client(&self) -> MetaClient {
        MetaClient::new(self.addrs(), self.admin.clone())
    }

    /// A client that knows only these nodes.
    pub fn client_for(&self, ids: &[u64]) -> MetaClient {
        MetaClient::new(
            ids.iter().map(|id| self.addr(*id)).collect(),
            self.admin.clone(),
        )
    }

    pub async fn wait_ready(&self, id: u64) {
        self.wait(id, "/readyz").await
    }

    pub async fn wait_healthy(&self, id: u64) {
        self.wait(id, "/healthz").await
    }

    async fn wait(&self, id: u64, path: &str) {
        let what = format!("meta{id}");
        if let Err(e) = wait_path(&self.url(id), path, &what, Duration::from_secs(20)).await {
            panic!("{e}");
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

    /// Waits until every node agrees on a leader; returns it.
    pub async fn leader(&self) -> u64 {
        let ids: Vec<u64> = self.nodes.keys().copied().collect();
        self.agreed_leader(&ids).await
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

    /// The temp dir the nodes live in.
    pub fn dir(&self) -> &Path {
        self.tmp.path()
    }
}

impl Drop for MetaCluster {
    fn drop(&mut self) {
        let keep = std::thread::panicking() || std::env::var_os("HARNESS_KEEP").is_some();
        // The nodes' own drops print their logs' tails on a failure.
        for n in self.nodes.values_mut() {
            n.proc.kill9();
        }
        if keep {
            // (No panic here: this may run while a test is already panicking.)
            if let Ok(fresh) = TempDir::new() {
                let path = std::mem::replace(&mut self.tmp, fresh);
                eprintln!("raft-meta cluster dir kept: {}", path.keep().display());
            }
        }
    }
}

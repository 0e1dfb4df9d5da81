//! Wiring: stores + network + Raft + HTTP API + failure detector, and the forwarding of
//! leader-only operations so that a caller never has to find the leader.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::http::header::AUTHORIZATION;
use openraft::error::{ClientWriteError, RaftError};
use openraft::{BasicNode, Config, SnapshotPolicy};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use topology::auth::{Credential, Verifier, SERVICE_TOKEN_TTL_S};
use topology::{CellId, ShardId};

use crate::api::{self, ApiError, Caller, Need, Problem};
use crate::detector::{self, Detector, LivenessReport};
use crate::network::Network;
use crate::reprotect;
use crate::settings::Settings;
use crate::state::{Command, MapView, Outcome, Rejected};
use crate::store::{self, MapHandle, StoreError};
use crate::{NodeId, Raft};

/// An operation only the leader can carry out. Forwarded as-is to the leader, with the
/// caller's own token, when this node is not it. Every command is idempotent (setting a value, not adding to it), so a forward
/// retried after a lost answer cannot apply an effect twice.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum LeaderOp {
    Write {
        command: Command,
    },
    /// A linearizable read: the leader confirms its leadership with a quorum first.
    ReadMap,
    AddLearner {
        id: NodeId,
        addr: String,
    },
    ChangeMembership {
        voters: BTreeSet<NodeId>,
    },
    Heartbeat {
        cell: CellId,
        /// The position each shard this cell is the primary of has had acknowledged by its
        /// backup (absent from older cells' heartbeats).
        #[serde(default)]
        positions: BTreeMap<ShardId, u64>,
    },
    Liveness,
}

impl LeaderOp {
    /// The scope a caller needs for this operation: the one rule for the public routes and
    /// for `/internal/leader-op` alike. **Invariant:** every operation that changes the map
    /// or the membership needs `admin`, except a cell's own run-alone grant and its
    /// withdrawal (cells hold `internal`, never `admin`); otherwise `internal` (held by
    /// every cell and router) may only read and heartbeat. Exhaustive, so a new operation or
    /// command must choose.
    pub fn need(&self) -> Need {
        match self {
            LeaderOp::Write { command } => match command {
                Command::RegisterCell { .. }
                | Command::SetBackup { .. }
                | Command::MoveSlots { .. }
                | Command::SetSwitch { .. }
                | Command::SetPolicy { .. }
                | Command::SetBreaker { .. }
                // Only the leader's own detector writes liveness, in process; no route asks
                // for it, so from outside it is an operator's override at most.
                | Command::SetLiveness { .. }
                // Only the leader's own re-protection loop writes it, in process, likewise.
                | Command::Reprotect { .. }
                // Only the leader's own detector writes positions, from heartbeats.
                | Command::ReportPositions { .. }
                // An operator's failover; the leader's automatic one is written in process.
                | Command::FailOver { .. } => Need::Admin,
                // A primary asks for (and gives back) its grant with its own token. The
                // grant cannot move slots or backups; apply admits it only under the cell's
                // `go_async` policy (which only an admin sets) at the current epoch.
                Command::GrantAlone { .. } | Command::WithdrawAlone { .. } => Need::Internal,
            },
            LeaderOp::AddLearner { .. } | LeaderOp::ChangeMembership { .. } => Need::Admin,
            LeaderOp::ReadMap | LeaderOp::Liveness => Need::Read,
            LeaderOp::Heartbeat { .. } => Need::Internal,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum LeaderReply {
    Written { version: u64 },
    Map(Box<MapView>),
    Done,
    Liveness(BTreeMap<CellId, LivenessReport>),
}

/// Counters for `/metrics`.
#[derive(Default)]
pub struct Counters {
    pub writes: AtomicU64,
    pub rejected: AtomicU64,
    pub forwards: AtomicU64,
    pub watch_deliveries: AtomicU64,
}

/// Everything a request handler needs. Shared by all handlers and background tasks.
pub struct Node {
    pub id: NodeId,
    pub raft: Raft,
    pub map: MapHandle,
    pub verifier: Verifier,
    pub http: reqwest::Client,
    /// Test-only network cut (`--fault-hooks`): read by the network and the Raft routes.
    pub partitioned: Arc<AtomicBool>,
    pub fault_hooks: bool,
    pub write_timeout: Duration,
    pub detector: Detector,
    pub counters: Counters,
    /// Cancelled on shutdown; long polls and background loops end on it.
    pub stop: CancellationToken,
}

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("invalid settings: {0}")]
    Settings(#[from] crate::settings::SettingsError),
    #[error("storage: {0}")]
    Store(#[from] StoreError),
    #[error("bind {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("raft: {0}")]
    Raft(String),
    #[error("serve: {0}")]
    Serve(std::io::Error),
    #[error("auth keys: {0}")]
    Keys(#[from] crate::keys::KeysError),
}

fn raft_error<E>(e: RaftError<NodeId, E>, what: &str) -> ApiError
where
    E: std::fmt::Display + std::fmt::Debug + 'static,
    E: openraft::TryAsRef<openraft::error::ForwardToLeader<NodeId, BasicNode>>,
{
    if e.forward_to_leader().is_some() {
        return ApiError::LeaderChanged(format!(
            "{what}: leadership moved before it completed; retry"
        ));
    }
    match e {
        RaftError::Fatal(f) => ApiError::Unavailable(format!("{what}: raft stopped: {f}")),
        RaftError::APIError(e) => ApiError::Rejected(Rejected {
            code: "membership_conflict".into(),
            detail: format!("{what}: {e}"),
        }),
    }
}

impl Node {
    /// The leader's node id and address as this node knows them.
    fn leader(&self) -> Option<(NodeId, String)> {
        let m = self.raft.metrics().borrow().clone();
        let leader = m.current_leader?;
        let addr = m
            .membership_config
            .membership()
            .get_node(&leader)
            .map(|n| n.addr.clone())?;
        Some((leader, addr))
    }

    pub fn is_leader(&self) -> bool {
        self.raft.metrics().borrow().current_leader == Some(self.id)
    }

    /// Runs `op` on the leader for `caller`: here if this node leads, else forwarded. Retries
    /// while no leader is known or the node it forwarded to is not the leader, up to the write
    /// timeout. **Invariant:** `op` runs only if `caller` may do it (`op.need()`), checked
    /// here and again by the leader on a forward, which carries the caller's own token and
    /// never this node's.
    pub async fn leader_op(&self, caller: &Caller, op: LeaderOp) -> Result<LeaderReply, ApiError> {
        caller.require(op.need())?;
        let deadline = tokio::time::Instant::now() + self.write_timeout;
        loop {
            let attempt = match self.leader() {
                Some((id, _)) if id == self.id => self.execute_as_leader(op.clone()).await,
                Some((id, addr)) => self.forward(caller, id, &addr, &op, deadline).await,
                None => Err(ApiError::NoLeader("no leader elected yet".into())),
            };
            let last_err = match attempt {
                // Not `LeaderChanged`: that write reached a log and was dropped from it; whether
                // to try again is the caller's decision, not a silent re-proposal here.
                Err(e @ ApiError::NoLeader(_)) => e,
                Err(ApiError::Relayed(p)) if p.code == "no_leader" || p.code == "not_leader" => {
                    ApiError::Relayed(p)
                }
                other => return other,
            };
            if tokio::time::Instant::now() + Duration::from_millis(20) >= deadline {
                return Err(last_err);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Sends `op` to the leader as `caller`: with the caller's `Authorization` header, so the
    /// leader grants exactly what the caller may do (this node's own `internal` token would
    /// let any caller's operation through).
    async fn forward(
        &self,
        caller: &Caller,
        leader: NodeId,
        addr: &str,
        op: &LeaderOp,
        deadline: tokio::time::Instant,
    ) -> Result<LeaderReply, ApiError> {
        self.counters.forwards.fetch_add(1, Ordering::Relaxed);
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let resp = self
            .http
            .post(format!("http://{addr}/internal/leader-op"))
            .header(AUTHORIZATION, caller.authorization())
            .json(op)
            .timeout(left.max(Duration::from_millis(50)))
            .send()
            .await
            .map_err(|e| ApiError::NoLeader(format!("leader {leader} at {addr}: {e}")))?;
        let status = resp.status();
        let body = resp
            .bytes()
            .await
            .map_err(|e| ApiError::NoLeader(format!("leader {leader} at {addr}: {e}")))?;
        if status.is_success() {
            return serde_json::from_slice(&body).map_err(|e| {
                ApiError::Unavailable(format!("leader {leader} sent a bad reply: {e}"))
            });
        }
        match serde_json::from_slice::<Problem>(&body) {
            Ok(p) => Err(ApiError::Relayed(p)),
            Err(_) => Err(ApiError::NoLeader(format!(
                "leader {leader} at {addr} answered {status}"
            ))),
        }
    }

    /// Carries out `op` on this node, which must be the leader. Never forwards. Checks no
    /// authority: callers have checked `op.need()` against whoever asked (the HTTP routes), or
    /// are this node itself (the failure detector).
    pub async fn execute_as_leader(&self, op: LeaderOp) -> Result<LeaderReply, ApiError> {
        if !self.is_leader() {
            return Err(ApiError::Relayed(Problem {
                kind: "https://redcell.dev/problems/not_leader".into(),
                title: "Service Unavailable".into(),
                status: 503,
                code: "not_leader".into(),
                detail: format!("node {} is not the leader", self.id),
            }));
        }
        match op {
            LeaderOp::Write { command } => {
                let write = self.raft.client_write(command);
                let resp = tokio::time::timeout(self.write_timeout, write)
                    .await
                    .map_err(|_| {
                        ApiError::CommitTimeout(
                            "the write was not committed in time (no quorum?); it may still commit"
                                .into(),
                        )
                    })?
                    .map_err(|e| raft_error::<ClientWriteError<NodeId, BasicNode>>(e, "write"))?;
                match resp.data {
                    Outcome::Applied { version } => {
                        self.counters.writes.fetch_add(1, Ordering::Relaxed);
                        Ok(LeaderReply::Written { version })
                    }
                    Outcome::Rejected(r) => {
                        self.counters.rejected.fetch_add(1, Ordering::Relaxed);
                        Err(ApiError::Rejected(r))
                    }
                }
            }
            LeaderOp::ReadMap => {
                // openraft's read index is max(this term's first entry, committed). A leader
                // restored by a restart has neither yet (it re-proposes nothing and `committed`
                // is not persisted), so it would answer from its snapshot. The leader's own last
                // entry bounds every committed write (Leader Completeness), so waiting for it to
                // be applied as well makes the read linearizable in that case too.
                let last = self.raft.metrics().borrow().last_log_index;
                let read = async {
                    self.raft
                        .ensure_linearizable()
                        .await
                        // Leadership not confirmed by a quorum in time (a starved or cut-off
                        // node): unavailable for now, retried by clients, not a rejection.
                        .map_err(|e| match raft_error(e, "consistent read") {
                            ApiError::Rejected(r) => ApiError::Unavailable(format!(
                                "{}: leadership not confirmed by a quorum; retry",
                                r.detail
                            )),
                            other => other,
                        })?;
                    self.raft
                        .wait(None)
                        .applied_index_at_least(last, "consistent read")
                        .await
                        .map_err(|e| ApiError::Unavailable(format!("consistent read: {e}")))?;
                    Ok::<(), ApiError>(())
                };
                tokio::time::timeout(self.write_timeout, read)
                    .await
                    .map_err(|_| {
                        ApiError::CommitTimeout("leadership not confirmed in time".into())
                    })??;
                Ok(LeaderReply::Map(Box::new(self.map.current().view())))
            }
            LeaderOp::AddLearner { id, addr } => {
                self.raft
                    .add_learner(id, BasicNode { addr }, true)
                    .await
                    .map_err(|e| raft_error(e, "add learner"))?;
                Ok(LeaderReply::Done)
            }
            LeaderOp::ChangeMembership { voters } => {
                self.raft
                    .change_membership(voters, false)
                    .await
                    .map_err(|e| raft_error(e, "change membership"))?;
                Ok(LeaderReply::Done)
            }
            LeaderOp::Heartbeat { cell, positions } => {
                self.detector.record(cell, positions);
                // The map version this leader has applied: a cell that has installed it knows
                // its run-alone grant (if any) still stands (the cell's lease renews on it).
                Ok(LeaderReply::Written {
                    version: self.map.current().version,
                })
            }
            LeaderOp::Liveness => Ok(LeaderReply::Liveness(
                self.detector.report(&self.map.current()),
            )),
        }
    }
}

/// A built node: listener bound, Raft started, not yet serving.
pub struct App {
    listener: TcpListener,
    addr: SocketAddr,
    node: Arc<Node>,
    settings: Settings,
    stop: CancellationToken,
}

impl App {
    pub async fn build(settings: Settings) -> Result<App, AppError> {
        settings.validate()?;
        let listener = serve::listen::bind(settings.listen)
            .await
            .map_err(|source| AppError::Bind {
                addr: settings.listen,
                source,
            })?;
        let addr = listener.local_addr().map_err(AppError::Serve)?;
        store::claim(&settings.data_dir, settings.id)?;
        let (log, sm) = store::open(&settings.data_dir)?;
        let map = sm.handle();

        let config = Config {
            cluster_name: "raft-meta".into(),
            heartbeat_interval: settings.heartbeat_ms,
            election_timeout_min: settings.election_ms,
            election_timeout_max: settings.election_ms * 2,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(settings.snapshot_every),
            max_in_snapshot_log_to_keep: settings.snapshot_every,
            ..Default::default()
        }
        .validate()
        .map_err(|e| AppError::Raft(e.to_string()))?;

        let keys = crate::keys::ring(
            Some(&settings.auth_secret),
            settings.auth_keys_file.as_deref(),
        )?;
        let internal_token = Arc::new(Credential::minted_with(
            &keys,
            &format!("svc:raft-meta-{}", settings.id),
            Some("internal"),
            SERVICE_TOKEN_TTL_S,
        ));
        let http = reqwest::Client::builder()
            .pool_idle_timeout(Duration::from_secs(30))
            .tcp_nodelay(true)
            .build()
            .map_err(|e| AppError::Raft(format!("http client: {e}")))?;
        let partitioned = Arc::new(AtomicBool::new(false));
        // This node's own `internal` credential is for Raft RPCs only; a forwarded leader
        // operation carries its caller's token instead.
        let network = Network::new(http.clone(), internal_token, partitioned.clone());
        let raft = Raft::new(settings.id, Arc::new(config), network, log, sm)
            .await
            .map_err(|e| AppError::Raft(e.to_string()))?;

        if settings.init {
            let mut members = BTreeMap::new();
            for (id, peer) in &settings.peers.0 {
                let addr = if *id == settings.id && settings.listen.port() == 0 {
                    advertise(&settings, addr)
                } else {
                    peer.clone()
                };
                members.insert(*id, BasicNode { addr });
            }
            match raft.initialize(members).await {
                Ok(()) => tracing::info!("initialized a new cluster"),
                Err(e) => tracing::info!("not initializing (already has state): {e}"),
            }
        }

        let node = Arc::new(Node {
            id: settings.id,
            raft,
            map,
            verifier: Verifier::with_ring(keys),
            http,
            partitioned,
            fault_hooks: settings.fault_hooks,
            write_timeout: Duration::from_millis(settings.write_timeout_ms),
            detector: Detector::new(
                Duration::from_millis(settings.suspect_ms),
                Duration::from_millis(settings.down_ms),
            ),
            counters: Counters::default(),
            stop: CancellationToken::new(),
        });
        let stop = node.stop.clone();
        Ok(App {
            listener,
            addr,
            node,
            settings,
            stop,
        })
    }

    /// The bound address (useful with port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The address peers should use for this node.
    pub fn advertised(&self) -> String {
        advertise(&self.settings, self.addr)
    }

    pub fn node(&self) -> Arc<Node> {
        self.node.clone()
    }

    /// A token that stops the node when cancelled (SIGTERM does the same).
    pub fn stop_token(&self) -> CancellationToken {
        self.stop.clone()
    }

    /// Serves until SIGTERM/SIGINT or the stop token, then drains and shuts Raft down.
    pub async fn run_until_stopped(self) -> Result<(), AppError> {
        let stop = self.stop.clone();
        let detector = tokio::spawn(detector::run(self.node.clone(), stop.clone()));
        let reprotect = tokio::spawn(reprotect::run(
            self.node.clone(),
            Duration::from_millis(self.settings.reprotect_after_ms),
            stop.clone(),
        ));
        let signal_stop = stop.clone();
        tokio::spawn(async move {
            wait_for_signal().await;
            signal_stop.cancel();
        });
        let router = api::router(self.node.clone());
        let shutdown = stop.clone();
        // `serve` turns Nagle off: hyper may write a response in two segments, and waiting
        // for the peer's delayed ACK adds 40-200 ms to a Raft round trip or a commit.
        let served = serve::serve(
            self.listener,
            router,
            self.settings.http.clone(),
            async move { shutdown.cancelled().await },
        )
        .await;
        stop.cancel();
        let _ = detector.await;
        let _ = reprotect.await;
        if let Err(e) = self.node.raft.shutdown().await {
            tracing::warn!("raft shutdown: {e}");
        }
        served.map_err(AppError::Serve)
    }
}

fn advertise(settings: &Settings, bound: SocketAddr) -> String {
    settings
        .advertise
        .clone()
        .unwrap_or_else(|| bound.to_string())
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {},
                    _ = tokio::signal::ctrl_c() => {},
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

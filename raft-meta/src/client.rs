//! The client library for routers, cells and operators.
//!
//! - **Leader discovery**: the first write asks `GET /v1/cluster` for the leader and prefers
//!   it; any node would forward, this only saves a hop.
//! - **Retry across nodes**: a transport failure or a 503 moves on to the next node, round
//!   robin, with a short backoff, until the call's deadline. Every raft-meta command is
//!   idempotent, so a retried write cannot apply twice.
//! - **Watch**: [`Watch::next`] long-polls `GET /v1/map/watch?after=V` and hands out every map
//!   version in order; when its node dies it carries on from the same version on another.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::json;
use topology::auth::Credential;
use topology::{CellId, CellStatus, Epoch, Region, ShardId};

use crate::NodeId;
use wire::{FailoverPolicy, MapView, Problem};

pub use crate::api::ClusterView;

/// How a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The leader refused the command (409): the state does not allow it, and retrying the
    /// same call will not change that. `code` is the stable problem code (`stale_epoch`,
    /// `policy_refuses`, `unknown_shard`, `backup_same_region`, …).
    #[error("409 {code}: {detail}")]
    Rejected { code: String, detail: String },
    /// A node answered with another problem that retrying elsewhere will not fix.
    #[error("{} {}: {}", .0.status, .0.code, .0.detail)]
    Api(Problem),
    /// No node gave an answer before the deadline.
    #[error("no raft-meta node answered: {0}")]
    Unavailable(String),
    #[error("bad response: {0}")]
    Decode(String),
}

impl ClientError {
    /// Whether the same call may succeed later.
    pub fn retryable(&self) -> bool {
        match self {
            ClientError::Api(p) => p.status == 503,
            ClientError::Rejected { .. } => false,
            ClientError::Unavailable(_) => true,
            ClientError::Decode(_) => false,
        }
    }
}

/// A handle on a raft-meta cluster. Cheap to clone.
#[derive(Clone)]
pub struct MetaClient {
    inner: Arc<Inner>,
}

struct Inner {
    nodes: Vec<String>,
    token: Arc<Credential>,
    http: reqwest::Client,
    /// Index of the node to try first: the last that answered, or the leader for writes.
    preferred: AtomicUsize,
    /// Whether a write has looked for the leader yet (once; afterwards `preferred` follows
    /// whichever node answers).
    leader_sought: AtomicBool,
    deadline: Duration,
}

impl MetaClient {
    /// `nodes` are `host:port` addresses of raft-meta nodes; `token` an admin or internal JWT,
    /// or a [`Credential`] that renews its own.
    pub fn new(nodes: Vec<String>, token: impl Into<Credential>) -> MetaClient {
        let http = reqwest::Client::builder()
            .tcp_nodelay(true)
            .pool_idle_timeout(Duration::from_secs(30))
            .build()
            .expect("a plain HTTP client always builds");
        MetaClient {
            inner: Arc::new(Inner {
                nodes,
                token: Arc::new(token.into()),
                http,
                preferred: AtomicUsize::new(0),
                leader_sought: AtomicBool::new(false),
                deadline: Duration::from_secs(10),
            }),
        }
    }

    /// The same client with another per-call deadline (default 10 s).
    pub fn with_deadline(&self, deadline: Duration) -> MetaClient {
        MetaClient {
            inner: Arc::new(Inner {
                nodes: self.inner.nodes.clone(),
                token: self.inner.token.clone(),
                http: self.inner.http.clone(),
                preferred: AtomicUsize::new(self.inner.preferred.load(Ordering::Relaxed)),
                leader_sought: AtomicBool::new(self.inner.leader_sought.load(Ordering::Relaxed)),
                deadline,
            }),
        }
    }

    pub fn nodes(&self) -> &[String] {
        &self.inner.nodes
    }

    /// One attempt on one node. `Ok(None)` for 204.
    async fn once<T: DeserializeOwned>(
        &self,
        node: &str,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
        timeout: Duration,
    ) -> Result<Option<T>, ClientError> {
        let mut req = self
            .inner
            .http
            .request(method, format!("http://{node}{path}"))
            .bearer_auth(&*self.inner.token.token())
            .timeout(timeout);
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| ClientError::Unavailable(format!("{node}: {e}")))?;
        let status = resp.status();
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| ClientError::Unavailable(format!("{node}: {e}")))?;
        if status == StatusCode::NO_CONTENT {
            return Ok(None);
        }
        if status.is_success() {
            return serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| ClientError::Decode(e.to_string()));
        }
        match serde_json::from_slice::<Problem>(&bytes) {
            Ok(p) if p.status == 409 => Err(ClientError::Rejected {
                code: p.code,
                detail: p.detail,
            }),
            Ok(p) => Err(ClientError::Api(p)),
            Err(_) if status == StatusCode::SERVICE_UNAVAILABLE => Err(ClientError::Unavailable(
                format!("{node}: answered {status}"),
            )),
            Err(_) => Err(ClientError::Decode(format!("{node}: answered {status}"))),
        }
    }

    /// Tries the preferred node, then the others, until an answer or the deadline.
    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
        per_try: Duration,
    ) -> Result<Option<T>, ClientError> {
        let n = self.inner.nodes.len().max(1);
        let deadline = tokio::time::Instant::now() + self.inner.deadline.max(per_try);
        let mut i = self.inner.preferred.load(Ordering::Relaxed);
        let mut last = ClientError::Unavailable("no nodes configured".into());
        let mut round = 0u32;
        loop {
            for _ in 0..n {
                let Some(node) = self.inner.nodes.get(i % n) else {
                    return Err(last);
                };
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                if left.is_zero() {
                    return Err(last);
                }
                match self
                    .once(node, method.clone(), path, body.as_ref(), per_try.min(left))
                    .await
                {
                    Ok(v) => {
                        self.inner.preferred.store(i % n, Ordering::Relaxed);
                        return Ok(v);
                    }
                    Err(e) if e.retryable() => last = e,
                    Err(e) => return Err(e),
                }
                i += 1;
            }
            round += 1;
            let pause = Duration::from_millis(25 * u64::from(round.min(8)));
            if tokio::time::Instant::now() + pause >= deadline {
                return Err(last);
            }
            tokio::time::sleep(pause).await;
        }
    }

    async fn write<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: impl Serialize,
    ) -> Result<T, ClientError> {
        let body = serde_json::to_value(body).map_err(|e| ClientError::Decode(e.to_string()))?;
        // The first write looks for the leader, so writes skip the forwarding hop. Best effort:
        // any node would forward.
        if !self.inner.leader_sought.swap(true, Ordering::Relaxed) {
            let _ = self
                .with_deadline(Duration::from_secs(1))
                .discover_leader_into(self)
                .await;
        }
        self.call(method, path, Some(body), Duration::from_secs(5))
            .await?
            .ok_or_else(|| ClientError::Decode("empty answer".into()))
    }

    /// Finds the leader and prefers it for later calls. `None` if no node knows one.
    pub async fn discover_leader(&self) -> Result<Option<(NodeId, String)>, ClientError> {
        self.discover_leader_into(self).await
    }

    /// Asks the cluster through `self`, records the leader in `target`'s preference.
    async fn discover_leader_into(
        &self,
        target: &MetaClient,
    ) -> Result<Option<(NodeId, String)>, ClientError> {
        let view = self.cluster().await?;
        let Some(leader) = view.leader else {
            return Ok(None);
        };
        let addr = view.nodes.get(&leader).cloned();
        if let Some(addr) = &addr {
            if let Some(i) = target.inner.nodes.iter().position(|n| n == addr) {
                target.inner.preferred.store(i, Ordering::Relaxed);
            }
        }
        Ok(addr.map(|a| (leader, a)))
    }

    pub async fn cluster(&self) -> Result<ClusterView, ClientError> {
        self.call(Method::GET, "/v1/cluster", None, Duration::from_secs(2))
            .await?
            .ok_or_else(|| ClientError::Decode("empty answer".into()))
    }

    /// The map; `consistent` asks the leader to confirm it is current (linearizable).
    pub async fn map(&self, consistent: bool) -> Result<MapView, ClientError> {
        let path = if consistent {
            "/v1/map?consistent=true"
        } else {
            "/v1/map"
        };
        self.call(Method::GET, path, None, Duration::from_secs(5))
            .await?
            .ok_or_else(|| ClientError::Decode("empty answer".into()))
    }

    /// One long poll: the next version after `after`, or `None` after `wait`.
    pub async fn watch_once(
        &self,
        after: u64,
        wait: Duration,
    ) -> Result<Option<MapView>, ClientError> {
        let path = format!(
            "/v1/map/watch?after={after}&timeout_ms={}",
            wait.as_millis()
        );
        self.call(Method::GET, &path, None, wait + Duration::from_secs(2))
            .await
    }

    /// A watch that hands out every version after `after`, in order.
    pub fn watch(&self, after: u64) -> Watch {
        Watch {
            client: self.with_deadline(Duration::from_secs(3)),
            after,
            wait: Duration::from_secs(5),
        }
    }

    pub async fn register_cell(
        &self,
        id: &CellId,
        region: &Region,
        url: &str,
        status: Option<CellStatus>,
        backup: Option<&CellId>,
    ) -> Result<u64, ClientError> {
        let body = json!({"region": region, "url": url, "status": status, "backup": backup});
        let v: serde_json::Value = self
            .write(Method::PUT, &format!("/v1/cells/{id}"), body)
            .await?;
        version(&v)
    }

    pub async fn set_backup(
        &self,
        shard: &ShardId,
        backup: Option<&CellId>,
    ) -> Result<u64, ClientError> {
        let v: serde_json::Value = self
            .write(
                Method::PUT,
                &format!("/v1/shards/{shard}/backup"),
                json!({ "backup": backup }),
            )
            .await?;
        version(&v)
    }

    pub async fn set_policy(
        &self,
        shard: &ShardId,
        policy: FailoverPolicy,
    ) -> Result<u64, ClientError> {
        let v: serde_json::Value = self
            .write(Method::PUT, &format!("/v1/shards/{shard}/policy"), policy)
            .await?;
        version(&v)
    }

    /// Moves `shard` to its backup as decided at shard epoch `at_epoch` (an operator's
    /// planned or emergency failover; DESIGN §6.5). Answers the version that committed it;
    /// `Rejected` with `stale_epoch` when another decision was taken at that epoch.
    pub async fn fail_over(
        &self,
        shard: &ShardId,
        kind: wire::FailoverKind,
        at_epoch: topology::Epoch,
    ) -> Result<u64, ClientError> {
        let v: serde_json::Value = self
            .write(
                Method::POST,
                &format!("/v1/shards/{shard}/failover"),
                json!({"kind": kind, "at_epoch": at_epoch}),
            )
            .await?;
        version(&v)
    }

    pub async fn move_slots(&self, slots: &[u16], to: &ShardId) -> Result<u64, ClientError> {
        let v: serde_json::Value = self
            .write(
                Method::POST,
                "/v1/slots/move",
                json!({"slots": slots, "to": to}),
            )
            .await?;
        version(&v)
    }

    pub async fn set_switch(
        &self,
        name: &str,
        on: bool,
        message: &str,
    ) -> Result<u64, ClientError> {
        let v: serde_json::Value = self
            .write(
                Method::PUT,
                &format!("/v1/switches/{name}"),
                json!({"on": on, "message": message}),
            )
            .await?;
        version(&v)
    }

    /// Sets the payment-provider breaker's thresholds for every cell (admin token).
    pub async fn set_breaker(&self, policy: &wire::BreakerPolicy) -> Result<u64, ClientError> {
        let v: serde_json::Value = self
            .write(Method::PUT, "/v1/breaker", json!(policy))
            .await?;
        version(&v)
    }

    /// Asks raft-meta to let `shard` acknowledge money writes without its backup, at shard
    /// epoch `epoch` (needs an `internal` or `admin` token). `Ok(version)` means the grant is
    /// committed at that map version (a repeat at the same epoch answers the current version).
    /// Refusals are [`ClientError::Rejected`] with `code` `policy_refuses`, `stale_epoch` or
    /// `unknown_shard`; any other error (timeouts included) is **not** a grant.
    pub async fn request_alone(&self, shard: &ShardId, epoch: Epoch) -> Result<u64, ClientError> {
        let v: serde_json::Value = self
            .write(
                Method::POST,
                &format!("/v1/shards/{shard}/alone"),
                json!({ "epoch": epoch }),
            )
            .await?;
        version(&v)
    }

    /// Gives `shard`'s run-alone grant back (a no-op without one); the map version after it.
    pub async fn withdraw_alone(&self, shard: &ShardId) -> Result<u64, ClientError> {
        let v: serde_json::Value = self
            .call(
                Method::DELETE,
                &format!("/v1/shards/{shard}/alone"),
                None,
                Duration::from_secs(5),
            )
            .await?
            .ok_or_else(|| ClientError::Decode("empty answer".into()))?;
        version(&v)
    }

    /// A cell's heartbeat (needs an `internal` or `admin` token), with the position each shard
    /// it is the primary of has had acknowledged by its backup.
    /// Says `cell` is alive, with the positions its shards' backups acknowledged. Answers
    /// the map version the leader has applied (`None` from a node that does not say).
    pub async fn heartbeat(
        &self,
        cell: &CellId,
        positions: &BTreeMap<ShardId, u64>,
    ) -> Result<Option<u64>, ClientError> {
        let v = self
            .call::<serde_json::Value>(
                Method::POST,
                &format!("/v1/cells/{cell}/heartbeat"),
                Some(json!({ "positions": positions })),
                Duration::from_secs(2),
            )
            .await?;
        Ok(v.and_then(|v| v["version"].as_u64()))
    }

    pub async fn add_learner(&self, id: NodeId, addr: &str) -> Result<ClusterView, ClientError> {
        self.write(
            Method::POST,
            "/v1/cluster/learners",
            json!({"id": id, "addr": addr}),
        )
        .await
    }

    pub async fn change_membership(
        &self,
        voters: &BTreeSet<NodeId>,
    ) -> Result<ClusterView, ClientError> {
        self.write(
            Method::POST,
            "/v1/cluster/membership",
            json!({ "voters": voters }),
        )
        .await
    }
}

fn version(v: &serde_json::Value) -> Result<u64, ClientError> {
    v.get("version")
        .and_then(|v| v.as_u64())
        .ok_or_else(|| ClientError::Decode("answer has no version".into()))
}

/// A map watch that survives the loss of any node: see [`MetaClient::watch`].
pub struct Watch {
    client: MetaClient,
    after: u64,
    wait: Duration,
}

impl Watch {
    /// The version this watch has handed out last.
    pub fn after(&self) -> u64 {
        self.after
    }

    /// The next map version. Waits as long as it takes; errors are retried on other nodes.
    pub async fn next(&mut self) -> MapView {
        loop {
            match self.client.watch_once(self.after, self.wait).await {
                Ok(Some(view)) if view.version > self.after => {
                    self.after = view.version;
                    return view;
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!("watch: {e}; retrying");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
}

//! Raft RPCs to peers: JSON over HTTP on the peers' ordinary listener (`/internal/raft/*`),
//! authenticated with an `internal`-scope token minted from the deployment secret.
//!
//! A peer that refuses connections (or is cut off by the test fault hook) is `Unreachable`, so
//! openraft backs off from it; a slow or broken exchange is a `NetworkError`, retried at once;
//! an error the peer's Raft returned is a `RemoteError`. The three are never mixed.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::BasicNode;
use serde::de::DeserializeOwned;
use serde::Serialize;
use topology::auth::Credential;

use crate::{NodeId, TypeConfig};

/// Why an RPC did not reach the peer's Raft.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("request to {addr} failed: {source}")]
    Http {
        addr: String,
        source: reqwest::Error,
    },
    #[error("{addr} answered HTTP {status}")]
    Status { addr: String, status: u16 },
    #[error("this node is cut off from its peers (test fault hook)")]
    Partitioned,
}

/// Makes one [`PeerClient`] per peer. Shares one HTTP connection pool.
#[derive(Clone)]
pub struct Network {
    http: reqwest::Client,
    token: Arc<Credential>,
    /// Test-only fault: when set, every outgoing RPC fails as if the network were cut.
    partitioned: Arc<AtomicBool>,
}

impl Network {
    pub fn new(
        http: reqwest::Client,
        token: Arc<Credential>,
        partitioned: Arc<AtomicBool>,
    ) -> Network {
        Network {
            http,
            token,
            partitioned,
        }
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> PeerClient {
        PeerClient {
            net: self.clone(),
            target,
            addr: node.addr.clone(),
        }
    }
}

/// The RPC client for one peer.
pub struct PeerClient {
    net: Network,
    target: NodeId,
    addr: String,
}

type RpcResult<T, E> = Result<T, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>;

impl PeerClient {
    async fn call<Req, Resp, E>(
        &self,
        path: &str,
        req: &Req,
        option: &RPCOption,
    ) -> RpcResult<Resp, E>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        if self.net.partitioned.load(Ordering::Relaxed) {
            return Err(RPCError::Unreachable(Unreachable::new(
                &TransportError::Partitioned,
            )));
        }
        let url = format!("http://{}/internal/raft/{path}", self.addr);
        let resp = self
            .net
            .http
            .post(url)
            .bearer_auth(&*self.net.token.token())
            .json(req)
            .timeout(option.hard_ttl())
            .send()
            .await
            .map_err(|source| {
                // Only a refused or failed connection means the peer is down (openraft backs
                // off for 500 ms). A slow answer under load is retried at once: backing off
                // from a live follower would starve it of heartbeats and cause an election.
                let connect = source.is_connect();
                let e = TransportError::Http {
                    addr: self.addr.clone(),
                    source,
                };
                if connect {
                    RPCError::Unreachable(Unreachable::new(&e))
                } else {
                    RPCError::Network(NetworkError::new(&e))
                }
            })?;
        if !resp.status().is_success() {
            let e = TransportError::Status {
                addr: self.addr.clone(),
                status: resp.status().as_u16(),
            };
            return Err(RPCError::Unreachable(Unreachable::new(&e)));
        }
        let body: Result<Resp, RaftError<NodeId, E>> = resp.json().await.map_err(|source| {
            let e = TransportError::Http {
                addr: self.addr.clone(),
                source,
            };
            RPCError::Network(NetworkError::new(&e))
        })?;
        body.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>, openraft::error::Infallible> {
        self.call("append", &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<NodeId>, InstallSnapshotError> {
        self.call("snapshot", &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<NodeId>, openraft::error::Infallible> {
        self.call("vote", &rpc, &option).await
    }
}

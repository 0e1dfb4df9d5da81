//! Internal routes: Raft RPCs from peers, forwarded leader operations, the test fault hook.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use serde::Deserialize;

use super::{authenticate, authorize, body_bytes, parse_json, ApiError, Need};
use crate::app::{LeaderOp, Node};
use crate::TypeConfig;

fn raft_gate(node: &Node, headers: &HeaderMap) -> Result<(), ApiError> {
    authorize(node, headers, Need::Internal)?;
    if node.partitioned.load(Ordering::Relaxed) {
        return Err(ApiError::Unavailable(
            "cut off by the test fault hook".into(),
        ));
    }
    Ok(())
}

pub async fn append(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    raft_gate(&node, &headers)?;
    let rpc: AppendEntriesRequest<TypeConfig> = parse_json(&body_bytes(body)?)?;
    Ok(Json(node.raft.append_entries(rpc).await).into_response())
}

pub async fn vote(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    raft_gate(&node, &headers)?;
    let rpc: VoteRequest<crate::NodeId> = parse_json(&body_bytes(body)?)?;
    Ok(Json(node.raft.vote(rpc).await).into_response())
}

pub async fn snapshot(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    raft_gate(&node, &headers)?;
    let rpc: InstallSnapshotRequest<TypeConfig> = parse_json(&body_bytes(body)?)?;
    Ok(Json(node.raft.install_snapshot(rpc).await).into_response())
}

/// A leader-only operation forwarded by a peer, with its caller's own token. Never forwarded
/// again: if this node is not the leader (any more) it says so and the sender retries with its
/// fresher view. **Invariant:** the operation runs only if the token grants `op.need()`, the
/// same rule as the public route it came from; holding `internal` (every cell and router
/// does) is not enough to write the map.
pub async fn leader_op(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let caller = authenticate(&node, &headers)?;
    let op: LeaderOp = parse_json(&body_bytes(body)?)?;
    caller.require(op.need())?;
    let reply = node.execute_as_leader(op).await?;
    Ok(Json(reply).into_response())
}

#[derive(Deserialize)]
struct Fault {
    partitioned: bool,
}

/// Test only (`--fault-hooks`): cut this node off from its peers, or heal it.
pub async fn fault(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    if !node.fault_hooks {
        return Err(ApiError::NotFound("no such route".into()));
    }
    authorize(&node, &headers, Need::Internal)?;
    let fault: Fault = parse_json(&body_bytes(body)?)?;
    node.partitioned.store(fault.partitioned, Ordering::Relaxed);
    tracing::warn!(partitioned = fault.partitioned, "fault hook");
    Ok(StatusCode::NO_CONTENT.into_response())
}

//! Cluster introspection and membership changes.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};

use super::{authenticate, authorize, body_bytes, parse_json, ApiError, Need};
use crate::app::{LeaderOp, Node};
use crate::NodeId;

/// `GET /v1/cluster` body.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ClusterView {
    /// The node that answered.
    pub id: NodeId,
    pub leader: Option<NodeId>,
    pub leader_addr: Option<String>,
    pub term: u64,
    /// `leader`, `follower`, `candidate`, `learner`, `shutdown`.
    pub state: String,
    pub members: Vec<NodeId>,
    pub learners: Vec<NodeId>,
    pub nodes: BTreeMap<NodeId, String>,
    pub last_log_index: Option<u64>,
    pub last_applied: Option<u64>,
    pub map_version: u64,
}

pub fn cluster_view(node: &Node) -> ClusterView {
    let m = node.raft.metrics().borrow().clone();
    let membership = m.membership_config.membership();
    let members: BTreeSet<NodeId> = membership.voter_ids().collect();
    let learners: Vec<NodeId> = membership.learner_ids().collect();
    let nodes: BTreeMap<NodeId, String> = membership
        .nodes()
        .map(|(id, n)| (*id, n.addr.clone()))
        .collect();
    ClusterView {
        id: node.id,
        leader: m.current_leader,
        leader_addr: m.current_leader.and_then(|l| nodes.get(&l).cloned()),
        term: m.current_term,
        state: format!("{:?}", m.state).to_lowercase(),
        members: members.into_iter().collect(),
        learners,
        nodes,
        last_log_index: m.last_log_index,
        last_applied: m.last_applied.map(|l| l.index),
        map_version: node.map.current().version,
    }
}

pub async fn get_cluster(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authorize(&node, &headers, Need::Read)?;
    Ok(Json(cluster_view(&node)).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddLearner {
    id: NodeId,
    addr: String,
}

/// `POST /v1/cluster/learners` `{"id": 4, "addr": "127.0.0.1:7004"}`: returns once the learner
/// has caught up.
pub async fn add_learner(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let caller = authenticate(&node, &headers)?;
    let b: AddLearner = parse_json(&body_bytes(body)?)?;
    if b.id == 0 || b.addr.is_empty() || b.addr.len() > 256 {
        return Err(ApiError::BadRequest(
            "id must be positive and addr 1-256 characters".into(),
        ));
    }
    let op = LeaderOp::AddLearner {
        id: b.id,
        addr: b.addr,
    };
    node.leader_op(&caller, op).await?;
    Ok(Json(cluster_view(&node)).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChangeMembership {
    voters: BTreeSet<NodeId>,
}

/// `POST /v1/cluster/membership` `{"voters": [1, 2, 3]}`: every voter must already be a member
/// (voter or learner); nodes left out are removed.
pub async fn change_membership(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let caller = authenticate(&node, &headers)?;
    let b: ChangeMembership = parse_json(&body_bytes(body)?)?;
    if b.voters.is_empty() {
        return Err(ApiError::BadRequest("voters: must not be empty".into()));
    }
    let op = LeaderOp::ChangeMembership { voters: b.voters };
    node.leader_op(&caller, op).await?;
    Ok(Json(cluster_view(&node)).into_response())
}

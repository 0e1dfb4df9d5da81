//! The HTTP API: one router for clients, operators and peers.
//!
//! Errors from every layer fold into [`ApiError`], the only type that picks an HTTP status and
//! writes `application/problem+json`. Bad input is always 4xx; the only 5xx is 503 (no leader,
//! commit timed out, leadership lost), always with `Retry-After`.

mod cluster;
pub use cluster::ClusterView;
mod internal;
mod map;

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{DefaultBodyLimit, Path};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::Router;
use serde::de::DeserializeOwned;
use topology::auth::{AuthError, Principal};

use crate::app::Node;
use crate::state::Rejected;

/// The problem+json body every error answers with; a wire type, since clients parse it back.
pub use wire::Problem;

/// Bodies of client and operator requests.
const API_BODY_LIMIT: usize = 64 * 1024;
/// Raft RPC bodies (entry batches, snapshots).
const RAFT_BODY_LIMIT: usize = 64 * 1024 * 1024;

pub fn router(node: Arc<Node>) -> Router {
    let api = Router::new()
        .route("/healthz", get(map::healthz))
        .route("/readyz", get(map::readyz))
        .route("/metrics", get(map::metrics))
        .route("/v1/map", get(map::get_map))
        .route("/v1/map/watch", get(map::watch_map))
        .route("/v1/cells/{id}", put(map::put_cell))
        .route("/v1/shards/{id}/backup", put(map::put_backup))
        .route("/v1/shards/{id}/policy", put(map::put_policy))
        .route("/v1/shards/{id}/failover", post(map::post_failover))
        // The same, from before shards: a cell's name is its own shard's.
        .route("/v1/cells/{id}/backup", put(map::put_backup))
        .route("/v1/cells/{id}/policy", put(map::put_policy))
        .route("/v1/cells/{id}/heartbeat", post(map::post_heartbeat))
        .route(
            "/v1/shards/{id}/alone",
            post(map::post_alone).delete(map::delete_alone),
        )
        .route(
            "/v1/cells/{id}/alone",
            post(map::post_alone).delete(map::delete_alone),
        )
        .route("/v1/liveness", get(map::get_liveness))
        .route("/v1/slots/move", post(map::move_slots))
        .route("/v1/switches", get(map::get_switches))
        .route("/v1/breaker", put(map::put_breaker))
        .route("/v1/switches/{name}", put(map::put_switch))
        .route("/v1/cluster", get(cluster::get_cluster))
        .route("/v1/cluster/learners", post(cluster::add_learner))
        .route("/v1/cluster/membership", post(cluster::change_membership))
        .route("/internal/leader-op", post(internal::leader_op))
        .route("/internal/fault", post(internal::fault))
        .layer(DefaultBodyLimit::max(API_BODY_LIMIT));
    let raft = Router::new()
        .route("/internal/raft/append", post(internal::append))
        .route("/internal/raft/vote", post(internal::vote))
        .route("/internal/raft/snapshot", post(internal::snapshot))
        .layer(DefaultBodyLimit::max(RAFT_BODY_LIMIT));
    api.merge(raft)
        .fallback(|| async { ApiError::NotFound("no such route".into()) })
        .with_state(node)
}

/// Every error the API can answer.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("payload too large")]
    PayloadTooLarge,
    #[error("{0}")]
    Rejected(Rejected),
    /// No leader is known (election under way, or no quorum).
    #[error("{0}")]
    NoLeader(String),
    /// The write was not committed in time; it may still commit later.
    #[error("{0}")]
    CommitTimeout(String),
    /// Leadership moved before the write committed; it did not commit here.
    #[error("{0}")]
    LeaderChanged(String),
    /// The Raft node is shutting down or failed.
    #[error("{0}")]
    Unavailable(String),
    /// An answer relayed from the leader as it was.
    #[error("{} {}: {}", .0.status, .0.code, .0.detail)]
    Relayed(Problem),
}

impl ApiError {
    fn status_code(&self) -> (StatusCode, &str) {
        match self {
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "invalid_request"),
            ApiError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::PayloadTooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            ApiError::Rejected(r) => {
                let status = match r.code.as_str() {
                    "invalid_request" => StatusCode::BAD_REQUEST,
                    "cell_not_found" => StatusCode::NOT_FOUND,
                    _ => StatusCode::CONFLICT,
                };
                (status, r.code.as_str())
            }
            ApiError::NoLeader(_) => (StatusCode::SERVICE_UNAVAILABLE, "no_leader"),
            ApiError::CommitTimeout(_) => (StatusCode::SERVICE_UNAVAILABLE, "commit_timeout"),
            ApiError::LeaderChanged(_) => (StatusCode::SERVICE_UNAVAILABLE, "leader_changed"),
            ApiError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            ApiError::Relayed(p) => (
                StatusCode::from_u16(p.status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE),
                p.code.as_str(),
            ),
        }
    }

    pub fn problem(&self) -> Problem {
        if let ApiError::Relayed(p) = self {
            return p.clone();
        }
        let (status, code) = self.status_code();
        let detail = match self {
            ApiError::Rejected(r) => r.detail.clone(),
            other => other.to_string(),
        };
        Problem {
            kind: format!("https://redcell.dev/problems/{code}"),
            title: status.canonical_reason().unwrap_or("error").to_owned(),
            status: status.as_u16(),
            code: code.to_owned(),
            detail,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let problem = self.problem();
        let status =
            StatusCode::from_u16(problem.status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
        let body = serde_json::to_vec(&problem).expect("problems always serialize");
        let mut resp = (status, body).into_response();
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if status == StatusCode::SERVICE_UNAVAILABLE {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        resp
    }
}

/// What a route or a leader operation needs from the caller's token. Which leader operation
/// needs what is decided in one place, [`LeaderOp::need`](crate::app::LeaderOp::need).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    /// `admin` or `internal`.
    Read,
    /// `admin`.
    Admin,
    /// `internal` (peers, cells' heartbeats) or `admin`.
    Internal,
}

/// A caller whose token verified: who it is, and the `Authorization` header it proved that
/// with, which a follower forwards to the leader so that the leader judges the caller's own
/// authority, never the follower's.
#[derive(Clone)]
pub struct Caller {
    principal: Principal,
    authorization: String,
}

impl std::fmt::Debug for Caller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Caller")
            .field("principal", &self.principal)
            .field("authorization", &"<token>")
            .finish()
    }
}

impl Caller {
    /// The verified `Authorization` header value (`Bearer <jwt>`). A credential: never log it.
    pub fn authorization(&self) -> &str {
        &self.authorization
    }

    /// Ok if this caller's scopes grant `need`, else 403.
    pub fn require(&self, need: Need) -> Result<(), ApiError> {
        let p = &self.principal;
        let ok = match need {
            Need::Read | Need::Internal => p.is_admin() || p.has_scope("internal"),
            Need::Admin => p.is_admin(),
        };
        if ok {
            Ok(())
        } else {
            Err(ApiError::Forbidden(format!(
                "this needs the {} scope",
                match need {
                    Need::Admin => "admin",
                    Need::Read | Need::Internal => "admin or internal",
                }
            )))
        }
    }
}

/// Verifies the caller's token (401 without a valid one); what it may do is checked later,
/// with [`Caller::require`].
pub fn authenticate(node: &Node, headers: &HeaderMap) -> Result<Caller, ApiError> {
    let Some(header) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return Err(ApiError::Unauthorized(AuthError::Missing.to_string()));
    };
    let principal = node
        .verifier
        .verify_header(Some(header))
        .map_err(|e| ApiError::Unauthorized(e.to_string()))?;
    Ok(Caller {
        principal,
        authorization: header.to_owned(),
    })
}

/// [`authenticate`], then [`Caller::require`] `need`: for routes that are not a leader
/// operation (leader operations check [`LeaderOp::need`](crate::app::LeaderOp::need)).
pub fn authorize(node: &Node, headers: &HeaderMap, need: Need) -> Result<Caller, ApiError> {
    let caller = authenticate(node, headers)?;
    caller.require(need)?;
    Ok(caller)
}

/// The request body, or the problem that replaces axum's plain-text rejection.
pub fn body_bytes(body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge
        } else {
            ApiError::BadRequest(format!("body: {e}"))
        }
    })
}

/// A path parameter, or a problem instead of axum's plain-text rejection.
pub fn path_param(p: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    p.map(|Path(s)| s)
        .map_err(|e| ApiError::BadRequest(format!("path: {e}")))
}

/// Parses a JSON body, naming the offending field in the error.
pub fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    T::deserialize(de).map_err(|e| ApiError::BadRequest(format!("body: {e}")))
}

//! The map, its watch, and the operator commands that change it.

use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path, Query, RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use topology::{CellId, CellStatus, Epoch, Region, ShardId};

use super::{authenticate, authorize, body_bytes, parse_json, path_param, ApiError, Caller, Need};
use crate::app::{LeaderOp, LeaderReply, Node};
use crate::state::{BackupUnreachable, Command, FailoverKind, FailoverPolicy};

pub async fn healthz() -> &'static str {
    "ok"
}

/// Ready once this node knows a leader (so it can serve and forward).
pub async fn readyz(State(node): State<Arc<Node>>) -> Response {
    let leader = node.raft.metrics().borrow().current_leader;
    match leader {
        Some(_) => (StatusCode::OK, "ready").into_response(),
        None => ApiError::NoLeader("no leader known yet".into()).into_response(),
    }
}

pub async fn metrics(State(node): State<Arc<Node>>) -> Response {
    let m = node.raft.metrics().borrow().clone();
    let state = node.map.current();
    let c = &node.counters;
    let mut out = String::new();
    let mut gauge = |name: &str, help: &str, v: u64| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
    };
    gauge("raft_meta_term", "Current Raft term.", m.current_term);
    gauge(
        "raft_meta_is_leader",
        "1 if this node is the leader.",
        u64::from(m.current_leader == Some(node.id)),
    );
    gauge(
        "raft_meta_last_log_index",
        "Index of the last log entry.",
        m.last_log_index.unwrap_or(0),
    );
    gauge(
        "raft_meta_last_applied_index",
        "Index of the last applied entry.",
        m.last_applied.map(|l| l.index).unwrap_or(0),
    );
    gauge(
        "raft_meta_map_version",
        "Applied map version.",
        state.version,
    );
    gauge(
        "raft_meta_cells",
        "Registered cells.",
        state.cells.len() as u64,
    );
    let mut counter = |name: &str, help: &str, v: u64| {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
        );
    };
    counter(
        "raft_meta_writes_total",
        "Writes committed through this node as leader.",
        c.writes.load(Ordering::Relaxed),
    );
    counter(
        "raft_meta_writes_rejected_total",
        "Writes refused by validation.",
        c.rejected.load(Ordering::Relaxed),
    );
    counter(
        "raft_meta_forwards_total",
        "Operations forwarded to the leader.",
        c.forwards.load(Ordering::Relaxed),
    );
    counter(
        "raft_meta_watch_deliveries_total",
        "Watch responses carrying a new version.",
        c.watch_deliveries.load(Ordering::Relaxed),
    );
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}

#[derive(Deserialize)]
pub struct MapQuery {
    #[serde(default)]
    consistent: bool,
}

fn parse_query<T: serde::de::DeserializeOwned>(raw: Option<String>) -> Result<T, ApiError> {
    let raw = raw.unwrap_or_default();
    let Query(q) = Query::<T>::try_from_uri(
        &format!("/?{raw}")
            .parse()
            .map_err(|_| ApiError::BadRequest("query: not a valid query string".into()))?,
    )
    .map_err(|e| ApiError::BadRequest(format!("query: {e}")))?;
    Ok(q)
}

/// `GET /v1/map[?consistent=true]`: the map as applied here, or (consistent) as confirmed by
/// the leader at the time of the request.
pub async fn get_map(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let caller = authorize(&node, &headers, Need::Read)?;
    let q: MapQuery = parse_query(raw)?;
    if q.consistent {
        match node.leader_op(&caller, LeaderOp::ReadMap).await? {
            LeaderReply::Map(view) => return Ok(Json(view).into_response()),
            other => {
                return Err(ApiError::Unavailable(format!(
                    "unexpected leader reply {other:?}"
                )))
            }
        }
    }
    Ok(Json(node.map.current().view()).into_response())
}

#[derive(Deserialize)]
pub struct WatchQuery {
    #[serde(default)]
    after: u64,
    /// How long to hold the request open, milliseconds (default 25 000, at most 60 000).
    timeout_ms: Option<u64>,
}

/// `GET /v1/map/watch?after=V`: the next version after `V` this node has (200), or 204 when
/// none arrives before the timeout.
pub async fn watch_map(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    authorize(&node, &headers, Need::Read)?;
    let q: WatchQuery = parse_query(raw)?;
    let timeout = Duration::from_millis(q.timeout_ms.unwrap_or(25_000).min(60_000));
    let next = tokio::select! {
        next = node.map.next_after(q.after, timeout) => next,
        _ = node.stop.cancelled() => None,
    };
    match next {
        Some(state) => {
            node.counters
                .watch_deliveries
                .fetch_add(1, Ordering::Relaxed);
            Ok(Json(state.view()).into_response())
        }
        None => Ok(StatusCode::NO_CONTENT.into_response()),
    }
}

fn cell_id(raw: &str) -> Result<CellId, ApiError> {
    CellId::parse(raw).map_err(|e| ApiError::BadRequest(format!("cell id: {e}")))
}

/// A shard named in the path: `/v1/shards/{id}/…`, or `/v1/cells/{id}/…` from before shards,
/// which names the cell's own shard (it has the cell's name).
fn shard_id(raw: &str) -> Result<ShardId, ApiError> {
    ShardId::parse(raw).map_err(|e| ApiError::BadRequest(format!("shard id: {e}")))
}

/// Commits `command` for `caller`; whether the caller may is `LeaderOp::need`'s to say.
async fn write(node: &Node, caller: &Caller, command: Command) -> Result<Response, ApiError> {
    command.check_shape().map_err(ApiError::Rejected)?;
    match node.leader_op(caller, LeaderOp::Write { command }).await? {
        LeaderReply::Written { version } => {
            Ok(Json(serde_json::json!({ "version": version })).into_response())
        }
        other => Err(ApiError::Unavailable(format!(
            "unexpected leader reply {other:?}"
        ))),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PutCell {
    region: Region,
    url: String,
    #[serde(default)]
    status: Option<CellStatus>,
    #[serde(default)]
    backup: Option<CellId>,
}

/// `PUT /v1/cells/{id}`: register or update a cell.
pub async fn put_cell(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    id: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let caller = authenticate(&node, &headers)?;
    let id = cell_id(&path_param(id)?)?;
    let b: PutCell = parse_json(&body_bytes(body)?)?;
    write(
        &node,
        &caller,
        Command::RegisterCell {
            id,
            region: b.region,
            url: b.url,
            status: b.status,
            backup: b.backup,
        },
    )
    .await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PutBackup {
    backup: Option<CellId>,
}

/// `PUT /v1/shards/{id}/backup` (and `/v1/cells/{id}/backup`) `{"backup": "c2"}` (or `null`
/// to clear).
pub async fn put_backup(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    id: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let caller = authenticate(&node, &headers)?;
    let shard = shard_id(&path_param(id)?)?;
    let b: PutBackup = parse_json(&body_bytes(body)?)?;
    write(
        &node,
        &caller,
        Command::SetBackup {
            shard,
            backup: b.backup,
        },
    )
    .await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PutPolicy {
    #[serde(default)]
    auto_failover: bool,
    #[serde(default)]
    on_backup_unreachable: BackupUnreachable,
}

/// `PUT /v1/shards/{id}/policy` (and `/v1/cells/{id}/policy`).
pub async fn put_policy(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    id: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let caller = authenticate(&node, &headers)?;
    let shard = shard_id(&path_param(id)?)?;
    let b: PutPolicy = parse_json(&body_bytes(body)?)?;
    write(
        &node,
        &caller,
        Command::SetPolicy {
            shard,
            policy: FailoverPolicy {
                auto_failover: b.auto_failover,
                on_backup_unreachable: b.on_backup_unreachable,
            },
        },
    )
    .await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostAlone {
    epoch: Epoch,
}

/// `POST /v1/shards/{id}/alone` (and `/v1/cells/{id}/alone`) `{"epoch": N}`: the shard's
/// primary asks to acknowledge money writes without its unreachable backup, at the shard's
/// epoch N (scope `internal`; `admin` too). 200 `{"version"}` once committed; 409
/// `policy_refuses`, `stale_epoch` or `unknown_shard` otherwise. Only this committed answer
/// is a grant: a timeout is not one.
pub async fn post_alone(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    id: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let caller = authenticate(&node, &headers)?;
    let shard = shard_id(&path_param(id)?)?;
    let b: PostAlone = parse_json(&body_bytes(body)?)?;
    write(
        &node,
        &caller,
        Command::GrantAlone {
            shard,
            epoch: b.epoch,
        },
    )
    .await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostFailover {
    kind: FailoverKind,
    /// The shard epoch the operator decided at; the shard's current epoch when absent.
    #[serde(default)]
    at_epoch: Option<Epoch>,
}

/// `POST /v1/shards/{id}/failover` `{"kind": "planned"|"emergency", "at_epoch": E}` (admin):
/// moves the shard to its backup and raises its slots' epochs in one entry (DESIGN §6.5;
/// `state/failover.rs` holds the rules). 200 `{"version"}` once committed; 409 `stale_epoch`
/// when another decision was taken at that epoch, `no_backup`, `unknown_shard`. A planned
/// failover is only this step: `cellctl failover --planned` pauses the primary and waits for
/// the backup to catch up first.
pub async fn post_failover(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    id: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let caller = authenticate(&node, &headers)?;
    let shard = shard_id(&path_param(id)?)?;
    let b: PostFailover = parse_json(&body_bytes(body)?)?;
    if b.kind == FailoverKind::Automatic {
        return Err(ApiError::BadRequest(
            "kind: planned or emergency (automatic failovers are the leader's own)".into(),
        ));
    }
    let at_epoch = b
        .at_epoch
        .unwrap_or_else(|| node.map.current().shard_epoch(&shard));
    write(
        &node,
        &caller,
        Command::FailOver {
            shard,
            at_epoch,
            kind: b.kind,
            at_ms: crate::detector::wall_ms(),
        },
    )
    .await
}

/// `DELETE /v1/shards/{id}/alone` (and `/v1/cells/{id}/alone`): the primary gives the shard's
/// grant back (scope `internal`; `admin` too). 200 `{"version"}`, also when there was none;
/// 409 `unknown_shard`.
pub async fn delete_alone(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    id: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let caller = authenticate(&node, &headers)?;
    let shard = shard_id(&path_param(id)?)?;
    write(&node, &caller, Command::WithdrawAlone { shard }).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MoveSlots {
    slots: Vec<u16>,
    to: ShardId,
}

/// `POST /v1/slots/move` `{"slots": [1, 2], "to": "c2"}`: `to` is a shard.
pub async fn move_slots(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let caller = authenticate(&node, &headers)?;
    let b: MoveSlots = parse_json(&body_bytes(body)?)?;
    write(
        &node,
        &caller,
        Command::MoveSlots {
            slots: b.slots,
            to: b.to,
        },
    )
    .await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PutSwitch {
    on: bool,
    #[serde(default)]
    message: String,
}

/// `PUT /v1/switches/{name}` `{"on": false, "message": "…"}`.
pub async fn put_switch(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    name: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let caller = authenticate(&node, &headers)?;
    let b: PutSwitch = parse_json(&body_bytes(body)?)?;
    write(
        &node,
        &caller,
        Command::SetSwitch {
            name: path_param(name)?,
            on: b.on,
            message: b.message,
        },
    )
    .await
}

/// `PUT /v1/breaker` with a whole [`wire::BreakerPolicy`] (members left out take their
/// defaults): the payment-provider breaker's thresholds for every cell (admin).
pub async fn put_breaker(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let caller = authenticate(&node, &headers)?;
    // Credentials before the body: a non-admin learns nothing about its shape.
    caller.require(Need::Admin)?;
    let bytes = body_bytes(body)?;
    // The stored form takes defaults for what is missing; a misspelt member must not be
    // silently dropped (and the default kept) though.
    let given: serde_json::Map<String, serde_json::Value> = parse_json(&bytes)?;
    let known = serde_json::to_value(wire::BreakerPolicy::default())
        .map_err(|e| ApiError::Unavailable(e.to_string()))?;
    if let Some(bad) = given.keys().find(|k| known.get(k.as_str()).is_none()) {
        return Err(ApiError::BadRequest(format!(
            "body: unknown member `{bad}`"
        )));
    }
    let policy: wire::BreakerPolicy = parse_json(&bytes)?;
    write(&node, &caller, Command::SetBreaker { policy }).await
}

/// `GET /v1/switches`: the switches as applied here.
pub async fn get_switches(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authorize(&node, &headers, Need::Read)?;
    let state = node.map.current();
    Ok(Json(serde_json::json!({
        "version": state.version,
        "switches": &*state.switches,
    }))
    .into_response())
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct PostHeartbeat {
    #[serde(default)]
    positions: std::collections::BTreeMap<ShardId, u64>,
}

/// `POST /v1/cells/{id}/heartbeat`, body empty or `{"positions": {"c1": 120}}` (what each of
/// the cell's shards has had acknowledged by its backup): a cell says it is alive. Kept in
/// the leader's memory; positions reach the map every few seconds (`detector`). Answers
/// `{"version": V}`, the map version the leader has applied.
pub async fn post_heartbeat(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    id: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let caller = authenticate(&node, &headers)?;
    let cell = cell_id(&path_param(id)?)?;
    let body = body_bytes(body)?;
    let b: PostHeartbeat = if body.is_empty() {
        PostHeartbeat::default()
    } else {
        parse_json(&body)?
    };
    let op = LeaderOp::Heartbeat {
        cell: cell.clone(),
        positions: b.positions,
    };
    // Before the lookup, so that whether a cell exists is told only to who may heartbeat.
    caller.require(op.need())?;
    if !node.map.current().cells.contains_key(&cell) {
        return Err(ApiError::Rejected(crate::state::Rejected {
            code: "cell_not_found".into(),
            detail: format!("no cell {cell}"),
        }));
    }
    let version = match node.leader_op(&caller, op).await? {
        LeaderReply::Written { version } => Some(version),
        _ => None,
    };
    Ok(axum::Json(serde_json::json!({ "version": version })).into_response())
}

/// `GET /v1/liveness`: the leader's failure-detector view (state and time since last heartbeat).
pub async fn get_liveness(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let caller = authenticate(&node, &headers)?;
    match node.leader_op(&caller, LeaderOp::Liveness).await? {
        LeaderReply::Liveness(l) => Ok(Json(l).into_response()),
        other => Err(ApiError::Unavailable(format!(
            "unexpected leader reply {other:?}"
        ))),
    }
}

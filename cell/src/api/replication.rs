//! Replication routes (DESIGN §6.3): the primary serves its journal and snapshots to its
//! backup (scope `internal`); both sides answer `cellctl verify` and `status` (scope
//! `internal` or `admin`).
//!
//! A cell may serve several shards (after a failover): the primary's routes take
//! `shard=ID` (default: the cell's own shard) and answer 404 `not_primary` for a shard it
//! does not serve.
//!
//! | route | side |
//! |---|---|
//! | `GET /v1/internal/journal?shard=S&after=P&max=N&wait_ms=W` | primary: commits after P (long-poll up to W ms); P is the caller's durable position |
//! | `GET /v1/internal/snapshot?shard=S` | primary: every replicated row at one position |
//! | `GET /v1/internal/digest?shard=S` | primary: per-slot digests at one position |
//! | `GET /v1/internal/history?shard=S` | primary: the shard's promotions and head (a rejoining copy checks its log against them) |
//! | `POST /v1/internal/shards/{shard}/pause` `{"lease_ms": N}` (admin) | primary: a planned failover's pause: writes end, the head stands still; answers it |
//! | `DELETE /v1/internal/shards/{shard}/pause` (admin) | primary: lifts the pause |
//! | `GET /v1/internal/replication` | both: per served shard its journal head, backup's acknowledged position, pause; hosted replicas; the payment breaker |
//! | `POST /v1/internal/replicas/{shard}/hold` `{"at": P or null}` | backup: stop applying past P (30 s lease) |
//! | `DELETE /v1/internal/replicas/{shard}/hold` | backup: resume |
//! | `GET /v1/internal/replicas/{shard}/digest?at=P` | backup: digests once exactly at P |

use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use super::error::ApiError;
use super::extract::{rule, Authorized, Caller, Json, PathText, QueryOf};
use crate::app::Ctx;
use crate::journal::{Position, WireCommit};
use crate::replication::Replica;
use crate::shards::Served;

/// Most commits one pull may ask for.
const MAX_COMMITS: i64 = 1_000;
/// Longest a pull may wait for news.
const MAX_WAIT_MS: u64 = 10_000;
/// With news but no money answer waiting for it, how long a pull may wait for more
/// commits to gather, and how many are enough. Each answer costs the backup one applying
/// transaction (an fsync and about ten statements), so commits nobody waits for (workers'
/// completions, `--acknowledge local`) are shipped in batches; a money answer that starts
/// waiting meanwhile ends the wait at once.
const GATHER_MS: u64 = 10;
const GATHER_COMMITS: i64 = 64;

fn caller_name(caller: &Caller) -> String {
    match &caller.0 {
        topology::auth::Principal::Service { name, .. } => name.clone(),
        topology::auth::Principal::User(uid) => uid.to_string(),
    }
}

/// `?shard=ID`: which served shard a primary route is about.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ShardQuery {
    shard: Option<String>,
}

/// The served shard `name` (the cell's own when absent), or 404 `not_primary`.
fn served(ctx: &Ctx, name: Option<&str>) -> Result<std::sync::Arc<Served>, ApiError> {
    let own = topology::ShardId::own(ctx.shards.cell_id());
    let id = match name {
        Some(n) => topology::ShardId::parse(n).map_err(|e| ApiError::invalid("shard", e))?,
        None => own,
    };
    ctx.shards.get(&id).ok_or_else(|| {
        ApiError::not_found(
            "not_primary",
            format!("this cell does not serve shard {id} as its primary"),
        )
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JournalQuery {
    shard: Option<String>,
    after: Position,
    max: Option<i64>,
    wait_ms: Option<u64>,
}

pub async fn handle_journal(
    State(ctx): State<Ctx>,
    caller: Authorized<rule::Internal>,
    QueryOf(q): QueryOf<JournalQuery>,
) -> Result<Response, ApiError> {
    let shard = served(&ctx, q.shard.as_deref())?;
    if q.after < 0 {
        return Err(ApiError::invalid("after", "must be a position (0 or more)"));
    }
    let max = q.max.unwrap_or(256);
    if !(1..=MAX_COMMITS).contains(&max) {
        return Err(ApiError::invalid(
            "max",
            format!("must be 1..={MAX_COMMITS}"),
        ));
    }
    let wait = Duration::from_millis(q.wait_ms.unwrap_or(0).min(MAX_WAIT_MS));
    // `after` is what the backup has durably applied: its acknowledgement.
    shard.durability.record_ack(q.after, &caller_name(&caller));
    let mut head = shard.store.watch_head();
    let deadline = tokio::time::Instant::now() + wait;
    // The head's sender is gone (the store is closing): answer with what there is.
    let mut closed = false;
    let mut gathered = false;
    loop {
        // This process's head says whether there is news (only this process writes the
        // shard): while it is at or below `after`, wait for the next commit without asking
        // the database. The database is still read once the wait is over, so a commit the
        // head missed is shipped by the next pull at the latest.
        let known = *head.borrow_and_update();
        if known <= q.after && !closed && tokio::time::Instant::now() < deadline {
            match tokio::time::timeout_at(deadline, head.wait_for(|h| *h > q.after)).await {
                Ok(Err(_)) => closed = true,
                Ok(Ok(_)) | Err(_) => continue,
            }
        }
        if !gathered && wait > Duration::ZERO {
            gathered = true;
            gather(&shard, q.after, max.min(GATHER_COMMITS), deadline).await;
        }
        let commits = shard.store.commits_after(q.after, max).await?;
        if !commits.is_empty() || closed || tokio::time::Instant::now() >= deadline {
            let shipped = commits.last().map_or(0, |c| c.pos);
            let head = shard.store.committed_head().max(shipped);
            let wire: Vec<WireCommit> = commits.iter().map(WireCommit::from).collect();
            return Ok(axum::Json(json!({"head": head, "commits": wire})).into_response());
        }
        // The head moved past `after` but the read did not see its commit yet: wait for the
        // next one; the deadline bounds the wait.
        if let Ok(Err(_)) = tokio::time::timeout_at(deadline, head.changed()).await {
            closed = true;
        }
    }
}

/// Lets commits after `after` gather (see `GATHER_MS`) unless a money answer waits for one
/// of them: returns once one does, once `enough` have been committed, or after `GATHER_MS`.
async fn gather(shard: &Served, after: Position, enough: i64, deadline: tokio::time::Instant) {
    let mut wanted = shard.durability.watch_wanted();
    if *wanted.borrow_and_update() > after {
        return;
    }
    let mut head = shard.store.watch_head();
    let until = deadline.min(tokio::time::Instant::now() + Duration::from_millis(GATHER_MS));
    tokio::select! {
        _ = wanted.wait_for(|w| *w > after) => {}
        _ = head.wait_for(|h| *h >= after + enough) => {}
        _ = tokio::time::sleep_until(until) => {}
    }
}

pub async fn handle_snapshot(
    State(ctx): State<Ctx>,
    caller: Authorized<rule::Internal>,
    QueryOf(q): QueryOf<ShardQuery>,
) -> Result<Response, ApiError> {
    let shard = served(&ctx, q.shard.as_deref())?;
    let snap = shard.store.snapshot().await?;
    tracing::info!(shard = %shard.shard, pos = snap.pos, by = %caller_name(&caller), "serving a snapshot of the shard");
    Ok(axum::Json(snap).into_response())
}

pub async fn handle_digest(
    State(ctx): State<Ctx>,
    _caller: Authorized<rule::InternalOrAdmin>,
    QueryOf(q): QueryOf<ShardQuery>,
) -> Result<Response, ApiError> {
    let shard = served(&ctx, q.shard.as_deref())?;
    Ok(axum::Json(shard.store.digest().await?).into_response())
}

pub async fn handle_history(
    State(ctx): State<Ctx>,
    _caller: Authorized<rule::InternalOrAdmin>,
    QueryOf(q): QueryOf<ShardQuery>,
) -> Result<Response, ApiError> {
    let shard = served(&ctx, q.shard.as_deref())?;
    // The head first: every promotion at or below it is in the history read after it.
    let head = shard.store.journal_head().await?;
    let history = shard.store.promotions().await?;
    Ok(axum::Json(json!({"shard": shard.shard, "head": head, "history": history})).into_response())
}

/// One served shard as `GET /v1/internal/replication` shows it.
async fn shard_status(shard: &Served) -> Result<serde_json::Value, ApiError> {
    let head = shard.store.journal_head().await?;
    let (oldest, commits, records) = shard.store.journal_size().await?;
    let backup = shard.ownership.backup();
    let ack = shard.durability.ack();
    let durability = shard.durability.status();
    Ok(json!({
        "shard": shard.shard,
        "head": head,
        "journal": {"oldest": oldest, "commits": commits, "records": records},
        "backup": backup.map(|b| json!({
            "cell": b,
            "acked": durability.acked,
            "lag_records": (head - durability.acked).max(0),
            "last_contact_ms": ack.at_ms,
        })),
        "durability": durability,
        "paused": shard.paused(),
        "history": shard.store.promotions().await?,
    }))
}

pub async fn handle_status(
    State(ctx): State<Ctx>,
    _caller: Authorized<rule::InternalOrAdmin>,
) -> Result<Response, ApiError> {
    let mut shards = Vec::new();
    for shard in ctx.shards.all() {
        shards.push(shard_status(&shard).await?);
    }
    let divergent: Vec<_> = ctx
        .replicas
        .statuses()
        .into_iter()
        .filter_map(|r| r.divergent)
        .collect();
    // The cell's own shard's fields stay at the top (as before a cell could serve several):
    // `shards` lists every served shard, the own one included.
    let own = topology::ShardId::own(ctx.shards.cell_id());
    let mut body = shards
        .iter()
        .find(|s| s["shard"] == json!(own))
        .cloned()
        .unwrap_or_else(|| json!({"shard": own, "head": null, "backup": null, "durability": null}));
    body["cell"] = json!(ctx.shards.cell_id());
    body["serving"] = json!(shards
        .iter()
        .map(|s| s["shard"].clone())
        .collect::<Vec<_>>());
    body["shards"] = json!(shards);
    body["replicas"] = json!(ctx.replicas.statuses());
    body["divergent"] = json!(divergent);
    body["payment_breaker"] = json!(ctx.breaker.snapshot(std::time::Instant::now()));
    Ok(axum::Json(body).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PauseBody {
    /// How long the pause lasts unless lifted or the shard moves, in milliseconds.
    lease_ms: u64,
}

/// Longest pause an operator may ask for.
const MAX_PAUSE_MS: u64 = 60_000;

/// A planned failover's first step (DESIGN §6.5): the shard's writes end and no new one
/// begins; the answer is the journal head, which stands still until the pause is lifted,
/// its lease ends, or the shard moves away (then the new primary takes the writes).
pub async fn handle_pause(
    State(ctx): State<Ctx>,
    _caller: Authorized<rule::Admin>,
    shard: PathText,
    body: Json<PauseBody>,
) -> Result<Response, ApiError> {
    let served = served(&ctx, Some(&shard.0))?;
    let lease = body.value.lease_ms;
    if !(1..=MAX_PAUSE_MS).contains(&lease) {
        return Err(ApiError::invalid(
            "lease_ms",
            format!("must be 1..={MAX_PAUSE_MS}"),
        ));
    }
    let Some(head) = served.pause(Duration::from_millis(lease)).await else {
        return Err(ApiError::unavailable(
            "the writes in flight did not end in time; nothing is paused",
        ));
    };
    Ok(axum::Json(json!({"shard": served.shard, "head": head, "paused": true})).into_response())
}

pub async fn handle_resume(
    State(ctx): State<Ctx>,
    _caller: Authorized<rule::Admin>,
    shard: PathText,
) -> Result<Response, ApiError> {
    let served = served(&ctx, Some(&shard.0))?;
    let was = served.resume();
    Ok(
        axum::Json(json!({"shard": served.shard, "paused": false, "was_paused": was}))
            .into_response(),
    )
}

fn replica(ctx: &Ctx, shard: &PathText) -> Result<std::sync::Arc<Replica>, ApiError> {
    ctx.replicas.get(&shard.0).ok_or_else(|| {
        ApiError::not_found(
            "not_a_replica",
            format!("this cell hosts no replica of shard {:?}", shard.0),
        )
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HoldBody {
    at: Option<Position>,
}

pub async fn handle_hold(
    State(ctx): State<Ctx>,
    _caller: Authorized<rule::InternalOrAdmin>,
    shard: PathText,
    body: Json<HoldBody>,
) -> Result<Response, ApiError> {
    let r = replica(&ctx, &shard)?;
    if body.value.at.is_some_and(|p| p < r.applied()) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "replica_ahead",
            format!("the replica has applied {} already", r.applied()),
        ));
    }
    let at = r.hold(body.value.at);
    Ok(
        axum::Json(json!({"shard": r.shard, "held_at": at, "applied": r.applied()}))
            .into_response(),
    )
}

pub async fn handle_release(
    State(ctx): State<Ctx>,
    _caller: Authorized<rule::InternalOrAdmin>,
    shard: PathText,
) -> Result<Response, ApiError> {
    let r = replica(&ctx, &shard)?;
    r.release();
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DigestAt {
    at: Position,
}

pub async fn handle_replica_digest(
    State(ctx): State<Ctx>,
    _caller: Authorized<rule::InternalOrAdmin>,
    shard: PathText,
    QueryOf(q): QueryOf<DigestAt>,
) -> Result<Response, ApiError> {
    let r = replica(&ctx, &shard)?;
    if r.applied() > q.at {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "replica_ahead",
            format!("the replica has applied {} already", r.applied()),
        ));
    }
    r.hold(Some(q.at));
    let now = r.wait_applied(q.at, Duration::from_secs(15)).await;
    if now != q.at {
        return Err(ApiError::unavailable(format!(
            "the replica reached {now}, not {}, in time",
            q.at
        ))
        .retry_after(1));
    }
    let digest = r.store.digest().await?;
    r.release();
    Ok(axum::Json(digest).into_response())
}

//! The HTTP API of one cell (API.md), for the slots it owns.

pub mod admin;
pub mod claims;
pub mod error;
pub mod extract;
pub mod internal;
pub mod packets;
pub mod replication;
pub mod subsidies;
pub mod users;

use std::time::{Duration, Instant};

use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use wire::headers;

use crate::app::Ctx;
use error::ApiError;

/// Every request ends within this, whatever it waits on.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

pub fn router(ctx: Ctx) -> Router {
    // Money-moving routes: a 2xx answer waits for the backup (see `durable`).
    let durable = || middleware::from_fn_with_state(ctx.clone(), durable);
    Router::new()
        .route(
            "/v1/subsidies",
            post(subsidies::handle_grant).route_layer(durable()),
        )
        .route(
            "/v1/users/{uid}/subsidies",
            get(subsidies::handle_list_subsidies),
        )
        .route(
            "/v1/packets",
            post(packets::handle_send).route_layer(durable()),
        )
        .route("/v1/packets/{packet_id}", get(packets::handle_get_packet))
        .route(
            "/v1/packets/{packet_id}/claims",
            post(claims::handle_claim)
                .route_layer(durable())
                .get(claims::handle_list_claims),
        )
        .route(
            "/v1/payments/{payment_id}/callback",
            post(packets::handle_payment_callback).route_layer(durable()),
        )
        .route("/v1/users/{uid}/wallet", get(users::handle_wallet))
        .route("/v1/users/{uid}/packets", get(users::handle_history))
        .route(
            "/v1/internal/transfers",
            post(internal::handle_receive_transfers).route_layer(durable()),
        )
        .route(
            "/v1/internal/grants/reserve",
            post(internal::handle_reserve_grant).route_layer(durable()),
        )
        .route(
            "/v1/internal/grants/confirm",
            post(internal::handle_confirm_grant).route_layer(durable()),
        )
        .route(
            "/v1/internal/grants/resolve",
            post(internal::handle_resolve_grant).route_layer(durable()),
        )
        .route("/v1/internal/journal", get(replication::handle_journal))
        .route("/v1/internal/snapshot", get(replication::handle_snapshot))
        .route("/v1/internal/digest", get(replication::handle_digest))
        .route("/v1/internal/replication", get(replication::handle_status))
        .route(
            "/v1/internal/replicas/{shard}/hold",
            post(replication::handle_hold).delete(replication::handle_release),
        )
        .route(
            "/v1/internal/replicas/{shard}/digest",
            get(replication::handle_replica_digest),
        )
        .route(
            "/v1/admin/reconciliation",
            get(admin::handle_reconciliation),
        )
        .route("/v1/admin/clock", post(admin::handle_clock))
        .route("/healthz", get(admin::handle_healthz))
        .route("/readyz", get(admin::handle_readyz))
        .route("/metrics", get(admin::handle_metrics))
        .fallback(|| async { ApiError::not_found("not_found", "no such route") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "method not allowed on this route",
            )
        })
        .layer(middleware::from_fn_with_state(ctx.clone(), fence))
        .layer(middleware::from_fn_with_state(ctx.clone(), observe))
        .layer(middleware::from_fn(request_timeout))
        .layer(DefaultBodyLimit::max(extract::BODY_LIMIT))
        .with_state(ctx)
}

/// Ends a request still running after [`REQUEST_TIMEOUT`] with `503 timeout` (problem+json,
/// `Retry-After`); a body that never arrives is answered 408 well before, by the extractor.
async fn request_timeout(req: Request, next: Next) -> Response {
    match tokio::time::timeout(REQUEST_TIMEOUT, next.run(req)).await {
        Ok(res) => res,
        Err(_) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "timeout",
            format!("no answer within {} s; retry", REQUEST_TIMEOUT.as_secs()),
        )
        .retry_after(1)
        .into_response(),
    }
}

/// Fencing on the router's route decision: when a request says which slot and epoch it
/// was routed by (`x-redcell-slot`, `x-redcell-epoch`), this cell must own that slot at that
/// epoch, or it answers 421 with its own view so the router refreshes its map and retries.
/// Handlers still check the slot of the request's own routing key either way.
async fn fence(State(ctx): State<Ctx>, req: Request, next: Next) -> Response {
    let (slot, epoch) = {
        let header = |name: &str| {
            req.headers()
                .get(name)
                .map(|v| v.to_str().unwrap_or("?").to_owned())
        };
        (header(headers::SLOT), header(headers::EPOCH))
    };
    if slot.is_none() && epoch.is_none() {
        return next.run(req).await;
    }
    let slot = slot
        .and_then(|s| s.parse::<u16>().ok())
        .and_then(topology::Slot::new);
    let epoch = epoch.map(|e| e.parse::<u64>().map(topology::Epoch));
    let (Some(slot), Some(Ok(epoch))) = (slot, epoch) else {
        return ApiError::invalid(
            headers::SLOT,
            "x-redcell-slot and x-redcell-epoch go together, as numbers",
        )
        .into_response();
    };
    match ctx.ownership.check_at(slot, Some(epoch)) {
        Ok(()) => next.run(req).await,
        Err(e) => e.into_response(),
    }
}

/// Semi-synchronous acknowledgement at the edge of every money-moving route: a 2xx answer
/// leaves only once the shard's backup has durably applied everything up to this process's
/// journal head after the handler ran (which covers the handler's own commit, or the
/// earlier commit a replay answers from), or as raft-meta's policy allows
/// (`replication::Durability` holds the invariant). Otherwise 503 + Retry-After: the write
/// is committed here, and a retry with the same key is answered from it. One place, so no
/// money route can forget it; a client that hangs up drops only this wait.
async fn durable(State(ctx): State<Ctx>, req: Request, next: Next) -> Response {
    let res = next.run(req).await;
    if !res.status().is_success() {
        return res;
    }
    match ctx.durability.settle().await {
        Ok(()) => res,
        Err(e) => ApiError::unavailable(e.to_string())
            .retry_after(1)
            .into_response(),
    }
}

/// Counts and times every request by route, and logs server-side failures.
async fn observe(State(_ctx): State<Ctx>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".into());
    let method = req.method().clone();
    let started = Instant::now();
    let res = next.run(req).await.into_response();
    let status = res.status();
    let elapsed = started.elapsed();
    metrics::counter!("redcell_http_requests_total", "route" => route.clone(), "status" => status.as_u16().to_string())
        .increment(1);
    metrics::histogram!("redcell_http_request_duration_seconds", "route" => route.clone())
        .record(elapsed.as_secs_f64());
    if status.is_server_error() {
        tracing::warn!(%method, route, status = status.as_u16(), ms = elapsed.as_millis() as u64, "request failed");
    }
    res
}

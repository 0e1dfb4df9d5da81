//! Operations: reconciliation, the test clock, health, readiness and metrics.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use super::error::ApiError;
use super::extract::{rule, Authorized, Json};
use crate::app::Ctx;

/// The books (admin): at the router, every cell's.
#[utoipa::path(get, path = "/v1/admin/reconciliation", tag = "operations", security(("bearer" = [])),
    responses((status = 200, description = "the report", body = super::openapi::Reconciliation)))]
pub async fn handle_reconciliation(
    State(ctx): State<Ctx>,
    _caller: Authorized<rule::Admin>,
) -> Result<Response, ApiError> {
    // Every shard this cell serves, and only those: a copy it no longer serves (a demoted
    // shard, a replica) is another cell's to report.
    let mut report = crate::store::Reconciliation::empty();
    for shard in ctx.shards.all() {
        report.merge(shard.store.reconcile(ctx.clock.now_ms()).await?);
    }
    Ok(axum::Json(report).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClockBody {
    advance_s: i64,
}

/// Moves the cell's clock forward; exists only with `--test-clock`.
pub async fn handle_clock(
    State(ctx): State<Ctx>,
    _caller: Authorized<rule::Admin>,
    body: Json<ClockBody>,
) -> Result<Response, ApiError> {
    if !ctx.test_clock {
        return Err(ApiError::not_found("not_found", "no such route"));
    }
    if !(0..=10 * 365 * 86_400).contains(&body.value.advance_s) {
        return Err(ApiError::invalid("advance_s", "must be 0..=315360000"));
    }
    ctx.clock.advance(body.value.advance_s * 1000);
    ctx.wake.notify_waiters();
    Ok(axum::Json(json!({"now": crate::domain::rfc3339(ctx.clock.now_ms())})).into_response())
}

/// Alive.
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "alive", body = super::openapi::Status)))]
pub async fn handle_healthz() -> Response {
    axum::Json(json!({"status": "ok"})).into_response()
}

/// Ready to serve (503 while not).
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses((status = 200, description = "ready", body = Object)))]
pub async fn handle_readyz(State(ctx): State<Ctx>) -> Response {
    if ctx.shutting_down.is_cancelled() {
        return ApiError::unavailable("shutting down").into_response();
    }
    if ctx.shards.root().map().is_none() {
        return ApiError::unavailable("waiting for the first map from raft-meta").into_response();
    }
    let served = ctx.shards.all();
    for shard in &served {
        if !shard.store.ping().await {
            return ApiError::unavailable(format!("shard {}'s database unreachable", shard.shard))
                .into_response();
        }
    }
    let served: Vec<String> = served.iter().map(|s| s.shard.to_string()).collect();
    axum::Json(json!({"status": "ready", "cell": ctx.shards.cell_id(), "serving": served}))
        .into_response()
}

/// Prometheus text.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain", body = String)))]
pub async fn handle_metrics(State(ctx): State<Ctx>) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        ctx.metrics.render(),
    )
        .into_response()
}

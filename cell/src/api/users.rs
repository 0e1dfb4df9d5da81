//! `GET /v1/users/{uid}/wallet`, `GET /v1/users/{uid}/packets`.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::error::ApiError;
use super::extract::{Caller, PathText, QueryOf};
use crate::app::Ctx;
use crate::domain::validate::{self, encode_cursor, HistoryQuery};

/// The user's balance of completed credits (the user or admin).
#[utoipa::path(get, path = "/v1/users/{uid}/wallet", tag = "users", security(("bearer" = [])),
    params(("uid" = String, Path, description = "a uid", pattern = "^[A-Za-z0-9_.-]{1,64}$")),
    responses((status = 200, description = "the wallet", body = super::openapi::Wallet)))]
pub async fn handle_wallet(
    State(ctx): State<Ctx>,
    caller: Caller,
    uid: PathText,
) -> Result<Response, ApiError> {
    let uid = uid.uid()?;
    caller.may_read(&uid)?;
    let shard = ctx.shards.serve(uid.slot())?;
    let balance = shard.store.balance(&uid).await?;
    Ok(axum::Json(json!({"uid": uid, "balance": balance})).into_response())
}

/// The user's sent packets or received credits, newest first (the user or admin).
#[utoipa::path(get, path = "/v1/users/{uid}/packets", tag = "users", security(("bearer" = [])),
    params(("uid" = String, Path, description = "a uid", pattern = "^[A-Za-z0-9_.-]{1,64}$"), super::openapi::HistoryParams),
    responses((status = 200, description = "a page", body = super::openapi::History)))]
pub async fn handle_history(
    State(ctx): State<Ctx>,
    caller: Caller,
    uid: PathText,
    QueryOf(q): QueryOf<HistoryQuery>,
) -> Result<Response, ApiError> {
    let uid = uid.uid()?;
    caller.may_read(&uid)?;
    let q = validate::history(q)?;
    let shard = ctx.shards.serve(uid.slot())?;
    let page = shard.store.history(&uid, &q, ctx.clock.now_ms()).await?;
    let next = page.next.map(|(at, id)| encode_cursor(at, &id));
    Ok(axum::Json(json!({"items": page.items, "next_cursor": next})).into_response())
}

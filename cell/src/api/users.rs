//! `GET /v1/users/{uid}/wallet`, `GET /v1/users/{uid}/packets`.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::error::ApiError;
use super::extract::{Caller, PathText, QueryOf};
use crate::app::Ctx;
use crate::domain::validate::{self, encode_cursor, HistoryQuery};

pub async fn handle_wallet(
    State(ctx): State<Ctx>,
    caller: Caller,
    uid: PathText,
) -> Result<Response, ApiError> {
    let uid = uid.uid()?;
    caller.may_read(&uid)?;
    ctx.ownership.check(uid.slot())?;
    let balance = ctx.store.balance(&uid).await?;
    Ok(axum::Json(json!({"uid": uid, "balance": balance})).into_response())
}

pub async fn handle_history(
    State(ctx): State<Ctx>,
    caller: Caller,
    uid: PathText,
    QueryOf(q): QueryOf<HistoryQuery>,
) -> Result<Response, ApiError> {
    let uid = uid.uid()?;
    caller.may_read(&uid)?;
    let q = validate::history(q)?;
    ctx.ownership.check(uid.slot())?;
    let page = ctx.store.history(&uid, &q, ctx.clock.now_ms()).await?;
    let next = page.next.map(|(at, id)| encode_cursor(at, &id));
    Ok(axum::Json(json!({"items": page.items, "next_cursor": next})).into_response())
}

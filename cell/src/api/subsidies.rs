//! `POST /v1/subsidies`, `GET /v1/users/{uid}/subsidies`.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;
use topology::{IdKind, MintedId};

use super::error::ApiError;
use super::extract::{Caller, Json, PathText};
use crate::app::Ctx;
use crate::domain::validate::{self, GrantBody};
use crate::store::GrantOutcome;

pub async fn handle_grant(
    State(ctx): State<Ctx>,
    caller: Caller,
    body: Json<GrantBody>,
) -> Result<Response, ApiError> {
    caller.require_scope("subsidy:grant")?;
    let now = ctx.clock.now_ms();
    let grant = validate::grant(body.value, ctx.limits, now)?;
    let slot = grant.uid.slot();
    ctx.ownership.check(slot)?;
    let subsidy_id = MintedId::mint(IdKind::Subsidy, slot);
    let outcome = ctx
        .store
        .grant_subsidy(&grant, subsidy_id.as_str(), i64::from(slot.get()), now)
        .await?;
    Ok(match outcome {
        GrantOutcome::Created(s) => (StatusCode::CREATED, axum::Json(s.view(now))).into_response(),
        GrantOutcome::Existing(s) => (StatusCode::OK, axum::Json(s.view(now))).into_response(),
        GrantOutcome::Conflict => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "grant_id_conflict",
                format!("grant_id {} was granted to another user", grant.grant_id),
            ))
        }
    })
}

pub async fn handle_list_subsidies(
    State(ctx): State<Ctx>,
    caller: Caller,
    uid: PathText,
) -> Result<Response, ApiError> {
    let uid = uid.uid()?;
    caller.may_read(&uid)?;
    ctx.ownership.check(uid.slot())?;
    let now = ctx.clock.now_ms();
    let list = ctx.store.subsidies_of(&uid).await?;
    let items: Vec<_> = list.iter().map(|s| s.view(now)).collect();
    Ok(axum::Json(json!({ "subsidies": items })).into_response())
}

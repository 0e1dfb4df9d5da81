//! `POST /v1/subsidies`, `GET /v1/users/{uid}/subsidies`.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::error::ApiError;
use super::extract::{rule, Authorized, Caller, Json, PathText};
use crate::app::Ctx;
use crate::domain::validate::{self, GrantBody};
use crate::grants::{GrantError, Granted};
use crate::store::GrantOutcome;

/// Grants a subsidy (scope `subsidy:grant`); a retry with the same terms answers 200.
#[utoipa::path(post, path = "/v1/subsidies", tag = "subsidies", security(("bearer" = [])),
    request_body(content = super::openapi::GrantRequest, content_type = "application/json"),
    responses(
        (status = 201, description = "granted", body = super::openapi::Subsidy),
        (status = 200, description = "the same grant again", body = super::openapi::Subsidy),
        (status = 409, description = "grant_id_conflict: the same grant_id with another uid or amount", content_type = "application/problem+json", body = super::openapi::Problem),
    ))]
pub async fn handle_grant(
    State(ctx): State<Ctx>,
    _caller: Authorized<rule::GrantsSubsidies>,
    body: Json<GrantBody>,
) -> Result<Response, ApiError> {
    let now = ctx.clock.now_ms();
    let grant = validate::grant(body.value, ctx.limits, now)?;
    let shard = ctx.shards.serve(grant.uid.slot())?;
    let conflict = |why: &str| {
        ApiError::new(
            StatusCode::CONFLICT,
            "grant_id_conflict",
            format!("grant_id {} was granted {why}", grant.grant_id),
        )
    };
    match shard.grants.grant(&grant).await {
        Ok(Granted::Done(GrantOutcome::Created(s))) => {
            Ok((StatusCode::CREATED, axum::Json(s.view(now))).into_response())
        }
        // A retry is answered from the first grant only when it asks for exactly the same:
        // the same grant id with other terms is a conflict, as a reused Idempotency-Key is.
        Ok(Granted::Done(GrantOutcome::Existing(s))) if s.uid != grant.uid.as_str() => {
            Err(conflict("to another user"))
        }
        Ok(Granted::Done(GrantOutcome::Existing(s)))
            if s.amount != grant.amount || s.expires_at != grant.expires_at_ms =>
        {
            Err(conflict(&format!(
                "with other terms (amount {}, expiring at {} ms)",
                s.amount, s.expires_at
            )))
        }
        Ok(Granted::Done(GrantOutcome::Existing(s))) => {
            Ok((StatusCode::OK, axum::Json(s.view(now))).into_response())
        }
        Ok(Granted::Conflict) => Err(conflict("to another user")),
        Ok(Granted::Done(GrantOutcome::Aborted)) => Err(ApiError::unavailable(
            "an earlier attempt of this grant was settled as not granted; retry",
        )),
        Err(GrantError::Store(e)) => Err(e.into()),
        Err(e) => {
            tracing::warn!(grant_id = %grant.grant_id, error = %e, "grant could not reach its order cell");
            Err(ApiError::unavailable(format!("grant not done: {e}")))
        }
    }
}

/// The user's subsidies (the user or admin).
#[utoipa::path(get, path = "/v1/users/{uid}/subsidies", tag = "subsidies", security(("bearer" = [])),
    params(("uid" = String, Path, description = "a uid", pattern = "^[A-Za-z0-9_.-]{1,64}$")),
    responses((status = 200, description = "the subsidies", body = super::openapi::SubsidyList)))]
pub async fn handle_list_subsidies(
    State(ctx): State<Ctx>,
    caller: Caller,
    uid: PathText,
) -> Result<Response, ApiError> {
    let uid = uid.uid()?;
    caller.may_read(&uid)?;
    let shard = ctx.shards.serve(uid.slot())?;
    let now = ctx.clock.now_ms();
    let list = shard.store.subsidies_of(&uid).await?;
    let items: Vec<_> = list.iter().map(|s| s.view(now)).collect();
    Ok(axum::Json(json!({ "subsidies": items })).into_response())
}

//! `POST /v1/packets/{id}/claims`, `GET /v1/packets/{id}/claims`.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;
use topology::IdKind;

use super::error::ApiError;
use super::extract::{rule, Authorized, Caller, OptionalBody, PathText};
use crate::app::Ctx;
use crate::claims::ClaimReply;
use crate::domain::{rfc3339, PacketStatus};
use crate::store::ClaimOutcome;

/// Claims a share (an app user); a second claim answers 200 with the first.
#[utoipa::path(post, path = "/v1/packets/{packet_id}/claims", tag = "claims", security(("bearer" = [])),
    params(("packet_id" = String, Path, description = "a minted packet id", max_length = 40)),
    request_body(content = Object, content_type = "application/json", description = "may be empty"),
    responses(
        (status = 201, description = "claimed", body = super::openapi::Claim),
        (status = 200, description = "this user's earlier claim", body = super::openapi::Claim),
        (status = 404, description = "packet_not_found", content_type = "application/problem+json", body = super::openapi::Problem),
        (status = 409, description = "packet_not_active: awaiting payment or cancelled", content_type = "application/problem+json", body = super::openapi::Problem),
        (status = 410, description = "packet_exhausted / packet_expired", content_type = "application/problem+json", body = super::openapi::Problem),
        (status = 429, description = "claim_busy / rate_limited", content_type = "application/problem+json", body = super::openapi::Problem, headers(("Retry-After" = u32, description = "seconds"))),
    ))]
pub async fn handle_claim(
    State(ctx): State<Ctx>,
    caller: Authorized<rule::AppUser>,
    id: PathText,
    _body: OptionalBody,
) -> Result<Response, ApiError> {
    let uid = caller.user()?.clone();
    let id = id.id(IdKind::Packet, "packet_id")?;
    let shard = ctx.shards.serve(id.slot())?;
    let reply = shard.claims.claim(id.as_str(), uid).await?;
    let outcome = match reply {
        ClaimReply::Busy => {
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "claim_busy",
                "too many claimers on this packet right now; retry",
            )
            .retry_after(1))
        }
        ClaimReply::Outcome(o) => o,
    };
    match outcome {
        ClaimOutcome::Created(c) => Ok((StatusCode::CREATED, axum::Json(c.view())).into_response()),
        ClaimOutcome::Existing(c) => Ok((StatusCode::OK, axum::Json(c.view())).into_response()),
        ClaimOutcome::NotFound => Err(ApiError::not_found("packet_not_found", "no such packet")),
        ClaimOutcome::NotActive => Err(ApiError::new(
            StatusCode::CONFLICT,
            "packet_not_active",
            "the packet is awaiting payment or cancelled",
        )),
        ClaimOutcome::Exhausted => Err(ApiError::new(
            StatusCode::GONE,
            "packet_exhausted",
            "every share is claimed",
        )),
        ClaimOutcome::Expired => Err(ApiError::new(
            StatusCode::GONE,
            "packet_expired",
            "the packet has expired",
        )),
    }
}

/// The claims of a packet (any authenticated caller).
#[utoipa::path(get, path = "/v1/packets/{packet_id}/claims", tag = "claims", security(("bearer" = [])),
    params(("packet_id" = String, Path, description = "a minted packet id", max_length = 40)),
    responses(
        (status = 200, description = "the claims; best_uid once exhausted", body = super::openapi::ClaimList),
        (status = 404, description = "packet_not_found", content_type = "application/problem+json", body = super::openapi::Problem),
    ))]
pub async fn handle_list_claims(
    State(ctx): State<Ctx>,
    _caller: Caller,
    id: PathText,
) -> Result<Response, ApiError> {
    let (shard, packet) = super::packets::owned_packet(&ctx, &id).await?;
    let claims = shard.store.claims_of_packet(&packet.packet_id).await?;
    // The luckiest claimer: the largest amount, the earliest on a tie.
    let best = (packet.status == PacketStatus::Exhausted)
        .then(|| {
            claims
                .iter()
                .rev()
                .max_by_key(|c| c.amount)
                .map(|c| c.uid.clone())
        })
        .flatten();
    let items: Vec<_> = claims
        .iter()
        .map(|c| json!({"uid": c.uid, "amount": c.amount, "claimed_at": rfc3339(c.claimed_at)}))
        .collect();
    Ok(axum::Json(json!({"claims": items, "best_uid": best})).into_response())
}

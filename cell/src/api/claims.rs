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

pub async fn handle_claim(
    State(ctx): State<Ctx>,
    caller: Authorized<rule::AppUser>,
    id: PathText,
    _body: OptionalBody,
) -> Result<Response, ApiError> {
    let uid = caller.user()?.clone();
    let id = id.id(IdKind::Packet, "packet_id")?;
    ctx.ownership.check(id.slot())?;
    let reply = ctx.claims.claim(id.as_str(), uid).await?;
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

pub async fn handle_list_claims(
    State(ctx): State<Ctx>,
    _caller: Caller,
    id: PathText,
) -> Result<Response, ApiError> {
    let packet = super::packets::owned_packet(&ctx, &id).await?;
    let claims = ctx.store.claims_of_packet(&packet.packet_id).await?;
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

//! `POST /v1/packets`, `GET /v1/packets/{id}`, `POST /v1/payments/{id}/callback`.

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use sha2::{Digest, Sha256};
use topology::{IdKind, MintedId};

use super::error::ApiError;
use super::extract::{rule, Authorized, Caller, Json, PathText};
use crate::app::Ctx;
use crate::domain::model::Packet;
use crate::domain::validate::{self, CallbackBody, SendBody};
use crate::store::{CallbackOutcome, NewPacket, SendOutcome};

/// A stored response replayed exactly as it was first sent.
fn raw_json(status: StatusCode, body: String) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

pub async fn handle_send(
    State(ctx): State<Ctx>,
    caller: Authorized<rule::AppUser>,
    headers: HeaderMap,
    body: Json<SendBody>,
) -> Result<Response, ApiError> {
    let sender = caller.user()?.clone();
    let key = headers
        .get("idempotency-key")
        .map(|v| v.to_str().unwrap_or("\u{0}"));
    let key = validate::idempotency_key(key)?;
    let cmd = validate::send_packet(body.value, ctx.limits)?;
    let slot = sender.slot();
    ctx.ownership.check(slot)?;
    let fence = ctx.ownership.fence();
    let hash = format!("{:x}", Sha256::digest(body.canonical.as_bytes()));
    let packet_id = MintedId::mint(IdKind::Packet, slot);
    let payment_id = MintedId::mint(IdKind::Payment, slot);
    let now = ctx.clock.now_ms();
    let new = NewPacket {
        sender: &sender,
        idem_key: &key,
        request_hash: &hash,
        cmd: &cmd,
        packet_id: packet_id.as_str(),
        payment_id: payment_id.as_str(),
        slot: i64::from(slot.get()),
        now,
        payment_check_at: now + ctx.payment_recheck_ms,
        payment_deadline_at: now + ctx.payment_deadline_ms,
    };
    match ctx
        .store
        .send_packet(new, &fence, |p| p.view(now).to_string())
        .await?
    {
        SendOutcome::Created { body } => Ok(raw_json(StatusCode::CREATED, body)),
        SendOutcome::Replayed { status, body } => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::CREATED);
            Ok(raw_json(status, body))
        }
        SendOutcome::KeyReused => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "idempotency_key_reused",
            "this Idempotency-Key was used with another body",
        )),
        SendOutcome::SubsidyNotFound => Err(ApiError::not_found(
            "subsidy_not_found",
            "no such subsidy for this user",
        )),
        SendOutcome::SubsidyUnavailable => Err(ApiError::new(
            StatusCode::CONFLICT,
            "subsidy_unavailable",
            "the subsidy is already used or expired",
        )),
        SendOutcome::BadTotal(reason) => Err(ApiError::invalid("total", reason)),
    }
}

/// The packet a path names, from this cell's shard: 400 for a malformed id, 421 when another
/// cell owns its slot, 404 `packet_not_found` when there is none.
pub(super) async fn owned_packet(ctx: &Ctx, id: &PathText) -> Result<Packet, ApiError> {
    let id = id.id(IdKind::Packet, "packet_id")?;
    ctx.ownership.check(id.slot())?;
    let packet = ctx.store.packet(id.as_str()).await?;
    packet.ok_or_else(|| ApiError::not_found("packet_not_found", "no such packet"))
}

pub async fn handle_get_packet(
    State(ctx): State<Ctx>,
    _caller: Caller,
    id: PathText,
) -> Result<Response, ApiError> {
    let packet = owned_packet(&ctx, &id).await?;
    Ok(axum::Json(packet.view(ctx.clock.now_ms())).into_response())
}

pub async fn handle_payment_callback(
    State(ctx): State<Ctx>,
    _caller: Authorized<rule::PaymentCallback>,
    id: PathText,
    body: Json<CallbackBody>,
) -> Result<Response, ApiError> {
    let id = id.id(IdKind::Payment, "payment_id")?;
    let outcome = validate::callback(body.value)?;
    ctx.ownership.check(id.slot())?;
    let fence = ctx.ownership.fence();
    match ctx
        .store
        .payment_callback(id.as_str(), outcome, ctx.clock.now_ms(), &fence)
        .await?
    {
        CallbackOutcome::NotFound => Err(ApiError::not_found("not_found", "no such payment")),
        CallbackOutcome::Done { status, packet_id } => {
            ctx.claims.invalidate(&packet_id);
            Ok(axum::Json(
                json!({"payment_id": id.as_str(), "status": status, "packet_id": packet_id}),
            )
            .into_response())
        }
    }
}

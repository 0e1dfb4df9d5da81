//! `POST /v1/packets`, `GET /v1/packets/{id}`, `POST /v1/payments/{id}/callback`.

use std::sync::Arc;

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
use crate::domain::PacketKind;
use crate::shards::Served;
use crate::store::{CallbackOutcome, NewPacket, SendOutcome};

/// A stored response replayed exactly as it was first sent.
fn raw_json(status: StatusCode, body: String) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// Sends a packet (an app user); idempotent by `Idempotency-Key`.
#[utoipa::path(post, path = "/v1/packets", tag = "packets", security(("bearer" = [])),
    params(("Idempotency-Key" = String, Header, min_length = 1, max_length = 64, description = "1–64 visible ASCII characters; the same key and body answer the same")),
    request_body(content = super::openapi::SendRequest, content_type = "application/json"),
    responses(
        (status = 201, description = "the packet (c2c: awaiting_payment with its payment; b2c: active)", body = super::openapi::Packet),
        (status = 404, description = "subsidy_not_found", content_type = "application/problem+json", body = super::openapi::Problem),
        (status = 409, description = "subsidy_unavailable: the subsidy is used or expired", content_type = "application/problem+json", body = super::openapi::Problem),
        (status = 422, description = "idempotency_key_reused: the same key with another body", content_type = "application/problem+json", body = super::openapi::Problem),
    ))]
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
    let shard = ctx.shards.serve(slot)?;
    // **Invariant:** a degraded refusal happens before anything is written: no packet, no
    // payment, no idempotency record (a retry with the same key after recovery is a first
    // send), and no money moves. B2C sends (funded by a subsidy, no provider call) and claims
    // never look at the breaker.
    if cmd.kind() == PacketKind::C2c {
        if let Some(retry_after) = ctx.breaker.refusing(std::time::Instant::now()) {
            metrics::counter!("redcell_sends_degraded_total").increment(1);
            return Err(ApiError::degraded(
                "C2C sends are paused: the payment provider is failing or slow; \
                 claims and subsidy (B2C) packets still work; retry later",
            )
            .retry_after(retry_after));
        }
    }
    let fence = shard.fence();
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
    match shard
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

/// The packet a path names, with the shard it is served from here: 400 for a malformed id,
/// 421 when another cell serves its slot, 404 `packet_not_found` when there is none.
pub(super) async fn owned_packet(
    ctx: &Ctx,
    id: &PathText,
) -> Result<(Arc<Served>, Packet), ApiError> {
    let id = id.id(IdKind::Packet, "packet_id")?;
    let shard = ctx.shards.serve(id.slot())?;
    let packet = shard.store.packet(id.as_str()).await?;
    let packet = packet.ok_or_else(|| ApiError::not_found("packet_not_found", "no such packet"))?;
    Ok((shard, packet))
}

/// A packet (any authenticated caller).
#[utoipa::path(get, path = "/v1/packets/{packet_id}", tag = "packets", security(("bearer" = [])),
    params(("packet_id" = String, Path, description = "a minted packet id", max_length = 40)),
    responses(
        (status = 200, description = "the packet", body = super::openapi::Packet),
        (status = 404, description = "packet_not_found", content_type = "application/problem+json", body = super::openapi::Problem),
    ))]
pub async fn handle_get_packet(
    State(ctx): State<Ctx>,
    _caller: Caller,
    id: PathText,
) -> Result<Response, ApiError> {
    let (_, packet) = owned_packet(&ctx, &id).await?;
    Ok(axum::Json(packet.view(ctx.clock.now_ms())).into_response())
}

/// The payment provider reports a C2C payment (scope `payment:callback`); repeats are harmless.
#[utoipa::path(post, path = "/v1/payments/{payment_id}/callback", tag = "payments", security(("bearer" = [])),
    params(("payment_id" = String, Path, description = "a minted payment id", max_length = 40)),
    request_body(content = super::openapi::CallbackRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "recorded", body = super::openapi::CallbackReply),
        (status = 404, description = "not_found: no such payment", content_type = "application/problem+json", body = super::openapi::Problem),
    ))]
pub async fn handle_payment_callback(
    State(ctx): State<Ctx>,
    _caller: Authorized<rule::PaymentCallback>,
    id: PathText,
    body: Json<CallbackBody>,
) -> Result<Response, ApiError> {
    let id = id.id(IdKind::Payment, "payment_id")?;
    let outcome = validate::callback(body.value)?;
    let shard = ctx.shards.serve(id.slot())?;
    let fence = shard.fence();
    match shard
        .store
        .payment_callback(id.as_str(), outcome, ctx.clock.now_ms(), &fence)
        .await?
    {
        CallbackOutcome::NotFound => Err(ApiError::not_found("not_found", "no such payment")),
        CallbackOutcome::Done { status, packet_id } => {
            shard.claims.invalidate(&packet_id);
            Ok(axum::Json(
                json!({"payment_id": id.as_str(), "status": status, "packet_id": packet_id}),
            )
            .into_response())
        }
    }
}

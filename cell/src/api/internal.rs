//! Routes other cells call (scope `internal`): `POST /v1/internal/transfers` credits
//! transfers of claims made in another cell to users homed here, exactly once each.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;
use topology::{IdKind, MintedId, Uid};

use super::error::ApiError;
use super::extract::{Caller, Json};
use crate::app::Ctx;
use crate::store::DueTransfer;

/// Most transfers one delivery may carry.
const MAX_PER_REQUEST: usize = 256;
/// No single claim can be larger than this (a packet's total is far below it).
const MAX_AMOUNT: i64 = 1_000_000_000_000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransfersBody {
    transfers: Vec<TransferItem>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TransferItem {
    transfer_id: String,
    uid: String,
    amount: i64,
    packet_id: String,
}

pub async fn handle_receive_transfers(
    State(ctx): State<Ctx>,
    caller: Caller,
    body: Json<TransfersBody>,
) -> Result<Response, ApiError> {
    caller.require_scope("internal")?;
    let items = body.value.transfers;
    if items.is_empty() || items.len() > MAX_PER_REQUEST {
        return Err(ApiError::invalid(
            "transfers",
            format!("must hold 1..={MAX_PER_REQUEST} transfers"),
        ));
    }
    let mut due = Vec::with_capacity(items.len());
    for (i, t) in items.into_iter().enumerate() {
        let field = |name: &str| format!("transfers[{i}].{name}");
        MintedId::parse(IdKind::Transfer, &t.transfer_id)
            .map_err(|e| ApiError::invalid(&field("transfer_id"), e))?;
        MintedId::parse(IdKind::Packet, &t.packet_id)
            .map_err(|e| ApiError::invalid(&field("packet_id"), e))?;
        let uid = Uid::parse(&t.uid).map_err(|e| ApiError::invalid(&field("uid"), e))?;
        if !(1..=MAX_AMOUNT).contains(&t.amount) {
            return Err(ApiError::invalid(
                &field("amount"),
                "must be a positive number of cents",
            ));
        }
        // Credit only users homed here: a wrong sender learns the owner and retries there.
        ctx.ownership.check(uid.slot())?;
        due.push(DueTransfer {
            transfer_id: t.transfer_id,
            slot: i64::from(uid.slot().get()),
            to_uid: uid.to_string(),
            amount: t.amount,
            packet_id: t.packet_id,
        });
    }
    ctx.store
        .receive_transfers(&due, ctx.clock.now_ms())
        .await?;
    Ok(axum::Json(json!({"credited": due.len()})).into_response())
}

//! Routes other cells call (scope `internal`): `POST /v1/internal/transfers` credits
//! transfers of claims made in another cell to users homed here, exactly once each.

use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;
use topology::{IdKind, MintedId, Slot, Uid};

use super::error::ApiError;
use super::extract::{rule, Authorized, Json};
use crate::app::Ctx;
use crate::shards::Served;
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

impl TransfersBody {
    /// Every transfer checked (1..=256 of them; minted ids of their kinds, a uid, a positive
    /// amount), with its claimer's uid; the first bad one names its field.
    pub fn checked(self) -> Result<Vec<(Uid, DueTransfer)>, ApiError> {
        let items = self.transfers;
        if items.is_empty() || items.len() > MAX_PER_REQUEST {
            return Err(ApiError::invalid(
                "transfers",
                format!("must hold 1..={MAX_PER_REQUEST} transfers"),
            ));
        }
        let mut checked = Vec::with_capacity(items.len());
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
            let due = DueTransfer {
                transfer_id: t.transfer_id,
                slot: i64::from(uid.slot().get()),
                to_uid: uid.to_string(),
                amount: t.amount,
                packet_id: t.packet_id,
            };
            checked.push((uid, due));
        }
        Ok(checked)
    }
}

pub async fn handle_receive_transfers(
    State(ctx): State<Ctx>,
    _caller: Authorized<rule::Internal>,
    body: Json<TransfersBody>,
) -> Result<Response, ApiError> {
    // Grouped by the shard each claimer is homed in: a cell serving several shards (after a
    // failover) credits each group in its own shard.
    let mut groups: Vec<(Arc<Served>, Vec<DueTransfer>)> = Vec::new();
    for (uid, due) in body.value.checked()? {
        // Credit only users homed here: a wrong sender learns the owner and retries there.
        let shard = ctx.shards.serve(uid.slot())?;
        let group = match groups.iter().position(|(s, _)| Arc::ptr_eq(s, &shard)) {
            Some(i) => i,
            None => {
                groups.push((shard, Vec::new()));
                groups.len() - 1
            }
        };
        groups[group].1.push(due);
    }
    let mut credited = 0;
    for (shard, due) in &groups {
        shard
            .store
            .receive_transfers(due, ctx.clock.now_ms(), &shard.fence())
            .await?;
        credited += due.len();
    }
    Ok(axum::Json(json!({"credited": credited})).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrantStep {
    grant_id: String,
    #[serde(default)]
    uid: Option<String>,
    subsidy_id: String,
}

impl GrantStep {
    /// The grant id and the subsidy id (a minted `sb_` id).
    pub fn check(&self) -> Result<(), ApiError> {
        crate::domain::validate::check_grant_id(&self.grant_id)?;
        MintedId::parse(IdKind::Subsidy, &self.subsidy_id)
            .map_err(|e| ApiError::invalid("subsidy_id", e))?;
        Ok(())
    }

    /// The uid, required by the steps that name the user.
    pub fn uid(&self) -> Result<Uid, ApiError> {
        let uid = self
            .uid
            .as_deref()
            .ok_or_else(|| ApiError::invalid("uid", "is required"))?;
        Uid::parse(uid).map_err(|e| ApiError::invalid("uid", e))
    }
}

/// Order cell: reserve a grant id for a uid (insert-if-absent); answers the holder.
pub async fn handle_reserve_grant(
    State(ctx): State<Ctx>,
    _caller: Authorized<rule::Internal>,
    body: Json<GrantStep>,
) -> Result<Response, ApiError> {
    let step = body.value;
    step.check()?;
    let uid = step.uid()?;
    let slot = Slot::of(step.grant_id.as_bytes());
    let shard = ctx.shards.serve(slot)?;
    let fence = shard.fence();
    let r = shard
        .store
        .reserve_grant(
            &step.grant_id,
            uid.as_str(),
            &step.subsidy_id,
            i64::from(slot.get()),
            ctx.clock.now_ms(),
            &fence,
        )
        .await?;
    Ok(axum::Json(r).into_response())
}

/// Order cell: the home cell committed the reserved grant.
pub async fn handle_confirm_grant(
    State(ctx): State<Ctx>,
    _caller: Authorized<rule::Internal>,
    body: Json<GrantStep>,
) -> Result<Response, ApiError> {
    let step = body.value;
    step.check()?;
    let shard = ctx.shards.serve(Slot::of(step.grant_id.as_bytes()))?;
    let fence = shard.fence();
    shard
        .store
        .confirm_grant(&step.grant_id, &step.subsidy_id, &fence)
        .await?;
    Ok(axum::Json(json!({"state": "committed"})).into_response())
}

/// Home cell: settle a grant attempt the order cell found stale; the decision is final.
pub async fn handle_resolve_grant(
    State(ctx): State<Ctx>,
    _caller: Authorized<rule::Internal>,
    body: Json<GrantStep>,
) -> Result<Response, ApiError> {
    let step = body.value;
    step.check()?;
    let uid = step.uid()?;
    let shard = ctx.shards.serve(uid.slot())?;
    let fence = shard.fence();
    let decision = shard
        .store
        .resolve_grant(
            &step.subsidy_id,
            uid.as_str(),
            &step.grant_id,
            i64::from(uid.slot().get()),
            ctx.clock.now_ms(),
            &fence,
        )
        .await?;
    Ok(axum::Json(json!({"decision": decision})).into_response())
}

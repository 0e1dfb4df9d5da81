//! Decoding rows into the domain's records. Column lists live beside their decoders so a
//! `SELECT` and its decoder cannot drift apart.

use sqlx::any::AnyRow;

pub use crate::domain::model::{Claim, ClaimListItem, Packet, Payment, Subsidy};
use crate::domain::{PacketKind, PacketStatus};

use super::{get, StoreError};

/// Columns of `packets p LEFT JOIN payments y` read by [`packet`].
pub const PACKET_COLS: &str = "p.packet_id, p.sender, p.kind, p.total, p.count, \
    p.remaining_amount, p.remaining_count, p.refunded_amount, p.status, p.greeting, \
    p.created_at, p.expires_at, p.subsidy_id, p.payment_id, y.amount AS pay_amount, \
    y.status AS pay_status";

pub fn packet(row: &AnyRow) -> Result<Packet, StoreError> {
    let kind: String = get(row, "kind")?;
    let status: String = get(row, "status")?;
    let payment_id: Option<String> = get(row, "payment_id")?;
    let payment = match payment_id {
        Some(payment_id) => Some(Payment {
            payment_id,
            amount: get::<Option<i64>>(row, "pay_amount")?.unwrap_or_default(),
            status: get::<Option<String>>(row, "pay_status")?.unwrap_or_default(),
        }),
        None => None,
    };
    Ok(Packet {
        packet_id: get(row, "packet_id")?,
        sender: get(row, "sender")?,
        kind: PacketKind::parse(&kind)
            .ok_or_else(|| StoreError::Corrupt(format!("kind {kind}")))?,
        total: get(row, "total")?,
        count: get(row, "count")?,
        remaining_amount: get(row, "remaining_amount")?,
        remaining_count: get(row, "remaining_count")?,
        refunded_amount: get(row, "refunded_amount")?,
        status: PacketStatus::parse(&status)
            .ok_or_else(|| StoreError::Corrupt(format!("status {status}")))?,
        greeting: get(row, "greeting")?,
        created_at: get(row, "created_at")?,
        expires_at: get(row, "expires_at")?,
        subsidy_id: get(row, "subsidy_id")?,
        payment,
    })
}

pub const SUBSIDY_COLS: &str = "subsidy_id, grant_id, uid, amount, status, expires_at";

pub fn subsidy(row: &AnyRow) -> Result<Subsidy, StoreError> {
    Ok(Subsidy {
        subsidy_id: get(row, "subsidy_id")?,
        grant_id: get(row, "grant_id")?,
        uid: get(row, "uid")?,
        amount: get(row, "amount")?,
        status: get(row, "status")?,
        expires_at: get(row, "expires_at")?,
    })
}

/// Columns of `claims c JOIN transfers t` read by [`claim`].
pub const CLAIM_COLS: &str = "c.claim_id, c.packet_id, c.uid, c.amount, c.claimed_at, \
    c.remaining_count, c.transfer_id, t.status AS transfer_status";

pub fn claim(row: &AnyRow) -> Result<Claim, StoreError> {
    Ok(Claim {
        claim_id: get(row, "claim_id")?,
        packet_id: get(row, "packet_id")?,
        uid: get(row, "uid")?,
        amount: get(row, "amount")?,
        claimed_at: get(row, "claimed_at")?,
        remaining_count: get(row, "remaining_count")?,
        transfer_id: get(row, "transfer_id")?,
        transfer_status: get(row, "transfer_status")?,
    })
}

//! The records the service reads and answers with, and their public JSON form (API.md).

use serde_json::{json, Value};

use super::{rfc3339, PacketKind, PacketStatus};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Payment {
    pub payment_id: String,
    pub amount: i64,
    /// `pending`, `succeeded` or `failed`.
    pub status: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Packet {
    pub packet_id: String,
    pub sender: String,
    pub kind: PacketKind,
    pub total: i64,
    pub count: i64,
    pub remaining_amount: i64,
    pub remaining_count: i64,
    pub refunded_amount: i64,
    pub status: PacketStatus,
    pub greeting: String,
    pub created_at: i64,
    pub expires_at: i64,
    pub subsidy_id: Option<String>,
    pub payment: Option<Payment>,
}

impl Packet {
    /// The status a reader sees at `now`: an active packet past its expiry is already
    /// `expired`, even before the expiry worker has written it.
    pub fn status_at(&self, now: i64) -> PacketStatus {
        if self.status == PacketStatus::Active && now >= self.expires_at {
            PacketStatus::Expired
        } else {
            self.status
        }
    }

    pub fn view(&self, now: i64) -> Value {
        let mut v = json!({
            "packet_id": self.packet_id,
            "sender": self.sender,
            "kind": self.kind,
            "total": self.total,
            "count": self.count,
            "remaining_amount": self.remaining_amount,
            "remaining_count": self.remaining_count,
            "status": self.status_at(now),
            "greeting": self.greeting,
            "created_at": rfc3339(self.created_at),
            "expires_at": rfc3339(self.expires_at),
        });
        if let Some(p) = &self.payment {
            v["payment"] =
                json!({"payment_id": p.payment_id, "amount": p.amount, "status": p.status});
        }
        if let Some(s) = &self.subsidy_id {
            v["subsidy_id"] = json!(s);
        }
        v
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subsidy {
    pub subsidy_id: String,
    pub grant_id: String,
    pub uid: String,
    pub amount: i64,
    /// `available`, `used` or `expired`.
    pub status: String,
    pub expires_at: i64,
}

impl Subsidy {
    pub fn status_at(&self, now: i64) -> &str {
        if self.status == "available" && now >= self.expires_at {
            "expired"
        } else {
            &self.status
        }
    }

    pub fn view(&self, now: i64) -> Value {
        json!({
            "subsidy_id": self.subsidy_id,
            "grant_id": self.grant_id,
            "uid": self.uid,
            "amount": self.amount,
            "status": self.status_at(now),
            "expires_at": rfc3339(self.expires_at),
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claim {
    pub claim_id: String,
    pub packet_id: String,
    pub uid: String,
    pub amount: i64,
    pub claimed_at: i64,
    /// Shares left right after this claim.
    pub remaining_count: i64,
    pub transfer_id: String,
    /// `pending` or `completed`.
    pub transfer_status: String,
}

impl Claim {
    pub fn view(&self) -> Value {
        json!({
            "claim_id": self.claim_id,
            "packet_id": self.packet_id,
            "uid": self.uid,
            "amount": self.amount,
            "claimed_at": rfc3339(self.claimed_at),
            "remaining_count": self.remaining_count,
            "transfer": {"transfer_id": self.transfer_id, "status": self.transfer_status},
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClaimListItem {
    pub uid: String,
    pub amount: i64,
    pub claimed_at: i64,
}

//! Claims: the short row-locked transaction that commits a batch of claims on one packet.

use std::collections::HashMap;

use serde_json::json;
use topology::{IdKind, MintedId, Uid};

use super::journal::{append_events, EventEntry};
use super::rows::{self, Claim, ClaimListItem, CLAIM_COLS};
use super::{get, placeholders, values_list, Store, StoreError, WriteTx};
use crate::domain::split::next_share;
use crate::domain::PacketStatus;
use crate::fence::Fence;
use crate::journal::Event;

/// What the claim path needs to know of a packet without a transaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PacketSummary {
    pub status: PacketStatus,
    pub remaining_count: i64,
    pub expires_at: i64,
}

#[derive(Clone, Debug)]
pub enum ClaimOutcome {
    Created(Claim),
    /// This user had already claimed: the same claim.
    Existing(Claim),
    NotFound,
    /// Awaiting payment or cancelled.
    NotActive,
    Exhausted,
    Expired,
}

pub struct ClaimBatch {
    /// One outcome per requested uid, in order.
    pub outcomes: Vec<ClaimOutcome>,
    /// The packet as this transaction left it.
    pub summary: Option<PacketSummary>,
}

struct NewClaim {
    claim: Claim,
    to_slot: i64,
}

impl Store {
    /// Claims shares of one packet for `uids` in one transaction (group commit).
    ///
    /// Locks: the packet row, for the whole transaction, so claims on one packet are
    /// serialized and `remaining_*` can never go below zero or pay out twice; then the
    /// packet slot's epoch row (the fence). The `UNIQUE (packet_id, uid)` index is the
    /// second guard against a double claim.
    ///
    /// Claimers are almost always first-timers, so the batch is first tried optimistically:
    /// no lookup of earlier claims, and an insert that skips conflicting `(packet_id, uid)`
    /// rows. If any row conflicted, that attempt is rolled back and the batch runs again the
    /// careful way, looking up earlier claims first.
    pub async fn claim_batch(
        &self,
        packet_id: &str,
        uids: &[Uid],
        now: i64,
        fence: &Fence,
    ) -> Result<ClaimBatch, StoreError> {
        if let Some(batch) = self
            .try_claim_batch(packet_id, uids, now, fence, true)
            .await?
        {
            return Ok(batch);
        }
        let batch = self
            .try_claim_batch(packet_id, uids, now, fence, false)
            .await?;
        Ok(batch.expect("the careful attempt never gives up"))
    }

    /// One attempt; `Ok(None)` only when `optimistic` and some uid had already claimed.
    async fn try_claim_batch(
        &self,
        packet_id: &str,
        uids: &[Uid],
        now: i64,
        fence: &Fence,
        optimistic: bool,
    ) -> Result<Option<ClaimBatch>, StoreError> {
        let mut tx = self.begin_fenced(fence).await?;
        let sql = format!(
            "SELECT slot, status, remaining_amount, remaining_count, expires_at FROM packets \
             WHERE packet_id = $1{}",
            self.for_update()
        );
        let Some(row) = sqlx::query(&sql)
            .bind(packet_id)
            .fetch_optional(&mut *tx)
            .await?
        else {
            tx.rollback().await?;
            return Ok(Some(ClaimBatch {
                outcomes: vec![ClaimOutcome::NotFound; uids.len()],
                summary: None,
            }));
        };
        let slot: i64 = get(&row, "slot")?;
        // The claims, their transfers and the packet are written under the packet's slot
        // (a transfer row names its claimer's slot, but lives with its claim).
        tx.fence(slot).await?;
        let status_text: String = get(&row, "status")?;
        let status = PacketStatus::parse(&status_text)
            .ok_or_else(|| StoreError::Corrupt(format!("status {status_text}")))?;
        let mut remaining_amount: i64 = get(&row, "remaining_amount")?;
        let mut remaining_count: i64 = get(&row, "remaining_count")?;
        let expires_at: i64 = get(&row, "expires_at")?;

        let mut known: HashMap<String, Claim> = HashMap::new();
        if !optimistic {
            self.load_claims(&mut tx, packet_id, uids, &mut known)
                .await?;
        }
        let packet_slot = topology::Slot::new(slot as u16)
            .ok_or_else(|| StoreError::Corrupt(format!("slot {slot}")))?;
        let mut created = Vec::new();
        let mut refused = false;
        let mut outcomes = Vec::with_capacity(uids.len());
        {
            let mut rng = rand::thread_rng();
            for uid in uids {
                if let Some(claim) = known.get(uid.as_str()) {
                    outcomes.push(ClaimOutcome::Existing(claim.clone()));
                    continue;
                }
                let refusal = match status {
                    PacketStatus::AwaitingPayment | PacketStatus::Cancelled => {
                        Some(ClaimOutcome::NotActive)
                    }
                    PacketStatus::Exhausted => Some(ClaimOutcome::Exhausted),
                    PacketStatus::Expired | PacketStatus::Refunded => Some(ClaimOutcome::Expired),
                    PacketStatus::Active if now >= expires_at => Some(ClaimOutcome::Expired),
                    PacketStatus::Active if remaining_count == 0 => Some(ClaimOutcome::Exhausted),
                    PacketStatus::Active => None,
                };
                if let Some(refusal) = refusal {
                    if optimistic {
                        // This uid may have claimed before; only the careful path knows.
                        refused = true;
                        break;
                    }
                    outcomes.push(refusal);
                    continue;
                }
                let amount = next_share(&mut rng, remaining_amount, remaining_count);
                remaining_amount -= amount;
                remaining_count -= 1;
                let claim = Claim {
                    claim_id: MintedId::mint(IdKind::Claim, packet_slot).into_string(),
                    packet_id: packet_id.to_owned(),
                    uid: uid.to_string(),
                    amount,
                    claimed_at: now,
                    remaining_count,
                    transfer_id: MintedId::mint(IdKind::Transfer, uid.slot()).into_string(),
                    transfer_status: "pending".into(),
                };
                known.insert(claim.uid.clone(), claim.clone());
                created.push(NewClaim {
                    claim: claim.clone(),
                    to_slot: i64::from(uid.slot().get()),
                });
                outcomes.push(ClaimOutcome::Created(claim));
            }
        }
        if refused {
            tx.rollback().await?;
            return Ok(None);
        }
        let new_status = if remaining_count == 0 && status == PacketStatus::Active {
            PacketStatus::Exhausted
        } else {
            status
        };
        if !created.is_empty() {
            if !self.insert_claims(&mut tx, slot, &created).await? {
                tx.rollback().await?;
                return Ok(None);
            }
            sqlx::query(
                "UPDATE packets SET remaining_amount = $1, remaining_count = $2, status = $3 WHERE packet_id = $4",
            )
            .bind(remaining_amount)
            .bind(remaining_count)
            .bind(new_status.as_str())
            .bind(packet_id)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
        } else {
            tx.rollback().await?;
        }
        let summary = PacketSummary {
            status: new_status,
            remaining_count,
            expires_at,
        };
        Ok(Some(ClaimBatch {
            outcomes,
            summary: Some(summary),
        }))
    }

    /// Earlier claims of `uids` on the packet, into `known`.
    async fn load_claims(
        &self,
        tx: &mut WriteTx,
        packet_id: &str,
        uids: &[Uid],
        known: &mut HashMap<String, Claim>,
    ) -> Result<(), StoreError> {
        let sql = format!(
            "SELECT {CLAIM_COLS} FROM claims c JOIN transfers t ON t.transfer_id = c.transfer_id \
             WHERE c.packet_id = $1 AND c.uid IN ({})",
            placeholders(2, uids.len())
        );
        let mut q = sqlx::query(&sql).bind(packet_id);
        for uid in uids {
            q = q.bind(uid.as_str());
        }
        for row in q.fetch_all(&mut **tx).await? {
            let claim = rows::claim(&row)?;
            known.insert(claim.uid.clone(), claim);
        }
        Ok(())
    }

    /// Multi-row inserts of the claims, their transfers and their journal entries: three
    /// statements per batch however many claims it holds. `Ok(false)` when some claimer had
    /// already claimed this packet (nothing usable was written; the caller rolls back).
    async fn insert_claims(
        &self,
        tx: &mut WriteTx,
        slot: i64,
        created: &[NewClaim],
    ) -> Result<bool, StoreError> {
        let sql = format!(
            "INSERT INTO claims (claim_id, slot, packet_id, uid, amount, claimed_at, remaining_count, transfer_id) \
             VALUES {} ON CONFLICT (packet_id, uid) DO NOTHING RETURNING claim_id",
            values_list(self.dialect, created.len(), 8)
        );
        let mut q = sqlx::query(&sql);
        for n in created {
            let c = &n.claim;
            q = q
                .bind(&c.claim_id)
                .bind(slot)
                .bind(&c.packet_id)
                .bind(&c.uid)
                .bind(c.amount)
                .bind(c.claimed_at)
                .bind(c.remaining_count)
                .bind(&c.transfer_id);
        }
        if q.fetch_all(&mut **tx).await?.len() != created.len() {
            return Ok(false);
        }

        let sql = format!(
            "INSERT INTO transfers (transfer_id, slot, claim_id, packet_id, to_uid, amount, status, created_at) VALUES {}",
            values_list(self.dialect, created.len(), 8)
        );
        let mut q = sqlx::query(&sql);
        for n in created {
            let c = &n.claim;
            q = q
                .bind(&c.transfer_id)
                .bind(n.to_slot)
                .bind(&c.claim_id)
                .bind(&c.packet_id)
                .bind(&c.uid)
                .bind(c.amount)
                .bind("pending")
                .bind(c.claimed_at);
        }
        q.execute(&mut **tx).await?;

        let entries: Vec<EventEntry<'_>> = created
            .iter()
            .map(|n| EventEntry {
                slot,
                event: Event::TransferCreated,
                entity_id: &n.claim.transfer_id,
                payload: json!({"claim_id": n.claim.claim_id, "packet_id": n.claim.packet_id, "uid": n.claim.uid, "amount": n.claim.amount}),
            })
            .collect();
        // Every claim of a batch is stamped with the batch's time.
        append_events(tx, &entries, created[0].claim.claimed_at).await?;
        Ok(true)
    }

    pub async fn packet_summary(
        &self,
        packet_id: &str,
    ) -> Result<Option<PacketSummary>, StoreError> {
        let row = sqlx::query(
            "SELECT status, remaining_count, expires_at FROM packets WHERE packet_id = $1",
        )
        .bind(packet_id)
        .fetch_optional(&self.read)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let status: String = get(&row, "status")?;
        Ok(Some(PacketSummary {
            status: PacketStatus::parse(&status)
                .ok_or_else(|| StoreError::Corrupt(status.clone()))?,
            remaining_count: get(&row, "remaining_count")?,
            expires_at: get(&row, "expires_at")?,
        }))
    }

    /// The claim `uid` made on `packet_id`, if any.
    pub async fn claim_of(&self, packet_id: &str, uid: &Uid) -> Result<Option<Claim>, StoreError> {
        let sql = format!(
            "SELECT {CLAIM_COLS} FROM claims c JOIN transfers t ON t.transfer_id = c.transfer_id \
             WHERE c.packet_id = $1 AND c.uid = $2"
        );
        let row = sqlx::query(&sql)
            .bind(packet_id)
            .bind(uid.as_str())
            .fetch_optional(&self.read)
            .await?;
        row.as_ref().map(rows::claim).transpose()
    }

    /// Every claim of a packet in the order they were made.
    pub async fn claims_of_packet(
        &self,
        packet_id: &str,
    ) -> Result<Vec<ClaimListItem>, StoreError> {
        let found = sqlx::query(
            "SELECT uid, amount, claimed_at FROM claims WHERE packet_id = $1 \
             ORDER BY claimed_at, remaining_count DESC",
        )
        .bind(packet_id)
        .fetch_all(&self.read)
        .await?;
        found
            .iter()
            .map(|r| {
                Ok(ClaimListItem {
                    uid: get(r, "uid")?,
                    amount: get(r, "amount")?,
                    claimed_at: get(r, "claimed_at")?,
                })
            })
            .collect()
    }
}

//! Transfers of claims to their claimers' home cells: what is due, delivery and its
//! retries, receiving other cells' transfers, and completing local ones.

use serde_json::json;

use super::cursors::set_cursor;
use super::fence::{bind_live, live_filter};
use super::journal::{append_events, EventEntry};
use super::wallets::{credit_many, Credit};
use super::{get, placeholders, Store, StoreError};
use crate::fence::{Fence, LiveSlots};
use crate::journal::Event;

/// A transfer still to be credited to its claimer's wallet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DueTransfer {
    pub transfer_id: String,
    pub to_uid: String,
    pub amount: i64,
    /// The claimer's home slot.
    pub slot: i64,
    pub packet_id: String,
}

impl DueTransfer {
    /// The credit this transfer makes to its claimer.
    fn credit(&self) -> Credit<'_> {
        Credit {
            source_id: &self.transfer_id,
            uid: &self.to_uid,
            slot: self.slot,
            amount: self.amount,
            packet_id: &self.packet_id,
        }
    }
}

impl Store {
    /// Transfers of packets of `live` slots still pending that were created at or before
    /// `created_before` and whose next delivery attempt is due at `now`.
    pub async fn pending_transfers(
        &self,
        created_before: i64,
        now: i64,
        limit: i64,
        live: &LiveSlots,
    ) -> Result<Vec<String>, StoreError> {
        // A transfer row names its claimer's slot; it is written under its packet's slot.
        let (only_live, slots) = live_filter(self.dialect, "p.slot", live, 4);
        let sql = format!(
            "SELECT t.transfer_id FROM transfers t JOIN packets p ON p.packet_id = t.packet_id \
             WHERE t.status = 'pending' AND t.created_at <= $1 AND t.next_attempt_at <= $2{only_live} \
             ORDER BY t.created_at LIMIT $3"
        );
        let mut q = sqlx::query(&sql).bind(created_before).bind(now).bind(limit);
        q = bind_live(q, slots);
        let found = q.fetch_all(&self.read).await?;
        found.iter().map(|r| get(r, "transfer_id")).collect()
    }

    /// The pending transfers among `ids` of packets of `live` slots, with what delivering
    /// them needs.
    pub async fn pending_by_ids(
        &self,
        ids: &[String],
        live: &LiveSlots,
    ) -> Result<Vec<DueTransfer>, StoreError> {
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(256) {
            let (only_live, slots) = live_filter(self.dialect, "p.slot", live, chunk.len() + 1);
            let sql = format!(
                "SELECT t.transfer_id, t.to_uid, t.amount, t.slot, t.packet_id FROM transfers t \
                 JOIN packets p ON p.packet_id = t.packet_id \
                 WHERE t.status = 'pending' AND t.transfer_id IN ({}){only_live}",
                placeholders(1, chunk.len())
            );
            let mut q = sqlx::query(&sql);
            for id in chunk {
                q = q.bind(id);
            }
            q = bind_live(q, slots);
            for row in q.fetch_all(&self.read).await? {
                out.push(DueTransfer {
                    transfer_id: get(&row, "transfer_id")?,
                    to_uid: get(&row, "to_uid")?,
                    amount: get(&row, "amount")?,
                    slot: get(&row, "slot")?,
                    packet_id: get(&row, "packet_id")?,
                });
            }
        }
        Ok(out)
    }

    /// Marks transfers another cell acknowledged as completed (once; repeats change nothing).
    /// Fenced on their packets' slots.
    pub async fn mark_delivered(
        &self,
        ids: &[String],
        cell: &str,
        now: i64,
        fence: &Fence,
    ) -> Result<usize, StoreError> {
        let mut tx = self.begin_fenced(fence).await?;
        let mut done = 0;
        for chunk in ids.chunks(256) {
            let sql = format!(
                "UPDATE transfers SET status = 'completed', completed_at = $1, delivered_to = $2 \
                 WHERE status = 'pending' AND transfer_id IN ({}) RETURNING transfer_id, slot, amount, packet_id",
                placeholders(3, chunk.len())
            );
            let mut q = sqlx::query(&sql).bind(now).bind(cell);
            for id in chunk {
                q = q.bind(id);
            }
            let (mut ids, mut rest, mut packet_slots) = (Vec::new(), Vec::new(), Vec::new());
            for row in q.fetch_all(&mut *tx).await? {
                ids.push(get::<String>(&row, "transfer_id")?);
                packet_slots.push(packet_slot(&get::<String>(&row, "packet_id")?)?);
                let payload = json!({"delivered_to": cell, "amount": get::<i64>(&row, "amount")?});
                rest.push((get::<i64>(&row, "slot")?, payload));
            }
            tx.fence_all(packet_slots).await?;
            let entries: Vec<EventEntry<'_>> = ids
                .iter()
                .zip(rest)
                .map(|(id, (slot, payload))| EventEntry {
                    slot,
                    event: Event::TransferCompleted,
                    entity_id: id,
                    payload,
                })
                .collect();
            append_events(&mut tx, &entries, now).await?;
            done += entries.len();
        }
        tx.commit().await?;
        Ok(done)
    }

    /// Pushes the next delivery attempt of `ids` to `next_at` and counts the failed attempt.
    /// Fenced on their packets' slots.
    pub async fn defer_transfers(
        &self,
        ids: &[String],
        next_at: i64,
        fence: &Fence,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin_fenced(fence).await?;
        for chunk in ids.chunks(256) {
            let sql = format!(
                "UPDATE transfers SET attempts = attempts + 1, next_attempt_at = $1 \
                 WHERE status = 'pending' AND transfer_id IN ({}) RETURNING packet_id",
                placeholders(2, chunk.len())
            );
            let mut q = sqlx::query(&sql).bind(next_at);
            for id in chunk {
                q = q.bind(id);
            }
            let mut packet_slots = Vec::new();
            for row in q.fetch_all(&mut *tx).await? {
                packet_slots.push(packet_slot(&get::<String>(&row, "packet_id")?)?);
            }
            tx.fence_all(packet_slots).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Credits transfers sent by other cells to users homed here, once per transfer id.
    /// Returns when the credits are durable: the sender may then mark them completed.
    /// Fenced on the claimers' slots (their wallets and credits); one fenced slot refuses the
    /// whole delivery, which the sender retries later, after its map has caught up.
    pub async fn receive_transfers(
        &self,
        items: &[DueTransfer],
        now: i64,
        fence: &Fence,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin_fenced(fence).await?;
        tx.fence_all(items.iter().map(|t| t.slot)).await?;
        let credits: Vec<Credit<'_>> = items.iter().map(DueTransfer::credit).collect();
        for chunk in credits.chunks(256) {
            credit_many(&mut tx, chunk, "transfer_in", now).await?;
        }
        let entries: Vec<EventEntry<'_>> = items
            .iter()
            .map(|t| EventEntry {
                slot: t.slot,
                event: Event::TransferReceived,
                entity_id: &t.transfer_id,
                payload: json!({"uid": t.to_uid, "amount": t.amount, "packet_id": t.packet_id}),
            })
            .collect();
        append_events(&mut tx, &entries, now).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Completes transfers whose claimer is homed in this cell: credits each wallet once
    /// (by transfer id) and marks the transfer completed, all in one transaction that also
    /// moves `worker`'s cursor to `cursor` when given. Returns how many were completed now.
    ///
    /// A handful of statements per chunk of 256, however many transfers: the worker must keep
    /// up with the claim path without taking the database from it.
    /// Locks: the pending transfer rows (the `UPDATE … RETURNING` takes and transitions them
    /// at once), then the slots' epoch rows (the fence: the packets' slots and the
    /// claimers'), then the claimers' wallet rows in uid order.
    pub async fn complete_transfers(
        &self,
        transfer_ids: &[String],
        cursor: Option<(&str, i64)>,
        now: i64,
        fence: &Fence,
    ) -> Result<usize, StoreError> {
        let mut tx = self.begin_fenced(fence).await?;
        let mut done = 0;
        for chunk in transfer_ids.chunks(256) {
            let sql = format!(
                "UPDATE transfers SET status = 'completed', completed_at = $1 \
                 WHERE status = 'pending' AND transfer_id IN ({}) \
                 RETURNING transfer_id, to_uid, amount, slot, packet_id",
                placeholders(2, chunk.len())
            );
            let mut q = sqlx::query(&sql).bind(now);
            for id in chunk {
                q = q.bind(id);
            }
            let mut due = Vec::new();
            for row in q.fetch_all(&mut *tx).await? {
                due.push(DueTransfer {
                    transfer_id: get(&row, "transfer_id")?,
                    to_uid: get(&row, "to_uid")?,
                    amount: get(&row, "amount")?,
                    slot: get(&row, "slot")?,
                    packet_id: get(&row, "packet_id")?,
                });
            }
            if due.is_empty() {
                continue;
            }
            let mut slots = Vec::with_capacity(due.len() * 2);
            for t in &due {
                slots.push(t.slot);
                slots.push(packet_slot(&t.packet_id)?);
            }
            tx.fence_all(slots).await?;
            let credits: Vec<Credit<'_>> = due.iter().map(DueTransfer::credit).collect();
            credit_many(&mut tx, &credits, "claim", now).await?;
            let entries: Vec<EventEntry<'_>> = due
                .iter()
                .map(|t| EventEntry {
                    slot: t.slot,
                    event: Event::TransferCompleted,
                    entity_id: &t.transfer_id,
                    payload: json!({"to_uid": t.to_uid, "amount": t.amount}),
                })
                .collect();
            append_events(&mut tx, &entries, now).await?;
            done += due.len();
        }
        if let Some((worker, seq)) = cursor {
            set_cursor(&mut tx, worker, seq).await?;
        }
        tx.commit().await?;
        Ok(done)
    }
}

/// The slot of a packet, from its minted id (a transfer row names its claimer's slot).
fn packet_slot(packet_id: &str) -> Result<i64, StoreError> {
    topology::MintedId::parse(topology::IdKind::Packet, packet_id)
        .map(|id| i64::from(id.slot().get()))
        .map_err(|e| StoreError::Corrupt(format!("packet_id {packet_id}: {e}")))
}

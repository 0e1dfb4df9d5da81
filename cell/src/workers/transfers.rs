//! The transfer worker: credits each claim to its claimer's wallet in the claimer's home
//! cell. Local claimers are credited in this shard; others are delivered in batches to their
//! home cell's `POST /v1/internal/transfers` and marked completed only once it acknowledges.
//! A failed delivery is retried with exponential backoff and jitter until acknowledged, also
//! across restarts of either side (the pending rows and their next attempt are durable).
//!
//! Invariant (money across a failover): a credit leaves for another cell only once this
//! shard's backup has acknowledged every commit up to now (or raft-meta's run-alone grant
//! stands), as a client's answer would wait (`replication::Durability`). Otherwise a claim
//! that the backup never received could be credited in the claimer's home cell, and after a
//! failover the promoted backup would hold the packet's share unclaimed: the money would
//! exist twice. Local credits need no wait: they are in this shard, with their claim.

use std::collections::{BTreeMap, HashMap};

use rand::Rng;
use serde_json::json;
use topology::{CellId, Slot};

use super::Workers;
use crate::fence::{Fence, LiveSlots};
use crate::journal::Event;
use crate::store::{DueTransfer, StoreError};

/// Transfers pending longer than this are picked up by the sweep.
const SWEEP_AFTER_MS: i64 = 2_000;
const BATCH: i64 = 256;
/// Transfers per delivery request (well under the 64 KiB body limit).
const PER_REQUEST: usize = 200;
const CURSOR: &str = "transfers";
const BACKOFF_MIN_MS: i64 = 200;
const BACKOFF_MAX_MS: i64 = 10_000;

/// Consecutive failed deliveries per destination, for backoff. In memory: after a restart
/// deliveries start eager again, which is what a restart is for.
type Failures = HashMap<CellId, u32>;

/// Remote transfers grouped by home cell, with the cell's URL.
type ByCell = BTreeMap<CellId, (String, Vec<DueTransfer>)>;

impl Workers {
    pub(super) async fn run_transfer_worker(self) {
        let mut failures = 0u32;
        let mut per_cell = Failures::new();
        loop {
            match self.transfer_pass(&mut per_cell).await {
                Ok(busy) => {
                    failures = 0;
                    if busy {
                        continue;
                    }
                }
                Err(e) => {
                    failures += 1;
                    tracing::error!(error = %e, failures, "transfer worker pass failed");
                }
            }
            let backoff = self.interval * 2u32.pow(failures.min(5));
            if !self.wait(&self.transfers_due, backoff).await {
                return;
            }
        }
    }

    /// One pass over new journal entries (or, when there are none, over overdue pending
    /// transfers); `Ok(true)` when it did something and there may be more.
    async fn transfer_pass(&self, per_cell: &mut Failures) -> Result<bool, StoreError> {
        let (fence, live) = self.fence_pass().await?;
        let cursor = self.store.cursor(CURSOR).await?;
        let entries = self
            .store
            .events_after(Event::TransferCreated, cursor, BATCH)
            .await?;
        let now = self.clock.now_ms();
        let last_seq = entries.last().map(|(seq, _)| *seq);
        let ids: Vec<String> = if entries.is_empty() {
            self.store
                .pending_transfers(now - SWEEP_AFTER_MS, now, BATCH, &live)
                .await?
        } else {
            entries.into_iter().map(|(_, id)| id).collect()
        };
        let mut completed = 0;
        if !ids.is_empty() {
            let due = self.store.pending_by_ids(&ids, &live).await?;
            let (local, remote) = self.split_by_home(due, &live);
            if !local.is_empty() {
                let done = self
                    .store
                    .complete_transfers(&local, None, now, &fence)
                    .await;
                let item = format!("{} local transfers", local.len());
                completed += super::unless_fenced("transfers", &item, done)?.unwrap_or(0);
            }
            if !remote.is_empty() {
                if let Err(e) = self.durability.settle().await {
                    // Retried on the next pass (the sweep picks pending transfers up again).
                    tracing::debug!(error = %e, "remote credits wait until the backup has their claims");
                    return Ok(completed > 0);
                }
            }
            for (cell, (url, items)) in remote {
                completed += self
                    .deliver(&cell, &url, &items, per_cell, now, &fence)
                    .await?;
            }
        }
        if let Some(seq) = last_seq {
            self.store.advance_cursor(CURSOR, seq).await?;
        }
        metrics::counter!("redcell_transfers_completed_total").increment(completed as u64);
        Ok(last_seq.is_some() || completed > 0)
    }

    /// Local transfer ids, and remote transfers grouped by their home cell. A local claimer
    /// whose slot is not live (fenced) is left pending: its credit would be refused.
    fn split_by_home(&self, due: Vec<DueTransfer>, live: &LiveSlots) -> (Vec<String>, ByCell) {
        let Some(map) = self.ownership.map() else {
            // No map yet: nothing can be delivered; everything stays pending.
            return (Vec::new(), ByCell::new());
        };
        let mut local = Vec::new();
        let mut remote = ByCell::new();
        for t in due {
            let peer = Slot::new(t.slot as u16).and_then(|s| self.ownership.peer_for(&map, s));
            match peer {
                Some((cell, url)) => {
                    remote
                        .entry(cell)
                        .or_insert_with(|| (url, Vec::new()))
                        .1
                        .push(t);
                }
                _ if live.contains(t.slot) => local.push(t.transfer_id),
                _ => {}
            }
        }
        (local, remote)
    }

    /// Delivers `items` to `cell`; returns how many it acknowledged.
    async fn deliver(
        &self,
        cell: &CellId,
        url: &str,
        items: &[DueTransfer],
        per_cell: &mut Failures,
        now: i64,
        fence: &Fence,
    ) -> Result<usize, StoreError> {
        let mut done = 0;
        for chunk in items.chunks(PER_REQUEST) {
            let ids: Vec<String> = chunk.iter().map(|t| t.transfer_id.clone()).collect();
            let item = format!("{} transfers to {cell}", ids.len());
            match self.post_transfers(url, chunk).await {
                Ok(()) => {
                    per_cell.remove(cell);
                    let marked = self
                        .store
                        .mark_delivered(&ids, cell.as_str(), now, fence)
                        .await;
                    done += super::unless_fenced("transfers", &item, marked)?.unwrap_or(0);
                }
                Err(reason) => {
                    let n = per_cell.entry(cell.clone()).or_default();
                    *n += 1;
                    let delay = backoff_ms(*n);
                    tracing::warn!(%cell, url, transfers = ids.len(), attempt = *n, retry_in_ms = delay,
                        reason, "transfer delivery failed; will retry");
                    metrics::counter!("redcell_transfer_delivery_failures_total", "cell" => cell.to_string())
                        .increment(1);
                    let deferred = self.store.defer_transfers(&ids, now + delay, fence).await;
                    super::unless_fenced("transfers", &item, deferred)?;
                }
            }
        }
        Ok(done)
    }

    async fn post_transfers(&self, url: &str, chunk: &[DueTransfer]) -> Result<(), String> {
        let body = json!({
            "transfers": chunk.iter().map(|t| json!({
                "transfer_id": t.transfer_id,
                "uid": t.to_uid,
                "amount": t.amount,
                "packet_id": t.packet_id,
            })).collect::<Vec<_>>()
        });
        self.peers
            .post::<serde_json::Value>(url, "/v1/internal/transfers", &body)
            .await
            .map(drop)
    }
}

/// Exponential backoff with jitter over the upper half: ≤200 ms, ≤400 ms, … up to 10 s.
fn backoff_ms(failures: u32) -> i64 {
    let base = (BACKOFF_MIN_MS << failures.clamp(1, 16).saturating_sub(1)).min(BACKOFF_MAX_MS);
    base / 2 + rand::thread_rng().gen_range(0..=base / 2)
}

#[cfg(test)]
mod tests {
    #[test]
    fn backoff_grows_and_is_capped() {
        for n in 0..40 {
            let d = super::backoff_ms(n);
            assert!((100..=super::BACKOFF_MAX_MS).contains(&d), "{n}: {d}");
        }
        assert!(super::backoff_ms(1) <= 200);
        assert!(super::backoff_ms(30) >= 5_000);
    }
}

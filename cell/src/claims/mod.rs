//! The claim path: admission gate, per-packet queue with group commit, and the in-memory
//! packet summaries that let a finished packet answer 410 without touching the database.
//!
//! ```text
//! request ─▶ summary (cache/DB) ─final?─▶ 410 (or 200 with the user's earlier claim)
//!               │ active
//!               ▼
//!          gate (≤ ceil(remaining×1.5) in flight) ─full─▶ 429 claim_busy
//!               │
//!               ▼
//!          packet queue ──batch of ≤N──▶ one row-locked transaction ──▶ replies
//! ```

pub mod gate;
mod queue;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;
use topology::Uid;

use crate::clock::Clock;
use crate::domain::PacketStatus;
use crate::ownership::Ownership;
use crate::store::{ClaimOutcome, PacketSummary, Store, StoreError};
pub use gate::Gate;
use gate::Permit;
use queue::Queues;

/// What a claim request gets.
#[derive(Debug)]
pub enum ClaimReply {
    Outcome(ClaimOutcome),
    /// Too many claimers in flight on a packet that still has shares.
    Busy,
}

#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    #[error(transparent)]
    Store(#[from] Arc<StoreError>),
    #[error("claim queue stopped")]
    QueueStopped,
}

impl From<StoreError> for ClaimError {
    fn from(e: StoreError) -> Self {
        ClaimError::Store(Arc::new(e))
    }
}

/// Summaries kept per packet; past this many the cache is cleared (a miss costs one read).
const CACHE_MAX: usize = 100_000;

pub(crate) struct Inner {
    store: Store,
    clock: Arc<Clock>,
    /// Whose map fences each batch: the epochs are taken when the batch starts.
    ownership: Arc<Ownership>,
    gate: Gate,
    /// Latest known summary per packet. Written only with what a committed transaction
    /// returned (or a fresh read), so it can be stale only towards "more shares left", which
    /// the row-locked transaction corrects. Packets awaiting payment are never cached: their
    /// callback may come through another path.
    summaries: Mutex<HashMap<String, PacketSummary>>,
    /// Wakes the transfer worker when claims commit.
    transfers_due: Arc<Notify>,
}

#[derive(Clone)]
pub struct ClaimService {
    inner: Arc<Inner>,
    queues: Option<Arc<Queues>>,
}

impl ClaimService {
    pub fn new(
        store: Store,
        clock: Arc<Clock>,
        ownership: Arc<Ownership>,
        gate: Gate,
        transfers_due: Arc<Notify>,
        queue: Option<usize>,
    ) -> Self {
        let inner = Arc::new(Inner {
            store,
            clock,
            ownership,
            gate,
            summaries: Mutex::default(),
            transfers_due,
        });
        let queues = queue.map(|max_batch| Arc::new(Queues::new(inner.clone(), max_batch)));
        ClaimService { inner, queues }
    }

    /// Claims a share of `packet_id` for `uid`.
    pub async fn claim(&self, packet_id: &str, uid: Uid) -> Result<ClaimReply, ClaimError> {
        let Some(summary) = self.inner.summary(packet_id).await? else {
            return Ok(ClaimReply::Outcome(ClaimOutcome::NotFound));
        };
        let now = self.inner.clock.now_ms();
        let finished = match summary.status {
            PacketStatus::Active if now >= summary.expires_at => Some(ClaimOutcome::Expired),
            PacketStatus::Active if summary.remaining_count == 0 => Some(ClaimOutcome::Exhausted),
            PacketStatus::Active => None,
            PacketStatus::Exhausted => Some(ClaimOutcome::Exhausted),
            PacketStatus::Expired | PacketStatus::Refunded => Some(ClaimOutcome::Expired),
            PacketStatus::AwaitingPayment | PacketStatus::Cancelled => {
                Some(ClaimOutcome::NotActive)
            }
        };
        if let Some(refusal) = finished {
            // A user who claimed before still gets their claim back.
            let earlier = self.inner.store.claim_of(packet_id, &uid).await?;
            return Ok(ClaimReply::Outcome(
                earlier.map_or(refusal, ClaimOutcome::Existing),
            ));
        }
        let limit = gate::limit_for(summary.remaining_count);
        let permit = match self.inner.gate.try_acquire(packet_id, limit, now).await {
            Ok(Some(p)) => Some(p),
            Ok(None) => {
                metrics::counter!("redcell_claims_total", "outcome" => "busy").increment(1);
                return Ok(ClaimReply::Busy);
            }
            Err(e) => {
                // Redis down: admit, and let the row lock keep money right.
                tracing::warn!(error = %e, "admission gate unavailable; admitting the claim");
                None
            }
        };
        self.run(packet_id, uid, permit)
            .await
            .map(ClaimReply::Outcome)
    }

    /// Runs one admitted attempt. `permit` is given back when the attempt ends, by dropping
    /// it: with the queue, when its batch has committed (even if the caller stopped waiting,
    /// the job still runs and holds its place until then); without, when this future ends
    /// or is dropped (which rolls its transaction back).
    async fn run(
        &self,
        packet_id: &str,
        uid: Uid,
        permit: Option<Permit>,
    ) -> Result<ClaimOutcome, ClaimError> {
        match &self.queues {
            Some(q) => q.submit(packet_id, uid, permit).await,
            None => {
                let _permit = permit;
                let mut outcomes = self.inner.commit(packet_id, vec![uid]).await?;
                Ok(outcomes.pop().expect("one outcome per uid"))
            }
        }
    }

    /// Forgets a packet's summary (after a payment callback changed its state).
    pub fn invalidate(&self, packet_id: &str) {
        self.inner
            .summaries
            .lock()
            .expect("summaries lock poisoned")
            .remove(packet_id);
    }
}

impl Inner {
    async fn summary(&self, packet_id: &str) -> Result<Option<PacketSummary>, StoreError> {
        if let Some(s) = self
            .summaries
            .lock()
            .expect("summaries lock poisoned")
            .get(packet_id)
        {
            return Ok(Some(*s));
        }
        let found = self.store.packet_summary(packet_id).await?;
        if let Some(s) = found {
            self.remember(packet_id, s);
        }
        Ok(found)
    }

    fn remember(&self, packet_id: &str, s: PacketSummary) {
        if s.status == PacketStatus::AwaitingPayment {
            return;
        }
        let mut map = self.summaries.lock().expect("summaries lock poisoned");
        if map.len() >= CACHE_MAX {
            map.clear();
        }
        map.insert(packet_id.to_owned(), s);
    }

    /// Commits claims for `uids` in one transaction and records what it left. The batch is
    /// fenced by the map as it is when the batch starts (never older than its requests').
    async fn commit(
        &self,
        packet_id: &str,
        uids: Vec<Uid>,
    ) -> Result<Vec<ClaimOutcome>, StoreError> {
        let now = self.clock.now_ms();
        let fence = self.ownership.fence();
        let started = std::time::Instant::now();
        let batch = self
            .store
            .claim_batch(packet_id, &uids, now, &fence)
            .await?;
        metrics::histogram!("redcell_claim_batch_seconds").record(started.elapsed().as_secs_f64());
        if let Some(s) = batch.summary {
            self.remember(packet_id, s);
        }
        let created = batch
            .outcomes
            .iter()
            .filter(|o| matches!(o, ClaimOutcome::Created(_)))
            .count();
        metrics::histogram!("redcell_claim_batch_size").record(uids.len() as f64);
        metrics::counter!("redcell_claims_total", "outcome" => "created").increment(created as u64);
        if created > 0 {
            self.transfers_due.notify_one();
        }
        Ok(batch.outcomes)
    }
}

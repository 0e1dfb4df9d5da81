//! Background workers. Each loops until its cancellation token fires, wakes on a notify or
//! its interval, logs and backs off on errors, and never exits on one.
//!
//! - transfers (`transfers.rs`): follows the journal (`transfer_created`) from its durable
//!   cursor and credits claimers, here or in their home cell; a sweep of pending transfers
//!   catches entries the cursor passed before their transaction committed (Postgres
//!   sequences commit out of order) and retries failed deliveries when they are due.
//! - expiry: marks due packets expired, refunds them, and returns unused subsidies.
//! - reconciliation: runs on a schedule and reports findings (never fixes them).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::fence::{self, Fence, LiveSlots};
use crate::ownership::Ownership;
use crate::store::{Store, StoreError};

mod payments;
mod transfers;

const BATCH: i64 = 256;

#[derive(Clone)]
pub struct Workers {
    pub store: Store,
    pub clock: Arc<Clock>,
    pub interval: Duration,
    pub cancel: CancellationToken,
    /// Wakes the transfer worker (claims committed).
    pub transfers_due: Arc<Notify>,
    /// Wakes every time-driven worker (the test clock moved).
    pub wake: Arc<Notify>,
    /// Which cell is home to each claimer, for delivering transfers.
    pub ownership: Arc<Ownership>,
    /// What this shard's backup has acknowledged: a credit leaves for another cell only once
    /// the claim behind it is as durable as an answer to a client (see `transfers.rs`).
    pub durability: Arc<crate::replication::Durability>,
    /// Delivers transfers to other cells.
    pub peers: crate::peer::Peers,
    /// The cashier, when one is configured.
    pub provider: Option<std::sync::Arc<dyn crate::payments::PaymentProvider>>,
    /// First re-check of a payment whose callback has not come.
    pub payment_recheck: Duration,
}

impl Workers {
    pub fn spawn(self) -> Vec<tokio::task::JoinHandle<()>> {
        vec![
            tokio::spawn(self.clone().run_transfer_worker()),
            tokio::spawn(self.clone().run_expiry_worker()),
            tokio::spawn(self.clone().run_payment_worker()),
            tokio::spawn(self.clone().run_backlog_gauges()),
            tokio::spawn(self.run_reconciler()),
        ]
    }

    async fn wait(&self, extra: &Notify, interval: Duration) -> bool {
        tokio::select! {
            _ = self.cancel.cancelled() => false,
            _ = extra.notified() => true,
            _ = self.wake.notified() => true,
            _ = tokio::time::sleep(interval) => true,
        }
    }

    /// The fence of one pass (the map as it is now) and the slots the pass may touch.
    /// Publishes `redcell_fenced_slots`: slots the map gives this cell that the shard holds
    /// at another epoch (or not at all).
    async fn fence_pass(&self) -> Result<(Fence, LiveSlots), StoreError> {
        let fence = self.ownership.fence();
        let live = self.store.live_slots(&fence).await?;
        let fenced = fence.owned_epochs().len().saturating_sub(live.len());
        metrics::gauge!("redcell_fenced_slots").set(fenced as f64);
        Ok((fence, live))
    }

    async fn run_expiry_worker(self) {
        let idle = Notify::new();
        loop {
            let now = self.clock.now_ms();
            let pass = async {
                let (fence, live) = self.fence_pass().await?;
                let expired = self
                    .store
                    .expire_due_packets(now, BATCH, &fence, &live)
                    .await?;
                let refunded = self.store.refund_expired(now, BATCH, &fence, &live).await?;
                let subsidies = self
                    .store
                    .expire_subsidies(now, BATCH, &fence, &live)
                    .await?;
                Ok::<_, StoreError>(expired + refunded + subsidies)
            };
            match pass.await {
                Ok(0) => {}
                Ok(n) => {
                    tracing::info!(changed = n, "expiry pass");
                    continue;
                }
                Err(e) => tracing::error!(error = %e, "expiry worker pass failed"),
            }
            if !self.wait(&idle, self.interval).await {
                return;
            }
        }
    }

    /// Publishes each worker's backlog (`redcell_worker_pending`, and the age of its oldest
    /// item in `redcell_worker_oldest_age_seconds`) every ten worker intervals.
    async fn run_backlog_gauges(self) {
        let idle = Notify::new();
        loop {
            let now = self.clock.now_ms();
            match self.store.backlogs(now).await {
                Ok(backlogs) => {
                    for (worker, b) in backlogs {
                        metrics::gauge!("redcell_worker_pending", "worker" => worker)
                            .set(b.pending as f64);
                        let age = b.oldest.map_or(0.0, |t| (now - t).max(0) as f64 / 1000.0);
                        metrics::gauge!("redcell_worker_oldest_age_seconds", "worker" => worker)
                            .set(age);
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot read worker backlogs"),
            }
            if !self.wait(&idle, self.interval * 10).await {
                return;
            }
        }
    }

    async fn run_reconciler(self) {
        let idle = Notify::new();
        loop {
            if !self.wait(&idle, Duration::from_secs(60)).await {
                return;
            }
            match self.store.reconcile(self.clock.now_ms()).await {
                Ok(r) => {
                    metrics::gauge!("redcell_reconciliation_findings").set(r.findings.len() as f64);
                    for f in &r.findings {
                        tracing::warn!(kind = f.kind, id = %f.id, detail = %f.detail, "reconciliation finding");
                    }
                }
                Err(e) => tracing::error!(error = %e, "scheduled reconciliation failed"),
            }
        }
    }
}

/// A worker's write whose refusal by the fence is an expected outcome: `Ok(None)` when the
/// fence refused it (logged and counted; the item is left as it is, and the sweeps do not
/// select it again while its slot is not live), `Err` for any other failure.
fn unless_fenced<T>(
    worker: &'static str,
    item: &str,
    r: Result<T, StoreError>,
) -> Result<Option<T>, StoreError> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(StoreError::Fenced(e)) => {
            fence::skipped(worker, item, &e);
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

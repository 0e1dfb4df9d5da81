//! Background workers. Each loops until its cancellation token fires, wakes on a notify or
//! its interval, logs and backs off on errors, and never exits on one.
//!
//! - transfers: follows the journal (`transfer_created`) from its durable cursor and credits
//!   claimers; a sweep of pending transfers catches entries the cursor passed before their
//!   transaction committed (Postgres sequences commit out of order).
//! - expiry: marks due packets expired, refunds them, and returns unused subsidies.
//! - reconciliation: runs on a schedule and reports findings (never fixes them).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::store::{Store, StoreError};

/// Transfers pending longer than this are picked up by the sweep.
const SWEEP_AFTER_MS: i64 = 2_000;
const BATCH: i64 = 256;
const TRANSFER_CURSOR: &str = "transfers";

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
}

impl Workers {
    pub fn spawn(self) -> Vec<tokio::task::JoinHandle<()>> {
        vec![
            tokio::spawn(self.clone().run_transfer_worker()),
            tokio::spawn(self.clone().run_expiry_worker()),
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

    async fn run_transfer_worker(self) {
        let mut failures = 0u32;
        loop {
            match self.transfer_pass().await {
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

    /// One pass; `Ok(true)` when there may be more to do right away.
    async fn transfer_pass(&self) -> Result<bool, StoreError> {
        let cursor = self.store.cursor(TRANSFER_CURSOR).await?;
        let entries = self
            .store
            .journal_after("transfer_created", cursor, BATCH)
            .await?;
        let now = self.clock.now_ms();
        if let Some(&(last, _)) = entries.last() {
            let ids: Vec<String> = entries.into_iter().map(|(_, id)| id).collect();
            let n = self
                .store
                .complete_transfers(&ids, Some((TRANSFER_CURSOR, last)), now)
                .await?;
            metrics::counter!("redcell_transfers_completed_total").increment(n as u64);
            return Ok(true);
        }
        let stragglers = self
            .store
            .pending_transfers(now - SWEEP_AFTER_MS, BATCH)
            .await?;
        metrics::gauge!("redcell_worker_pending", "worker" => "transfers")
            .set(stragglers.len() as f64);
        if !stragglers.is_empty() {
            let n = self
                .store
                .complete_transfers(&stragglers, None, now)
                .await?;
            tracing::info!(
                swept = n,
                "sweep completed transfers the journal cursor had passed"
            );
            return Ok(n > 0);
        }
        Ok(false)
    }

    async fn run_expiry_worker(self) {
        let idle = Notify::new();
        loop {
            let now = self.clock.now_ms();
            let pass = async {
                let expired = self.store.expire_due_packets(now, BATCH).await?;
                let refunded = self.store.refund_expired(now, BATCH).await?;
                let subsidies = self.store.expire_subsidies(now, BATCH).await?;
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

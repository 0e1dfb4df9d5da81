//! The payment worker: every C2C payment reaches a final state even when its callback never
//! comes (seed 002). Three paths besides the callback itself:
//!
//! - registration, driven by the journal (`payment_created`): the provider is told about the
//!   payment, and its first re-check is scheduled;
//! - the delayed re-check: when due, the provider is asked; an undecided payment is asked
//!   again later, with backoff;
//! - the deadline: a payment still pending at its deadline is asked one last time and, if
//!   still undecided, fails, cancelling its packet. Without a provider configured the
//!   callback is the only way in, and the deadline ends the rest.
//!
//! A sweep also registers payments whose journal-driven registration failed.

use super::{unless_fenced, Workers};
use crate::domain::validate::PaymentOutcome;
use crate::fence::Fence;
use crate::journal::Event;
use crate::payments::{ProviderError, ProviderStatus};
use crate::store::{PendingPayment, StoreError};

const CURSOR: &str = "payments";
const BATCH: i64 = 256;
/// Registration retried by the sweep after this long.
const REGISTER_SWEEP_AFTER_MS: i64 = 2_000;
/// Re-checks back off up to this.
const MAX_RECHECK_MS: i64 = 60_000;

impl Workers {
    pub(super) async fn run_payment_worker(self) {
        loop {
            match self.payment_pass().await {
                Ok(true) => continue,
                Ok(false) => {}
                Err(e) => tracing::error!(error = %e, "payment worker pass failed"),
            }
            if !self.wait(&self.wake, self.interval).await {
                return;
            }
        }
    }

    /// One pass; `Ok(true)` when there may be more to do right away.
    async fn payment_pass(&self) -> Result<bool, StoreError> {
        let now = self.clock.now_ms();
        // Only payments of live slots are selected; each write is fenced again. A payment of
        // a fenced slot left behind by the journal path is picked up by the sweep once (if
        // ever) its slot is live again.
        let (fence, live) = self.fence_pass().await?;
        let cursor = self.store.cursor(CURSOR).await?;
        let entries = self
            .store
            .events_after(Event::PaymentCreated, cursor, BATCH)
            .await?;
        let last_seq = entries.last().map(|(seq, _)| *seq);
        let ids: Vec<String> = entries.into_iter().map(|(_, id)| id).collect();
        let mut to_register = self.store.unregistered_payments(&ids, &live).await?;
        to_register.extend(
            self.store
                .stale_unregistered_payments(now - REGISTER_SWEEP_AFTER_MS, BATCH, &live)
                .await?,
        );
        for p in &to_register {
            self.register(p, &fence).await?;
        }
        if let Some(seq) = last_seq {
            self.store.advance_cursor(CURSOR, seq).await?;
        }

        let due = self.store.payments_due_check(now, BATCH, &live).await?;
        for p in &due {
            self.recheck(p, now, &fence).await?;
        }
        let past = self.store.payments_past_deadline(now, BATCH, &live).await?;
        for p in &past {
            self.finish_at_deadline(p, now, &fence).await?;
        }
        metrics::gauge!("redcell_worker_pending", "worker" => "payments")
            .set((due.len() + past.len()) as f64);
        Ok(last_seq.is_some() || !past.is_empty())
    }

    async fn register(&self, p: &PendingPayment, fence: &Fence) -> Result<(), StoreError> {
        let Some(provider) = &self.provider else {
            return Ok(());
        };
        let Some(callback) = self.callback_url(&p.payment_id) else {
            return Ok(());
        };
        match provider.create(&p.payment_id, p.amount, &callback).await {
            Ok(()) => {
                let marked = self.store.mark_registered(&p.payment_id, fence).await;
                unless_fenced("payments", &p.payment_id, marked).map(drop)
            }
            Err(e) => {
                tracing::warn!(payment_id = %p.payment_id, error = %e, "cannot register the payment yet; the sweep retries");
                Ok(())
            }
        }
    }

    /// This cell's own callback URL for a payment, from the map.
    fn callback_url(&self, payment_id: &str) -> Option<String> {
        let map = self.ownership.map()?;
        let me = map.cell(self.ownership.cell_id())?;
        Some(format!("{}/v1/payments/{payment_id}/callback", me.url))
    }

    async fn recheck(&self, p: &PendingPayment, now: i64, fence: &Fence) -> Result<(), StoreError> {
        let Some(provider) = &self.provider else {
            return Ok(());
        };
        match provider.status(&p.payment_id).await {
            Ok(ProviderStatus::Succeeded) => {
                self.settle(p, PaymentOutcome::Succeeded, now, "re-check", fence)
                    .await
            }
            Ok(ProviderStatus::Failed) => {
                self.settle(p, PaymentOutcome::Failed, now, "re-check", fence)
                    .await
            }
            Ok(ProviderStatus::Pending) | Err(_) => {
                let delay = (self.payment_recheck.as_millis() as i64) << p.checks.clamp(0, 10);
                let at = now + delay.min(MAX_RECHECK_MS);
                let rescheduled = self.store.reschedule_check(&p.payment_id, at, fence).await;
                unless_fenced("payments", &p.payment_id, rescheduled).map(drop)
            }
        }
    }

    async fn finish_at_deadline(
        &self,
        p: &PendingPayment,
        now: i64,
        fence: &Fence,
    ) -> Result<(), StoreError> {
        let last_word = match &self.provider {
            Some(provider) => provider.status(&p.payment_id).await,
            None => Err(ProviderError::Unknown),
        };
        let outcome = match last_word {
            Ok(ProviderStatus::Succeeded) => PaymentOutcome::Succeeded,
            Ok(ProviderStatus::Failed | ProviderStatus::Pending) | Err(ProviderError::Unknown) => {
                PaymentOutcome::Failed
            }
            Err(e) => {
                // The provider may hold a success we cannot see: never guess; ask again soon.
                tracing::warn!(payment_id = %p.payment_id, error = %e, "payment past its deadline but the provider is unreachable");
                let rescheduled = self
                    .store
                    .reschedule_check(&p.payment_id, now + 5_000, fence)
                    .await;
                return unless_fenced("payments", &p.payment_id, rescheduled).map(drop);
            }
        };
        self.settle(p, outcome, now, "deadline", fence).await
    }

    async fn settle(
        &self,
        p: &PendingPayment,
        outcome: PaymentOutcome,
        now: i64,
        path: &'static str,
        fence: &Fence,
    ) -> Result<(), StoreError> {
        let settled = self
            .store
            .payment_callback(&p.payment_id, outcome, now, fence)
            .await;
        if unless_fenced("payments", &p.payment_id, settled)?.is_none() {
            return Ok(());
        }
        metrics::counter!("redcell_payments_settled_total", "path" => path, "outcome" => outcome.as_str()).increment(1);
        tracing::info!(payment_id = %p.payment_id, outcome = outcome.as_str(), path, "payment settled without its callback");
        Ok(())
    }
}

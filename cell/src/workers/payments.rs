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

use super::Workers;
use crate::domain::validate::PaymentOutcome;
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
        let cursor = self.store.cursor(CURSOR).await?;
        let entries = self
            .store
            .events_after(Event::PaymentCreated, cursor, BATCH)
            .await?;
        let last_seq = entries.last().map(|(seq, _)| *seq);
        let ids: Vec<String> = entries.into_iter().map(|(_, id)| id).collect();
        let mut to_register = self.store.unregistered_payments(&ids).await?;
        to_register.extend(
            self.store
                .stale_unregistered_payments(now - REGISTER_SWEEP_AFTER_MS, BATCH)
                .await?,
        );
        for p in &to_register {
            self.register(p).await?;
        }
        if let Some(seq) = last_seq {
            self.store.advance_cursor(CURSOR, seq).await?;
        }

        let due = self.store.payments_due_check(now, BATCH).await?;
        for p in &due {
            self.recheck(p, now).await?;
        }
        let past = self.store.payments_past_deadline(now, BATCH).await?;
        for p in &past {
            self.finish_at_deadline(p, now).await?;
        }
        metrics::gauge!("redcell_worker_pending", "worker" => "payments")
            .set((due.len() + past.len()) as f64);
        Ok(last_seq.is_some() || !past.is_empty())
    }

    async fn register(&self, p: &PendingPayment) -> Result<(), StoreError> {
        let Some(provider) = &self.provider else {
            return Ok(());
        };
        let Some(callback) = self.callback_url(&p.payment_id) else {
            return Ok(());
        };
        match provider.create(&p.payment_id, p.amount, &callback).await {
            Ok(()) => self.store.mark_registered(&p.payment_id).await,
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

    async fn recheck(&self, p: &PendingPayment, now: i64) -> Result<(), StoreError> {
        let Some(provider) = &self.provider else {
            return Ok(());
        };
        match provider.status(&p.payment_id).await {
            Ok(ProviderStatus::Succeeded) => {
                self.settle(p, PaymentOutcome::Succeeded, now, "re-check")
                    .await
            }
            Ok(ProviderStatus::Failed) => {
                self.settle(p, PaymentOutcome::Failed, now, "re-check")
                    .await
            }
            Ok(ProviderStatus::Pending) | Err(_) => {
                let delay = (self.payment_recheck.as_millis() as i64) << p.checks.clamp(0, 10);
                self.store
                    .reschedule_check(&p.payment_id, now + delay.min(MAX_RECHECK_MS))
                    .await
            }
        }
    }

    async fn finish_at_deadline(&self, p: &PendingPayment, now: i64) -> Result<(), StoreError> {
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
                return self
                    .store
                    .reschedule_check(&p.payment_id, now + 5_000)
                    .await;
            }
        };
        self.settle(p, outcome, now, "deadline").await
    }

    async fn settle(
        &self,
        p: &PendingPayment,
        outcome: PaymentOutcome,
        now: i64,
        path: &'static str,
    ) -> Result<(), StoreError> {
        self.store
            .payment_callback(&p.payment_id, outcome, now)
            .await?;
        metrics::counter!("redcell_payments_settled_total", "path" => path, "outcome" => outcome.as_str()).increment(1);
        tracing::info!(payment_id = %p.payment_id, outcome = outcome.as_str(), path, "payment settled without its callback");
        Ok(())
    }
}

//! The payment provider (the cashier) for C2C packets: a third party we do not run. The cell
//! registers each payment with it and asks it for the outcome when no callback came.
//! [`HttpProvider`] speaks its HTTP API; [`fake`] is a stand-in server for tests and local
//! runs that can succeed, fail, delay or drop callbacks. [`Guarded`] puts the cell's
//! [`breaker`] in front of a provider: every call the cell makes goes through it.

pub mod breaker;
pub mod fake;

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_core::future::BoxFuture;
use serde::Deserialize;
use serde_json::json;

/// What the provider says of a payment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProviderStatus {
    Pending,
    Succeeded,
    Failed,
}

#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    #[error("payment provider unreachable: {0}")]
    Unreachable(String),
    #[error("payment provider answered {status}: {body}")]
    Refused { status: u16, body: String },
    #[error("payment provider does not know this payment")]
    Unknown,
    /// The breaker is open: the call was not made.
    #[error("payment provider degraded: the circuit breaker is open")]
    CircuitOpen,
}

impl ProviderError {
    /// Whether this says the provider is unwell (the breaker counts it as a failed call):
    /// unreachable, timed out, 5xx, 429, or an answer we cannot read. A 4xx about the request
    /// and "no such payment" are the provider working.
    pub fn is_outage(&self) -> bool {
        match self {
            ProviderError::Unreachable(_) => true,
            ProviderError::Refused { status, .. } => {
                *status >= 500 || *status == 429 || *status < 400
            }
            ProviderError::Unknown | ProviderError::CircuitOpen => false,
        }
    }
}

/// The cashier, as the cell uses it.
pub trait PaymentProvider: Send + Sync {
    /// Registers a payment; repeating it for the same id is harmless.
    fn create<'a>(
        &'a self,
        payment_id: &'a str,
        amount: i64,
        callback_url: &'a str,
    ) -> BoxFuture<'a, Result<(), ProviderError>>;
    /// The payment's state at the provider.
    fn status<'a>(
        &'a self,
        payment_id: &'a str,
    ) -> BoxFuture<'a, Result<ProviderStatus, ProviderError>>;
}

/// A provider behind the cell's breaker: a call is made only if the breaker admits it (else
/// [`ProviderError::CircuitOpen`] at once), and its outcome and latency are recorded.
pub struct Guarded {
    pub inner: Arc<dyn PaymentProvider>,
    pub breaker: Arc<breaker::Breaker>,
}

/// The payment id the prober asks about: no payment has it, so a working provider answers
/// "unknown".
pub const PROBE_ID: &str = "redcell-breaker-probe";

impl Guarded {
    async fn guard<T>(
        &self,
        call: impl std::future::Future<Output = Result<T, ProviderError>>,
    ) -> Result<T, ProviderError> {
        let ticket = self
            .breaker
            .admit(Instant::now())
            .ok_or(ProviderError::CircuitOpen)?;
        let result = call.await;
        let ok = result.as_ref().map_or_else(|e| !e.is_outage(), |_| true);
        ticket.finish(ok, Instant::now());
        result
    }

    /// While the breaker is half-open, asks the provider about [`PROBE_ID`] every `every`, so
    /// the breaker closes by itself even when no payment is waiting to be registered (C2C
    /// sends are refused while it is not closed, so there may be none).
    pub async fn run_prober(
        self: Arc<Self>,
        every: Duration,
        cancel: tokio_util::sync::CancellationToken,
    ) {
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
            if self.breaker.snapshot(Instant::now()).state == breaker::State::HalfOpen {
                let _ = self.status(PROBE_ID).await;
            }
        }
    }
}

impl PaymentProvider for Guarded {
    fn create<'a>(
        &'a self,
        payment_id: &'a str,
        amount: i64,
        callback_url: &'a str,
    ) -> BoxFuture<'a, Result<(), ProviderError>> {
        Box::pin(self.guard(self.inner.create(payment_id, amount, callback_url)))
    }

    fn status<'a>(
        &'a self,
        payment_id: &'a str,
    ) -> BoxFuture<'a, Result<ProviderStatus, ProviderError>> {
        Box::pin(self.guard(self.inner.status(payment_id)))
    }
}

/// A provider reached over HTTP: `POST {base}/v1/payments`, `GET {base}/v1/payments/{id}`.
pub struct HttpProvider {
    base: String,
    http: reqwest::Client,
}

impl HttpProvider {
    pub fn new(base: &str, http: reqwest::Client) -> HttpProvider {
        HttpProvider {
            base: base.trim_end_matches('/').to_owned(),
            http,
        }
    }
}

#[derive(Deserialize)]
struct StatusBody {
    status: String,
}

impl PaymentProvider for HttpProvider {
    fn create<'a>(
        &'a self,
        payment_id: &'a str,
        amount: i64,
        callback_url: &'a str,
    ) -> BoxFuture<'a, Result<(), ProviderError>> {
        Box::pin(async move {
            let res = self
                .http
                .post(format!("{}/v1/payments", self.base))
                .json(&json!({"payment_id": payment_id, "amount": amount, "callback_url": callback_url}))
                .timeout(Duration::from_secs(5))
                .send()
                .await
                .map_err(|e| ProviderError::Unreachable(e.to_string()))?;
            if res.status().is_success() {
                Ok(())
            } else {
                let status = res.status().as_u16();
                Err(ProviderError::Refused {
                    status,
                    body: res.text().await.unwrap_or_default(),
                })
            }
        })
    }

    fn status<'a>(
        &'a self,
        payment_id: &'a str,
    ) -> BoxFuture<'a, Result<ProviderStatus, ProviderError>> {
        Box::pin(async move {
            let res = self
                .http
                .get(format!("{}/v1/payments/{payment_id}", self.base))
                .timeout(Duration::from_secs(5))
                .send()
                .await
                .map_err(|e| ProviderError::Unreachable(e.to_string()))?;
            if res.status() == reqwest::StatusCode::NOT_FOUND {
                return Err(ProviderError::Unknown);
            }
            if !res.status().is_success() {
                let status = res.status().as_u16();
                return Err(ProviderError::Refused {
                    status,
                    body: res.text().await.unwrap_or_default(),
                });
            }
            let body: StatusBody = res
                .json()
                .await
                .map_err(|e| ProviderError::Unreachable(e.to_string()))?;
            match body.status.as_str() {
                "pending" => Ok(ProviderStatus::Pending),
                "succeeded" => Ok(ProviderStatus::Succeeded),
                "failed" => Ok(ProviderStatus::Failed),
                other => Err(ProviderError::Refused {
                    status: 200,
                    body: format!("unknown status {other:?}"),
                }),
            }
        })
    }
}

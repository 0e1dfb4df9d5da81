//! A fake cashier: a real HTTP server standing in for the payment provider in tests and
//! local runs. Each payment is decided after a delay (succeeded, failed, or never), and its
//! callback to the cell can be dropped with a given probability, so the cell's re-check,
//! sweep and deadline paths can be exercised.
//!
//! It can also be made unwell and well again at run time (`PUT /control`
//! `{"failing": true, "latency_ms": 0}`, unauthenticated: a test tool): while `failing`, its
//! payment routes answer 503; `latency_ms` delays every payment answer. This is how the cell's
//! breaker is tested (`cell/tests/degrade.rs`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

/// How the fake decides every payment.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Outcome {
    Succeed,
    Fail,
    /// Stays pending forever: only the cell's deadline ends it.
    Never,
}

#[derive(Clone, Debug)]
pub struct FakeCashier {
    pub outcome: Outcome,
    /// Time from registration to decision (and callback).
    pub delay: Duration,
    /// Probability in 0..=1 that a decision's callback is never sent.
    pub drop_callbacks: f64,
    /// Signs the `svc:payments` tokens of callbacks.
    pub secret: Vec<u8>,
}

#[derive(Clone)]
struct Shared {
    cfg: Arc<FakeCashier>,
    /// payment id → status (`pending`, `succeeded`, `failed`).
    payments: Arc<Mutex<HashMap<String, &'static str>>>,
    http: reqwest::Client,
    faults: Arc<Faults>,
}

/// What `PUT /control` sets.
#[derive(Default)]
struct Faults {
    failing: AtomicBool,
    latency_ms: AtomicU64,
}

#[derive(Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
struct Control {
    failing: bool,
    #[serde(default)]
    latency_ms: u64,
}

#[derive(Deserialize)]
struct Create {
    payment_id: String,
    amount: i64,
    callback_url: String,
}

impl FakeCashier {
    pub fn router(self) -> Router {
        let shared = Shared {
            cfg: Arc::new(self),
            payments: Arc::default(),
            http: reqwest::Client::new(),
            faults: Arc::default(),
        };
        Router::new()
            .route("/v1/payments", post(create))
            .route("/v1/payments/{id}", get(status))
            .route("/control", get(get_control).put(put_control))
            .route("/healthz", get(|| async { "ok" }))
            .with_state(shared)
    }
}

async fn put_control(State(s): State<Shared>, Json(c): Json<Control>) -> Response {
    s.faults.failing.store(c.failing, Ordering::Relaxed);
    s.faults.latency_ms.store(c.latency_ms, Ordering::Relaxed);
    tracing::warn!(
        failing = c.failing,
        latency_ms = c.latency_ms,
        "fake cashier: faults set"
    );
    Json(c).into_response()
}

async fn get_control(State(s): State<Shared>) -> Response {
    Json(Control {
        failing: s.faults.failing.load(Ordering::Relaxed),
        latency_ms: s.faults.latency_ms.load(Ordering::Relaxed),
    })
    .into_response()
}

/// The faults `PUT /control` set, before a payment route answers: the delay, then 503 if
/// failing.
async fn unwell(s: &Shared) -> Option<Response> {
    let latency = s.faults.latency_ms.load(Ordering::Relaxed);
    if latency > 0 {
        tokio::time::sleep(Duration::from_millis(latency)).await;
    }
    s.faults
        .failing
        .load(Ordering::Relaxed)
        .then(|| (StatusCode::SERVICE_UNAVAILABLE, "cashier unavailable").into_response())
}

async fn create(State(s): State<Shared>, Json(c): Json<Create>) -> Response {
    if let Some(refusal) = unwell(&s).await {
        return refusal;
    }
    if c.amount <= 0 || c.payment_id.is_empty() || !c.callback_url.starts_with("http") {
        return (StatusCode::BAD_REQUEST, "bad payment").into_response();
    }
    let fresh = s
        .payments
        .lock()
        .expect("payments lock")
        .insert(c.payment_id.clone(), "pending")
        .is_none();
    if fresh {
        tokio::spawn(decide(s.clone(), c.payment_id.clone(), c.callback_url));
    }
    (
        StatusCode::CREATED,
        Json(json!({"payment_id": c.payment_id, "status": "pending"})),
    )
        .into_response()
}

async fn decide(s: Shared, payment_id: String, callback_url: String) {
    tokio::time::sleep(s.cfg.delay).await;
    let status = match s.cfg.outcome {
        Outcome::Succeed => "succeeded",
        Outcome::Fail => "failed",
        Outcome::Never => return,
    };
    s.payments
        .lock()
        .expect("payments lock")
        .insert(payment_id.clone(), status);
    if rand::random::<f64>() < s.cfg.drop_callbacks {
        tracing::info!(payment_id, status, "fake cashier: dropping the callback");
        return;
    }
    let token = topology::auth::mint(&s.cfg.secret, "svc:payments", Some("payment:callback"), 300);
    let sent = s
        .http
        .post(&callback_url)
        .bearer_auth(token)
        .json(&json!({"status": status}))
        .send()
        .await;
    if let Err(e) = sent {
        tracing::warn!(payment_id, error = %e, "fake cashier: callback failed");
    }
}

async fn status(State(s): State<Shared>, Path(id): Path<String>) -> Response {
    if let Some(refusal) = unwell(&s).await {
        return refusal;
    }
    match s.payments.lock().expect("payments lock").get(&id) {
        Some(status) => Json(json!({"payment_id": id, "status": status})).into_response(),
        None => (StatusCode::NOT_FOUND, "unknown payment").into_response(),
    }
}

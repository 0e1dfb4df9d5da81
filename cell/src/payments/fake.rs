//! A fake cashier: a real HTTP server standing in for the payment provider in tests and
//! local runs. Each payment is decided after a delay (succeeded, failed, or never), and its
//! callback to the cell can be dropped with a given probability, so the cell's re-check,
//! sweep and deadline paths can be exercised.

use std::collections::HashMap;
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
        };
        Router::new()
            .route("/v1/payments", post(create))
            .route("/v1/payments/{id}", get(status))
            .route("/healthz", get(|| async { "ok" }))
            .with_state(shared)
    }
}

async fn create(State(s): State<Shared>, Json(c): Json<Create>) -> Response {
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
    match s.payments.lock().expect("payments lock").get(&id) {
        Some(status) => Json(json!({"payment_id": id, "status": status})).into_response(),
        None => (StatusCode::NOT_FOUND, "unknown payment").into_response(),
    }
}

//! A typed client of the public API (API.md) as its callers use it through the router: one
//! method per route, the request built from typed arguments, every answer a [`Reply`] (the
//! status or the lack of one, the problem `code`, `Retry-After`, the JSON body) that parses
//! into the response types below on demand. It never retries by itself: callers decide
//! (the load engine retries with the same idempotency key, as a real client would).

use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::time::Instant;

/// What one request got back: an HTTP status, or no answer at all.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Answer {
    Status(u16),
    /// No answer within the client's timeout.
    Timeout,
    /// Connection refused or reset, or the body broke off.
    Transport,
}

impl Answer {
    pub fn is_success(&self) -> bool {
        matches!(self, Answer::Status(s) if (200..300).contains(s))
    }

    /// No answer, or a 5xx: the request may or may not have taken effect (a timed-out write
    /// can still commit), so its outcome is unknown, never "failed".
    pub fn is_unknown(&self) -> bool {
        match self {
            Answer::Status(s) => *s >= 500,
            Answer::Timeout | Answer::Transport => true,
        }
    }
}

impl std::fmt::Display for Answer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Answer::Status(s) => write!(f, "{s}"),
            Answer::Timeout => f.write_str("timeout"),
            Answer::Transport => f.write_str("transport"),
        }
    }
}

/// One answer, with when the request started and ended.
#[derive(Clone, Debug)]
pub struct Reply {
    pub answer: Answer,
    /// The problem+json `code` of an error answer.
    pub code: Option<String>,
    /// `Retry-After` in seconds, when the answer carried one.
    pub retry_after: Option<u64>,
    /// The JSON body (`None`: no answer, or not JSON).
    pub body: Option<Value>,
    pub started: Instant,
    pub finished: Instant,
}

impl Reply {
    /// The body as `T`, when the answer is a 2xx whose body has that shape.
    pub fn parse<T: DeserializeOwned>(&self) -> Option<T> {
        if !self.answer.is_success() {
            return None;
        }
        serde_json::from_value(self.body.clone()?).ok()
    }

    /// The string at `pointer` in the body (e.g. `/payment/payment_id`).
    pub fn str_at(&self, pointer: &str) -> Option<String> {
        self.body
            .as_ref()?
            .pointer(pointer)?
            .as_str()
            .map(str::to_owned)
    }
}

/// A subsidy (`POST /v1/subsidies`, `GET /v1/users/{uid}/subsidies`).
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct Subsidy {
    pub subsidy_id: String,
    pub grant_id: String,
    pub uid: String,
    pub amount: i64,
    pub status: String,
}

#[derive(Clone, Debug, Deserialize)]
pub struct Subsidies {
    pub subsidies: Vec<Subsidy>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct Payment {
    pub payment_id: String,
    pub amount: i64,
    pub status: String,
}

/// A packet (`POST /v1/packets`, `GET /v1/packets/{id}`).
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct Packet {
    pub packet_id: String,
    pub sender: String,
    pub kind: String,
    pub total: i64,
    pub count: i64,
    pub remaining_amount: i64,
    pub remaining_count: i64,
    pub status: String,
    #[serde(default)]
    pub payment: Option<Payment>,
}

/// A claim's answer (`POST /v1/packets/{id}/claims`).
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct Claim {
    pub claim_id: String,
    pub packet_id: String,
    pub uid: String,
    pub amount: i64,
}

/// One row of `GET /v1/packets/{id}/claims`.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct ClaimRow {
    pub uid: String,
    pub amount: i64,
}

#[derive(Clone, Debug, Deserialize)]
pub struct Claims {
    pub claims: Vec<ClaimRow>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct Wallet {
    pub uid: String,
    pub balance: i64,
}

/// `GET /v1/admin/reconciliation` at the router: every cell.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct Reconciliation {
    pub ok: bool,
    #[serde(default)]
    pub findings: Vec<Value>,
    pub totals: Totals,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct Totals {
    pub funded: i64,
    pub wallets: i64,
    pub escrow: i64,
    pub in_flight: i64,
}

/// The router's base URL and an HTTP client with a per-request timeout.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    timeout: Duration,
}

impl Client {
    /// A client of `base` (e.g. `http://127.0.0.1:7000`) keeping up to `pool` idle
    /// connections, each request bounded by `timeout`.
    pub fn new(base: &str, timeout: Duration, pool: usize) -> Result<Client, reqwest::Error> {
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(pool)
            .tcp_nodelay(true)
            .timeout(timeout)
            .build()?;
        Ok(Client {
            http,
            base: base.trim_end_matches('/').to_owned(),
            timeout,
        })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// `POST /v1/subsidies` as the activity system.
    pub async fn grant(
        &self,
        token: &str,
        grant_id: &str,
        uid: &str,
        amount: i64,
        expires_at: &str,
    ) -> Reply {
        let body =
            json!({"grant_id": grant_id, "uid": uid, "amount": amount, "expires_at": expires_at});
        self.send(self.http.post(self.url("/v1/subsidies")).json(&body), token)
            .await
    }

    /// `POST /v1/packets`, C2C.
    pub async fn send_c2c(
        &self,
        token: &str,
        key: &str,
        total: i64,
        count: i64,
        greeting: &str,
    ) -> Reply {
        let body = json!({"kind": "c2c", "total": total, "count": count, "greeting": greeting});
        let req = self.http.post(self.url("/v1/packets"));
        self.send(req.header("idempotency-key", key).json(&body), token)
            .await
    }

    /// `POST /v1/packets`, B2C from a subsidy.
    pub async fn send_b2c(&self, token: &str, key: &str, subsidy_id: &str, count: i64) -> Reply {
        let body = json!({"kind": "b2c", "subsidy_id": subsidy_id, "count": count});
        let req = self.http.post(self.url("/v1/packets"));
        self.send(req.header("idempotency-key", key).json(&body), token)
            .await
    }

    /// `POST /v1/payments/{id}/callback` as the payment provider.
    pub async fn callback(&self, token: &str, payment_id: &str, succeeded: bool) -> Reply {
        let status = if succeeded { "succeeded" } else { "failed" };
        let url = self.url(&format!("/v1/payments/{payment_id}/callback"));
        self.send(self.http.post(url).json(&json!({"status": status})), token)
            .await
    }

    /// `POST /v1/packets/{id}/claims` (no body: the claimer is the token's subject).
    pub async fn claim(&self, token: &str, packet_id: &str) -> Reply {
        let url = self.url(&format!("/v1/packets/{packet_id}/claims"));
        self.send(self.http.post(url), token).await
    }

    pub async fn packet(&self, token: &str, packet_id: &str) -> Reply {
        self.get(&format!("/v1/packets/{packet_id}"), token).await
    }

    pub async fn claims(&self, token: &str, packet_id: &str) -> Reply {
        self.get(&format!("/v1/packets/{packet_id}/claims"), token)
            .await
    }

    pub async fn wallet(&self, token: &str, uid: &str) -> Reply {
        self.get(&format!("/v1/users/{uid}/wallet"), token).await
    }

    pub async fn subsidies(&self, token: &str, uid: &str) -> Reply {
        self.get(&format!("/v1/users/{uid}/subsidies"), token).await
    }

    /// `GET /v1/admin/reconciliation` (admin).
    pub async fn reconciliation(&self, token: &str) -> Reply {
        self.get("/v1/admin/reconciliation", token).await
    }

    /// A GET of any path of the API.
    pub async fn get(&self, path: &str, token: &str) -> Reply {
        self.send(self.http.get(self.url(path)), token).await
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Sends one request; never waits longer than the timeout (plus a second).
    async fn send(&self, req: reqwest::RequestBuilder, token: &str) -> Reply {
        let started = Instant::now();
        let sent = req.bearer_auth(token).send();
        // reqwest's timeout covers the body too; this outer bound is belt and braces so that a
        // broken client never turns into a hang.
        let outcome = tokio::time::timeout(self.timeout + Duration::from_secs(1), async {
            let res = sent.await?;
            let status = res.status().as_u16();
            let retry_after = res
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse().ok());
            let body = res.bytes().await?;
            Ok::<_, reqwest::Error>((status, retry_after, body))
        })
        .await;
        let (answer, retry_after, body) = match outcome {
            Err(_) => (Answer::Timeout, None, None),
            Ok(Err(e)) if e.is_timeout() => (Answer::Timeout, None, None),
            Ok(Err(_)) => (Answer::Transport, None, None),
            Ok(Ok((status, retry_after, body))) => (
                Answer::Status(status),
                retry_after,
                serde_json::from_slice::<Value>(&body).ok(),
            ),
        };
        let code = match (&answer, &body) {
            (Answer::Status(s), Some(v)) if *s >= 400 => v["code"].as_str().map(str::to_owned),
            _ => None,
        };
        Reply {
            answer,
            code,
            retry_after,
            body,
            started,
            finished: Instant::now(),
        }
    }
}

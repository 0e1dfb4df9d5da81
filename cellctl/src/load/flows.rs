//! The operations `cellctl load` sends through the router, as flows of API.md requests, and
//! how each answer is judged.
//!
//! | op | requests |
//! |---|---|
//! | grant | `POST /v1/subsidies` (svc:activity), then the user's B2C `POST /v1/packets` from it |
//! | send | C2C `POST /v1/packets`, then `POST /v1/payments/{id}/callback` (svc:payments) |
//! | claim | `POST /v1/packets/{id}/claims` by a random user on a packet from the pool |
//! | read | one of `GET /v1/packets/{id}`, `GET /v1/users/{uid}/wallet`, `GET /v1/packets/{id}/claims` |
//!
//! A flow stops at its first request that is not a success. Packets that grants and sends
//! activate enter the [`Pool`] that claims and reads draw from.

use std::collections::VecDeque;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use serde::Serialize;
use serde_json::{json, Value};
use tokio::time::Instant;

use super::parse::OpKind;

/// One HTTP request of a flow; the rows of the per-request tables.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    Grant,
    SendB2c,
    SendC2c,
    Callback,
    Claim,
    ReadPacket,
    ReadWallet,
    ReadClaims,
}

impl Step {
    pub fn label(self) -> &'static str {
        match self {
            Step::Grant => "POST /v1/subsidies",
            Step::SendB2c => "POST /v1/packets (b2c)",
            Step::SendC2c => "POST /v1/packets (c2c)",
            Step::Callback => "POST /v1/payments/{id}/callback",
            Step::Claim => "POST /v1/packets/{id}/claims",
            Step::ReadPacket => "GET /v1/packets/{id}",
            Step::ReadWallet => "GET /v1/users/{uid}/wallet",
            Step::ReadClaims => "GET /v1/packets/{id}/claims",
        }
    }
}

/// How an answer counts in the report.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Class {
    /// What the request was for happened.
    Ok,
    /// A domain outcome API.md promises under contention, not a fault: a repeat claim (200),
    /// a packet already exhausted or expired (410), too many claimers in flight (429
    /// `claim_busy`).
    Expected,
    /// Anything else: transport errors, timeouts, every 5xx (503 included), `429
    /// rate_limited` (the deployment refused the offered load), any other 4xx, and a success
    /// whose body lacks what the flow needs next.
    Error,
}

/// What one request got back: an HTTP status, or no answer at all.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Answer {
    Status(u16),
    /// No answer within `--timeout`.
    Timeout,
    /// Connection refused or reset, or the body broke off.
    Transport,
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

/// One request's result: when it started and ended, its answer, the problem+json `code`
/// (or a word of ours for a bad body), and its class.
#[derive(Clone, Debug)]
pub struct StepResult {
    pub step: Step,
    pub started: Instant,
    pub finished: Instant,
    pub answer: Answer,
    pub code: Option<String>,
    pub class: Class,
}

/// Judges an answer. Pure; see [`Class`] for the policy.
pub fn classify(step: Step, answer: &Answer, code: Option<&str>) -> Class {
    let status = match answer {
        Answer::Status(s) => *s,
        Answer::Timeout | Answer::Transport => return Class::Error,
    };
    match (step, status, code) {
        (Step::Claim, 201, _) => Class::Ok,
        (Step::Claim, 200, _) => Class::Expected,
        (Step::Claim, 410, Some("packet_exhausted" | "packet_expired")) => Class::Expected,
        (Step::Claim, 429, Some("claim_busy")) => Class::Expected,
        (Step::Grant | Step::SendB2c | Step::SendC2c, 201, _) => Class::Ok,
        (Step::Callback | Step::ReadPacket | Step::ReadWallet | Step::ReadClaims, 200, _) => {
            Class::Ok
        }
        _ => Class::Error,
    }
}

/// Per-run constants the flows need: the router, the credentials, the population.
pub struct Api {
    http: reqwest::Client,
    base: String,
    secret: Vec<u8>,
    timeout: Duration,
    /// Lifetime of minted tokens: the whole run plus margin, so none expires mid-run.
    token_ttl_s: u64,
    /// Distinguishes this run's grant ids and idempotency keys from every other run's.
    run_id: String,
    /// One token per user, minted on first use (`OnceLock`: lock-free once set, and two
    /// tasks racing to mint the same token only waste a signature).
    user_tokens: Vec<OnceLock<String>>,
    activity_token: String,
    payments_token: String,
}

impl Api {
    pub fn new(
        base: &str,
        secret: &[u8],
        users: usize,
        timeout: Duration,
        token_ttl_s: u64,
        max_in_flight: usize,
    ) -> anyhow::Result<Api> {
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(max_in_flight)
            .tcp_nodelay(true)
            .timeout(timeout)
            .build()?;
        let run_id = format!(
            "{:x}",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis())
                .unwrap_or(0)
                ^ u128::from(rand::random::<u32>())
        );
        Ok(Api {
            http,
            base: base.trim_end_matches('/').to_owned(),
            secret: secret.to_vec(),
            timeout,
            token_ttl_s,
            run_id,
            user_tokens: (0..users).map(|_| OnceLock::new()).collect(),
            activity_token: topology::auth::mint(
                secret,
                "svc:activity",
                Some("subsidy:grant"),
                token_ttl_s,
            ),
            payments_token: topology::auth::mint(
                secret,
                "svc:payments",
                Some("payment:callback"),
                token_ttl_s,
            ),
        })
    }

    pub fn users(&self) -> usize {
        self.user_tokens.len()
    }

    /// The uid of user `i` of the population. Uids hash to slots, so the population spreads
    /// over every cell and most claims cross cells.
    pub fn uid(i: usize) -> String {
        format!("load-u{i}")
    }

    fn user_token(&self, i: usize) -> &str {
        self.user_tokens[i].get_or_init(|| {
            topology::auth::mint(&self.secret, &Api::uid(i), None, self.token_ttl_s)
        })
    }

    /// Sends one request and judges the answer. Never waits longer than the timeout.
    async fn call(
        &self,
        step: Step,
        req: reqwest::RequestBuilder,
        token: &str,
    ) -> (StepResult, Option<Value>) {
        let started = Instant::now();
        let sent = req.bearer_auth(token).send();
        // reqwest's timeout covers the body too; this outer bound is belt and braces so that a
        // broken client never turns into a hang.
        let outcome = tokio::time::timeout(self.timeout + Duration::from_secs(1), async {
            let res = sent.await?;
            let status = res.status().as_u16();
            let body = res.bytes().await?;
            Ok::<_, reqwest::Error>((status, body))
        })
        .await;
        let (answer, body) = match outcome {
            Err(_) => (Answer::Timeout, None),
            Ok(Err(e)) if e.is_timeout() => (Answer::Timeout, None),
            Ok(Err(_)) => (Answer::Transport, None),
            Ok(Ok((status, body))) => (
                Answer::Status(status),
                serde_json::from_slice::<Value>(&body).ok(),
            ),
        };
        let code = match (&answer, &body) {
            (Answer::Status(s), Some(v)) if *s >= 400 => v["code"].as_str().map(str::to_owned),
            _ => None,
        };
        let class = classify(step, &answer, code.as_deref());
        let result = StepResult {
            step,
            started,
            finished: Instant::now(),
            answer,
            code,
            class,
        };
        (result, body)
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}

/// Marks a success whose body lacks a field the flow needs as an error.
fn require(result: &mut StepResult, body: &Option<Value>, pointer: &str) -> Option<String> {
    if result.class != Class::Ok {
        return None;
    }
    let found = body
        .as_ref()
        .and_then(|b| b.pointer(pointer))
        .and_then(Value::as_str)
        .map(str::to_owned);
    if found.is_none() {
        result.class = Class::Error;
        result.code = Some("bad_body".into());
    }
    found
}

/// Packets that grants and sends activated, for claims and reads to target: the most recent
/// `capacity`, oldest dropped first.
pub struct Pool {
    /// Guarded by a mutex: tasks push, pick and remove concurrently, each for a moment.
    packets: Mutex<VecDeque<String>>,
    capacity: usize,
}

impl Pool {
    pub fn new(capacity: usize) -> Pool {
        Pool {
            packets: Mutex::new(VecDeque::with_capacity(capacity)),
            capacity: capacity.max(1),
        }
    }

    pub fn push(&self, packet_id: String) {
        let mut packets = self.packets.lock().expect("pool lock");
        if packets.len() == self.capacity {
            packets.pop_front();
        }
        packets.push_back(packet_id);
    }

    /// The packet at `r` modulo the pool's size, if any.
    pub fn pick(&self, r: u64) -> Option<String> {
        let packets = self.packets.lock().expect("pool lock");
        if packets.is_empty() {
            return None;
        }
        packets.get((r % packets.len() as u64) as usize).cloned()
    }

    /// Forgets an exhausted or expired packet, but never the last one: claims then keep
    /// learning 410, which shows in the report, rather than having nothing to do.
    pub fn retire(&self, packet_id: &str) {
        let mut packets = self.packets.lock().expect("pool lock");
        if packets.len() > 1 {
            if let Some(at) = packets.iter().position(|p| p == packet_id) {
                packets.remove(at);
            }
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.packets.lock().expect("pool lock").len()
    }
}

/// Everything random about one operation, drawn by the scheduler from the seeded generator
/// so that a seed replays the same sequence of choices.
#[derive(Clone, Debug)]
pub struct Plan {
    pub kind: OpKind,
    /// The op's number in the run; makes grant ids and idempotency keys unique.
    pub n: u64,
    /// The acting user (sender, granted user, claimer, reader): an index into the population.
    pub user: usize,
    /// Which pooled packet to target.
    pub pick: u64,
    /// Shares of a new packet, 1..=10.
    pub count: u32,
    /// Cents of a new packet or grant, `count..=2000`.
    pub amount: u32,
    /// For reads: 0 the packet, 1 the wallet, 2 the claims.
    pub read: u8,
}

impl Plan {
    pub fn draw(kind: OpKind, n: u64, users: usize, rng: &mut impl rand::Rng) -> Plan {
        let count = rng.gen_range(1..=10u32);
        Plan {
            kind,
            n,
            user: rng.gen_range(0..users),
            pick: rng.gen(),
            count,
            amount: rng.gen_range(count.max(100)..=2000),
            read: rng.gen_range(0..3),
        }
    }
}

/// Runs one operation; returns its requests in order (empty only for a claim or packet read
/// with an empty pool, which cannot happen after seeding).
pub async fn run_op(api: &Api, pool: &Pool, plan: &Plan) -> Vec<StepResult> {
    match plan.kind {
        OpKind::Grant => grant(api, pool, plan).await,
        OpKind::Send => send(api, pool, plan, plan.count, plan.amount).await,
        OpKind::Claim => claim(api, pool, plan).await,
        OpKind::Read => read(api, pool, plan).await,
    }
}

async fn grant(api: &Api, pool: &Pool, plan: &Plan) -> Vec<StepResult> {
    let uid = Api::uid(plan.user);
    let expires_at = rfc3339_in(Duration::from_secs(86_400));
    let req = api.http.post(api.url("/v1/subsidies")).json(&json!({
        "grant_id": format!("load-{}-{}", api.run_id, plan.n),
        "uid": uid,
        "amount": plan.amount,
        "expires_at": expires_at,
    }));
    let (mut granted, body) = api.call(Step::Grant, req, &api.activity_token).await;
    let Some(subsidy_id) = require(&mut granted, &body, "/subsidy_id") else {
        return vec![granted];
    };
    let req = api
        .http
        .post(api.url("/v1/packets"))
        .header("idempotency-key", format!("load-{}-{}", api.run_id, plan.n))
        .json(&json!({"kind": "b2c", "subsidy_id": subsidy_id, "count": plan.count}));
    let (mut sent, body) = api
        .call(Step::SendB2c, req, api.user_token(plan.user))
        .await;
    if let Some(packet_id) = require(&mut sent, &body, "/packet_id") {
        pool.push(packet_id);
    }
    vec![granted, sent]
}

/// A paid C2C packet of `count` shares and `total` cents, added to the pool once the
/// callback activated it. Also seeds the pool before the clock starts.
pub async fn send(api: &Api, pool: &Pool, plan: &Plan, count: u32, total: u32) -> Vec<StepResult> {
    let req = api
        .http
        .post(api.url("/v1/packets"))
        .header("idempotency-key", format!("load-{}-{}", api.run_id, plan.n))
        .json(&json!({"kind": "c2c", "total": total, "count": count, "greeting": "load"}));
    let (mut sent, body) = api
        .call(Step::SendC2c, req, api.user_token(plan.user))
        .await;
    let (Some(packet_id), Some(payment_id)) = (
        require(&mut sent, &body, "/packet_id"),
        require(&mut sent, &body, "/payment/payment_id"),
    ) else {
        return vec![sent];
    };
    let req = api
        .http
        .post(api.url(&format!("/v1/payments/{payment_id}/callback")))
        .json(&json!({"status": "succeeded"}));
    let (paid, _) = api.call(Step::Callback, req, &api.payments_token).await;
    if paid.class == Class::Ok {
        pool.push(packet_id);
    }
    vec![sent, paid]
}

async fn claim(api: &Api, pool: &Pool, plan: &Plan) -> Vec<StepResult> {
    let Some(packet_id) = pool.pick(plan.pick) else {
        return Vec::new();
    };
    let req = api
        .http
        .post(api.url(&format!("/v1/packets/{packet_id}/claims")));
    let (claimed, _) = api.call(Step::Claim, req, api.user_token(plan.user)).await;
    if claimed.answer == Answer::Status(410) {
        pool.retire(&packet_id);
    }
    vec![claimed]
}

async fn read(api: &Api, pool: &Pool, plan: &Plan) -> Vec<StepResult> {
    let (step, path) = match plan.read {
        1 => (
            Step::ReadWallet,
            format!("/v1/users/{}/wallet", Api::uid(plan.user)),
        ),
        r => {
            let Some(packet_id) = pool.pick(plan.pick) else {
                return Vec::new();
            };
            if r == 0 {
                (Step::ReadPacket, format!("/v1/packets/{packet_id}"))
            } else {
                (Step::ReadClaims, format!("/v1/packets/{packet_id}/claims"))
            }
        }
    };
    let req = api.http.get(api.url(&path));
    let (result, _) = api.call(step, req, api.user_token(plan.user)).await;
    vec![result]
}

/// RFC 3339 UTC, `after` from now.
fn rfc3339_in(after: Duration) -> String {
    let t = time::OffsetDateTime::now_utc() + after;
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| "2099-01-01T00:00:00Z".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contention_outcomes_are_expected_and_the_rest_errors() {
        let s = Answer::Status;
        assert_eq!(classify(Step::Claim, &s(201), None), Class::Ok);
        assert_eq!(classify(Step::Claim, &s(200), None), Class::Expected);
        for code in ["packet_exhausted", "packet_expired"] {
            assert_eq!(classify(Step::Claim, &s(410), Some(code)), Class::Expected);
        }
        assert_eq!(
            classify(Step::Claim, &s(429), Some("claim_busy")),
            Class::Expected
        );
        assert_eq!(
            classify(Step::Claim, &s(429), Some("rate_limited")),
            Class::Error
        );
        assert_eq!(
            classify(Step::Claim, &s(409), Some("packet_not_active")),
            Class::Error
        );
        assert_eq!(
            classify(Step::ReadPacket, &s(503), Some("degraded")),
            Class::Error
        );
        assert_eq!(
            classify(Step::SendC2c, &s(401), Some("unauthorized")),
            Class::Error
        );
        assert_eq!(classify(Step::Grant, &Answer::Timeout, None), Class::Error);
        assert_eq!(classify(Step::Callback, &s(200), None), Class::Ok);
        assert_eq!(classify(Step::Callback, &s(201), None), Class::Error);
        assert_eq!(classify(Step::SendB2c, &s(200), None), Class::Error);
    }

    #[test]
    fn the_pool_keeps_the_newest_and_never_retires_its_last_packet() {
        let pool = Pool::new(3);
        assert_eq!(pool.pick(7), None);
        for p in ["a", "b", "c", "d"] {
            pool.push(p.into());
        }
        assert_eq!(pool.len(), 3);
        assert_eq!(pool.pick(0).as_deref(), Some("b"));
        pool.retire("b");
        pool.retire("c");
        pool.retire("d");
        assert_eq!(pool.len(), 1);
        assert_eq!(pool.pick(5).as_deref(), Some("d"));
    }

    #[test]
    fn plans_respect_the_packet_limits() {
        let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(7);
        for n in 0..10_000 {
            let p = Plan::draw(OpKind::Send, n, 50, &mut rng);
            assert!((1..=10).contains(&p.count));
            assert!(p.amount >= p.count && p.amount <= 2000);
            assert!(p.user < 50 && p.read < 3);
        }
    }
}

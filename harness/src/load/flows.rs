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
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;
use topology::auth::Credential;
use topology::keys::KeyRing;

use super::parse::OpKind;
use crate::api::{Answer, Claim as ApiClaim, Client, Reply};
use crate::ledger::{Acked, Ledger};

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
    /// Whether the request changes state (and so goes into the ledger when acknowledged).
    pub fn is_write(self) -> bool {
        matches!(
            self,
            Step::Grant | Step::SendB2c | Step::SendC2c | Step::Callback | Step::Claim
        )
    }

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

/// One request's result: when it started and ended, its answer, the problem+json `code`
/// (or a word of ours for a bad body), its class, which attempt of the request it was, and
/// the routing keys it touched (a uid, a minted id, a grant id: the router's slots).
#[derive(Clone, Debug)]
pub struct StepResult {
    pub step: Step,
    pub started: Instant,
    pub finished: Instant,
    pub answer: Answer,
    pub code: Option<String>,
    pub class: Class,
    /// 0 for the first try; retries (same idempotency key) count up.
    pub attempt: u32,
    pub keys: Vec<String>,
}

/// Judges an answer. Pure; see [`Class`] for the policy. A repeat claim's `200` is an
/// expected outcome on the first try (the user had claimed before) and a success on a retry
/// (the earlier try took effect unseen).
pub fn classify(step: Step, answer: &Answer, code: Option<&str>, attempt: u32) -> Class {
    let status = match answer {
        Answer::Status(s) => *s,
        Answer::Timeout | Answer::Transport => return Class::Error,
    };
    match (step, status, code) {
        (Step::Claim, 201, _) => Class::Ok,
        (Step::Claim, 200, _) if attempt > 0 => Class::Ok,
        (Step::Claim, 200, _) => Class::Expected,
        (Step::Claim, 410, Some("packet_exhausted" | "packet_expired")) => Class::Expected,
        (Step::Claim, 429, Some("claim_busy")) => Class::Expected,
        (Step::Grant, 200, _) if attempt > 0 => Class::Ok,
        (Step::Grant | Step::SendB2c | Step::SendC2c, 201, _) => Class::Ok,
        (Step::Callback | Step::ReadPacket | Step::ReadWallet | Step::ReadClaims, 200, _) => {
            Class::Ok
        }
        _ => Class::Error,
    }
}

/// How a client retries a request that got no answer or a 5xx: the same request again,
/// with the same idempotency key, as a real client would.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Retry {
    /// Tries in all (1: never retry).
    pub attempts: u32,
    /// Wait before a retry when the answer named no `Retry-After`, in milliseconds
    /// (doubled each time).
    pub backoff_ms: u64,
}

impl Retry {
    pub const NEVER: Retry = Retry {
        attempts: 1,
        backoff_ms: 0,
    };
}

/// Per-run constants the flows need: the router, the credentials, the population, the
/// retry policy and the ledger.
pub struct Api {
    client: Client,
    /// The keys tokens are minted with: the target's secret, or a ring that follows a key
    /// rotation ([`Api::with_keys`]); every credential below mints again when it changes.
    keys: KeyRing,
    /// Lifetime of minted tokens: the whole run plus margin, so none expires mid-run.
    token_ttl_s: u64,
    /// Distinguishes this run's grant ids and idempotency keys from every other run's.
    run_id: String,
    /// Uids are `{prefix}{i}`.
    user_prefix: String,
    /// One credential per user, made on first use (`OnceLock`: lock-free once set, and two
    /// tasks racing to make the same one only waste a signature).
    user_tokens: Vec<OnceLock<Credential>>,
    activity_token: Credential,
    payments_token: Credential,
    retry: Retry,
    ledger: Option<Arc<Ledger>>,
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
        let run_id = format!(
            "{:x}",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis())
                .unwrap_or(0)
                ^ u128::from(rand::random::<u32>())
        );
        let keys = KeyRing::single(secret);
        Ok(Api {
            client: Client::new(base, timeout, max_in_flight)?,
            token_ttl_s,
            run_id,
            user_prefix: "load-u".into(),
            user_tokens: (0..users).map(|_| OnceLock::new()).collect(),
            activity_token: Self::service(&keys, "svc:activity", "subsidy:grant", token_ttl_s),
            payments_token: Self::service(&keys, "svc:payments", "payment:callback", token_ttl_s),
            keys,
            retry: Retry::NEVER,
            ledger: None,
        })
    }

    fn service(keys: &KeyRing, sub: &str, scope: &str, ttl_s: u64) -> Credential {
        Credential::minted_with(keys, sub, Some(scope), ttl_s)
    }

    /// Mints with `keys`' current key, as it changes (a load across a key rotation).
    pub fn with_keys(mut self, keys: KeyRing) -> Api {
        let ttl_s = self.token_ttl_s;
        self.activity_token = Self::service(&keys, "svc:activity", "subsidy:grant", ttl_s);
        self.payments_token = Self::service(&keys, "svc:payments", "payment:callback", ttl_s);
        self.user_tokens = (0..self.user_tokens.len())
            .map(|_| OnceLock::new())
            .collect();
        self.keys = keys;
        self
    }

    /// Uids `{prefix}0 …` instead of `load-u0 …`.
    pub fn with_user_prefix(mut self, prefix: &str) -> Api {
        self.user_prefix = prefix.to_owned();
        self
    }

    pub fn with_retry(mut self, retry: Retry) -> Api {
        self.retry = retry;
        self
    }

    /// Records every acknowledged write in `ledger`.
    pub fn with_ledger(mut self, ledger: Arc<Ledger>) -> Api {
        self.ledger = Some(ledger);
        self
    }

    pub fn users(&self) -> usize {
        self.user_tokens.len()
    }

    /// The uid of user `i` of the population. Uids hash to slots, so the population spreads
    /// over every cell and most claims cross cells.
    pub fn uid(&self, i: usize) -> String {
        format!("{}{i}", self.user_prefix)
    }

    fn user_token(&self, i: usize) -> Arc<str> {
        self.user_tokens[i]
            .get_or_init(|| {
                Credential::minted_with(&self.keys, &self.uid(i), None, self.token_ttl_s)
            })
            .token()
    }

    fn key(&self, n: u64) -> String {
        format!("load-{}-{n}", self.run_id)
    }

    /// Sends `send` until it gets an answer that is neither missing nor a 5xx, or the retry
    /// policy is spent; every try is a [`StepResult`]. Returns them and the last reply.
    async fn call<F, Fut>(&self, step: Step, keys: &[&str], mut send: F) -> (Vec<StepResult>, Reply)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Reply>,
    {
        let mut results = Vec::new();
        let mut backoff = Duration::from_millis(self.retry.backoff_ms);
        let mut attempt = 0;
        loop {
            let reply = send().await;
            let class = classify(step, &reply.answer, reply.code.as_deref(), attempt);
            results.push(StepResult {
                step,
                started: reply.started,
                finished: reply.finished,
                answer: reply.answer.clone(),
                code: reply.code.clone(),
                class,
                attempt,
                keys: keys.iter().map(|k| (*k).to_owned()).collect(),
            });
            attempt += 1;
            if !reply.answer.is_unknown() || attempt >= self.retry.attempts {
                return (results, reply);
            }
            let wait = reply
                .retry_after
                .map(|s| Duration::from_secs(s).min(Duration::from_secs(2)))
                .unwrap_or(backoff);
            tokio::time::sleep(wait).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }
}

/// The string at `pointer` of a successful answer; a success whose body lacks it is marked
/// an error (`bad_body`) on the last step.
fn require(steps: &mut [StepResult], reply: &Reply, pointer: &str) -> Option<String> {
    let last = steps.last_mut()?;
    if last.class != Class::Ok {
        return None;
    }
    let found = reply.str_at(pointer);
    if found.is_none() {
        last.class = Class::Error;
        last.code = Some("bad_body".into());
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

/// Runs one operation; returns its requests in order, retries included (empty only for a
/// claim or packet read with an empty pool, which cannot happen after seeding).
pub async fn run_op(api: &Api, pool: &Pool, plan: &Plan) -> Vec<StepResult> {
    match plan.kind {
        OpKind::Grant => grant(api, pool, plan).await,
        OpKind::Send => send(api, pool, plan, plan.count, plan.amount).await,
        OpKind::Claim => claim(api, pool, plan).await,
        OpKind::Read => read(api, pool, plan).await,
    }
}

fn last_ok(steps: &[StepResult]) -> bool {
    steps.last().is_some_and(|s| s.class == Class::Ok)
}

async fn grant(api: &Api, pool: &Pool, plan: &Plan) -> Vec<StepResult> {
    let uid = api.uid(plan.user);
    let grant_id = api.key(plan.n);
    let amount = i64::from(plan.amount);
    let expires_at = rfc3339_in(Duration::from_secs(86_400));
    let (g, u, e) = (&grant_id, &uid, &expires_at);
    let (mut steps, reply) = api
        .call(Step::Grant, &[&uid, &grant_id], || {
            // Minted per attempt: a retry after a key rotation signs with the new key.
            let token = api.activity_token.token();
            async move { api.client.grant(&token, g, u, amount, e).await }
        })
        .await;
    let Some(subsidy_id) = require(&mut steps, &reply, "/subsidy_id") else {
        return steps;
    };
    if let Some(ledger) = &api.ledger {
        ledger.acknowledged(Acked::Grant {
            grant_id: grant_id.clone(),
            uid: uid.clone(),
            amount,
            subsidy_id: subsidy_id.clone(),
        });
    }
    let key = api.key(plan.n);
    let count = i64::from(plan.count);
    let (k, sub) = (&key, &subsidy_id);
    let (mut sent, reply) = api
        .call(Step::SendB2c, &[&uid], || {
            let token = api.user_token(plan.user);
            async move { api.client.send_b2c(&token, k, sub, count).await }
        })
        .await;
    let packet_id = require(&mut sent, &reply, "/packet_id");
    steps.extend(sent);
    match packet_id {
        Some(packet_id) => {
            if let Some(ledger) = &api.ledger {
                ledger.acknowledged(Acked::Send {
                    key,
                    sender: uid,
                    kind: "b2c".into(),
                    total: amount,
                    count,
                    subsidy_id: Some(subsidy_id),
                    packet_id: packet_id.clone(),
                    payment_id: None,
                });
            }
            pool.push(packet_id);
        }
        None => note_unknown(api, &steps),
    }
    steps
}

/// A paid C2C packet of `count` shares and `total` cents, added to the pool once the
/// callback activated it. Also seeds the pool before the clock starts.
pub async fn send(api: &Api, pool: &Pool, plan: &Plan, count: u32, total: u32) -> Vec<StepResult> {
    let uid = api.uid(plan.user);
    let key = api.key(plan.n);
    let (total, count) = (i64::from(total), i64::from(count));
    let k = &key;
    let (mut steps, reply) = api
        .call(Step::SendC2c, &[&uid], || {
            let token = api.user_token(plan.user);
            async move { api.client.send_c2c(&token, k, total, count, "load").await }
        })
        .await;
    let (Some(packet_id), Some(payment_id)) = (
        require(&mut steps, &reply, "/packet_id"),
        require(&mut steps, &reply, "/payment/payment_id"),
    ) else {
        note_unknown(api, &steps);
        return steps;
    };
    if let Some(ledger) = &api.ledger {
        ledger.acknowledged(Acked::Send {
            key,
            sender: uid,
            kind: "c2c".into(),
            total,
            count,
            subsidy_id: None,
            packet_id: packet_id.clone(),
            payment_id: Some(payment_id.clone()),
        });
    }
    let pid = &payment_id;
    let (paid, _) = api
        .call(Step::Callback, &[&payment_id], || {
            let token = api.payments_token.token();
            async move { api.client.callback(&token, pid, true).await }
        })
        .await;
    let ok = last_ok(&paid);
    steps.extend(paid);
    if ok {
        if let Some(ledger) = &api.ledger {
            ledger.acknowledged(Acked::Paid {
                payment_id,
                packet_id: packet_id.clone(),
            });
        }
        pool.push(packet_id);
    } else {
        note_unknown(api, &steps);
    }
    steps
}

async fn claim(api: &Api, pool: &Pool, plan: &Plan) -> Vec<StepResult> {
    let Some(packet_id) = pool.pick(plan.pick) else {
        return Vec::new();
    };
    let id = &packet_id;
    let (steps, reply) = api
        .call(Step::Claim, &[&packet_id], || {
            let token = api.user_token(plan.user);
            async move { api.client.claim(&token, id).await }
        })
        .await;
    match &reply.answer {
        Answer::Status(410) => pool.retire(&packet_id),
        Answer::Status(200 | 201) => {
            if let (Some(ledger), Some(claim)) = (&api.ledger, reply.parse::<ApiClaim>()) {
                ledger.acknowledged(Acked::Claim {
                    packet_id: packet_id.clone(),
                    uid: api.uid(plan.user),
                    amount: claim.amount,
                    claim_id: claim.claim_id,
                });
            }
        }
        _ => note_unknown(api, &steps),
    }
    steps
}

async fn read(api: &Api, pool: &Pool, plan: &Plan) -> Vec<StepResult> {
    let (step, key, path) = match plan.read {
        1 => {
            let uid = api.uid(plan.user);
            (
                Step::ReadWallet,
                uid.clone(),
                format!("/v1/users/{uid}/wallet"),
            )
        }
        r => {
            let Some(packet_id) = pool.pick(plan.pick) else {
                return Vec::new();
            };
            if r == 0 {
                (
                    Step::ReadPacket,
                    packet_id.clone(),
                    format!("/v1/packets/{packet_id}"),
                )
            } else {
                (
                    Step::ReadClaims,
                    packet_id.clone(),
                    format!("/v1/packets/{packet_id}/claims"),
                )
            }
        }
    };
    let (steps, _) = api
        .call(step, &[&key], || {
            let token = api.user_token(plan.user);
            let path = &path;
            async move { api.client.get(path, &token).await }
        })
        .await;
    steps
}

/// A write flow that ended without an answer to its last request (no answer, or a 5xx):
/// it may have taken effect, so the ledger counts it as unknown, never as lost.
fn note_unknown(api: &Api, steps: &[StepResult]) {
    if let (Some(ledger), Some(last)) = (&api.ledger, steps.last()) {
        if last.answer.is_unknown() && last.step.is_write() {
            ledger.unknown(last.step);
        }
    }
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
        assert_eq!(classify(Step::Claim, &s(201), None, 0), Class::Ok);
        assert_eq!(classify(Step::Claim, &s(200), None, 0), Class::Expected);
        for code in ["packet_exhausted", "packet_expired"] {
            assert_eq!(
                classify(Step::Claim, &s(410), Some(code), 0),
                Class::Expected
            );
        }
        assert_eq!(
            classify(Step::Claim, &s(429), Some("claim_busy"), 0),
            Class::Expected
        );
        assert_eq!(
            classify(Step::Claim, &s(429), Some("rate_limited"), 0),
            Class::Error
        );
        assert_eq!(
            classify(Step::Claim, &s(409), Some("packet_not_active"), 0),
            Class::Error
        );
        assert_eq!(
            classify(Step::ReadPacket, &s(503), Some("degraded"), 0),
            Class::Error
        );
        assert_eq!(
            classify(Step::SendC2c, &s(401), Some("unauthorized"), 0),
            Class::Error
        );
        assert_eq!(
            classify(Step::Grant, &Answer::Timeout, None, 0),
            Class::Error
        );
        assert_eq!(classify(Step::Callback, &s(200), None, 0), Class::Ok);
        assert_eq!(classify(Step::Callback, &s(201), None, 0), Class::Error);
        assert_eq!(classify(Step::SendB2c, &s(200), None, 0), Class::Error);
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

//! The ledger: every write the deployment acknowledged (a 2xx) during a run, with its
//! request, its idempotency key and its answer, and afterwards the proof that each is still
//! there, exactly once, read back through the router.
//!
//! What counts (FAILOVER-LESSONS.md, Vitess #7446): only a 2xx is an acknowledgement. A write
//! that got no answer or a 5xx is **unknown** — it may have committed — and is counted as
//! such, never as lost; the client retried it with the same key, so if it took effect the
//! retry's answer acknowledged it. Verification checks:
//!
//! | acknowledged | read back | lost when | duplicated when |
//! |---|---|---|---|
//! | grant | `GET /v1/users/{uid}/subsidies` | its subsidy is missing or has another amount | its grant id has two subsidies |
//! | send (c2c, b2c) | `GET /v1/packets/{id}` | the packet is missing or differs | — |
//! | payment callback | the packet | the packet is still unpaid or cancelled | — |
//! | claim | `GET /v1/packets/{id}/claims` | the claimer's row is missing or has another amount | the claimer has two rows |
//! | credit (a claim's transfer) | `GET /v1/users/{uid}/wallet` | the wallet holds less than the user's acknowledged claims | it holds more than every claim of the user that exists |
//!
//! Wallets are checked once transfers have settled (the caller waits for reconciliation to
//! show nothing in flight), and only for the run's own users, whose wallets start empty.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::Duration;

use serde::Serialize;
use serde_json::{json, Value};

use crate::api::{Claims, Client, Packet, Reply, Subsidies, Wallet};
use crate::load::Step;

/// One acknowledged write, as the client saw it.
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Acked {
    /// `POST /v1/subsidies`; the grant id is its idempotency key.
    Grant {
        grant_id: String,
        uid: String,
        amount: i64,
        subsidy_id: String,
    },
    /// `POST /v1/packets` with `Idempotency-Key: key`.
    Send {
        key: String,
        sender: String,
        kind: String,
        total: i64,
        count: i64,
        subsidy_id: Option<String>,
        packet_id: String,
        payment_id: Option<String>,
    },
    /// `POST /v1/payments/{payment_id}/callback` `succeeded` (repeats are harmless: its key
    /// is the payment id).
    Paid {
        payment_id: String,
        packet_id: String,
    },
    /// `POST /v1/packets/{packet_id}/claims` by `uid` (one claim per packet and user: that
    /// pair is its key).
    Claim {
        packet_id: String,
        uid: String,
        amount: i64,
        claim_id: String,
    },
}

impl Acked {
    fn op(&self) -> &'static str {
        match self {
            Acked::Grant { .. } => "grant",
            Acked::Send { .. } => "send",
            Acked::Paid { .. } => "paid",
            Acked::Claim { .. } => "claim",
        }
    }
}

/// What the ledger holds; guarded by one mutex, taken for a push or a count only.
#[derive(Default)]
struct Entries {
    acked: Vec<Acked>,
    /// Writes whose last answer was none or a 5xx, by request.
    unknown: BTreeMap<Step, u64>,
}

/// Shared by every task of a run.
#[derive(Default)]
pub struct Ledger {
    entries: Mutex<Entries>,
}

/// What verification found. `ok` only when nothing acknowledged is lost, nothing is
/// duplicated and everything could be read back.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Verification {
    pub ok: bool,
    /// Acknowledged writes, by operation (`grant`, `send`, `paid`, `claim`), and their sum.
    pub acknowledged: u64,
    pub acknowledged_by_op: BTreeMap<String, u64>,
    /// Writes with no answer or a 5xx as their last answer: may or may not have happened.
    pub unknown: u64,
    pub acknowledged_lost: u64,
    pub duplicated: u64,
    /// Wallets compared with their users' claims.
    pub wallets_checked: u64,
    /// Read-backs that failed even after retries: nothing can be said of those writes.
    pub unverified: u64,
    /// The first lost, duplicated and unverified items, for the report.
    pub lost_items: Vec<Value>,
    pub duplicated_items: Vec<Value>,
    pub unverified_items: Vec<Value>,
}

/// Items listed per kind in a report; the counts are always complete.
const LISTED: usize = 50;

impl Verification {
    fn lost(&mut self, item: Value) {
        self.acknowledged_lost += 1;
        if self.lost_items.len() < LISTED {
            self.lost_items.push(item);
        }
    }
    fn duplicate(&mut self, item: Value) {
        self.duplicated += 1;
        if self.duplicated_items.len() < LISTED {
            self.duplicated_items.push(item);
        }
    }
    fn unverified(&mut self, item: Value) {
        self.unverified += 1;
        if self.unverified_items.len() < LISTED {
            self.unverified_items.push(item);
        }
    }
}

impl Ledger {
    pub fn new() -> Ledger {
        Ledger::default()
    }

    pub fn acknowledged(&self, entry: Acked) {
        self.entries.lock().expect("ledger lock").acked.push(entry);
    }

    pub fn unknown(&self, step: Step) {
        *self
            .entries
            .lock()
            .expect("ledger lock")
            .unknown
            .entry(step)
            .or_default() += 1;
    }

    /// A copy of every acknowledged write.
    pub fn acked(&self) -> Vec<Acked> {
        self.entries.lock().expect("ledger lock").acked.clone()
    }

    pub fn unknown_count(&self) -> u64 {
        self.entries
            .lock()
            .expect("ledger lock")
            .unknown
            .values()
            .sum()
    }

    /// Reads every acknowledged write back through `client` (with an admin `token`), at most
    /// `parallel` reads at a time, each retried for up to `patience`.
    pub async fn verify(
        &self,
        client: &Client,
        token: &str,
        parallel: usize,
        patience: Duration,
    ) -> Verification {
        let acked = self.acked();
        let mut v = Verification {
            acknowledged: acked.len() as u64,
            unknown: self.unknown_count(),
            ..Verification::default()
        };
        for a in &acked {
            *v.acknowledged_by_op.entry(a.op().into()).or_default() += 1;
        }
        let reader = &Reader { patience };

        // Every packet the run made or claimed on, read once.
        let mut packet_ids = BTreeSet::new();
        for a in &acked {
            match a {
                Acked::Send { packet_id, .. }
                | Acked::Paid { packet_id, .. }
                | Acked::Claim { packet_id, .. } => {
                    packet_ids.insert(packet_id.clone());
                }
                Acked::Grant { .. } => {}
            }
        }
        let packets = reader
            .many(parallel, packet_ids.iter().cloned(), |id| async move {
                let r = reader.read(|| client.packet(token, &id)).await;
                (id, r)
            })
            .await;
        let claims = reader
            .many(parallel, packet_ids.iter().cloned(), |id| async move {
                let r = reader.read(|| client.claims(token, &id)).await;
                (id, r)
            })
            .await;
        let granted: BTreeSet<String> = acked
            .iter()
            .filter_map(|a| match a {
                Acked::Grant { uid, .. } => Some(uid.clone()),
                _ => None,
            })
            .collect();
        let subsidies = reader
            .many(parallel, granted.into_iter(), |uid| async move {
                let r = reader.read(|| client.subsidies(token, &uid)).await;
                (uid, r)
            })
            .await;

        let packet = |id: &str| -> Result<Option<Packet>, ()> {
            match packets.get(id) {
                Some(Ok(r)) if r.answer == crate::api::Answer::Status(404) => Ok(None),
                Some(Ok(r)) => r.parse::<Packet>().map(Some).ok_or(()),
                _ => Err(()),
            }
        };
        // Every claim row of the run's packets, by packet.
        let mut rows: BTreeMap<String, Vec<(String, i64)>> = BTreeMap::new();
        for (id, r) in &claims {
            if matches!(r, Ok(r) if r.answer == crate::api::Answer::Status(404)) {
                rows.insert(id.clone(), Vec::new()); // the packet itself is gone
                continue;
            }
            match r.as_ref().ok().and_then(Reply::parse::<Claims>) {
                Some(c) => {
                    let list = c.claims.into_iter().map(|c| (c.uid, c.amount)).collect();
                    rows.insert(id.clone(), list);
                }
                None => v.unverified(json!({"read": "claims", "packet_id": id})),
            }
        }

        for a in &acked {
            match a {
                Acked::Grant {
                    grant_id,
                    uid,
                    amount,
                    subsidy_id,
                } => {
                    let Some(list) = subsidies
                        .get(uid)
                        .and_then(|r| r.as_ref().ok())
                        .and_then(Reply::parse::<Subsidies>)
                    else {
                        v.unverified(json!({"read": "subsidies", "uid": uid}));
                        continue;
                    };
                    let same_grant: Vec<_> = list
                        .subsidies
                        .iter()
                        .filter(|s| &s.grant_id == grant_id)
                        .collect();
                    if !same_grant
                        .iter()
                        .any(|s| &s.subsidy_id == subsidy_id && s.amount == *amount)
                    {
                        v.lost(serde_json::to_value(a).unwrap_or(Value::Null));
                    }
                    if same_grant.len() > 1 {
                        v.duplicate(json!({"grant_id": grant_id, "subsidies": same_grant.len()}));
                    }
                }
                Acked::Send {
                    packet_id,
                    kind,
                    total,
                    count,
                    ..
                } => match packet(packet_id) {
                    Err(()) => v.unverified(json!({"read": "packet", "packet_id": packet_id})),
                    Ok(Some(p)) if &p.kind == kind && p.total == *total && p.count == *count => {}
                    Ok(_) => v.lost(serde_json::to_value(a).unwrap_or(Value::Null)),
                },
                Acked::Paid { packet_id, .. } => match packet(packet_id) {
                    Err(()) => v.unverified(json!({"read": "packet", "packet_id": packet_id})),
                    Ok(Some(p)) if p.status != "awaiting_payment" && p.status != "cancelled" => {}
                    Ok(_) => v.lost(serde_json::to_value(a).unwrap_or(Value::Null)),
                },
                Acked::Claim {
                    packet_id,
                    uid,
                    amount,
                    ..
                } => {
                    let Some(list) = rows.get(packet_id) else {
                        continue; // counted as unverified above
                    };
                    if !list.iter().any(|(u, a)| u == uid && a == amount) {
                        v.lost(serde_json::to_value(a).unwrap_or(Value::Null));
                    }
                }
            }
        }
        // No user twice on one packet (counted once per packet and user).
        for (packet_id, list) in &rows {
            let mut seen = BTreeMap::<&str, u32>::new();
            for (uid, _) in list {
                *seen.entry(uid).or_default() += 1;
            }
            for (uid, n) in seen.into_iter().filter(|(_, n)| *n > 1) {
                v.duplicate(json!({"claim": packet_id, "uid": uid, "rows": n}));
            }
        }

        // Credits: each user's wallet against the claims that exist (an upper bound: unknown
        // claims that happened are in it) and those acknowledged (a lower bound).
        let mut claimed: BTreeMap<String, i64> = BTreeMap::new();
        for list in rows.values() {
            for (uid, amount) in list {
                *claimed.entry(uid.clone()).or_default() += amount;
            }
        }
        let mut acked_credit: BTreeMap<String, i64> = BTreeMap::new();
        let mut counted = BTreeSet::new();
        for a in &acked {
            if let Acked::Claim {
                packet_id,
                uid,
                amount,
                ..
            } = a
            {
                // A claim acknowledged twice (a retry's 200) is one credit.
                if counted.insert((packet_id.clone(), uid.clone())) {
                    *acked_credit.entry(uid.clone()).or_default() += amount;
                }
            }
        }
        let claims_complete = rows.len() == packet_ids.len();
        let users: BTreeSet<String> = claimed.keys().chain(acked_credit.keys()).cloned().collect();
        let wallets = reader
            .many(parallel, users.into_iter(), |uid| async move {
                let r = reader.read(|| client.wallet(token, &uid)).await;
                (uid, r)
            })
            .await;
        for (uid, r) in &wallets {
            let Some(w) = r.as_ref().ok().and_then(Reply::parse::<Wallet>) else {
                v.unverified(json!({"read": "wallet", "uid": uid}));
                continue;
            };
            v.wallets_checked += 1;
            let (low, high) = (
                acked_credit.get(uid).copied().unwrap_or(0),
                claimed.get(uid).copied().unwrap_or(0),
            );
            if w.balance < low {
                v.lost(json!({"credit": uid, "wallet": w.balance, "acknowledged_claims": low}));
            }
            // The upper bound holds only when every packet's claims could be read.
            if claims_complete && w.balance > high {
                v.duplicate(json!({"credit": uid, "wallet": w.balance, "existing_claims": high}));
            }
        }
        v.ok = v.acknowledged_lost == 0 && v.duplicated == 0 && v.unverified == 0;
        v
    }
}

/// Reads with retries: an answer that is none or a 5xx is asked again until `patience` runs
/// out (the deployment may still be failing over).
struct Reader {
    patience: Duration,
}

impl Reader {
    async fn read<F, Fut>(&self, mut get: F) -> Result<Reply, Reply>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Reply>,
    {
        let deadline = tokio::time::Instant::now() + self.patience;
        loop {
            let r = get().await;
            if !r.answer.is_unknown() {
                return Ok(r);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(r);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Runs `f` over `items`, `parallel` at a time; the results by item.
    async fn many<I, F, Fut>(
        &self,
        parallel: usize,
        items: I,
        f: F,
    ) -> BTreeMap<String, Result<Reply, Reply>>
    where
        I: Iterator<Item = String>,
        F: Fn(String) -> Fut,
        Fut: std::future::Future<Output = (String, Result<Reply, Reply>)>,
    {
        use futures_util::StreamExt;
        futures_util::stream::iter(items.map(f))
            .buffer_unordered(parallel.max(1))
            .collect()
            .await
    }
}

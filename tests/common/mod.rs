//! What the deployment tests share: a ledger-keeping load through the router, the checks
//! after it (books, replicas), and lookups in the deployment's map and record.
#![allow(dead_code)] // each test file uses its own part

pub mod browser;

use std::sync::Arc;
use std::time::Duration;

use harness::api::Client;
use harness::ledger::{Ledger, Verification};
use harness::load::{self, LoadArgs, Options, Report, Retry, Target};
use harness::procs::eventually;
use harness::up::{Up, SECRET};
use serde_json::Value;
use topology::Slot;

/// One deployment at a time in a test binary: two whole deployments under load on a
/// two-core machine starve each other, and the bounds these tests check (a planned
/// failover's unavailability, the detector's) would then measure the machine. Held for the
/// whole test; released however the test ends (a tokio mutex is not poisoned by a panic).
pub async fn one_at_a_time() -> tokio::sync::MutexGuard<'static, ()> {
    static ONE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    ONE.lock().await
}

/// Load through the router with a ledger, started now, for `duration` at `rate` ops/s.
pub struct Load {
    handle: tokio::task::JoinHandle<Report>,
    pub ledger: Arc<Ledger>,
}

impl Load {
    /// `retry`: whether the client retries a 5xx or a timeout with the same key (as a real
    /// client would in an emergency failover), or shows it (a planned failover must not
    /// need it: the router retries the pause's 503s itself).
    pub fn start(up: &Up, rate: f64, duration: Duration, retry: bool, prefix: &str) -> Load {
        Load::start_with_keys(up, rate, duration, retry, prefix, None)
    }

    /// [`Load::start`] minting its tokens with `keys`' current key (a load across a key
    /// rotation) instead of the deployment's first secret.
    pub fn start_with_keys(
        up: &Up,
        rate: f64,
        duration: Duration,
        retry: bool,
        prefix: &str,
        keys: Option<topology::keys::KeyRing>,
    ) -> Load {
        let ledger = Arc::new(Ledger::new());
        let args = LoadArgs {
            rate,
            duration,
            mix: "grant=5,send=10,claim=60,read=25".parse().expect("mix"),
            users: 400,
            warmup: Duration::ZERO,
            max_in_flight: 2048,
            timeout: Duration::from_secs(15),
            seed: Some(7),
            initial_packets: 8,
            json: true,
        };
        let target = Target {
            router_url: up.router(),
            secret: SECRET.into(),
        };
        let opts = Options {
            user_prefix: Some(prefix.into()),
            retry: Some(if retry {
                Retry {
                    attempts: 20,
                    backoff_ms: 100,
                }
            } else {
                Retry::NEVER
            }),
            ledger: Some(ledger.clone()),
            keys,
            ..Options::default()
        };
        let handle = tokio::spawn(async move {
            load::run_with(&args, &target, opts)
                .await
                .expect("the load runs")
        });
        Load { handle, ledger }
    }

    pub async fn finish(self) -> (Report, Arc<Ledger>) {
        (self.handle.await.expect("load task"), self.ledger)
    }
}

/// `cellctl ARGS --json`, which must succeed; its JSON.
pub fn cellctl_json(up: &Up, args: &[&str]) -> Value {
    let (code, out) = up.cellctl(args);
    assert_eq!(code, 0, "cellctl {args:?}: {out}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("cellctl {args:?}: {e}: {out}"))
}

/// After the load: transfers settled (reconciliation ok, nothing in flight), every
/// acknowledged write read back, and every replica equal to its primary.
pub async fn books_and_replicas_hold(up: &Up, ledger: &Ledger) -> Verification {
    let v = books_hold(up, ledger).await;
    replicas_equal(up).await;
    v
}

/// Transfers settled (reconciliation ok, nothing in flight), and every acknowledged write of
/// the ledger read back: none lost, none twice.
pub async fn books_hold(up: &Up, ledger: &Ledger) -> Verification {
    eventually(
        "reconciliation ok with nothing in flight",
        Duration::from_secs(60),
        || async {
            let (code, out) = up.cellctl(&["reconcile", "--json"]);
            let body: Value = serde_json::from_str(&out).ok()?;
            (code == 0 && body["ok"] == true && body["totals"]["in_flight"] == 0).then_some(())
        },
    )
    .await;
    let client = Client::new(&up.router(), Duration::from_secs(10), 16).expect("client");
    let v = ledger
        .verify(
            &client,
            &up.token("svc:e2e", Some("admin")),
            8,
            Duration::from_secs(20),
        )
        .await;
    assert!(v.acknowledged > 0, "the load acknowledged nothing: {v:?}");
    assert_eq!(v.acknowledged_lost, 0, "acknowledged writes lost: {v:?}");
    assert_eq!(v.duplicated, 0, "effects duplicated: {v:?}");
    assert!(v.ok, "{v:?}");
    v
}

/// `cellctl verify`: every shard's replica equals its primary at one position.
pub async fn replicas_equal(up: &Up) {
    let verify = eventually(
        "every replica equals its primary",
        Duration::from_secs(60),
        || async {
            let (code, out) = up.cellctl(&["verify", "--json"]);
            let body: Value = serde_json::from_str(&out).ok()?;
            (code == 0).then_some(body)
        },
    )
    .await;
    assert_eq!(verify["ok"], true, "{verify}");
}

/// The shard's entry in raft-meta's map view: (primary, backup, epoch).
pub async fn shard_in_map(up: &Up, shard: &str) -> (String, Option<String>, u64) {
    let map = up.map().await;
    let id = topology::ShardId::parse(shard).unwrap();
    let info = map.shard(&id).expect("shard in the map").clone();
    (
        info.primary.to_string(),
        info.backup.map(|b| b.to_string()),
        map.shard_epoch(&id).0,
    )
}

pub fn cell_url(up: &Up, cell: &str) -> String {
    up.record()["cells"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == cell)
        .and_then(|c| c["url"].as_str())
        .expect("cell url")
        .to_owned()
}

pub fn cell_pid(up: &Up, cell: &str) -> i32 {
    up.record()["cells"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == cell)
        .and_then(|c| c["pid"].as_i64())
        .expect("cell pid") as i32
}

/// A uid homed in shard `shard` (the map's slots of that shard).
pub async fn uid_in_shard(up: &Up, shard: &str) -> String {
    let map = up.map().await;
    let id = topology::ShardId::parse(shard).unwrap();
    (0..100_000)
        .map(|n| format!("probe{n}"))
        .find(|u| map.owner(Slot::of(u.as_bytes())).shard == id)
        .expect("some uid lands in every shard")
}

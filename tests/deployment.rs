//! A whole deployment from `cellctl up` (raft-meta ×3, 4 cells over 2 regions, router), used
//! the way its users use it: app traffic through the router, operators through `cellctl`.

use std::collections::BTreeMap;
use std::time::Duration;

use harness::procs::eventually;
use harness::up::{token, uid_on, Backend, Up};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};
use tempfile::TempDir;

const CELLS: [&str; 4] = ["c1", "c2", "c3", "c4"];

/// A c2c packet from `sender`, paid through the provider's callback; returns its id.
async fn paid_packet(up: &Up, sender: &str, total: i64, count: i64, key: &str) -> String {
    let (status, packet) = up
        .call_with(
            "POST",
            "/v1/packets",
            &token(sender, None),
            Some(json!({"kind": "c2c", "total": total, "count": count, "greeting": "新年快乐"})),
            &[("idempotency-key", key)],
        )
        .await;
    assert_eq!(status, 201, "{packet}");
    let payment = packet["payment"]["payment_id"].as_str().unwrap().to_owned();
    let (status, body) = up
        .call(
            "POST",
            &format!("/v1/payments/{payment}/callback"),
            &token("svc:payments", Some("payment:callback")),
            Some(json!({"status": "succeeded"})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    packet["packet_id"].as_str().unwrap().to_owned()
}

/// `uid` claims a share of `packet` through the router: (status, body).
async fn claim(up: &Up, packet: &str, uid: &str) -> (u16, Value) {
    let path = format!("/v1/packets/{packet}/claims");
    up.call("POST", &path, &token(uid, None), None).await
}

async fn balance(up: &Up, uid: &str) -> i64 {
    let (status, w) = up
        .call(
            "GET",
            &format!("/v1/users/{uid}/wallet"),
            &token(uid, None),
            None,
        )
        .await;
    assert_eq!(status, 200, "{w}");
    w["balance"].as_i64().unwrap()
}

/// Waits until reconciliation across every cell is ok with nothing in flight.
async fn settled(up: &Up) -> Value {
    eventually(
        "reconciliation ok with nothing in flight",
        Duration::from_secs(30),
        || async {
            let (code, out) = up.cellctl(&["reconcile", "--json"]);
            let body: Value = serde_json::from_str(&out).ok()?;
            (code == 0 && body["ok"] == true && body["totals"]["in_flight"] == 0).then_some(body)
        },
    )
    .await
}

/// Reconciliation is ok with nothing in flight, and every cent funded sits in a wallet.
async fn books_balance_at(up: &Up, total: i64) {
    let recon = settled(up).await;
    assert_eq!(recon["totals"]["funded"], total, "{recon}");
    assert_eq!(recon["totals"]["wallets"], total, "{recon}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn whole_flow_across_cells_survives_a_killed_cell_and_a_restart() {
    let tmp = TempDir::new().unwrap();
    let dir = tmp.path().join("deployment");
    std::fs::create_dir_all(&dir).unwrap();
    let backend = Backend::from_env();
    let mut up = Up::start(&dir, &backend.args()).await;

    // The plan is on the servers the backend names.
    let plan: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("cellctl.json")).unwrap()).unwrap();
    assert_eq!(
        plan["postgres"].is_string(),
        std::env::var("REDCELL_TEST_DATABASE_URL").is_ok_and(|v| !v.is_empty()),
        "{plan}"
    );
    assert!(plan["cells"]
        .as_array()
        .unwrap()
        .iter()
        .all(|c| c["database"].is_string() == plan["postgres"].is_string()));

    // The record names every process, the cells pair across regions, and status is green.
    let record = up.record();
    assert_eq!(record["meta"].as_array().unwrap().len(), 3);
    // raft-meta's voters stand in three failure domains: both cell regions and a
    // tie-breaker with no cell, so a lost region leaves a quorum.
    let meta_regions: Vec<&str> = record["meta"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["region"].as_str().unwrap())
        .collect();
    assert_eq!(meta_regions, ["east", "west", "tiebreak"], "{record}");
    let cells = record["cells"].as_array().unwrap();
    assert_eq!(cells.len(), 4);
    let regions: BTreeMap<&str, &str> = cells
        .iter()
        .map(|c| (c["id"].as_str().unwrap(), c["region"].as_str().unwrap()))
        .collect();
    for c in cells {
        let backup = c["backup"].as_str().expect("every cell has a backup");
        assert_ne!(regions[backup], c["region"].as_str().unwrap(), "{c}");
        assert!(c["pid"].as_u64().is_some());
    }
    let status = eventually("status green", Duration::from_secs(20), || async {
        let (code, out) = up.cellctl(&["status", "--json"]);
        (code == 0).then(|| serde_json::from_str::<Value>(&out).unwrap())
    })
    .await;
    assert!(status["leader"].as_u64().is_some(), "{status}");
    let slots: u64 = status["cells"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["slots"].as_u64().unwrap())
        .sum();
    assert_eq!(slots, 1024, "{status}");
    // One shard row per cell: backed up across regions, `async` by `up`'s default, green.
    let shards = status["shards"].as_array().expect("a shard table");
    assert_eq!(shards.len(), 4, "{status}");
    for s in shards {
        assert_eq!(s["policy"], "async", "{s}");
        assert_eq!(s["alarm"], "green", "{s}");
        assert!(
            s["backup"].is_string() && s["head"].as_i64().is_some(),
            "{s}"
        );
    }

    // `cellctl policy` flips one shard's policy and back; an unknown shard is named.
    let (code, out) = up.cellctl(&["policy", "c1", "refuse"]);
    assert_eq!(code, 0);
    assert!(out.contains("async -> refuse"), "{out}");
    let (code, _) = up.cellctl(&["policy", "c9", "refuse"]);
    assert_eq!(code, 2, "an unknown shard is an error");
    let (code, out) = up.cellctl(&["policy", "c1", "async"]);
    assert_eq!(code, 0);
    assert!(out.contains("refuse -> async"), "{out}");

    // One `up` per data dir.
    let (code, _) = up.cellctl(&["up", "--base-port", "0"]);
    assert_eq!(code, 2, "a second `up` on a running data dir is refused");

    // `cellctl token` mints what the router accepts.
    let (code, minted) = up.cellctl(&["token", "u-someone"]);
    assert_eq!(code, 0);
    let (status_code, _) = up
        .call("GET", "/v1/users/u-someone/wallet", minted.trim(), None)
        .await;
    assert_eq!(status_code, 200);

    // A packet in c1, claimed by users homed in every cell.
    let map = up.map().await;
    let sender = uid_on(&map, "c1", &[]);
    let claimers: Vec<String> = CELLS.iter().map(|c| uid_on(&map, c, &[&sender])).collect();
    let packet = paid_packet(&up, &sender, 1000, 4, "e2e-1").await;
    assert!(packet.len() <= 40);
    let mut claimed = BTreeMap::new();
    for uid in &claimers {
        let (status, share) = claim(&up, &packet, uid).await;
        assert_eq!(status, 201, "{share}");
        claimed.insert(uid.clone(), share["amount"].as_i64().unwrap());
    }
    assert_eq!(claimed.values().sum::<i64>(), 1000);
    let (status, late) = claim(&up, &packet, &sender).await;
    assert_eq!(
        (status, late["code"].as_str()),
        (410, Some("packet_exhausted"))
    );

    // Each claimer's home cell credits the wallet, across cells.
    for (uid, amount) in &claimed {
        eventually("a cross-cell credit", Duration::from_secs(20), || async {
            (balance(&up, uid).await == *amount).then_some(())
        })
        .await;
    }

    // A subsidy granted to a user homed in c3, sent as a b2c packet, claimed from c2 and c4.
    let granted = uid_on(&map, "c3", &[&sender]);
    let (status, subsidy) = up
        .call(
            "POST",
            "/v1/subsidies",
            &token("svc:activity", Some("subsidy:grant")),
            Some(
                json!({"grant_id": "e2e-grant-1", "uid": granted, "amount": 600,
                        "expires_at": "2099-01-01T00:00:00Z"}),
            ),
        )
        .await;
    assert_eq!(status, 201, "{subsidy}");
    let (status, b2c) = up
        .call_with(
            "POST",
            "/v1/packets",
            &token(&granted, None),
            Some(json!({"kind": "b2c", "subsidy_id": subsidy["subsidy_id"], "count": 2})),
            &[("idempotency-key", "e2e-b2c-1")],
        )
        .await;
    assert_eq!(status, 201, "{b2c}");
    let b2c = b2c["packet_id"].as_str().unwrap().to_owned();
    for uid in [&claimers[1], &claimers[3]] {
        let (status, share) = claim(&up, &b2c, uid).await;
        assert_eq!(status, 201, "{share}");
        *claimed.get_mut(uid).unwrap() += share["amount"].as_i64().unwrap();
    }

    // The books balance over all cells once the transfers land.
    books_balance_at(&up, 1600).await;

    // A switch flipped through cellctl: c2c sends degrade, other flows keep working.
    let (code, _) = up.cellctl(&[
        "switch",
        "c2c_send",
        "off",
        "--message",
        "paused for the drill",
    ]);
    assert_eq!(code, 0);
    let try_send = || async {
        up.call_with(
            "POST",
            "/v1/packets",
            &token(&sender, None),
            Some(json!({"kind": "c2c", "total": 100, "count": 1})),
            &[("idempotency-key", "e2e-degraded")],
        )
        .await
    };
    eventually("c2c_send degraded", Duration::from_secs(5), || async {
        let (status, body) = try_send().await;
        (status == 503 && body["code"] == "degraded").then_some(())
    })
    .await;
    let (status, _) = up
        .call(
            "GET",
            &format!("/v1/packets/{packet}"),
            &token(&sender, None),
            None,
        )
        .await;
    assert_eq!(
        status, 200,
        "other flows keep working while c2c_send is off"
    );
    let (code, _) = up.cellctl(&["switch", "c2c_send", "on"]);
    assert_eq!(code, 0);
    eventually("c2c_send back on", Duration::from_secs(5), || async {
        (try_send().await.0 == 201).then_some(())
    })
    .await;

    // SIGKILL the packet's cell while claims stream in: cellctl restarts it, every claim
    // acknowledged before, during or after the crash is there once, and retries of the
    // unanswered ones settle each claimer to exactly one claim.
    let second = paid_packet(&up, &sender, 6000, 60, "e2e-2").await;
    let crowd: Vec<String> = (0..60).map(|n| format!("k{n}")).collect();
    let c1 = |r: &Value| {
        r["cells"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["id"] == "c1")
            .and_then(|c| c["pid"].as_u64())
    };
    let old_pid = c1(&up.record()).expect("c1 runs");
    let acked = std::cell::RefCell::new(BTreeMap::<String, i64>::new());
    let claim_once = |uid: String| {
        let up = &up;
        let acked = &acked;
        let second = &second;
        async move {
            let (status, body) = claim(up, second, &uid).await;
            if status == 200 || status == 201 {
                let amount = body["amount"].as_i64().unwrap();
                let before = acked.borrow_mut().insert(uid.clone(), amount);
                assert!(
                    before.is_none_or(|b| b == amount),
                    "{uid} got two different claims"
                );
            } else {
                assert!(
                    status == 0 || status == 503 || status == 429,
                    "a claim during the crash answered {status}: {body}"
                );
            }
            status
        }
    };
    let stream = async {
        for uid in &crowd {
            claim_once(uid.clone()).await;
        }
    };
    let crash = async {
        eventually(
            "some claims acknowledged",
            Duration::from_secs(30),
            || async { (acked.borrow().len() >= 10).then_some(()) },
        )
        .await;
        kill(Pid::from_raw(old_pid as i32), Signal::SIGKILL).unwrap();
    };
    tokio::join!(stream, crash);
    let during = acked.borrow().len();
    let new_pid = eventually("cellctl restarts c1", Duration::from_secs(30), || async {
        c1(&up.record()).filter(|p| *p != old_pid)
    })
    .await;
    assert_ne!(new_pid, old_pid);
    eventually(
        "every claimer acknowledged",
        Duration::from_secs(60),
        || async {
            for uid in &crowd {
                if !acked.borrow().contains_key(uid) {
                    claim_once(uid.clone()).await;
                }
            }
            (acked.borrow().len() == crowd.len()).then_some(())
        },
    )
    .await;
    assert_eq!(
        claim_once(crowd[0].clone()).await,
        200,
        "a repeat claim returns the first one"
    );
    let acknowledged = acked.into_inner();
    let (status, list) = up
        .call(
            "GET",
            &format!("/v1/packets/{second}/claims"),
            &token(&sender, None),
            None,
        )
        .await;
    assert_eq!(status, 200, "{list}");
    let listed: BTreeMap<String, i64> = list["claims"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["uid"].as_str().unwrap().to_owned(),
                c["amount"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        listed, acknowledged,
        "one claim per claimer, as acknowledged ({during} answered before the restart)"
    );
    assert_eq!(listed.values().sum::<i64>(), 6000);

    // After all of this mixed traffic and the crash, every backup replica holds exactly its
    // primary's rows, both idempotency tables included, compared at one position.
    let report = eventually(
        "every replica equals its primary",
        Duration::from_secs(60),
        || async {
            let (code, out) = up.cellctl(&["verify", "--json"]);
            let report: Value = serde_json::from_str(&out).unwrap_or(Value::Null);
            (code == 0).then_some(report)
        },
    )
    .await;
    let shards = report["shards"].as_array().unwrap();
    assert_eq!(shards.len(), 4, "{report}");
    assert!(
        shards
            .iter()
            .all(|s| s["equal"] == true && s["position"].as_i64() > Some(0)),
        "{report}"
    );
    let record = up.record();
    assert!(
        record["restarts"]["cell-c1"].as_u64() >= Some(1),
        "{record}"
    );
    eventually(
        "status green after the restart",
        Duration::from_secs(30),
        || async { (up.cellctl(&["status"]).0 == 0).then_some(()) },
    )
    .await;
    books_balance_at(&up, 7600).await;

    // An operator holds a process down: unlike the crash above, the supervisor leaves it
    // down (and status says why) until `cellctl start`; a stop is not counted as a restart.
    let (code, out) = up.cellctl(&["stop", "meta3"]);
    assert_eq!(code, 0, "{out}");
    assert!(up.record()["meta"][2]["pid"].is_null(), "{}", up.record());
    let held_since = std::time::Instant::now();
    let (code, out) = up.cellctl(&["status"]);
    assert_ne!(code, 0, "a held-down process is not green: {out}");
    assert!(out.contains("held down by `cellctl stop`"), "{out}");
    // Still down well past the supervisor's first restart delay (250 ms).
    while held_since.elapsed() < Duration::from_millis(1_500) {
        assert!(
            up.record()["meta"][2]["pid"].is_null(),
            "restarted while held"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (code, out) = up.cellctl(&["stop", "c9"]);
    assert_ne!(code, 0, "no such process: {out}");
    let (code, out) = up.cellctl(&["start", "meta3"]);
    assert_eq!(code, 0, "{out}");
    assert!(up.record()["meta"][2]["pid"].as_u64().is_some());
    assert!(
        up.record()["restarts"]["meta3"].is_null(),
        "{}",
        up.record()
    );
    eventually(
        "status green after the start",
        Duration::from_secs(30),
        || async { (up.cellctl(&["status"]).0 == 0).then_some(()) },
    )
    .await;

    // `cellctl load` drives every flow through the router without an error, and the books
    // still balance afterwards.
    let (code, out) = up.cellctl(&[
        "load",
        "--rate",
        "40",
        "--duration",
        "3s",
        "--users",
        "200",
        "--json",
        "--seed",
        "7",
    ]);
    let report: Value = serde_json::from_str(&out).expect("a JSON report");
    assert_eq!(code, 0, "{report}");
    assert_eq!(report["errors"], 0, "{report}");
    assert_eq!(report["scheduled"], 120, "{report}");
    assert_eq!(report["completed"], 120, "{report}");
    let recon = settled(&up).await;
    let wallets_after_load = recon["totals"]["wallets"].as_i64().unwrap();
    assert!(wallets_after_load > 7600, "{recon}");

    // The positions the backups acknowledged reach raft-meta's map through the primaries'
    // heartbeats (the shard table's `reported`), for every shard that has written.
    eventually(
        "acknowledged positions in the map",
        Duration::from_secs(20),
        || async {
            let (_, out) = up.cellctl(&["status", "--json"]);
            let status: Value = serde_json::from_str(&out).ok()?;
            let shards = status["shards"].as_array()?;
            shards
                .iter()
                .all(|s| s["reported"].as_u64() > Some(0))
                .then_some(())
        },
    )
    .await;

    // Ctrl-C stops everything; `up` again on the same dir resumes with the same data.
    let exit = up.stop().expect("cellctl up ran");
    assert!(exit.success(), "cellctl up exits cleanly: {exit}");
    let stopped = up.record();
    assert!(stopped["router"]["pid"].is_null(), "{stopped}");
    drop(up);
    let up = Up::start(&dir, &backend.args()).await;
    for (uid, amount) in &claimed {
        assert_eq!(
            balance(&up, uid).await,
            *amount,
            "{uid}'s wallet after resume"
        );
    }
    let (status, again) = up
        .call(
            "GET",
            &format!("/v1/packets/{packet}"),
            &token(&sender, None),
            None,
        )
        .await;
    assert_eq!((status, again["status"].as_str()), (200, Some("exhausted")));
    settled(&up).await;
}

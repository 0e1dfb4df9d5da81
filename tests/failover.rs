//! Failover (DESIGN §6.5) on a whole `cellctl up` deployment under a ledger-keeping load
//! through the router: every acknowledged write is read back afterwards (none lost, none
//! twice), money is conserved, and every replica equals its primary.
//!
//! Each test runs on SQLite, and on Postgres + Redis in the test command's second pass.

mod common;

use std::time::{Duration, Instant};

use common::*;
use harness::procs::eventually;
use harness::up::{token, Backend, Up};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::json;
use tempfile::TempDir;

/// How long the router retries a shard's 503s before showing one (its
/// `--retry-unavailable-ms` default).
const ROUTER_RETRY_MS: u64 = 2_000;

/// A planned switchover and the way back, under load: no client sees an error (the router
/// retries the pause's 503s), the shard is unavailable for less than the router's retry
/// window each way (the bound that makes "no error" hold; the goal, under a second, is
/// measured by `cargo bench -p e2e --bench failover`, not timed here), the old
/// primary follows as the backup with nothing to rebuild, and nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn planned_failover_and_back_under_load_loses_nothing_and_shows_no_error() {
    let _one = one_at_a_time().await;
    let tmp = TempDir::new().unwrap();
    let backend = Backend::from_env();
    let up = Up::start(&tmp.path().join("d"), &backend.args()).await;
    let load = Load::start(&up, 60.0, Duration::from_secs(12), false, "planned-");
    tokio::time::sleep(Duration::from_secs(3)).await;

    let there = cellctl_json(&up, &["failover", "c1", "--planned", "--json"]);
    assert_eq!(
        (&there["from"], &there["to"]),
        (&json!("c1"), &json!("c3")),
        "{there}"
    );
    assert!(
        there["unavailable_ms"].as_u64().unwrap() < ROUTER_RETRY_MS,
        "{there}"
    );
    assert_eq!(there["reversed"], true, "{there}");
    assert_eq!(shard_in_map(&up, "c1").await.0, "c3");
    // The old primary serves nothing of the shard now: 421 naming the new one.
    let uid = uid_in_shard(&up, "c1").await;
    let (status, body) = up
        .call(
            "GET",
            &format!("{}/v1/users/{uid}/wallet", cell_url(&up, "c1")),
            &token(&uid, None),
            None,
        )
        .await;
    assert_eq!(status, 421, "{body}");
    assert_eq!(body["owner"], "c3", "{body}");

    tokio::time::sleep(Duration::from_secs(3)).await;
    let back = cellctl_json(
        &up,
        &["failover", "c1", "--planned", "--to", "c1", "--json"],
    );
    assert_eq!(
        (&back["from"], &back["to"]),
        (&json!("c3"), &json!("c1")),
        "{back}"
    );
    assert!(
        back["unavailable_ms"].as_u64().unwrap() < ROUTER_RETRY_MS,
        "{back}"
    );
    assert_eq!(back["reversed"], true, "{back}");

    let (report, ledger) = load.finish().await;
    assert_eq!(
        report.errors, 0,
        "client-visible errors: {:?}",
        report.outcomes
    );
    let v = books_and_replicas_hold(&up, &ledger).await;
    eprintln!(
        "planned: unavailable {} ms there, {} ms back; {} acknowledged",
        there["unavailable_ms"], back["unavailable_ms"], v.acknowledged
    );
}

/// A primary killed (and kept down) is failed over by raft-meta by itself; its users are
/// served by the backup within seconds, with every acknowledged write. Brought back, the old
/// primary serves nothing of its shard (421) until rebuilt; the rebuild sets its divergent
/// tail aside and re-seeds it as the backup; a planned failover brings the shard home; the
/// books and replicas hold across the round trip.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_primary_fails_over_by_itself_and_fails_back_after_a_rebuild() {
    let _one = one_at_a_time().await;
    let tmp = TempDir::new().unwrap();
    let backend = Backend::from_env();
    let up = Up::start(&tmp.path().join("d"), &backend.args()).await;
    let (_, _, epoch) = shard_in_map(&up, "c2").await;
    let uid = uid_in_shard(&up, "c2").await;
    let load = Load::start(&up, 60.0, Duration::from_secs(14), true, "killed-");
    tokio::time::sleep(Duration::from_secs(3)).await;

    let killed_at = Instant::now();
    let (code, out) = up.cellctl(&["stop", "c2", "--kill"]);
    assert_eq!(code, 0, "{out}");
    // RTO: from the kill to the first success for the shard's users through the router.
    let wallet = format!("/v1/users/{uid}/wallet");
    eventually(
        "the shard's users served again",
        Duration::from_secs(30),
        || async {
            let (status, _) = up.call("GET", &wallet, &token(&uid, None), None).await;
            (status == 200 && shard_in_map(&up, "c2").await.0 != "c2").then_some(())
        },
    )
    .await;
    let rto = killed_at.elapsed();
    let (primary, backup, now) = shard_in_map(&up, "c2").await;
    assert_eq!((primary.as_str(), backup, now), ("c4", None, epoch + 1));
    let record = up.view().await["failovers"]["c2"].clone();
    assert_eq!(record["kind"], "automatic", "{record}");

    let (report, ledger) = load.finish().await;
    // (Shard c2 has no backup until the rebuild: the replicas are compared after it.)
    books_hold(&up, &ledger).await;

    // Back, the old primary is fenced: it answers 421 for its old shard.
    let (code, out) = up.cellctl(&["start", "c2"]);
    assert_eq!(code, 0, "{out}");
    let c2 = cell_url(&up, "c2");
    let (status, body) = up
        .call("GET", &format!("{c2}{wallet}"), &token(&uid, None), None)
        .await;
    assert_eq!(status, 421, "{body}");

    // Rebuild and fail back, with load running again.
    let load = Load::start(&up, 40.0, Duration::from_secs(10), true, "failback-");
    let rebuilt = cellctl_json(&up, &["rebuild", "c2", "--json"]);
    assert_eq!(rebuilt["shards"][0]["shard"], "c2", "{rebuilt}");
    let home = cellctl_json(
        &up,
        &["failover", "c2", "--planned", "--to", "c2", "--json"],
    );
    assert_eq!(home["to"], "c2", "{home}");
    assert_eq!(shard_in_map(&up, "c2").await.0, "c2");
    let (_, ledger) = load.finish().await;
    books_and_replicas_hold(&up, &ledger).await;
    eprintln!(
        "kill -9: RTO {} ms ({} errors before recovery, client retried); divergent tail: {}",
        rto.as_millis(),
        report.errors,
        rebuilt["shards"][0]["divergent"]
    );
}

/// The grey failure: a primary frozen (SIGSTOP) for 10 s. It is failed over — by the
/// detector or by an operator's emergency failover racing it: exactly one of the two
/// decisions applies, at one epoch. After SIGCONT the old primary answers nothing of the
/// shard but 421, and a money write sent straight to it — one queued while it was frozen,
/// and one after — is never acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_frozen_primary_loses_its_shard_and_never_acknowledges_after_thawing() {
    let _one = one_at_a_time().await;
    let tmp = TempDir::new().unwrap();
    let backend = Backend::from_env();
    let up = Up::start(&tmp.path().join("d"), &backend.args()).await;
    let (_, _, epoch) = shard_in_map(&up, "c3").await;
    let uid = uid_in_shard(&up, "c3").await;
    let c3 = cell_url(&up, "c3");
    let load = Load::start(&up, 60.0, Duration::from_secs(16), true, "frozen-");
    tokio::time::sleep(Duration::from_secs(3)).await;

    let pid = Pid::from_raw(cell_pid(&up, "c3"));
    kill(pid, Signal::SIGSTOP).unwrap();
    // A money write sent straight to the frozen primary: it waits in its socket.
    let queued = {
        let http = up.http.clone();
        let url = format!("{c3}/v1/packets");
        let uid = uid.clone();
        tokio::spawn(async move {
            http.post(url)
                .bearer_auth(token(&uid, None))
                .header("idempotency-key", "sent-while-frozen")
                .json(&json!({"kind": "c2c", "total": 500, "count": 5}))
                .timeout(Duration::from_secs(40))
                .send()
                .await
                .map(|r| r.status().as_u16())
        })
    };
    // An operator's emergency failover, racing the detector's (due after 1.5 s).
    tokio::time::sleep(Duration::from_millis(1_400)).await;
    let (operator, _) = up.cellctl(&["failover", "c3", "--emergency", "--json"]);
    let (primary, _, now) = shard_in_map(&up, "c3").await;
    assert_eq!(primary, "c1", "the backup took the shard over");
    assert_eq!(
        now,
        epoch + 1,
        "one decision at epoch {epoch}, exactly one epoch later"
    );
    let record = up.view().await["failovers"]["c3"].clone();
    assert_eq!(record["epoch"], epoch + 1, "{record}");
    let won = record["kind"].as_str().unwrap().to_owned();
    assert!(
        (won == "emergency") == (operator == 0),
        "the operator's failover exited {operator} but the record says {won}"
    );
    tokio::time::sleep(Duration::from_secs(8)).await;
    kill(pid, Signal::SIGCONT).unwrap();

    let queued = queued.await.unwrap();
    assert!(
        !matches!(queued, Ok(s) if (200..300).contains(&s)),
        "a write queued at the frozen primary was acknowledged after it lost the shard: {queued:?}"
    );
    // After thawing: reads and writes of the shard answer 421 (503 at most while it learns).
    let after = eventually(
        "the thawed primary answers 421",
        Duration::from_secs(10),
        || async {
            let (status, body) = up
                .call_with(
                    "POST",
                    &format!("{c3}/v1/packets"),
                    &token(&uid, None),
                    Some(json!({"kind": "c2c", "total": 500, "count": 5})),
                    &[("idempotency-key", "sent-after-thawing")],
                )
                .await;
            assert!(
                !(200..300).contains(&status),
                "acknowledged after losing the shard: {body}"
            );
            (status == 421).then_some(body)
        },
    )
    .await;
    assert_eq!(after["owner"], "c1", "{after}");
    let (status, _) = up
        .call(
            "GET",
            &format!("{c3}/v1/users/{uid}/wallet"),
            &token(&uid, None),
            None,
        )
        .await;
    assert_eq!(status, 421);

    let (_, ledger) = load.finish().await;
    books_hold(&up, &ledger).await;
    // The thawed cell becomes the backup again (whatever it wrote alone set aside), and the
    // replicas then all equal their primaries.
    let rebuilt = cellctl_json(&up, &["rebuild", "c3", "--json"]);
    replicas_equal(&up).await;
    eprintln!(
        "freeze: the {won} failover won the race; divergent tail: {}",
        rebuilt["shards"][0]["divergent"]
    );
}

/// A whole region lost (its two cells and its raft-meta voter, SIGKILL, kept down): the
/// tie-breaker keeps a quorum, every shard of the region fails over to the other, and money
/// is conserved.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn losing_a_whole_region_fails_every_shard_of_it_over() {
    let _one = one_at_a_time().await;
    let tmp = TempDir::new().unwrap();
    let backend = Backend::from_env();
    let up = Up::start(&tmp.path().join("d"), &backend.args()).await;
    let load = Load::start(&up, 60.0, Duration::from_secs(14), true, "region-");
    tokio::time::sleep(Duration::from_secs(3)).await;

    let west_meta = up.record()["meta"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["region"] == "west")
        .map(|m| format!("meta{}", m["id"]))
        .expect("a raft-meta voter in the west");
    for p in ["c3", "c4", west_meta.as_str()] {
        let (code, out) = up.cellctl(&["stop", p, "--kill"]);
        assert_eq!(code, 0, "{p}: {out}");
    }
    let started = Instant::now();
    eventually(
        "every west shard served in the east",
        Duration::from_secs(30),
        || async {
            let a = shard_in_map(&up, "c3").await.0;
            let b = shard_in_map(&up, "c4").await.0;
            (a == "c1" && b == "c2").then_some(())
        },
    )
    .await;
    let moved = started.elapsed();

    let (_, ledger) = load.finish().await;
    // The east serves every shard; the moved shards have no backup (the west is gone), so
    // the books and the ledger are checked, not the replicas.
    books_hold(&up, &ledger).await;
    eprintln!(
        "region: both shards moved {} ms after the kill",
        moved.as_millis()
    );
}

/// A cell that is merely busy is never failed over: 15 s of the mixed load at 200 ops/s in
/// the short form CI runs (the long form, 10 minutes at 1,000 ops/s, is a benchmark), and no
/// failover is recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_busy_deployment_is_not_failed_over() {
    let _one = one_at_a_time().await;
    let tmp = TempDir::new().unwrap();
    let backend = Backend::from_env();
    let up = Up::start(&tmp.path().join("d"), &backend.args()).await;
    let before = up.view().await["version"].as_u64().unwrap();
    let load = Load::start(&up, 200.0, Duration::from_secs(15), true, "busy-");
    let (report, _) = load.finish().await;
    let after = up.view().await;
    assert_eq!(
        after["failovers"],
        json!({}),
        "a busy deployment was failed over (map version {before} → {})",
        after["version"]
    );
    eprintln!(
        "busy: {} ops at {:.0}/s, {} errors, no failover",
        report.completed, report.achieved_rate, report.errors
    );
}

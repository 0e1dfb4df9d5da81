//! What a primary does when its backup stops confirming, by the shard's policy in
//! raft-meta (DESIGN §6.3): `async` runs alone only under raft-meta's grant, counts what it
//! acknowledges alone, is re-protected by a new backup in another region and gives the
//! grant back once that backup has caught up; a primary cut off from both its backup and
//! raft-meta keeps refusing money writes while clients still reach it.

mod common;

use std::time::{Duration, Instant};

use common::*;
use reqwest::StatusCode;
use serde_json::{json, Value};
use topology::{CellId, Region, ShardId};
use wire::{BackupUnreachable, FailoverPolicy};

struct Deployment {
    meta: MetaNode,
    c1: TestCell,
    c2: TestCell,
    c3: TestCell,
}

/// raft-meta; c1 (east) backed up by c2 (west); c3 (west) a spare; c1's policy `policy`.
async fn deployment(policy: BackupUnreachable) -> Deployment {
    let meta = MetaNode::start().await;
    let client = meta.client();
    let ports = [free_port(), free_port(), free_port()];
    let id = |s: &str| CellId::parse(s).unwrap();
    for (name, region, port, backup) in [
        ("c2", "west", ports[1], None),
        ("c3", "west", ports[2], None),
        ("c1", "east", ports[0], Some(id("c2"))),
    ] {
        client
            .register_cell(
                &id(name),
                &Region::parse(region).unwrap(),
                &format!("http://127.0.0.1:{port}"),
                None,
                backup.as_ref(),
            )
            .await
            .unwrap();
    }
    // Every slot to c1: c2 and c3 only back up.
    let all: Vec<u16> = (0..1024).collect();
    let c1 = ShardId::own(&id("c1"));
    client.move_slots(&all, &c1).await.unwrap();
    client
        .set_policy(
            &c1,
            FailoverPolicy {
                auto_failover: false,
                on_backup_unreachable: policy,
            },
        )
        .await
        .unwrap();
    let spawn = |name: &str, port: u16| {
        TestCell::spawn_with(CellOptions {
            extra_args: vec![
                "--cell-id".into(),
                name.into(),
                "--meta".into(),
                meta.url.clone(),
                "--heartbeat-ms".into(),
                "100".into(),
            ],
            listen: Some(format!("127.0.0.1:{port}")),
            database_via: None,
        })
    };
    let c2 = spawn("c2", ports[1]).await;
    let c3 = spawn("c3", ports[2]).await;
    let c1 = spawn("c1", ports[0]).await;
    // c1 serves alice once the map that gave it every slot has reached it.
    until("c1 owns every slot", Duration::from_secs(30), || async {
        let (s, _) = c1.get("/v1/users/alice/wallet", &user("alice")).await;
        (s == StatusCode::OK).then_some(Value::Null)
    })
    .await;
    Deployment { meta, c1, c2, c3 }
}

async fn durability(c1: &TestCell) -> Value {
    let (s, v) = c1.get("/v1/internal/replication", &admin()).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    v
}

async fn send(c1: &TestCell, key: &str) -> (StatusCode, Value) {
    let res = c1
        .http
        .post(format!("{}/v1/packets", c1.url))
        .bearer_auth(user("alice"))
        .header("idempotency-key", key)
        .json(&json!({"kind": "c2c", "total": 100, "count": 2}))
        .send()
        .await
        .unwrap();
    let s = res.status();
    (s, res.json().await.unwrap_or(Value::Null))
}

async fn until<F, Fut>(what: &str, within: Duration, mut f: F) -> Value
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<Value>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The protected state first: c1's backup confirms (the first writes may wait for the
/// replica's bootstrap).
async fn protected(c1: &TestCell) {
    until("c1 protected", Duration::from_secs(30), || async {
        let v = durability(c1).await;
        (v["durability"]["state"] == "protected" && v["backup"]["acked"].as_i64() > Some(0))
            .then_some(v)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_runs_alone_under_a_grant_then_is_reprotected() {
    let mut d = deployment(BackupUnreachable::GoAsync).await;
    let (s, v) = send(&d.c1, "k0").await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    protected(&d.c1).await;

    // The backup dies: after the bound, raft-meta grants c1 to run alone; writes go on.
    d.c2.kill9();
    for i in 1..=5 {
        let (s, v) = send(&d.c1, &format!("k{i}")).await;
        assert_eq!(s, StatusCode::CREATED, "write {i} while alone: {v}");
    }
    let status = durability(&d.c1).await;
    assert!(
        status["durability"]["at_risk"].as_u64() >= Some(1),
        "answers given alone are counted at risk: {status}"
    );
    let view = d.meta.client().map(true).await.unwrap();
    let c1 = ShardId::parse("c1").unwrap();
    assert!(
        view.alone.contains_key(&c1)
            || view
                .map
                .as_ref()
                .unwrap()
                .shard(&c1)
                .unwrap()
                .backup
                .as_ref()
                .map(|b| b.as_str())
                == Some("c3"),
        "raft-meta holds the grant (or has already re-protected): {:?}",
        view.alone
    );

    // Re-protection: raft-meta names c3 (the only other region's live cell); c3 snapshots
    // and catches up; c1 gives the grant back and the alarm clears, while writes go on.
    let mut n = 100;
    let v = until(
        "re-protected and protected again",
        Duration::from_secs(60),
        || {
            n += 1;
            let key = format!("k{n}");
            let c1 = &d.c1;
            async move {
                let (s, v) = send(c1, &key).await;
                assert_eq!(
                    s,
                    StatusCode::CREATED,
                    "writes go on during re-protection: {v}"
                );
                let st = durability(c1).await;
                (st["backup"]["cell"] == "c3"
                    && st["durability"]["state"] == "protected"
                    && st["durability"]["alone"] == false)
                    .then_some(st)
            }
        },
    )
    .await;
    let view = until("the grant withdrawn", Duration::from_secs(10), || async {
        let view = d.meta.client().map(true).await.unwrap();
        (!view.alone.contains_key(&c1)).then_some(json!(view.version))
    })
    .await;
    let _ = (v, view);

    // The new backup holds exactly c1's rows, including everything acknowledged alone.
    let (s, held) =
        d.c3.post(
            "/v1/internal/replicas/c1/hold",
            &admin(),
            json!({"at": null}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{held}");
    let (_, p) = d.c1.get("/v1/internal/digest", &admin()).await;
    let at = p["pos"].as_i64().unwrap();
    let (s, r) =
        d.c3.get(
            &format!("/v1/internal/replicas/c1/digest?at={at}"),
            &admin(),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{r}");
    assert_eq!(p, r, "the re-protecting backup equals the primary");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_cut_off_from_backup_and_raft_meta_refuses_money_writes() {
    let d = deployment(BackupUnreachable::GoAsync).await;
    let (s, v) = send(&d.c1, "k0").await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    protected(&d.c1).await;

    // Freeze the backup and raft-meta: c1 can reach neither, clients still reach c1.
    signal(d.c2.pid().unwrap(), "STOP");
    signal(d.meta.pid(), "STOP");
    let started = Instant::now();
    let (s, v) = send(&d.c1, "k-cut-off").await;
    let waited = started.elapsed();
    signal(d.meta.pid(), "CONT");
    signal(d.c2.pid().unwrap(), "CONT");
    assert_eq!(
        s,
        StatusCode::SERVICE_UNAVAILABLE,
        "a cut-off primary must not acknowledge alone: {v}"
    );
    assert_eq!(v["code"], "cell_unavailable", "{v}");
    assert!(
        waited < Duration::from_secs(10),
        "refused in bounded time, not hung: {waited:?}"
    );
    let (s, _) = d.c1.get("/v1/users/alice/wallet", &user("alice")).await;
    assert_eq!(s, StatusCode::OK, "reads still work");

    // Both back: the same request is answered, from the write committed before.
    let v = until("writes resume", Duration::from_secs(30), || async {
        let (s, v) = send(&d.c1, "k-cut-off").await;
        (s == StatusCode::CREATED).then_some(v)
    })
    .await;
    assert!(v["packet_id"].is_string(), "{v}");
    let _ = &d.c3;
}

/// A primary restarted on a persisted map of raft-meta's current version still takes its
/// policy from raft-meta (no newer map arrives to carry it), so `async` still runs alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_primary_keeps_its_policy() {
    let mut d = deployment(BackupUnreachable::GoAsync).await;
    let (s, v) = send(&d.c1, "k0").await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    protected(&d.c1).await;
    d.c1.restart().await;
    protected(&d.c1).await;
    let status = durability(&d.c1).await;
    assert_eq!(status["durability"]["policy"], "async", "{status}");
    d.c2.kill9();
    let (s, v) = send(&d.c1, "k1").await;
    assert_eq!(s, StatusCode::CREATED, "async after a restart: {v}");
}

//! Run-alone grants against real `raft-meta` processes: the routes and the client (with a
//! cell's `internal` token, through a follower), their refusals, and the leader's
//! re-protection naming another backup in another region within a few seconds.

mod support;

use std::time::{Duration, Instant};

use raft_meta::client::{ClientError, MetaClient};
use raft_meta::state::{BackupUnreachable, FailoverPolicy, MapView};
use reqwest::StatusCode;
use serde_json::{json, Value};
use support::{internal_token, serial, SECRET};
use topology::{CellId, Epoch, Region};

fn sh(s: &str) -> topology::ShardId {
    topology::ShardId::parse(s).unwrap()
}

fn cell(s: &str) -> CellId {
    CellId::parse(s).unwrap()
}

fn region(s: &str) -> Region {
    Region::parse(s).unwrap()
}

fn go_async() -> FailoverPolicy {
    FailoverPolicy {
        auto_failover: true,
        on_backup_unreachable: BackupUnreachable::GoAsync,
    }
}

fn code(e: &ClientError) -> &str {
    match e {
        ClientError::Rejected { code, .. } => code,
        other => panic!("not a rejection: {other:?}"),
    }
}

async fn map_until(
    client: &MetaClient,
    what: &str,
    within: Duration,
    ok: impl Fn(&MapView) -> bool,
) -> MapView {
    let deadline = Instant::now() + within;
    loop {
        let view = client.map(true).await.expect("consistent map");
        if ok(&view) {
            return view;
        }
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cell_runs_alone_under_a_grant_and_the_leader_re_protects_it() {
    // Arrange: c1 east backed up by c2 west; c3 west backs up nobody; c4 east (same region as
    // c1: never a candidate). A cell's client talks only to a follower, with `internal`.
    let _serial = serial().await;
    let c = support::cluster(3, &[]).await;
    let admin = c.client();
    for (id, r) in [
        ("c1", "east"),
        ("c2", "west"),
        ("c3", "west"),
        ("c4", "east"),
    ] {
        admin
            .register_cell(&cell(id), &region(r), "http://127.0.0.1:9001", None, None)
            .await
            .unwrap();
    }
    admin
        .set_backup(&sh("c1"), Some(&cell("c2")))
        .await
        .unwrap();
    admin
        .set_backup(&sh("c2"), Some(&cell("c1")))
        .await
        .unwrap();
    let leader = c.agreed_leader(&[1, 2, 3]).await;
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    let cell_client = MetaClient::new(vec![c.addr(follower)], internal_token());
    let epoch = admin
        .map(true)
        .await
        .unwrap()
        .map
        .unwrap()
        .shard_epoch(&sh("c1"));

    // Act / Assert: refusals, each with its code, through the follower.
    let refused = cell_client
        .request_alone(&sh("c1"), epoch)
        .await
        .unwrap_err();
    assert_eq!(code(&refused), "policy_refuses", "{refused}");
    assert!(!refused.retryable());
    admin.set_policy(&sh("c1"), go_async()).await.unwrap();
    let stale = cell_client
        .request_alone(&sh("c1"), epoch.next())
        .await
        .unwrap_err();
    assert_eq!(code(&stale), "stale_epoch", "{stale}");
    let unknown = cell_client
        .request_alone(&sh("nope"), epoch)
        .await
        .unwrap_err();
    assert_eq!(code(&unknown), "unknown_shard", "{unknown}");

    // The grant, and its repeat (a no-op at the same version).
    let granted_at = Instant::now();
    let v = cell_client.request_alone(&sh("c1"), epoch).await.unwrap();
    assert_eq!(
        cell_client.request_alone(&sh("c1"), epoch).await.unwrap(),
        v
    );
    let view = admin.map(true).await.unwrap();
    let grant = &view.alone[&sh("c1")];
    assert_eq!(
        (
            grant.epoch,
            grant.since_version,
            grant.backup_at_grant.clone()
        ),
        (epoch.0, v, Some(cell("c2")))
    );

    // Re-protection: past the 2 s default bound the leader names c3, the only cell in another
    // region that is not c1's old backup, and records it in the grant.
    let view = map_until(&admin, "re-protection", Duration::from_secs(10), |v| {
        v.alone
            .get(&sh("c1"))
            .is_some_and(|g| g.reprotected_to.is_some())
    })
    .await;
    let waited = granted_at.elapsed();
    let map = view.map.as_ref().unwrap();
    assert_eq!(map.shard(&sh("c1")).unwrap().backup, Some(cell("c3")));
    assert_eq!(view.alone[&sh("c1")].reprotected_to, Some(cell("c3")));
    assert!(
        waited >= Duration::from_secs(2),
        "re-protected after {waited:?}, before the bound"
    );

    // The grant stays until the cell withdraws it; a second withdrawal is a no-op.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(admin.map(true).await.unwrap().alone.contains_key(&sh("c1")));
    let w = cell_client.withdraw_alone(&sh("c1")).await.unwrap();
    assert!(w > v);
    assert_eq!(cell_client.withdraw_alone(&sh("c1")).await.unwrap(), w);
    let view = admin.map(true).await.unwrap();
    assert!(view.alone.is_empty());
    assert_eq!(
        view.map.unwrap().shard(&sh("c1")).unwrap().backup,
        Some(cell("c3")),
        "the new backup stays"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_alone_routes_answer_problems_for_bad_callers_and_bad_input() {
    // Arrange
    let _serial = serial().await;
    let c = support::cluster(3, &[]).await;
    let admin = c.client();
    admin
        .register_cell(
            &cell("c1"),
            &region("east"),
            "http://127.0.0.1:9001",
            None,
            None,
        )
        .await
        .unwrap();
    let http = reqwest::Client::new();
    let url = format!("http://{}/v1/cells/c1/alone", c.addr(2));
    let user = topology::auth::mint(SECRET.as_bytes(), "u42", None, 60);

    // Act / Assert
    let post = |token: &str, body: Value| http.post(&url).bearer_auth(token).json(&body).send();
    let r = post(&user, json!({"epoch": 1})).await.unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let r = http.delete(&url).bearer_auth(&user).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let r = http
        .post(&url)
        .json(&json!({"epoch": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    for bad in [
        json!({}),
        json!({"epoch": -1}),
        json!({"epoch": "x"}),
        json!({"epoch": 1, "x": 2}),
    ] {
        let r = post(&internal_token(), bad.clone()).await.unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{bad}");
    }
    let r = post(&internal_token(), json!({"epoch": 1})).await.unwrap();
    assert_eq!(r.status(), StatusCode::CONFLICT);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    let p: Value = r.json().await.unwrap();
    assert_eq!(p["code"], "policy_refuses", "{p}");
    let r = http
        .delete(&url)
        .bearer_auth(internal_token())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let v: Value = r.json().await.unwrap();
    assert!(v["version"].as_u64().is_some(), "{v}");

    // An admin may grant too (here, once the policy allows it).
    admin.set_policy(&sh("c1"), go_async()).await.unwrap();
    let r = post(&support::admin_token(), json!({"epoch": Epoch(1)}))
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK, "{:?}", r.text().await);
}

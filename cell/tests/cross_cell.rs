//! Two real cells with a static map: claims by users homed in the other cell are credited
//! there exactly once, while the destination cell is SIGKILLed and restarted mid-stream.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::*;
use reqwest::StatusCode;
use serde_json::{json, Value};
use topology::{CellId, CellInfo, CellMap, CellStatus, Region, Slot, Uid};

/// c1 (east) owns the even slots, c2 (west) the odd ones; each backs the other up.
fn two_cell_map(c1: u16, c2: u16) -> CellMap {
    let info = |id: &str, region: &str, port: u16| CellInfo {
        id: CellId::parse(id).unwrap(),
        region: Region::parse(region).unwrap(),
        url: format!("http://127.0.0.1:{port}"),
        status: CellStatus::Active,
    };
    let owners = Slot::all()
        .map(|s| CellId::parse(if s.get() % 2 == 0 { "c1" } else { "c2" }).unwrap())
        .collect();
    // No backups here: these tests are about transfers between cells, and killing c2 must not
    // also take away c1's backup (a primary whose backup is down refuses money writes under
    // the default policy; cell/tests/replication.rs tests that).
    let no_backups = std::collections::BTreeMap::new();
    CellMap::from_assignment(
        vec![info("c1", "east", c1), info("c2", "west", c2)],
        owners,
        &no_backups,
    )
    .unwrap()
}

/// `n` uids whose home is the cell owning slots of parity `parity`.
fn homed(prefix: &str, parity: u16, n: usize) -> Vec<String> {
    (0..)
        .map(|i| format!("{prefix}{i}"))
        .filter(|u| Uid::parse(u).unwrap().slot().get() % 2 == parity)
        .take(n)
        .collect()
}

async fn spawn_pair() -> (TestCell, TestCell, tempfile::NamedTempFile) {
    spawn_pair_with(&[], &[]).await
}

async fn spawn_pair_with(
    c1_args: &[&str],
    c2_args: &[&str],
) -> (TestCell, TestCell, tempfile::NamedTempFile) {
    let (p1, p2) = (free_port(), free_port());
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        file.path(),
        serde_json::to_string(&two_cell_map(p1, p2)).unwrap(),
    )
    .unwrap();
    let opts = |id: &str, port: u16, extra: &[&str]| {
        let mut extra_args: Vec<String> = vec![
            "--cell-id".into(),
            id.into(),
            "--map".into(),
            file.path().display().to_string(),
        ];
        extra_args.extend(extra.iter().map(|a| a.to_string()));
        CellOptions {
            extra_args,
            listen: Some(format!("127.0.0.1:{port}")),
            database_via: None,
        }
    };
    let c1 = TestCell::spawn_with(opts("c1", p1, c1_args)).await;
    let c2 = TestCell::spawn_with(opts("c2", p2, c2_args)).await;
    (c1, c2, file)
}

async fn totals(cell: &TestCell) -> Value {
    let (s, v) = cell.get("/v1/admin/reconciliation", &admin()).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["ok"], true, "each cell balances on its own: {v}");
    v["totals"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claimers_homed_elsewhere_are_credited_once_across_a_destination_crash() {
    // Arrange
    let (c1, mut c2, _map) = spawn_pair().await;
    let sender = &homed("sender", 0, 1)[0];
    let claimers = homed("far", 1, 60);
    let total = 6_000;
    let packet = c1.paid_packet(sender, total, 60).await;

    // Act: the first 20 claim, c2 dies, 20 more claim while it is down, it comes back,
    // the last 20 claim.
    let mut amounts: HashMap<String, i64> = HashMap::new();
    for (i, uid) in claimers.iter().enumerate() {
        if i == 20 {
            c2.kill9();
        }
        if i == 40 {
            c2.restart().await;
        }
        let (status, claim) = claim_until_final(&c1, &packet, uid).await;
        assert_eq!(
            status,
            StatusCode::CREATED,
            "the claim answers even while the home cell is down: {claim}"
        );
        amounts.insert(uid.clone(), claim["amount"].as_i64().unwrap());
    }

    // Assert: every claimer credited exactly once in their home cell, nothing left in flight.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let t = totals(&c1).await;
        if t["in_flight"] == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "transfers still in flight: {t}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for (uid, amount) in &amounts {
        let (s, w) = c2.get(&format!("/v1/users/{uid}/wallet"), &user(uid)).await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(
            w["balance"].as_i64().unwrap(),
            *amount,
            "{uid} credited exactly once"
        );
        let (s, _) = c1.get(&format!("/v1/users/{uid}/wallet"), &user(uid)).await;
        assert_eq!(
            s,
            StatusCode::MISDIRECTED_REQUEST,
            "c1 never holds a wallet of c2's users"
        );
    }
    let some = claimers.first().unwrap();
    let (_, recv) = c2
        .get(
            &format!("/v1/users/{some}/packets?role=received"),
            &user(some),
        )
        .await;
    assert_eq!(
        recv["items"][0]["packet_id"],
        packet.as_str(),
        "the home cell lists claims made elsewhere"
    );
    assert_eq!(
        recv["items"][0]["amount"].as_i64().unwrap(),
        amounts[some.as_str()]
    );
    let (t1, t2) = (totals(&c1).await, totals(&c2).await);
    assert_eq!(t1["transferred_out"], total);
    assert_eq!(t2["transferred_in"], total);
    // Money conserved across the deployment: the transfer terms cancel.
    let sum = |k: &str| t1[k].as_i64().unwrap() + t2[k].as_i64().unwrap();
    assert_eq!(sum("funded"), total);
    assert_eq!(sum("wallets") + sum("escrow") + sum("in_flight"), total);
}

#[tokio::test]
async fn internal_transfers_need_the_internal_scope_and_a_home_here() {
    let (c1, c2, _map) = spawn_pair().await;
    let far = &homed("far", 1, 1)[0];
    let transfer =
        topology::MintedId::mint(topology::IdKind::Transfer, Uid::parse(far).unwrap().slot());
    let packet = topology::MintedId::mint(topology::IdKind::Packet, Slot::new(0).unwrap());
    let body = json!({"transfers": [{"transfer_id": transfer.as_str(), "uid": far, "amount": 5, "packet_id": packet.as_str()}]});
    let (s, _) = c2
        .post("/v1/internal/transfers", &user(far), body.clone())
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "a user cannot credit themself");
    let internal = token("svc:cell-c1", Some("internal"));
    let (s, v) = c1
        .post("/v1/internal/transfers", &internal, body.clone())
        .await;
    assert_eq!(
        (s, v["code"].as_str()),
        (StatusCode::MISDIRECTED_REQUEST, Some("wrong_cell"))
    );
    for _ in 0..3 {
        let (s, v) = c2
            .post("/v1/internal/transfers", &internal, body.clone())
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
    }
    let (_, w) = c2.get(&format!("/v1/users/{far}/wallet"), &user(far)).await;
    assert_eq!(w["balance"], 5, "three deliveries, one credit");
}

fn grant_body(grant_id: &str, uid: &str) -> Value {
    json!({"grant_id": grant_id, "uid": uid, "amount": 300, "expires_at": "2099-01-01T00:00:00Z"})
}

/// A grant id whose order cell is the one owning slots of parity `parity`.
fn grant_id_in(prefix: &str, parity: u16) -> String {
    (0..)
        .map(|i| format!("{prefix}-{i}"))
        .find(|g| Slot::of(g.as_bytes()).get() % 2 == parity)
        .unwrap()
}

async fn subsidies(cell: &TestCell, uid: &str) -> Vec<Value> {
    let (s, v) = cell
        .get(&format!("/v1/users/{uid}/subsidies"), &admin())
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    v["subsidies"].as_array().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_grant_id_raced_by_two_users_through_two_home_cells() {
    let (c1, c2, _map) = spawn_pair().await;
    let (a, b) = (&homed("left", 0, 1)[0], &homed("right", 1, 1)[0]);
    for round in 0..10 {
        // Alternate which cell is the order cell of the grant id.
        let grant = grant_id_in(&format!("race{round}"), round % 2);
        let token = activity();
        let (ra, rb) = tokio::join!(
            c1.post("/v1/subsidies", &token, grant_body(&grant, a)),
            c2.post("/v1/subsidies", &token, grant_body(&grant, b)),
        );
        let mut statuses = vec![ra.0, rb.0];
        statuses.sort();
        assert_eq!(
            statuses,
            vec![StatusCode::CREATED, StatusCode::CONFLICT],
            "round {round}: {ra:?} {rb:?}"
        );
        let loser = if ra.0 == StatusCode::CONFLICT {
            &ra.1
        } else {
            &rb.1
        };
        assert_eq!(loser["code"], "grant_id_conflict");
    }
    let n = subsidies(&c1, a).await.len() + subsidies(&c2, b).await.len();
    assert_eq!(n, 10, "exactly one subsidy per grant id, across both cells");
    let (t1, t2) = (totals(&c1).await, totals(&c2).await);
    assert_eq!(
        t1["funded"].as_i64().unwrap() + t2["funded"].as_i64().unwrap(),
        10 * 300
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_reservation_and_commit_is_settled_by_the_sweep() {
    // Arrange: c2 crashes right after reserving in c1 (the order cell).
    let settle = ["--grant-settle-after-ms", "300"];
    let c2_args = [&settle[..], &["--test-fault", "crash-after-reserve"]].concat();
    let (c1, mut c2, _map) = spawn_pair_with(&settle, &c2_args).await;
    let (a, b) = (&homed("left", 0, 1)[0], &homed("right", 1, 1)[0]);
    let grant = grant_id_in("crash-reserve", 0);

    // Act
    let res = c2
        .http
        .post(format!("{}/v1/subsidies", c2.url))
        .bearer_auth(activity())
        .json(&grant_body(&grant, b))
        .send()
        .await;
    assert!(
        res.is_err() || res.unwrap().status().is_server_error(),
        "the home cell died mid-grant"
    );
    c2.drop_arg("--test-fault");
    c2.restart().await;

    // Assert: nothing was granted; once the sweep settles the attempt, the retry grants
    // exactly one subsidy, and the grant id stays b's.
    assert!(
        subsidies(&c2, b).await.is_empty(),
        "a crash before commit grants nothing"
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let first = loop {
        let (s, v) = c2
            .post("/v1/subsidies", &activity(), grant_body(&grant, b))
            .await;
        if s == StatusCode::CREATED || s == StatusCode::OK {
            break v;
        }
        assert_eq!(
            s,
            StatusCode::SERVICE_UNAVAILABLE,
            "only a transient refusal while settling: {v}"
        );
        assert!(Instant::now() < deadline, "the grant never settled");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let (s, again) = c2
        .post("/v1/subsidies", &activity(), grant_body(&grant, b))
        .await;
    assert_eq!(
        (s, &again["subsidy_id"]),
        (StatusCode::OK, &first["subsidy_id"])
    );
    let (s, v) = c1
        .post("/v1/subsidies", &activity(), grant_body(&grant, a))
        .await;
    assert_eq!(
        (s, v["code"].as_str()),
        (StatusCode::CONFLICT, Some("grant_id_conflict"))
    );
    assert_eq!(subsidies(&c2, b).await.len(), 1);
    assert!(subsidies(&c1, a).await.is_empty());
    let (t1, t2) = (totals(&c1).await, totals(&c2).await);
    assert_eq!(
        t1["funded"].as_i64().unwrap() + t2["funded"].as_i64().unwrap(),
        300
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_after_commit_is_confirmed_by_the_sweep() {
    // Arrange: c2 commits the subsidy, then crashes before confirming to c1.
    let settle = ["--grant-settle-after-ms", "300"];
    let c2_args = [&settle[..], &["--test-fault", "crash-after-commit"]].concat();
    let (c1, mut c2, _map) = spawn_pair_with(&settle, &c2_args).await;
    let (a, b) = (&homed("left", 0, 1)[0], &homed("right", 1, 1)[0]);
    let grant = grant_id_in("crash-commit", 0);

    let res = c2
        .http
        .post(format!("{}/v1/subsidies", c2.url))
        .bearer_auth(activity())
        .json(&grant_body(&grant, b))
        .send()
        .await;
    assert!(
        res.is_err() || res.unwrap().status().is_server_error(),
        "the home cell died mid-grant"
    );
    c2.drop_arg("--test-fault");
    c2.restart().await;

    // Assert: the committed subsidy stands, once; the sweep confirms it, so the grant id
    // stays b's; a retry answers the same subsidy.
    let granted = subsidies(&c2, b).await;
    assert_eq!(granted.len(), 1, "the commit survived the crash");
    wait_for_metric(
        &c1,
        r#"redcell_grant_reservations_settled_total{decision="committed"} 1"#,
    )
    .await;
    let (s, v) = c1
        .post("/v1/subsidies", &activity(), grant_body(&grant, a))
        .await;
    assert_eq!(
        (s, v["code"].as_str()),
        (StatusCode::CONFLICT, Some("grant_id_conflict"))
    );
    let (s, again) = c2
        .post("/v1/subsidies", &activity(), grant_body(&grant, b))
        .await;
    assert_eq!(
        (s, &again["subsidy_id"]),
        (StatusCode::OK, &granted[0]["subsidy_id"])
    );
    assert_eq!(subsidies(&c2, b).await.len(), 1, "nothing granted twice");
    let (t1, t2) = (totals(&c1).await, totals(&c2).await);
    assert_eq!(
        t1["funded"].as_i64().unwrap() + t2["funded"].as_i64().unwrap(),
        300
    );
}

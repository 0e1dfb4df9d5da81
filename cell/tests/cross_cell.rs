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
    let info = |id: &str, region: &str, port: u16, backup: &str| CellInfo {
        id: CellId::parse(id).unwrap(),
        region: Region::parse(region).unwrap(),
        url: format!("http://127.0.0.1:{port}"),
        status: CellStatus::Active,
        backup: Some(CellId::parse(backup).unwrap()),
    };
    let owners = Slot::all()
        .map(|s| CellId::parse(if s.get() % 2 == 0 { "c1" } else { "c2" }).unwrap())
        .collect();
    CellMap::from_assignment(
        vec![info("c1", "east", c1, "c2"), info("c2", "west", c2, "c1")],
        owners,
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
    let (p1, p2) = (free_port(), free_port());
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        file.path(),
        serde_json::to_string(&two_cell_map(p1, p2)).unwrap(),
    )
    .unwrap();
    let opts = |id: &str, port: u16| CellOptions {
        extra_args: vec![
            "--cell-id".into(),
            id.into(),
            "--map".into(),
            file.path().display().to_string(),
        ],
        listen: Some(format!("127.0.0.1:{port}")),
    };
    let c1 = TestCell::spawn_with(opts("c1", p1)).await;
    let c2 = TestCell::spawn_with(opts("c2", p2)).await;
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

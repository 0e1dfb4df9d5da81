//! C2C payments reach a final state when callbacks are dropped: the re-check asks the
//! cashier (a fake one: a real HTTP server we start), and the deadline cancels what the
//! cashier never decides.

mod common;

use std::time::{Duration, Instant};

use common::cashier::Cashier;
use common::*;
use reqwest::StatusCode;
use serde_json::json;

async fn cell_with(cashier: Option<&Cashier>) -> TestCell {
    let mut args: Vec<String> = vec![
        "--payment-recheck-ms".into(),
        "300".into(),
        "--payment-deadline-s".into(),
        "120".into(),
    ];
    if let Some(c) = cashier {
        args.extend(["--payment-provider".into(), c.url.clone()]);
    }
    TestCell::spawn_with(CellOptions {
        extra_args: args,
        ..Default::default()
    })
    .await
}

async fn send_c2c(cell: &TestCell, sender: &str) -> String {
    let res = cell
        .http
        .post(format!("{}/v1/packets", cell.url))
        .bearer_auth(user(sender))
        .header("idempotency-key", "pay-1")
        .json(&json!({"kind": "c2c", "total": 500, "count": 5}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    let v: serde_json::Value = res.json().await.unwrap();
    v["packet_id"].as_str().unwrap().to_owned()
}

async fn wait_for_status(cell: &TestCell, packet: &str, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, p) = cell.get(&format!("/v1/packets/{packet}"), &user("x")).await;
        if p["status"] == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "packet stayed {} instead of {want}",
            p["status"]
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn dropped_success_callbacks_still_activate_the_packet() {
    let cashier = Cashier::start("succeed", 1.0);
    let cell = cell_with(Some(&cashier)).await;
    let packet = send_c2c(&cell, "payer").await;
    wait_for_status(&cell, &packet, "active").await;
    let (s, _) = claim_until_final(&cell, &packet, "lucky").await;
    assert_eq!(s, StatusCode::CREATED);
    let report = cell.settled().await;
    assert_eq!(
        (report["ok"].clone(), report["totals"]["funded"].clone()),
        (json!(true), json!(500))
    );
}

#[tokio::test]
async fn dropped_failure_callbacks_still_cancel_the_packet() {
    let cashier = Cashier::start("fail", 1.0);
    let cell = cell_with(Some(&cashier)).await;
    let packet = send_c2c(&cell, "payer").await;
    wait_for_status(&cell, &packet, "cancelled").await;
    let report = cell.settled().await;
    assert_eq!(report["totals"]["funded"], 0);
}

#[tokio::test]
async fn a_payment_never_decided_is_cancelled_at_its_deadline() {
    let cashier = Cashier::start("never", 0.0);
    let cell = cell_with(Some(&cashier)).await;
    let packet = send_c2c(&cell, "payer").await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    let (_, p) = cell.get(&format!("/v1/packets/{packet}"), &user("x")).await;
    assert_eq!(
        p["status"], "awaiting_payment",
        "undecided before the deadline"
    );
    wait_for_metric(&cell, r#"redcell_worker_pending{worker="payments"} 1"#).await;
    cell.advance_clock(121).await;
    wait_for_status(&cell, &packet, "cancelled").await;
    wait_for_metric(&cell, r#"redcell_worker_pending{worker="payments"} 0"#).await;
}

#[tokio::test]
async fn without_a_cashier_the_callback_decides_and_the_deadline_ends_the_rest() {
    let cell = cell_with(None).await;
    let packet = send_c2c(&cell, "payer").await;
    cell.advance_clock(121).await;
    wait_for_status(&cell, &packet, "cancelled").await;
}

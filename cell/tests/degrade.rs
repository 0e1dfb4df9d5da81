//! Automatic degradation (seed 000 自动化降级, seed 002 核心依赖降级): with real processes
//! (raft-meta, a cell, the fake cashier), the cashier is made to fail; the cell's payment
//! breaker opens by itself on the thresholds raft-meta holds, C2C sends answer 503 `degraded`
//! and write nothing while claims and B2C sends keep working; the cashier heals and sends
//! come back by themselves through the half-open probes.

mod common;

use std::time::{Duration, Instant};

use common::cashier::Cashier;
use common::*;
use reqwest::StatusCode;
use serde_json::{json, Value};
use topology::{CellId, Region};

async fn send(cell: &TestCell, sender: &str, key: &str, body: Value) -> reqwest::Response {
    cell.http
        .post(format!("{}/v1/packets", cell.url))
        .bearer_auth(user(sender))
        .header("idempotency-key", key)
        .json(&body)
        .send()
        .await
        .expect("send")
}

fn c2c() -> Value {
    json!({"kind": "c2c", "total": 300, "count": 3})
}

async fn breaker(cell: &TestCell) -> Value {
    let (s, v) = cell.get("/v1/internal/replication", &admin()).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    v["payment_breaker"].clone()
}

async fn metric(cell: &TestCell, name: &str) -> Option<f64> {
    let text = cell
        .http
        .get(format!("{}/metrics", cell.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find(|l| l.split([' ', '{']).next() == Some(name))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

async fn wait_active(cell: &TestCell, packet: &str) {
    wait_until("the packet is paid", || async {
        let (_, p) = cell.get(&format!("/v1/packets/{packet}"), &user("x")).await;
        p["status"] == "active"
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c2c_sends_degrade_while_the_cashier_fails_and_recover_by_themselves() {
    // Arrange: tight thresholds in raft-meta, a cell following it, a healthy cashier.
    let meta = MetaNode::start().await;
    let client = meta.client();
    let port = free_port();
    client
        .register_cell(
            &CellId::parse("c1").unwrap(),
            &Region::parse("east").unwrap(),
            &format!("http://127.0.0.1:{port}"),
            None,
            None,
        )
        .await
        .unwrap();
    let policy = wire::BreakerPolicy {
        enabled: true,
        window_s: 60,
        min_calls: 4,
        max_error_pct: 50,
        max_p90_ms: 5_000,
        open_s: 2,
        probes: 2,
    };
    client.set_breaker(&policy).await.unwrap();
    let cashier = Cashier::start("succeed", 0.0);
    let cell = TestCell::spawn_with(CellOptions {
        extra_args: vec![
            "--cell-id".into(),
            "c1".into(),
            "--meta".into(),
            meta.url.clone(),
            "--payment-provider".into(),
            cashier.url.clone(),
            "--payment-recheck-ms".into(),
            "300".into(),
        ],
        listen: Some(format!("127.0.0.1:{port}")),
        database_via: None,
    })
    .await;
    wait_until("the cell follows raft-meta's thresholds", || async {
        breaker(&cell).await["policy"]["min_calls"] == 4
    })
    .await;
    assert_eq!(breaker(&cell).await["state"], "closed");

    // A C2C packet paid while the cashier is well (claimed later, while degraded), and a
    // subsidy for a B2C send while degraded.
    let res = send(&cell, "payer", "before", c2c()).await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let paid = res.json::<Value>().await.unwrap()["packet_id"]
        .as_str()
        .unwrap()
        .to_owned();
    wait_active(&cell, &paid).await;
    let subsidy = cell.grant("g-degrade", "corp", 400).await;

    // Act 1: the cashier fails. Sends are taken (and their payments fail to register) until
    // the breaker has seen enough failed calls; then they are refused.
    cashier.set_faults(true, 0).await;
    let failed_at = Instant::now();
    let mut taken = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    let refused = loop {
        let key = format!("while-failing-{}", taken.len());
        let res = send(&cell, "payer", &key, c2c()).await;
        if res.status() == StatusCode::SERVICE_UNAVAILABLE {
            break res;
        }
        assert_eq!(res.status(), StatusCode::CREATED);
        let v: Value = res.json().await.unwrap();
        taken.push(v["packet_id"].as_str().unwrap().to_owned());
        assert!(
            Instant::now() < deadline,
            "C2C sends never degraded ({} taken while the cashier failed)",
            taken.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let refused_key = format!("while-failing-{}", taken.len());
    eprintln!(
        "degraded after {} sends taken, {} ms after the cashier failed",
        taken.len(),
        failed_at.elapsed().as_millis()
    );

    // Assert 1: 503 degraded, problem+json, Retry-After, a human message.
    assert_eq!(
        refused.headers()["content-type"],
        "application/problem+json"
    );
    let retry_after: u32 = refused.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&retry_after), "Retry-After {retry_after}");
    let problem: Value = refused.json().await.unwrap();
    assert_eq!(problem["code"], "degraded", "{problem}");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("payment provider"),
        "{problem}"
    );
    let b = breaker(&cell).await;
    assert_ne!(b["state"], "closed", "{b}");
    assert!(b["trips"].as_u64().unwrap() >= 1, "{b}");
    assert!(b["reason"].as_str().unwrap().contains("failed"), "{b}");
    assert_eq!(
        metric(&cell, "redcell_provider_breaker_trips_total").await,
        Some(1.0)
    );
    // While degraded, claims and B2C sends work.
    let (s, v) = claim_until_final(&cell, &paid, "claimer").await;
    assert_eq!(s, StatusCode::CREATED, "claim while degraded: {v}");
    let res = send(
        &cell,
        "corp",
        "b2c-while-failing",
        json!({"kind": "b2c", "subsidy_id": subsidy, "count": 2}),
    )
    .await;
    assert_eq!(res.status(), StatusCode::CREATED, "B2C while degraded");
    let b2c = res.json::<Value>().await.unwrap()["packet_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (s, v) = claim_until_final(&cell, &b2c, "claimer").await;
    assert_eq!(s, StatusCode::CREATED, "B2C claim while degraded: {v}");
    // Still refused while the cashier fails: the probes fail and re-open it.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let res = send(&cell, "payer", "still-failing", c2c()).await;
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        metric(&cell, "redcell_provider_breaker_probes_total").await >= Some(1.0),
        "a probe went out"
    );

    // Act 2: the cashier heals; nothing else is done.
    cashier.set_faults(false, 0).await;
    let healed_at = Instant::now();

    // Assert 2: sends come back by themselves (cool-down, then two good probes).
    wait_until("C2C sends are taken again", || async {
        breaker(&cell).await["state"] == "closed"
    })
    .await;
    eprintln!(
        "closed again {} ms after the cashier healed",
        healed_at.elapsed().as_millis()
    );
    assert_eq!(
        metric(&cell, "redcell_provider_breaker_state").await,
        Some(0.0)
    );
    // The refused send wrote nothing: its key is fresh (201, a new packet, no replay of the
    // 503), and the packet is paid through the healed cashier.
    let res = send(&cell, "payer", &refused_key, c2c()).await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let after = res.json::<Value>().await.unwrap();
    wait_active(&cell, after["packet_id"].as_str().unwrap()).await;
    // The sends taken while it failed are paid too once it heals (the sweep re-registers
    // them), and the books balance.
    for packet in &taken {
        wait_active(&cell, packet).await;
    }
    let report = cell.settled().await;
    assert_eq!(report["ok"], json!(true), "{report}");
}

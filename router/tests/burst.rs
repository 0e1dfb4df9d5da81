//! Hardening finding 4: a burst of concurrent claimers on one packet through the router must
//! not turn into `503 cell_unavailable` while the cell is healthy (listen backlogs, the
//! router's connections to the cell).

mod support;

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::json;
use support::token;
use topology::{CellId, CellInfo, CellMap, CellStatus, Region};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_concurrent_claimers_get_answers_not_503s() {
    let _serial = support::serial().await;
    let dir = tempfile::TempDir::new().unwrap();
    let port = support::free_port();
    let map = CellMap::single(CellInfo {
        id: CellId::parse("c1").unwrap(),
        region: Region::parse("east").unwrap(),
        url: format!("http://127.0.0.1:{port}"),
        status: CellStatus::Active,
    });
    let file = dir.path().join("map.json");
    std::fs::write(&file, serde_json::to_vec(&map).unwrap()).unwrap();
    let _cell = support::spawn_cell(
        "c1",
        port,
        support::CellMapSource::Static(&file),
        dir.path(),
    )
    .await;
    let router = support::router_on_one_cell(dir.path(), "router", port, &[]).await;
    support::wait_ready(&router.url, "router").await;

    // A paid packet of 100 shares: 100 claimers win, the rest learn it is gone.
    let http = reqwest::Client::new();
    let sent: serde_json::Value = http
        .post(format!("{}/v1/packets", router.url))
        .bearer_auth(token("sender", None))
        .header("idempotency-key", "burst-1")
        .json(&json!({"kind": "c2c", "total": 10_000, "count": 100}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let packet = sent["packet_id"]
        .as_str()
        .unwrap_or_else(|| panic!("{sent}"))
        .to_owned();
    let payment = sent["payment"]["payment_id"].as_str().unwrap().to_owned();
    let paid = http
        .post(format!("{}/v1/payments/{payment}/callback", router.url))
        .bearer_auth(token("svc:payments", Some("payment:callback")))
        .json(&json!({"status": "succeeded"}))
        .send()
        .await
        .unwrap();
    assert_eq!(paid.status(), StatusCode::OK);

    // 500 claimers at once, each on its own connection (as 500 phones would be).
    let started = Instant::now();
    let claims = (0..500).map(|i| {
        let url = format!("{}/v1/packets/{packet}/claims", router.url);
        async move {
            let client = reqwest::Client::builder()
                .pool_max_idle_per_host(0)
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap();
            let t = Instant::now();
            let res = client
                .post(url)
                .bearer_auth(token(&format!("claimer-{i}"), None))
                .send()
                .await;
            (res.map(|r| r.status()), t.elapsed())
        }
    });
    let tasks: Vec<_> = claims.map(tokio::spawn).collect();
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.unwrap());
    }
    let mut by_status = std::collections::BTreeMap::new();
    let mut slowest = Duration::ZERO;
    for (status, took) in &results {
        let key = match status {
            Ok(s) => s.as_u16().to_string(),
            Err(e) => format!("error: {e}"),
        };
        *by_status.entry(key).or_insert(0) += 1;
        slowest = slowest.max(*took);
    }
    eprintln!(
        "500 claimers in {:?}, slowest {slowest:?}: {by_status:?}",
        started.elapsed()
    );
    assert!(
        by_status
            .keys()
            .all(|k| k.parse::<u16>().is_ok_and(|s| (200..500).contains(&s))),
        "every claimer gets an answer of the domain, never a 5xx or a failed connection: {by_status:?}"
    );
    assert_eq!(by_status.get("201"), Some(&100), "{by_status:?}");
}

//! kill -9 of the cell in the middle of a claim storm, then restart: no claim answered
//! 201 is lost, none doubled, every transfer completes, reconciliation holds.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use reqwest::StatusCode;
use serde_json::Value;
use tokio::task::JoinSet;

const PACKETS: usize = 8;
const SHARES: i64 = 100;
const TOTAL: i64 = 10_000;
const CLAIMERS_PER_PACKET: usize = 150;

/// One claim attempt per user, retrying 429; `None` when the connection failed (the cell died).
async fn try_claim(
    http: &reqwest::Client,
    url: &str,
    packet: &str,
    uid: &str,
) -> Option<(StatusCode, Value)> {
    loop {
        let res = http
            .post(format!("{url}/v1/packets/{packet}/claims"))
            .bearer_auth(user(uid))
            .send()
            .await
            .ok()?;
        let status = res.status();
        if status == StatusCode::TOO_MANY_REQUESTS {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        }
        let body = res.json().await.ok()?;
        return Some((status, body));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_mid_claim_storm_loses_and_doubles_nothing() {
    // Arrange: eight paid packets of 100 shares, 150 would-be claimers each.
    let mut cell = TestCell::spawn().await;
    let mut packets = Vec::new();
    for i in 0..PACKETS {
        packets.push(
            cell.paid_packet(&format!("sender-{i}"), TOTAL, SHARES)
                .await,
        );
    }
    let acked: Arc<Mutex<Vec<(String, String, Value)>>> = Arc::default();
    let acked_count = Arc::new(AtomicUsize::new(0));

    // Act: the storm, and a SIGKILL once 150 claims have been acknowledged.
    let mut storm = JoinSet::new();
    for (p, packet) in packets.iter().enumerate() {
        for i in 0..CLAIMERS_PER_PACKET {
            let (http, url, packet) = (cell.http.clone(), cell.url.clone(), packet.clone());
            let (acked, acked_count) = (acked.clone(), acked_count.clone());
            storm.spawn(async move {
                let uid = format!("c{p}-{i}");
                if let Some((status, body)) = try_claim(&http, &url, &packet, &uid).await {
                    if status == StatusCode::CREATED || status == StatusCode::OK {
                        acked.lock().unwrap().push((packet, uid, body));
                        acked_count.fetch_add(1, Ordering::SeqCst);
                    }
                }
            });
        }
    }
    // The killer is a plain thread, so no runtime scheduling can delay it past the storm.
    let pid = cell.pid().expect("running");
    let killer = {
        let acked_count = acked_count.clone();
        std::thread::spawn(move || {
            while acked_count.load(Ordering::SeqCst) < 100 {
                std::thread::yield_now();
            }
            let killed = std::process::Command::new("kill")
                .arg("-KILL")
                .arg(pid.to_string())
                .status();
            assert!(killed.is_ok_and(|s| s.success()), "SIGKILL sent");
        })
    };
    while storm.join_next().await.is_some() {}
    killer.join().unwrap();
    let acked_before = acked.lock().unwrap().clone();
    assert!(
        acked_before.len() < PACKETS * SHARES as usize,
        "the kill landed mid-storm"
    );
    cell.restart().await;

    // Assert: every acknowledged claim survived, with its amount and id.
    for (packet, uid, body) in &acked_before {
        let (status, again) = claim_until_final(&cell, packet, uid).await;
        assert_eq!(status, StatusCode::OK, "{uid} on {packet}: {again}");
        assert_eq!(again["claim_id"], body["claim_id"]);
        assert_eq!(again["amount"], body["amount"]);
    }

    // Act: the storm resumes after the restart; everyone tries once more.
    let cell = Arc::new(cell);
    let mut rest = JoinSet::new();
    for (p, packet) in packets.iter().enumerate() {
        for i in 0..CLAIMERS_PER_PACKET {
            let (cell, packet) = (cell.clone(), packet.clone());
            rest.spawn(
                async move { claim_until_final(&cell, &packet, &format!("c{p}-{i}")).await },
            );
        }
    }
    while let Some(r) = rest.join_next().await {
        let (status, body) = r.unwrap();
        assert!(
            matches!(
                status,
                StatusCode::CREATED | StatusCode::OK | StatusCode::GONE
            ),
            "{status} {body}"
        );
    }

    // Assert: exactly 100 claims per packet summing to its total, nobody twice, every
    // transfer completed into the right wallet, money conserved.
    let mut credited: HashMap<String, i64> = HashMap::new();
    for packet in &packets {
        let (_, list) = cell
            .get(&format!("/v1/packets/{packet}/claims"), &admin())
            .await;
        let claims = list["claims"].as_array().unwrap();
        assert_eq!(claims.len(), SHARES as usize);
        let uids: HashSet<_> = claims.iter().map(|c| c["uid"].as_str().unwrap()).collect();
        assert_eq!(uids.len(), claims.len(), "nobody twice");
        assert_eq!(
            claims
                .iter()
                .map(|c| c["amount"].as_i64().unwrap())
                .sum::<i64>(),
            TOTAL
        );
        for c in claims {
            *credited
                .entry(c["uid"].as_str().unwrap().to_owned())
                .or_default() += c["amount"].as_i64().unwrap();
        }
    }
    let report = cell.settled().await;
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(report["totals"]["in_flight"], 0, "every transfer completed");
    for (uid, amount) in credited.iter().take(60) {
        let (_, w) = cell.get(&format!("/v1/users/{uid}/wallet"), &admin()).await;
        assert_eq!(
            w["balance"].as_i64().unwrap(),
            *amount,
            "{uid} credited exactly once"
        );
    }
    assert_eq!(report["totals"]["wallets"], TOTAL * PACKETS as i64);
}

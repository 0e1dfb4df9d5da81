//! Races that must never break money: a claim storm on one packet, one Idempotency-Key sent
//! many times at once, one grant id raced by two users.

mod common;

use std::collections::HashSet;
use std::sync::Arc;

use common::*;
use reqwest::StatusCode;
use serde_json::json;
use tokio::task::JoinSet;

#[tokio::test]
async fn five_hundred_claimers_on_a_hundred_shares() {
    // Arrange
    let cell = Arc::new(TestCell::spawn().await);
    let total = 10_000;
    let packet = cell.paid_packet("sender", total, 100).await;

    // Act: 500 claimers at once, each retrying 429 claim_busy until a final answer.
    let mut set = JoinSet::new();
    for i in 0..500 {
        let (cell, packet) = (cell.clone(), packet.clone());
        set.spawn(async move {
            let uid = format!("claimer-{i}");
            let (s, v) = claim_until_final(&cell, &packet, &uid).await;
            (uid, s, v)
        });
    }
    let mut winners = Vec::new();
    let mut exhausted = 0;
    while let Some(r) = set.join_next().await {
        let (uid, status, body) = r.unwrap();
        match status {
            StatusCode::CREATED => {
                assert_eq!(body["uid"], uid.as_str());
                winners.push((uid, body["amount"].as_i64().unwrap()));
            }
            StatusCode::GONE => {
                assert_eq!(body["code"], "packet_exhausted");
                exhausted += 1;
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }

    // Assert
    assert_eq!(winners.len(), 100, "exactly one claim per share");
    assert_eq!(exhausted, 400);
    assert!(winners.iter().all(|(_, a)| *a >= 1));
    assert_eq!(winners.iter().map(|(_, a)| a).sum::<i64>(), total);
    let uids: HashSet<_> = winners.iter().map(|(u, _)| u).collect();
    assert_eq!(uids.len(), 100, "nobody twice");
    let (_, list) = cell
        .get(&format!("/v1/packets/{packet}/claims"), &user("x"))
        .await;
    assert_eq!(list["claims"].as_array().unwrap().len(), 100);
    let report = cell.settled().await;
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(report["totals"]["wallets"], total);
}

#[tokio::test]
async fn one_idempotency_key_eight_times_at_once() {
    let cell = Arc::new(TestCell::spawn().await);
    let mut set = JoinSet::new();
    for _ in 0..8 {
        let cell = cell.clone();
        set.spawn(async move {
            let res = cell
                .http
                .post(format!("{}/v1/packets", cell.url))
                .bearer_auth(user("same"))
                .header("idempotency-key", "once")
                .json(&json!({"kind": "c2c", "total": 800, "count": 8, "greeting": "大吉"}))
                .send()
                .await
                .unwrap();
            (res.status(), res.bytes().await.unwrap())
        });
    }
    let mut answers = Vec::new();
    while let Some(r) = set.join_next().await {
        answers.push(r.unwrap());
    }
    assert!(
        answers.iter().all(|a| a == &answers[0]),
        "identical responses, byte for byte"
    );
    assert_eq!(answers[0].0, StatusCode::CREATED);
    let (_, history) = cell.get("/v1/users/same/packets", &user("same")).await;
    assert_eq!(history["items"].as_array().unwrap().len(), 1, "one packet");

    // The same key with another body is refused and writes nothing.
    let res = cell
        .http
        .post(format!("{}/v1/packets", cell.url))
        .bearer_auth(user("same"))
        .header("idempotency-key", "once")
        .json(&json!({"kind": "c2c", "total": 801, "count": 8}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let v: serde_json::Value = res.json().await.unwrap();
    assert_eq!(v["code"], "idempotency_key_reused");
    let (_, history) = cell.get("/v1/users/same/packets", &user("same")).await;
    assert_eq!(history["items"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn one_grant_id_raced_by_two_users() {
    let cell = Arc::new(TestCell::spawn().await);
    for round in 0..10 {
        let grant = format!("race-{round}");
        let mut set = JoinSet::new();
        for uid in ["left", "right"] {
            let (cell, grant) = (cell.clone(), grant.clone());
            set.spawn(async move {
                let body = json!({"grant_id": grant, "uid": uid, "amount": 50, "expires_at": "2099-01-01T00:00:00Z"});
                cell.post("/v1/subsidies", &activity(), body).await
            });
        }
        let mut statuses = Vec::new();
        while let Some(r) = set.join_next().await {
            let (s, v) = r.unwrap();
            if s == StatusCode::CONFLICT {
                assert_eq!(v["code"], "grant_id_conflict");
            }
            statuses.push(s);
        }
        statuses.sort();
        assert_eq!(
            statuses,
            vec![StatusCode::CREATED, StatusCode::CONFLICT],
            "round {round}"
        );
    }
    let (_, l) = cell.get("/v1/users/left/subsidies", &admin()).await;
    let (_, r) = cell.get("/v1/users/right/subsidies", &admin()).await;
    let n = l["subsidies"].as_array().unwrap().len() + r["subsidies"].as_array().unwrap().len();
    assert_eq!(n, 10, "exactly one subsidy per grant id");
    let report = cell.settled().await;
    assert_eq!(report["totals"]["funded"], 500);
}

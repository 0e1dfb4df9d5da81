//! A backup cell hosts a replica of its primary's shard: bootstrapped from a snapshot, then
//! tailing the journal. After mixed traffic the replica equals the primary slot by slot at
//! one position; the backup survives kill -9 and resumes where it was; a corrupted replica
//! is caught by the digest comparison. Real processes, SQLite or Postgres.

mod common;

use std::time::{Duration, Instant};

use common::{admin, user, CellOptions, TestCell};
use reqwest::StatusCode;
use serde_json::{json, Value};

/// Two cells: c1 (east) owns every slot and names c2 (west) as its backup.
async fn pair() -> (TestCell, TestCell, tempfile::TempDir) {
    pair_with(&[]).await
}

async fn pair_with(extra: &[&str]) -> (TestCell, TestCell, tempfile::TempDir) {
    let (p1, p2) = (common::free_port(), common::free_port());
    let dir = tempfile::tempdir().unwrap();
    let map = json!({
        "version": 1,
        "cells": {
            "c1": {"id": "c1", "region": "east", "url": format!("http://127.0.0.1:{p1}"), "backup": "c2"},
            "c2": {"id": "c2", "region": "west", "url": format!("http://127.0.0.1:{p2}")},
        },
        "slots": vec![json!({"cell": "c1", "epoch": 1}); 1024],
    });
    let path = dir.path().join("map.json");
    std::fs::write(&path, map.to_string()).unwrap();
    let spawn = |id: &str, port: u16| {
        TestCell::spawn_with(CellOptions {
            extra_args: [
                "--cell-id".to_owned(),
                id.into(),
                "--map".into(),
                path.display().to_string(),
            ]
            .into_iter()
            .chain(extra.iter().map(|s| s.to_string()))
            .collect(),
            listen: Some(format!("127.0.0.1:{port}")),
            database_via: None,
        })
    };
    let c2 = spawn("c2", p2).await;
    let c1 = spawn("c1", p1).await;
    (c1, c2, dir)
}

async fn replication(cell: &TestCell) -> Value {
    let (s, v) = cell.get("/v1/internal/replication", &admin()).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    v
}

/// Waits until c2's replica of c1 has applied c1's head.
async fn caught_up(c1: &TestCell, c2: &TestCell) -> i64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let head = replication(c1).await["head"].as_i64().unwrap();
        let r = replication(c2).await;
        let applied = r["replicas"][0]["applied"].as_i64().unwrap_or(-1);
        if applied == head && head > 0 {
            return head;
        }
        assert!(
            Instant::now() < deadline,
            "replica stuck at {applied}, primary at {head}: {r}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The verify protocol: hold the replica, digest the primary at P, digest the replica at P.
async fn compare(c1: &TestCell, c2: &TestCell) -> (Value, Value) {
    let (s, v) = c2
        .post(
            "/v1/internal/replicas/c1/hold",
            &admin(),
            json!({"at": null}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, primary) = c1.get("/v1/internal/digest", &admin()).await;
    assert_eq!(s, StatusCode::OK, "{primary}");
    let at = primary["pos"].as_i64().unwrap();
    let (s, replica) = c2
        .get(
            &format!("/v1/internal/replicas/c1/digest?at={at}"),
            &admin(),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{replica}");
    (primary, replica)
}

/// Mixed money traffic on c1: grants and B2C sends, paid C2C packets, claims, an expiry
/// with refunds, and idempotent retries.
async fn traffic(c1: &TestCell, round: usize) {
    let sb = c1
        .grant(&format!("g-{round}"), &format!("sub{round}"), 500)
        .await;
    let res = c1
        .http
        .post(format!("{}/v1/packets", c1.url))
        .bearer_auth(user(&format!("sub{round}")))
        .header("idempotency-key", format!("b2c-{round}"))
        .json(&json!({"kind": "b2c", "subsidy_id": sb, "count": 3}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    for p in 0..3 {
        let packet = c1.paid_packet(&format!("sender{round}"), 300 + p, 4).await;
        for u in 0..3 {
            let (s, v) =
                common::claim_until_final(c1, &packet, &format!("claimer{round}-{u}")).await;
            assert_eq!(s, StatusCode::CREATED, "{v}");
        }
    }
}

#[tokio::test]
async fn the_backup_replica_equals_its_primary() {
    let (c1, c2, _dir) = pair().await;
    traffic(&c1, 0).await;
    traffic(&c1, 1).await;
    c1.advance_clock(48 * 3600).await; // packets expire, the rest is refunded
    c1.settled().await;
    caught_up(&c1, &c2).await;
    let (p, r) = compare(&c1, &c2).await;
    assert!(!p["slots"].as_object().unwrap().is_empty(), "{p}");
    assert_eq!(p, r, "replica differs from primary");
    // With writes done, the backup's acknowledgement reaches the head (workers may still
    // commit for a moment after the comparison).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = replication(&c1).await;
        assert_eq!(status["durability"]["state"], "protected", "{status}");
        if status["backup"]["lag_records"] == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the backup does not catch up: {status}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Break the replica on purpose: the comparison must name the difference.
    use sqlx::Connection;
    sqlx::any::install_default_drivers();
    let mut conn = sqlx::AnyConnection::connect(&c2.replica_url("c1"))
        .await
        .unwrap();
    sqlx::query(
        "UPDATE wallets SET balance = balance + 1 WHERE uid = (SELECT MIN(uid) FROM wallets)",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    conn.close().await.unwrap();
    let (p, r) = compare(&c1, &c2).await;
    assert_ne!(
        p["slots"], r["slots"],
        "a corrupted replica must not compare equal"
    );
}

async fn send_c2c(c1: &TestCell, sender: &str, key: &str) -> (StatusCode, Value, Option<String>) {
    let res = c1
        .http
        .post(format!("{}/v1/packets", c1.url))
        .bearer_auth(user(sender))
        .header("idempotency-key", key)
        .json(&json!({"kind": "c2c", "total": 100, "count": 2}))
        .send()
        .await
        .unwrap();
    let status = res.status();
    let retry = res
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    (status, res.json().await.unwrap_or(Value::Null), retry)
}

/// Policy `refuse` (a static map has no raft-meta to grant anything): with the backup
/// killed, money writes answer 503 + Retry-After and reads still work; with the backup back,
/// the same request succeeds by itself, answered from the write committed before.
#[tokio::test]
async fn a_primary_refuses_money_writes_while_its_backup_is_down() {
    let (c1, mut c2, _dir) = pair().await;
    let (s, _, _) = send_c2c(&c1, "alice", "k-before").await;
    assert_eq!(s, StatusCode::CREATED);
    c2.kill9();
    let started = Instant::now();
    let (s, body, retry) = send_c2c(&c1, "alice", "k-during").await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["code"], "cell_unavailable", "{body}");
    assert_eq!(retry.as_deref(), Some("1"));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "refused within the bound, not hung"
    );
    let (s, _) = c1.get("/v1/users/alice/wallet", &user("alice")).await;
    assert_eq!(s, StatusCode::OK, "reads do not wait for the backup");
    let status = replication(&c1).await;
    assert_eq!(status["durability"]["state"], "refusing", "{status}");

    c2.restart().await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let packet = loop {
        let (s, body, _) = send_c2c(&c1, "alice", "k-during").await;
        if s == StatusCode::CREATED {
            break body["packet_id"].as_str().unwrap().to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "writes did not resume: {s} {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    caught_up(&c1, &c2).await;
    let (p, r) = compare(&c1, &c2).await;
    assert_eq!(p, r);
    assert!(
        replica_has(
            &c2,
            "SELECT COUNT(*) AS n FROM packets WHERE packet_id = $1",
            &[&packet]
        )
        .await,
        "the packet acknowledged after the restart is in the replica"
    );
}

/// Whether `sql` (a COUNT) finds at least one row in c2's replica of c1.
async fn replica_has(c2: &TestCell, sql: &str, binds: &[&str]) -> bool {
    use sqlx::{Connection, Row};
    sqlx::any::install_default_drivers();
    let mut conn = sqlx::AnyConnection::connect(&c2.replica_url("c1"))
        .await
        .unwrap();
    let mut q = sqlx::query(sql);
    for b in binds {
        q = q.bind(*b);
    }
    let n: i64 = q.fetch_one(&mut conn).await.unwrap().get("n");
    conn.close().await.unwrap();
    n > 0
}

/// kill -9 of the primary in the middle of load: every operation it acknowledged (2xx) is in
/// the backup's replica, checked one by one against a ledger, before the primary returns.
#[tokio::test]
async fn every_acknowledged_write_survives_the_primary_s_kill_9() {
    let (mut c1, c2, _dir) = pair().await;
    let packets: Vec<String> = {
        let mut v = Vec::new();
        for i in 0..4 {
            v.push(c1.paid_packet(&format!("s{i}"), 2_000, 100).await);
        }
        v
    };
    let ledger = std::sync::Arc::new(std::sync::Mutex::new(Vec::<(String, String, i64)>::new()));
    let sent = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let mut tasks = Vec::new();
    for w in 0..8 {
        let (url, http) = (c1.url.clone(), c1.http.clone());
        let (ledger, sent, packets) = (ledger.clone(), sent.clone(), packets.clone());
        tasks.push(tokio::spawn(async move {
            for i in 0..400 {
                let uid = format!("u{w}-{i}");
                let packet = &packets[i % packets.len()];
                let claim = http
                    .post(format!("{url}/v1/packets/{packet}/claims"))
                    .bearer_auth(user(&uid))
                    .send()
                    .await;
                let Ok(res) = claim else { return };
                if res.status().is_success() {
                    let v: Value = res.json().await.unwrap_or(Value::Null);
                    if let Some(a) = v["amount"].as_i64() {
                        ledger
                            .lock()
                            .unwrap()
                            .push((packet.clone(), uid.clone(), a));
                    }
                }
                let send = http
                    .post(format!("{url}/v1/packets"))
                    .bearer_auth(user(&uid))
                    .header("idempotency-key", format!("k-{uid}"))
                    .json(&json!({"kind": "c2c", "total": 50, "count": 1}))
                    .send()
                    .await;
                let Ok(res) = send else { return };
                if res.status().is_success() {
                    let v: Value = res.json().await.unwrap_or(Value::Null);
                    if let Some(p) = v["packet_id"].as_str() {
                        sent.lock().unwrap().push(p.to_owned());
                    }
                }
            }
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while ledger.lock().unwrap().len() < 40 && sent.lock().unwrap().len() < 40 {
        assert!(Instant::now() < deadline, "no load got through");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    c1.kill9();
    for t in tasks {
        let _ = t.await;
    }
    let claims = ledger.lock().unwrap().clone();
    let sends = sent.lock().unwrap().clone();
    assert!(!claims.is_empty() && !sends.is_empty());
    // Give the replica no second chance: c1 is dead, c2 holds what it had at the kill.
    use sqlx::{Connection, Row};
    sqlx::any::install_default_drivers();
    let mut conn = sqlx::AnyConnection::connect(&c2.replica_url("c1"))
        .await
        .unwrap();
    let mut missing = Vec::new();
    for (packet, uid, amount) in &claims {
        let row = sqlx::query("SELECT amount FROM claims WHERE packet_id = $1 AND uid = $2")
            .bind(packet)
            .bind(uid)
            .fetch_optional(&mut conn)
            .await
            .unwrap();
        match row.map(|r| r.get::<i64, _>("amount")) {
            Some(a) if a == *amount => {}
            other => missing.push(format!(
                "claim {packet}/{uid} {amount}: replica has {other:?}"
            )),
        }
    }
    for packet in &sends {
        let n: i64 = sqlx::query("SELECT COUNT(*) AS n FROM packets WHERE packet_id = $1")
            .bind(packet)
            .fetch_one(&mut conn)
            .await
            .unwrap()
            .get("n");
        if n != 1 {
            missing.push(format!("packet {packet}"));
        }
    }
    conn.close().await.unwrap();
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged operations are not in the replica: {:?}",
        missing.len(),
        claims.len() + sends.len(),
        &missing[..missing.len().min(10)]
    );
    eprintln!(
        "kill -9 mid-load: {} claims and {} sends acknowledged, all in the replica",
        claims.len(),
        sends.len()
    );
}

/// Under steady load the journal stays bounded: commits are pruned once the backup and the
/// workers are past them and the retention window has passed. `REDCELL_SOAK_S` sets the
/// length (CI: 15 s; the long form: 300).
#[tokio::test]
async fn the_journal_stays_bounded_under_load() {
    let seconds: u64 = std::env::var("REDCELL_SOAK_S")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(15);
    let (c1, c2, _dir) = pair_with(&[
        "--journal-retention-s",
        "1",
        "--journal-prune-every-ms",
        "250",
    ])
    .await;
    let stop = Instant::now() + Duration::from_secs(seconds);
    let load = {
        let (url, http) = (c1.url.clone(), c1.http.clone());
        tokio::spawn(async move {
            let mut n = 0u64;
            while Instant::now() < stop {
                let uid = format!("soak{n}");
                let _ = http
                    .post(format!("{url}/v1/packets"))
                    .bearer_auth(user(&uid))
                    .header("idempotency-key", format!("k{n}"))
                    .json(&json!({"kind": "c2c", "total": 10, "count": 1}))
                    .send()
                    .await;
                n += 1;
            }
            n
        })
    };
    let mut sizes = Vec::new();
    while Instant::now() < stop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let r = replication(&c1).await;
        sizes.push((
            r["head"].as_i64().unwrap(),
            r["journal"]["commits"].as_i64().unwrap(),
        ));
    }
    let sends = load.await.unwrap();
    let (head, last) = *sizes.last().unwrap();
    let half = sizes.len() / 2;
    let first_max = sizes[..half].iter().map(|s| s.1).max().unwrap_or(0);
    let second_max = sizes[half..].iter().map(|s| s.1).max().unwrap_or(0);
    eprintln!("journal over {seconds} s: {sends} sends, head {head}, size now {last}, max first half {first_max}, second half {second_max}");
    assert!(head > 200, "too little load to judge: head {head}");
    assert!(
        last * 3 < head,
        "the journal is not pruned: {last} of {head} commits kept"
    );
    assert!(
        second_max <= first_max * 2 + 200,
        "the journal grows: max {first_max} in the first half, {second_max} in the second"
    );
    caught_up(&c1, &c2).await;
    let (p, r) = compare(&c1, &c2).await;
    assert_eq!(p, r, "pruning must not cost the replica anything");
}

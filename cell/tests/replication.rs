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
            extra_args: vec![
                "--cell-id".into(),
                id.into(),
                "--map".into(),
                path.display().to_string(),
            ],
            listen: Some(format!("127.0.0.1:{port}")),
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
    let (c1, mut c2, _dir) = pair().await;
    traffic(&c1, 0).await;
    caught_up(&c1, &c2).await;
    let (p, r) = compare(&c1, &c2).await;
    assert!(!p["slots"].as_object().unwrap().is_empty(), "{p}");
    assert_eq!(p, r, "replica differs from primary");

    let bootstraps = |c2: &TestCell| {
        std::fs::read_to_string(c2.log_path())
            .unwrap()
            .matches("replica bootstrapped from a snapshot")
            .count()
    };
    assert_eq!(bootstraps(&c2), 1, "a new backup starts from a snapshot");

    // The backup dies (kill -9) while the primary keeps writing, and comes back: it resumes
    // from its durable position (no new snapshot) and catches up.
    c2.kill9();
    traffic(&c1, 1).await;
    c1.advance_clock(48 * 3600).await; // packets expire, the rest is refunded
    c2.restart().await;
    caught_up(&c1, &c2).await;
    c1.settled().await;
    caught_up(&c1, &c2).await;
    let (p, r) = compare(&c1, &c2).await;
    assert_eq!(
        p, r,
        "replica differs from primary after the backup's restart"
    );
    // (The log starts anew with the process.)
    assert_eq!(
        bootstraps(&c2),
        0,
        "the restarted backup must resume, not start over"
    );

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

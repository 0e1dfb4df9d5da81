//! Fencing inside the write transaction (DESIGN §6.4): a real cell whose map still gives it a
//! slot at epoch 1, while its shard's `slot_epochs` row for that slot has moved on to epoch 2
//! (as a takeover would leave it; bumped here directly in the database), refuses every write
//! of that slot inside the transaction — 421 `stale_epoch` at the HTTP edge, skipped by the
//! sweeps — and writes nothing, while the other slots carry on.

mod common;

use std::time::Duration;

use common::*;
use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::{AnyPool, Row};
use topology::{IdKind, MintedId, Slot, Uid};

/// A connection to the cell's own shard (its SQLite file, or its Postgres database).
async fn shard(cell: &TestCell) -> AnyPool {
    sqlx::any::install_default_drivers();
    let url = match cell.database_url() {
        Some(url) => url.to_owned(),
        None => format!(
            "sqlite://{}?mode=rw",
            cell.data_dir().join("cell.sqlite").display()
        ),
    };
    sqlx::any::AnyPoolOptions::new()
        .max_connections(1)
        .connect(&url)
        .await
        .expect("connect to the cell's shard")
}

/// Moves `slot` on to epoch 2 in the shard, behind the cell's back (its map says 1).
async fn bump(db: &AnyPool, slot: u16) {
    let done = sqlx::query("UPDATE slot_epochs SET epoch = 2 WHERE slot = $1 AND epoch = 1")
        .bind(i64::from(slot))
        .execute(db)
        .await
        .expect("bump the slot's epoch")
        .rows_affected();
    assert_eq!(
        done, 1,
        "the cell recorded slot {slot} at its map's epoch 1 at start-up"
    );
}

async fn count(db: &AnyPool, sql: &str, slot: u16) -> i64 {
    sqlx::query(sql)
        .bind(i64::from(slot))
        .fetch_one(db)
        .await
        .expect("count")
        .get::<i64, _>(0)
}

/// Rows of `slot` in every table a write path touches, and its journal records.
async fn rows_of_slot(db: &AnyPool, slot: u16) -> i64 {
    let mut n = 0;
    for table in [
        "packets",
        "payments",
        "claims",
        "transfers",
        "subsidies",
        "wallets",
        "wallet_credits",
        "pool_returns",
        "idem_uid",
        "idem_order",
        "journal",
    ] {
        n += count(
            db,
            &format!("SELECT COUNT(*) FROM {table} WHERE slot = $1"),
            slot,
        )
        .await;
    }
    n
}

/// A uid whose home slot is not `other`'s.
fn uid_not_in(prefix: &str, other: &str) -> String {
    let taken = Uid::parse(other).unwrap().slot();
    (0..)
        .map(|i| format!("{prefix}{i}"))
        .find(|u| Uid::parse(u).unwrap().slot() != taken)
        .unwrap()
}

fn slot_of(uid: &str) -> u16 {
    Uid::parse(uid).unwrap().slot().get()
}

/// The 421 the fence answers, naming the slot and both epochs.
fn assert_stale_epoch(status: StatusCode, body: &Value, slot: u16) {
    assert_eq!(status, StatusCode::MISDIRECTED_REQUEST, "{body}");
    assert_eq!(body["code"], "stale_epoch", "{body}");
    assert_eq!(body["slot"], slot, "{body}");
    assert_eq!(body["map_epoch"], 1, "{body}");
    assert_eq!(body["shard_epoch"], 2, "{body}");
}

async fn send_c2c(cell: &TestCell, sender: &str, key: &str, body: Value) -> (StatusCode, Value) {
    let res = cell
        .http
        .post(format!("{}/v1/packets", cell.url))
        .bearer_auth(user(sender))
        .header("idempotency-key", key)
        .json(&body)
        .send()
        .await
        .expect("send");
    let status = res.status();
    (status, res.json().await.expect("json"))
}

async fn reconciles(cell: &TestCell) {
    let report = cell.settled().await;
    assert_eq!(report["ok"], true, "{report}");
}

#[tokio::test]
async fn a_send_for_a_slot_whose_epoch_moved_on_is_refused_and_writes_nothing() {
    // Arrange
    let cell = TestCell::spawn().await;
    let db = shard(&cell).await;
    let (fenced, free) = ("fen-alice", uid_not_in("fen-bob", "fen-alice"));
    bump(&db, slot_of(fenced)).await;

    // Act
    let body = json!({"kind": "c2c", "total": 500, "count": 2});
    let (status, refusal) = send_c2c(&cell, fenced, "k-1", body.clone()).await;
    let (ok, _) = send_c2c(&cell, &free, "k-1", body).await;

    // Assert: refused inside the transaction (the map still says the cell owns the slot,
    // so this is not the request-time `wrong_cell`), nothing of the slot written.
    assert_stale_epoch(status, &refusal, slot_of(fenced));
    assert_eq!(ok, StatusCode::CREATED, "other slots are served");
    assert_eq!(rows_of_slot(&db, slot_of(fenced)).await, 0);
    let (s, w) = cell
        .get(&format!("/v1/users/{fenced}/wallet"), &user(fenced))
        .await;
    assert_eq!(
        s,
        StatusCode::OK,
        "reads still pass the request-time check: {w}"
    );
    reconciles(&cell).await;
}

#[tokio::test]
async fn a_claim_batch_on_a_packet_whose_slot_moved_on_is_refused_and_writes_nothing() {
    // Arrange: a paid packet, then its slot moves on (the claim queue is on by default).
    let cell = TestCell::spawn().await;
    let db = shard(&cell).await;
    let packet = cell.paid_packet("fen-carol", 900, 3).await;
    let slot = MintedId::parse(IdKind::Packet, &packet)
        .unwrap()
        .slot()
        .get();
    let before = rows_of_slot(&db, slot).await;
    bump(&db, slot).await;

    // Act: two claimers, one after the other (the second one's batch is fenced too).
    let (s1, r1) = claim_until_final(&cell, &packet, "fen-dave").await;
    let (s2, r2) = claim_until_final(&cell, &packet, "fen-erin").await;

    // Assert
    assert_stale_epoch(s1, &r1, slot);
    assert_stale_epoch(s2, &r2, slot);
    assert_eq!(rows_of_slot(&db, slot).await, before, "nothing written");
    let claims = count(&db, "SELECT COUNT(*) FROM claims WHERE slot = $1", slot).await;
    assert_eq!(claims, 0);
    let (_, p) = cell.get(&format!("/v1/packets/{packet}"), &user("x")).await;
    assert_eq!(p["remaining_count"], 3, "{p}");
    reconciles(&cell).await;
}

#[tokio::test]
async fn a_grant_is_refused_when_the_home_slot_or_the_order_slot_moved_on() {
    // Arrange: one uid whose home slot moves on; one grant id whose order slot does.
    let cell = TestCell::spawn().await;
    let db = shard(&cell).await;
    let home = "fen-frank";
    let order_ok = (0..)
        .map(|i| format!("fen-grant-{i}"))
        .find(|g| Slot::of(g.as_bytes()).get() != slot_of(home))
        .unwrap();
    let other = uid_not_in("fen-gina", home);
    let order_fenced = (0..)
        .map(|i| format!("fen-order-{i}"))
        .find(|g| {
            let s = Slot::of(g.as_bytes()).get();
            s != slot_of(home) && s != slot_of(&other)
        })
        .unwrap();
    let order_slot = Slot::of(order_fenced.as_bytes()).get();
    bump(&db, slot_of(home)).await;
    bump(&db, order_slot).await;
    let grant = |grant_id: &str, uid: &str| json!({"grant_id": grant_id, "uid": uid, "amount": 300, "expires_at": "2099-01-01T00:00:00Z"});

    // Act
    let (s_home, r_home) = cell
        .post("/v1/subsidies", &activity(), grant(&order_ok, home))
        .await;
    let (s_order, r_order) = cell
        .post("/v1/subsidies", &activity(), grant(&order_fenced, &other))
        .await;

    // Assert: the home cell's commit refused (uid slot); the order cell's reservation
    // refused (grant id slot), so nothing was granted to `other` either.
    assert_stale_epoch(s_home, &r_home, slot_of(home));
    assert_stale_epoch(s_order, &r_order, order_slot);
    assert_eq!(rows_of_slot(&db, slot_of(home)).await, 0);
    assert_eq!(rows_of_slot(&db, order_slot).await, 0);
    let subsidies: i64 = sqlx::query("SELECT COUNT(*) FROM subsidies")
        .fetch_one(&db)
        .await
        .unwrap()
        .get(0);
    assert_eq!(subsidies, 0, "no subsidy anywhere");
    reconciles(&cell).await;
}

#[tokio::test]
async fn a_transfer_delivered_for_a_claimer_whose_slot_moved_on_is_refused() {
    // Arrange
    let cell = TestCell::spawn().await;
    let db = shard(&cell).await;
    let claimer = "fen-henry";
    let slot = Slot::new(slot_of(claimer)).unwrap();
    bump(&db, slot.get()).await;
    let transfer = MintedId::mint(IdKind::Transfer, slot).into_string();
    let packet = MintedId::mint(IdKind::Packet, Slot::new(7).unwrap()).into_string();
    let body = json!({"transfers": [
        {"transfer_id": transfer, "uid": claimer, "amount": 123, "packet_id": packet}
    ]});
    let internal = token("svc:cell-c2", Some("internal"));

    // Act: the sending cell delivers, and retries.
    let (s1, r1) = cell
        .post("/v1/internal/transfers", &internal, body.clone())
        .await;
    let (s2, r2) = cell.post("/v1/internal/transfers", &internal, body).await;

    // Assert
    assert_stale_epoch(s1, &r1, slot.get());
    assert_stale_epoch(s2, &r2, slot.get());
    assert_eq!(
        rows_of_slot(&db, slot.get()).await,
        0,
        "no credit, no wallet"
    );
    let (_, w) = cell
        .get(&format!("/v1/users/{claimer}/wallet"), &user(claimer))
        .await;
    assert_eq!(w["balance"], 0, "{w}");
}

#[tokio::test]
async fn the_expiry_sweep_leaves_a_fenced_slot_alone_and_refunds_the_others() {
    // Arrange: two packets in two slots, partly claimed; then one slot moves on.
    let cell = TestCell::spawn().await;
    let db = shard(&cell).await;
    let fenced_sender = "fen-ivan";
    let free_sender = uid_not_in("fen-judy", fenced_sender);
    let fenced_packet = cell.paid_packet(fenced_sender, 1000, 4).await;
    let free_packet = cell.paid_packet(&free_sender, 1000, 4).await;
    for p in [&fenced_packet, &free_packet] {
        let (s, c) = claim_until_final(&cell, p, "fen-kim").await;
        assert_eq!(s, StatusCode::CREATED, "{c}");
    }
    reconciles(&cell).await;
    let slot = slot_of(fenced_sender);
    let before = rows_of_slot(&db, slot).await;
    bump(&db, slot).await;

    // Act: past every packet's expiry (one day by default).
    cell.advance_clock(86_400 + 5).await;

    // Assert: the other slot's packet is refunded; the fenced one stays as it was.
    wait_until("the unfenced packet is refunded", || async {
        let (_, p) = cell
            .get(&format!("/v1/packets/{free_packet}"), &user("x"))
            .await;
        p["status"] == "refunded"
    })
    .await;
    wait_for_metric(&cell, "redcell_fenced_slots 1").await;
    // A few more sweep passes (100 ms apart) get their chance to touch the fenced packet.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let row = sqlx::query("SELECT status, refunded_amount FROM packets WHERE packet_id = $1")
        .bind(&fenced_packet)
        .fetch_one(&db)
        .await
        .unwrap();
    let stored: (String, i64) = (row.get(0), row.get(1));
    assert_eq!(
        stored,
        ("active".to_owned(), 0),
        "neither expired nor refunded"
    );
    assert_eq!(rows_of_slot(&db, slot).await, before, "nothing written");
    let (_, w) = cell
        .get(
            &format!("/v1/users/{fenced_sender}/wallet"),
            &user(fenced_sender),
        )
        .await;
    assert_eq!(w["balance"], 0, "no refund credited: {w}");
    let (_, w) = cell
        .get(
            &format!("/v1/users/{free_sender}/wallet"),
            &user(&free_sender),
        )
        .await;
    assert!(w["balance"].as_i64().unwrap() > 0, "refunded: {w}");
    reconciles(&cell).await;
}

#[tokio::test]
async fn a_slot_whose_epoch_row_is_missing_is_not_held_and_refused() {
    // Arrange: the cell recorded its epochs at start-up; one slot's row goes away.
    let cell = TestCell::spawn().await;
    let db = shard(&cell).await;
    let sender = "fen-lena";
    let slot = slot_of(sender);
    sqlx::query("DELETE FROM slot_epochs WHERE slot = $1")
        .bind(i64::from(slot))
        .execute(&db)
        .await
        .unwrap();

    // Act
    let body = json!({"kind": "c2c", "total": 500, "count": 2});
    let (status, refusal) = send_c2c(&cell, sender, "k-1", body).await;

    // Assert
    assert_eq!(status, StatusCode::MISDIRECTED_REQUEST, "{refusal}");
    assert_eq!(refusal["code"], "stale_epoch", "{refusal}");
    assert_eq!(refusal["map_epoch"], 1, "{refusal}");
    assert!(refusal["shard_epoch"].is_null(), "{refusal}");
    assert_eq!(rows_of_slot(&db, slot).await, 0);
}

/// Postgres: the fence reads its slot's row `FOR SHARE`, so a write that starts while a bump
/// is in flight waits for it, then sees the new epoch and is refused. (SQLite has one writer:
/// there a bump and a write cannot overlap.)
#[tokio::test]
async fn on_postgres_a_write_waits_for_a_bump_in_flight_and_is_refused() {
    // Arrange: a bump of the sender's slot, not yet committed.
    let cell = TestCell::spawn().await;
    if cell.database_url().is_none() {
        return;
    }
    let db = shard(&cell).await;
    let watcher = shard(&cell).await;
    let sender = "fen-mona";
    let slot = slot_of(sender);
    let mut bump = db.begin().await.unwrap();
    sqlx::query("UPDATE slot_epochs SET epoch = 2 WHERE slot = $1")
        .bind(i64::from(slot))
        .execute(&mut *bump)
        .await
        .unwrap();

    // Act: the send starts; once it waits on the bump's lock (or has answered), the bump
    // commits.
    let (http, url) = (cell.http.clone(), cell.url.clone());
    let send = tokio::spawn(async move {
        let res = http
            .post(format!("{url}/v1/packets"))
            .bearer_auth(user("fen-mona"))
            .header("idempotency-key", "k-1")
            .json(&json!({"kind": "c2c", "total": 500, "count": 2}))
            .send()
            .await
            .expect("send");
        let status = res.status();
        (status, res.json::<Value>().await.expect("json"))
    });
    wait_until(
        "the send waits on the bump's row lock, or has answered",
        || async {
            let waiting: i64 = sqlx::query(
                "SELECT COUNT(*) FROM pg_stat_activity WHERE datname = current_database() \
             AND wait_event_type = 'Lock'",
            )
            .fetch_one(&watcher)
            .await
            .unwrap()
            .get(0);
            waiting > 0 || send.is_finished()
        },
    )
    .await;
    bump.commit().await.unwrap();
    let (status, refusal) = send.await.unwrap();

    // Assert
    assert_stale_epoch(status, &refusal, slot);
    assert_eq!(rows_of_slot(&db, slot).await, 0);
}

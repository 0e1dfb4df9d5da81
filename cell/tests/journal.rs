//! The journal as the replication log, at the store: the table catalogue matches the schema,
//! positions never skip a commit under concurrent writers with random commit delays, and a
//! replica refuses repeats, gaps and stale epochs. On SQLite, and on Postgres when
//! `REDCELL_TEST_DATABASE_URL` is set.

mod common;

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;
use std::time::Duration;

use cell::journal::{Body, Change, Commit, Record, TABLES};
use cell::store::{ApplyError, Store, StoreOptions};
use serde_json::json;
use sqlx::Row;

/// A fresh shard: a SQLite file, or a Postgres database of its own.
struct Shard {
    store: Store,
    _dir: tempfile::TempDir,
    /// `(admin url, database)` to drop afterwards, on Postgres.
    pg: Option<(String, String)>,
}

impl Drop for Shard {
    fn drop(&mut self) {
        if let Some((admin, name)) = &self.pg {
            let _ = std::process::Command::new("psql")
                .arg(admin)
                .arg("-qc")
                .arg(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status();
        }
    }
}

async fn shard() -> Shard {
    let dir = tempfile::tempdir().expect("temp dir");
    let (url, pg) = match common::Backend::from_env().postgres {
        Some(admin) => {
            let name = common::unique("redcell_j");
            let url = common::create_database(&admin, &name).await;
            (url, Some((admin, name)))
        }
        None => (Store::sqlite_url(dir.path()), None),
    };
    let store = Store::open(
        &url,
        &StoreOptions {
            max_connections: 24,
            fsync_commits: false,
        },
    )
    .await
    .expect("open shard");
    Shard {
        store,
        _dir: dir,
        pg,
    }
}

fn wallet_commit(pos: i64, slot: i64, epoch: i64, uid: &str, balance: i64) -> Commit {
    let table = TABLES.iter().find(|t| t.name == "wallets").unwrap();
    let row = table
        .check_row(json!({"uid": uid, "slot": slot, "balance": balance}))
        .unwrap();
    Commit {
        pos,
        committed_at: 0,
        records: vec![Record {
            slot,
            epoch,
            body: Body::Change(Change::Upsert { table, row }),
            created_at: 0,
        }],
    }
}

async fn balance(store: &Store, uid: &str) -> Option<i64> {
    let snap = store.snapshot().await.unwrap();
    snap.tables["wallets"]
        .iter()
        .find(|r| r["uid"] == uid)
        .and_then(|r| r["balance"].as_i64())
}

#[tokio::test]
async fn the_catalogue_matches_the_schema() {
    let s = shard().await;
    let mut tx = s.store.begin().await.unwrap();
    for table in &TABLES {
        // The columns the database has, in order.
        let sql = match s.store.dialect() {
            cell::store::Dialect::Sqlite => format!("SELECT name FROM pragma_table_info('{}') ORDER BY cid", table.name),
            cell::store::Dialect::Postgres => format!(
                "SELECT column_name::text AS name FROM information_schema.columns \
                 WHERE table_name = '{}' AND table_schema = current_schema() ORDER BY ordinal_position",
                table.name
            ),
        };
        let rows = sqlx::query(&sql).fetch_all(&mut *tx).await.unwrap();
        let have: Vec<String> = rows.iter().map(|r| r.get::<String, _>("name")).collect();
        let want: Vec<&str> = table.column_names().collect();
        assert_eq!(have, want, "columns of {}", table.name);
    }
}

/// Every write transaction's records become one commit at the next position; a reader that
/// follows positions sees every committed transaction exactly once, in order, even when
/// transactions commit in another order than they started (random delays before COMMIT).
#[tokio::test]
async fn no_commit_is_ever_skipped_by_a_reader() {
    let s = shard().await;
    let store = s.store.clone();
    const WRITERS: usize = 12;
    const EACH: usize = 25;
    let committed = Arc::new(std::sync::Mutex::new(HashSet::new()));
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let store = store.clone();
        let committed = committed.clone();
        writers.push(tokio::spawn(async move {
            for i in 0..EACH {
                let uid = format!("w{w}-{i}");
                let mut tx = store.begin().await.unwrap();
                sqlx::query("INSERT INTO wallets (uid, slot, balance) VALUES ($1, $2, 1)")
                    .bind(&uid)
                    .bind((w % 7) as i64)
                    .execute(&mut *tx)
                    .await
                    .unwrap();
                // Commit in a different order than the rows (and any sequence) were taken.
                let delay = rand::random::<u64>() % 12;
                tokio::time::sleep(Duration::from_millis(delay)).await;
                if rand::random::<u8>().is_multiple_of(10) {
                    tx.rollback().await.unwrap();
                    continue;
                }
                tx.commit().await.unwrap().expect("a write has a position");
                committed.lock().unwrap().insert(uid);
            }
        }));
    }
    // The reader tails concurrently, as a backup does, until the writers are done and it has
    // read to the end (not after a quiet spell: a loaded machine can pause every writer).
    let writers_done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let store = store.clone();
        let writers_done = writers_done.clone();
        tokio::spawn(async move {
            let mut seen: Vec<String> = Vec::new();
            let mut cursor = 0;
            let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
            loop {
                // Read before looking: a read that began after the writers finished and found
                // nothing new means everything was read.
                let finished = writers_done.load(std::sync::atomic::Ordering::SeqCst);
                let commits = store.commits_after(cursor, 50).await.unwrap();
                for c in &commits {
                    assert_eq!(c.pos, cursor + 1, "positions are contiguous");
                    cursor = c.pos;
                    for r in &c.records {
                        if let Body::Change(Change::Upsert { row, .. }) = &r.body {
                            seen.push(row["uid"].as_str().unwrap().to_owned());
                        }
                    }
                }
                if commits.is_empty() {
                    if finished || tokio::time::Instant::now() > deadline {
                        return seen;
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        })
    };
    for w in writers {
        w.await.unwrap();
    }
    writers_done.store(true, std::sync::atomic::Ordering::SeqCst);
    let seen = reader.await.unwrap();
    let committed = committed.lock().unwrap().clone();
    let unique: BTreeSet<&String> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len(), "a commit was read twice");
    let missed: Vec<&String> = committed.iter().filter(|u| !unique.contains(u)).collect();
    assert!(
        missed.is_empty(),
        "the reader skipped {} committed transactions: {missed:?}",
        missed.len()
    );
    assert_eq!(
        unique.len(),
        committed.len(),
        "the reader saw rolled-back writes"
    );
    assert_eq!(
        store.journal_head().await.unwrap() as usize,
        committed.len()
    );
}

#[tokio::test]
async fn a_replica_applies_in_order_exactly_once() {
    let s = shard().await;
    let r = &s.store;
    let applied = r
        .apply_commits(&[wallet_commit(1, 3, 1, "alice", 10)])
        .await
        .unwrap();
    assert_eq!((applied.pos, applied.applied, applied.repeats), (1, 1, 0));

    // The same batch again: a no-op, nothing applied twice.
    let again = r
        .apply_commits(&[wallet_commit(1, 3, 1, "alice", 999)])
        .await
        .unwrap();
    assert_eq!((again.pos, again.applied, again.repeats), (1, 0, 1));
    assert_eq!(balance(r, "alice").await, Some(10));

    // A gap: position 3 before 2 is refused, and nothing of the batch is written.
    let err = r
        .apply_commits(&[wallet_commit(3, 3, 1, "bob", 5)])
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            ApplyError::Gap {
                expected: 2,
                got: 3
            }
        ),
        "{err}"
    );
    assert_eq!(balance(r, "bob").await, None);
    assert_eq!(r.journal_head().await.unwrap(), 1);

    // A batch overlapping what was applied: the old part is skipped, the new part applied.
    let mixed = r
        .apply_commits(&[
            wallet_commit(1, 3, 1, "alice", 999),
            wallet_commit(2, 3, 1, "alice", 20),
        ])
        .await
        .unwrap();
    assert_eq!((mixed.pos, mixed.applied, mixed.repeats), (2, 1, 1));
    assert_eq!(balance(r, "alice").await, Some(20));

    // The replica's journal holds the same commits at the same positions.
    let copied = r.commits_after(0, 10).await.unwrap();
    assert_eq!(copied.iter().map(|c| c.pos).collect::<Vec<_>>(), vec![1, 2]);
}

#[tokio::test]
async fn a_replica_refuses_an_older_epoch() {
    let s = shard().await;
    let r = &s.store;
    r.apply_commits(&[wallet_commit(1, 5, 2, "carol", 1)])
        .await
        .unwrap();
    // A record of slot 5 written under epoch 1 (a stale primary) after epoch 2 was seen.
    let err = r
        .apply_commits(&[wallet_commit(2, 5, 1, "carol", 666)])
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            ApplyError::StaleEpoch {
                slot: 5,
                epoch: 1,
                holds: 2
            }
        ),
        "{err}"
    );
    assert_eq!(balance(r, "carol").await, Some(1));
    // An epoch raised by the shard itself (a takeover) fences the old epoch the same way.
    r.raise_epochs(&[(6, 4)]).await.unwrap();
    let err = r
        .apply_commits(&[wallet_commit(2, 6, 3, "dave", 1)])
        .await
        .unwrap_err();
    assert!(
        matches!(err, ApplyError::StaleEpoch { slot: 6, .. }),
        "{err}"
    );
    // Other slots, at their epoch, still apply.
    r.apply_commits(&[wallet_commit(2, 7, 1, "erin", 3)])
        .await
        .unwrap();
    assert_eq!(balance(r, "erin").await, Some(3));
}

/// A snapshot installed into an empty replica makes it equal to the primary at the
/// snapshot's position, and it can tail from there.
#[tokio::test]
async fn a_snapshot_then_the_tail_makes_an_equal_replica() {
    let primary = shard().await;
    let replica = shard().await;
    let write = |uid: &'static str, amount: i64| {
        let store = primary.store.clone();
        async move {
            let mut tx = store.begin().await.unwrap();
            sqlx::query(
                "INSERT INTO wallets (uid, slot, balance) VALUES ($1, 9, $2) \
                 ON CONFLICT (uid) DO UPDATE SET balance = wallets.balance + excluded.balance",
            )
            .bind(uid)
            .bind(amount)
            .execute(&mut *tx)
            .await
            .unwrap();
            sqlx::query(
                "INSERT INTO idem_uid (uid, operation, idem_key, slot, request_hash, status_code, response_body, created_at) \
                 VALUES ($1, 'op', $2, 9, 'h', 201, '{}', 0)",
            )
            .bind(uid)
            .bind(format!("k{amount}"))
            .execute(&mut *tx)
            .await
            .unwrap();
            tx.commit().await.unwrap()
        }
    };
    write("u1", 1).await;
    write("u2", 2).await;
    let snap = primary.store.snapshot().await.unwrap();
    assert_eq!(snap.pos, 2);
    replica.store.install_snapshot("c1", &snap).await.unwrap();
    write("u1", 30).await;
    write("u3", 4).await;
    let tail = primary.store.commits_after(snap.pos, 100).await.unwrap();
    replica.store.apply_commits(&tail).await.unwrap();
    let (p, r) = (
        primary.store.digest().await.unwrap(),
        replica.store.digest().await.unwrap(),
    );
    assert_eq!(p.pos, 4);
    assert_eq!(p, r);
    assert_eq!(
        replica.store.replica_of().await.unwrap().as_deref(),
        Some("c1")
    );
    // A replica never journals what it applies a second time: its log is the primary's.
    assert_eq!(replica.store.journal_head().await.unwrap(), 4);
}

//! Key rotation without downtime (`cellctl rotate-secret`) on a whole `cellctl up`
//! deployment under a ledger-keeping load through the router: no client sees an error —
//! which needs every process's internal calls (heartbeats and watches to raft-meta, a
//! primary's replication and the backup's acknowledgements, transfers between cells) to
//! keep passing through both key changes — every acknowledged write is read back, the
//! replicas stay equal, and a token of a retired secret is accepted while the rotation
//! runs and refused once it is done.
//!
//! Shown able to fail: with the cells' own credential signing with the first secret for good
//! (what a process that does not re-mint its internal tokens does), the cells' calls to each
//! other were refused once the old secret was dropped, and the load saw 287 `503
//! cell_unavailable` and 13 timeouts on `POST /v1/subsidies`.
//!
//! Runs on SQLite, and on Postgres + Redis in the test command's second pass.

mod common;

use std::time::Duration;

use common::*;
use harness::up::{Backend, Up, SECRET};
use tempfile::TempDir;

/// Seconds `rotate-secret` keeps the old secret accepted once everyone signs with the new
/// one: the window in which the test checks that an old token still works.
const GRACE_S: &str = "4";

/// Every place a token is checked: raft-meta (its map), each cell (an internal read) and
/// the router (a user's wallet, verified by the router and then by the cell).
fn checkpoints(up: &Up) -> Vec<(String, String, &'static str)> {
    let record = up.record();
    let mut points = Vec::new();
    for m in record["meta"].as_array().unwrap() {
        let url = m["url"].as_str().unwrap();
        points.push((format!("{url}/v1/map"), "svc:e2e".into(), "admin"));
    }
    for c in record["cells"].as_array().unwrap() {
        let url = c["url"].as_str().unwrap();
        points.push((
            format!("{url}/v1/internal/replication"),
            "svc:e2e".into(),
            "internal",
        ));
    }
    points.push((
        format!("{}/v1/users/rotated1/wallet", up.router()),
        "rotated1".into(),
        "",
    ));
    points
}

/// The statuses a token signed with `secret` gets at every checkpoint.
async fn statuses(up: &Up, secret: &str) -> Vec<(String, u16)> {
    let mut out = Vec::new();
    for (url, sub, scope) in checkpoints(up) {
        let scope = (!scope.is_empty()).then_some(scope);
        let token = topology::auth::mint(secret.as_bytes(), &sub, scope, 600);
        let (status, _) = up.call("GET", &url, &token, None).await;
        out.push((url, status));
    }
    out
}

async fn all_accept(up: &Up, secret: &str) -> bool {
    statuses(up, secret).await.iter().all(|(_, s)| *s == 200)
}

async fn all_refuse(up: &Up, secret: &str) -> bool {
    statuses(up, secret).await.iter().all(|(_, s)| *s == 401)
}

/// Runs `cellctl rotate-secret` in the background; meanwhile, once the keys file says the
/// new secret signs (step 2), a token of the retiring secret `old` must still be accepted
/// everywhere. Returns the new secret.
async fn rotate(up: &Up, old: &str) -> String {
    let dir = up.dir.clone();
    let rotation = tokio::task::spawn_blocking(move || {
        let out = std::process::Command::new(harness::up::bin_dir().join("cellctl"))
            .arg("--data-dir")
            .arg(&dir)
            .args(["rotate-secret", "--grace-s", GRACE_S])
            // As `up` was started with it (harness::up); the keys file wins once it exists.
            .env("REDCELL_AUTH_SECRET", SECRET)
            .env("RUST_LOG", "warn")
            .output()
            .expect("run cellctl rotate-secret");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    });
    let started = std::time::Instant::now();
    while up.current_secret() == old {
        if rotation.is_finished() {
            let (_, out) = rotation.await.unwrap();
            panic!("rotate-secret ended before the new secret signed: {out}");
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "rotate-secret never made the new secret the signing one"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let during = statuses(up, old).await;
    assert!(
        during.iter().all(|(_, s)| *s == 200),
        "a token of the retiring secret refused during the rotation: {during:?}"
    );
    let (ok, out) = rotation.await.unwrap();
    assert!(ok, "cellctl rotate-secret failed: {out}");
    eprintln!("{}", out.trim());
    let new = up.current_secret();
    assert_ne!(new, old);
    assert!(all_accept(up, &new).await, "{:?}", statuses(up, &new).await);
    let after = statuses(up, old).await;
    assert!(
        after.iter().all(|(_, s)| *s == 401),
        "a token of the retired secret still accepted after the rotation: {after:?}"
    );
    new
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rotating_the_secret_twice_under_load_fails_no_request() {
    let _one = one_at_a_time().await;
    let tmp = TempDir::new().unwrap();
    let backend = Backend::from_env();
    let up = Up::start(&tmp.path().join("d"), &backend.args()).await;
    assert!(
        all_accept(&up, SECRET).await,
        "{:?}",
        statuses(&up, SECRET).await
    );
    assert!(all_refuse(&up, "not-the-secret-0123456789").await);

    // The load's clients follow the keys file as an app's login service would. They retry
    // a 5xx or a timeout with the same key, as real clients do (this shared 2-core machine
    // stalls processes for seconds at times); a refused token (401) is never retried, and
    // internal calls refused after a rotation would leave the backups unconfirmed (503 for
    // longer than the retries) and the replicas unequal, both checked below.
    let keys = raft_meta::keys::ring(Some(SECRET), Some(&up.keys_file())).unwrap();
    let load = Load::start_with_keys(
        &up,
        40.0,
        Duration::from_secs(18),
        true,
        "rotation-",
        Some(keys),
    );
    tokio::time::sleep(Duration::from_secs(3)).await;

    let first = rotate(&up, SECRET).await;
    let second = rotate(&up, &first).await;
    assert!(all_refuse(&up, SECRET).await);
    assert!(all_accept(&up, &second).await);

    let (report, ledger) = load.finish().await;
    assert_eq!(
        report.errors, 0,
        "client-visible errors: {:?}",
        report.outcomes
    );
    let v = books_and_replicas_hold(&up, &ledger).await;
    eprintln!(
        "rotation: {} acknowledged, {} operations completed, 0 errors",
        v.acknowledged, report.completed
    );
}

//! The Redis admission gate holds the same rule as the in-process one, across connections.
//! Runs in the Postgres + Redis pass of `scripts/test` (REDCELL_TEST_REDIS_URL set).

use cell::claims::Gate;

#[tokio::test]
async fn redis_gate_holds_the_limit_across_connections() {
    let Ok(url) = std::env::var("REDCELL_TEST_REDIS_URL") else {
        eprintln!("redis gate test runs in the Redis pass (REDCELL_TEST_REDIS_URL unset here)");
        return;
    };
    let cell_id = format!("t{:x}", rand::random::<u32>());
    let a = Gate::redis(&url, &cell_id).await.expect("redis");
    let b = Gate::redis(&url, &cell_id).await.expect("redis");
    let packet = "pk_000aaaaaaaaaaaaaaaaaaaa";
    let now = 1_000_000;

    let p1 = a
        .try_acquire(packet, 2, now)
        .await
        .unwrap()
        .expect("first permit");
    let _p2 = b
        .try_acquire(packet, 2, now)
        .await
        .unwrap()
        .expect("second permit");
    assert!(
        a.try_acquire(packet, 2, now).await.unwrap().is_none(),
        "limit 2 holds across connections"
    );
    a.release(p1).await;
    assert!(
        b.try_acquire(packet, 2, now).await.unwrap().is_some(),
        "a released permit frees a place"
    );
    // Permits whose holder died age out after 5 s instead of leaking capacity.
    assert!(a
        .try_acquire(packet, 2, now + 6_000)
        .await
        .unwrap()
        .is_some());
}

/// A Redis permit dropped without `release` (its claim's future was dropped) is given back by
/// a task its `Drop` spawns, long before it would age out.
#[tokio::test]
async fn a_dropped_redis_permit_is_given_back() {
    let Ok(url) = std::env::var("REDCELL_TEST_REDIS_URL") else {
        eprintln!("redis gate test runs in the Redis pass (REDCELL_TEST_REDIS_URL unset here)");
        return;
    };
    let cell_id = format!("t{:x}", rand::random::<u32>());
    let gate = Gate::redis(&url, &cell_id).await.expect("redis");
    let packet = "pk_000bbbbbbbbbbbbbbbbbbbb";
    let now = 1_000_000;
    let permit = gate.try_acquire(packet, 1, now).await.unwrap();
    assert!(permit.is_some(), "first permit");
    assert!(gate.try_acquire(packet, 1, now).await.unwrap().is_none());

    drop(permit);

    // Same `now`: only the release can free the place, not the TTL.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    while gate.try_acquire(packet, 1, now).await.unwrap().is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "a dropped permit was never given back"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// A cell whose Redis cannot be reached refuses to start, at once and saying why, so its
/// supervisor restarts it; it never sits there without a port.
#[test]
fn an_unreachable_redis_fails_the_start_quickly() {
    let dir = tempfile::tempdir().unwrap();
    let started = std::time::Instant::now();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cell"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--redis-url",
            "redis://127.0.0.1:1",
        ])
        .arg("--data-dir")
        .arg(dir.path())
        .env("REDCELL_AUTH_SECRET", "gate-test-secret-0123456789")
        .output()
        .expect("run cell");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cannot reach redis"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(20));
}

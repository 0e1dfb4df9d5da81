//! The driver against a small in-process stand-in for the router that answers every route of
//! the load's flows after a configurable delay.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

use super::*;

/// How the stand-in behaves.
#[derive(Clone, Copy, Default)]
struct Behaviour {
    /// Before every answer, asynchronously.
    delay: Duration,
    /// Before answering a GET, on top of `delay`.
    read_delay: Duration,
    /// Blocks the server's thread for this long on every request: on a current-thread
    /// runtime this also stalls the load generator, as an overloaded client machine would.
    block: Duration,
}

#[derive(Clone)]
struct Mock {
    behaviour: Behaviour,
    next_id: Arc<AtomicU64>,
}

impl Mock {
    async fn wait(&self, read: bool) {
        if !self.behaviour.block.is_zero() {
            std::thread::sleep(self.behaviour.block);
        }
        let mut delay = self.behaviour.delay;
        if read {
            delay += self.behaviour.read_delay;
        }
        tokio::time::sleep(delay).await;
    }

    fn id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }
}

async fn created(State(m): State<Mock>) -> (StatusCode, Json<Value>) {
    m.wait(false).await;
    let n = m.id();
    let body = json!({
        "subsidy_id": format!("sb-{n}"),
        "packet_id": format!("pk-{n}"),
        "payment": {"payment_id": format!("pay-{n}")},
    });
    (StatusCode::CREATED, Json(body))
}

async fn ok(State(m): State<Mock>) -> Json<Value> {
    m.wait(false).await;
    Json(json!({"status": "succeeded"}))
}

async fn read(State(m): State<Mock>) -> Json<Value> {
    m.wait(true).await;
    Json(json!({}))
}

async fn spawn_mock(behaviour: Behaviour) -> SocketAddr {
    let mock = Mock {
        behaviour,
        next_id: Arc::new(AtomicU64::new(0)),
    };
    let app = Router::new()
        .route("/v1/subsidies", post(created))
        .route("/v1/packets", post(created))
        .route("/v1/payments/{id}/callback", post(ok))
        .route("/v1/packets/{id}/claims", post(created).get(read))
        .route("/v1/packets/{id}", get(read))
        .route("/v1/users/{uid}/wallet", get(read))
        .with_state(mock);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind an ephemeral port");
    let addr = listener.local_addr().expect("bound address");
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

fn args(rate: f64, duration_ms: u64, mix: &str) -> LoadArgs {
    LoadArgs {
        rate,
        duration: Duration::from_millis(duration_ms),
        mix: mix.parse().expect("test mix"),
        users: 100,
        warmup: Duration::ZERO,
        max_in_flight: 10_000,
        timeout: Duration::from_secs(10),
        seed: Some(1),
        initial_packets: 2,
        json: true,
    }
}

fn target(addr: SocketAddr) -> Target {
    Target {
        router_url: format!("http://{addr}"),
        secret: "0123456789abcdef0123".into(),
    }
}

fn row<'a>(rows: &'a [LatencyRow], name: &str) -> &'a LatencyRow {
    rows.iter()
        .find(|r| r.name == name)
        .unwrap_or_else(|| panic!("no row {name}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_server_does_not_lower_the_scheduled_count() {
    let addr = spawn_mock(Behaviour {
        delay: Duration::from_millis(100),
        ..Behaviour::default()
    })
    .await;

    let report = run(&args(100.0, 1_000, Mix::DEFAULT), &target(addr))
        .await
        .expect("run");

    assert_eq!(report.scheduled, 100);
    assert_eq!(
        (report.launched, report.dropped, report.completed),
        (100, 0, 100)
    );
    assert_eq!(report.errors, 0, "{report}");
    assert!(!report.failed());
    let all = row(&report.operations, "all");
    assert_eq!(all.count, 100);
    assert!(all.p50_ms >= 100.0, "{all:?}");
    // Grants and sends are two requests each.
    if let Some(send) = report.operations.iter().find(|r| r.name == "send") {
        assert!(send.p50_ms >= 200.0, "{send:?}");
    }
    // Answers end after the window, which stretches it: the achieved rate is the completed
    // count over that stretched window, so never above the target. (How far below depends on
    // how busy the machine is, which a test must not assume.)
    assert!(report.achieved_window_s >= 1.0, "{report}");
    assert!(
        (report.achieved_rate - report.completed as f64 / report.achieved_window_s).abs() < 1e-6,
        "{report}"
    );
    assert!(report.achieved_rate < 100.0, "{}", report.achieved_rate);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn operations_past_the_in_flight_bound_are_dropped_and_counted() {
    let addr = spawn_mock(Behaviour {
        delay: Duration::from_millis(300),
        ..Behaviour::default()
    })
    .await;
    let mut a = args(100.0, 1_000, "claim=1");
    a.max_in_flight = 5;

    let report = run(&a, &target(addr)).await.expect("run");

    assert_eq!(report.scheduled, 100);
    assert_eq!(report.launched + report.dropped, 100);
    assert_eq!(report.completed, report.launched);
    assert!(report.dropped >= 50, "{report}");
    assert!(report.failed());
    assert_eq!(row(&report.operations, "claim").dropped, report.dropped);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unanswered_request_is_a_timeout_error_not_a_hang() {
    let addr = spawn_mock(Behaviour {
        read_delay: Duration::from_secs(30),
        ..Behaviour::default()
    })
    .await;
    let mut a = args(20.0, 500, "read=1");
    a.timeout = Duration::from_millis(200);
    let started = std::time::Instant::now();

    let report = run(&a, &target(addr)).await.expect("run");

    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(report.completed, 10);
    assert_eq!(report.errors, 10);
    assert!(report.failed());
    assert!(report
        .outcomes
        .iter()
        .all(|o| o.status == "timeout" && o.class == Class::Error));
}

/// The generator and the server share one thread, and the server blocks it 40 ms per
/// request: operations are launched late. Their latency must count from when they were due,
/// not from when they were finally sent (which would be ~40 ms each).
#[tokio::test(flavor = "current_thread")]
async fn latency_counts_from_the_due_time_when_the_generator_is_held_up() {
    let addr = spawn_mock(Behaviour {
        block: Duration::from_millis(40),
        ..Behaviour::default()
    })
    .await;
    let mut a = args(100.0, 300, "claim=1");
    a.initial_packets = 1;

    let report = run(&a, &target(addr)).await.expect("run");

    assert_eq!((report.scheduled, report.completed), (30, 30));
    let claims = row(&report.operations, "claim");
    // 30 claims at 40 ms of server time each end ~1.2 s after the start, though the last
    // was due at 0.29 s.
    assert!(claims.max_ms >= 700.0, "{claims:?}");
    assert!(claims.p50_ms >= 200.0, "{claims:?}");
    let per_request = row(&report.requests, Step::Claim.label());
    assert!(per_request.max_ms >= 700.0, "{per_request:?}");
    // And the report says where the time went: the generator launched some late (by how
    // much depends on how the one thread interleaves; at least one 10 ms slot was missed).
    assert!(report.launch_lag.max_ms >= 10.0, "{:?}", report.launch_lag);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_address_fails_at_seeding() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);

    let err = run(&args(10.0, 100, "claim=1"), &target(addr))
        .await
        .expect_err("nothing listens there");

    assert!(format!("{err:#}").contains("seeding"), "{err:#}");
}

#[test]
fn the_flags_parse_as_documented() {
    use clap::Parser;
    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        load: LoadArgs,
    }
    let cli = Cli::try_parse_from([
        "cellctl",
        "--rate",
        "250",
        "--duration",
        "1m30s",
        "--mix",
        "claim=3,read=1",
        "--warmup",
        "5s",
    ])
    .expect("parse");
    assert_eq!(cli.load.rate, 250.0);
    assert_eq!(cli.load.duration, Duration::from_secs(90));
    assert_eq!(cli.load.mix.weight(OpKind::Claim), 3);
    assert_eq!(cli.load.timeout, Duration::from_secs(10));
    assert_eq!(cli.load.max_in_flight, 2048);
    let defaults = Cli::try_parse_from(["cellctl", "--rate", "1"]).expect("parse");
    assert_eq!(defaults.load.duration, Duration::from_secs(60));
    assert_eq!(defaults.load.mix, Mix::default());
    for bad in [
        vec!["cellctl"],
        vec!["cellctl", "--rate", "0"],
        vec!["cellctl", "--rate", "-3"],
        vec!["cellctl", "--rate", "1", "--duration", "soon"],
        vec!["cellctl", "--rate", "1", "--timeout", "0s"],
        vec!["cellctl", "--rate", "1", "--mix", "claim=0"],
        vec!["cellctl", "--rate", "1", "--max-in-flight", "0"],
    ] {
        assert!(Cli::try_parse_from(&bad).is_err(), "{bad:?}");
    }
}

//! Hardening finding 9: when the cell's database goes away, money writes answer `503
//! cell_unavailable` with Retry-After within about a second (not after a 5 s pool wait),
//! `/readyz` turns red as fast, and both recover by themselves when the database is back.
//!
//! Postgres only (a SQLite shard is a file that cannot go away): the database is reached
//! through a TCP proxy in this test, which the test cuts (every connection closed, new ones
//! refused) and restores.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use reqwest::StatusCode;
use serde_json::json;
use tokio::net::{TcpListener, TcpStream};

/// A TCP proxy to one upstream that can be cut (its port closed: connections refused, as
/// when the server is stopped, and every open one closed) and restored on the same port.
struct Proxy {
    addr: String,
    upstream: String,
    tasks: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl Proxy {
    async fn start(upstream: String) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let proxy = Proxy {
            addr,
            upstream,
            tasks: Arc::default(),
        };
        proxy.serve(listener);
        proxy
    }

    fn serve(&self, listener: TcpListener) {
        let (upstream, tasks) = (self.upstream.clone(), self.tasks.clone());
        let accept = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let upstream = upstream.clone();
                let conn = tokio::spawn(async move {
                    if let Ok(mut server) = TcpStream::connect(&upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
                tasks.lock().unwrap().push(conn.abort_handle());
            }
        });
        self.tasks.lock().unwrap().push(accept.abort_handle());
    }

    /// The database goes away.
    fn cut(&self) {
        for task in self.tasks.lock().unwrap().drain(..) {
            task.abort();
        }
    }

    async fn restore(&self) {
        let listener = loop {
            match TcpListener::bind(&self.addr).await {
                Ok(l) => break l,
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        };
        self.serve(listener);
    }
}

async fn grant(cell: &TestCell, id: &str) -> (StatusCode, serde_json::Value, Duration) {
    let started = Instant::now();
    let body =
        json!({"grant_id": id, "uid": "u1", "amount": 100, "expires_at": "2099-01-01T00:00:00Z"});
    let (s, v) = cell.post("/v1/subsidies", &activity(), body).await;
    (s, v, started.elapsed())
}

#[tokio::test]
async fn a_database_outage_fails_fast_and_heals() {
    let Some(admin) = Backend::from_env().postgres else {
        eprintln!("Postgres only: runs in the Postgres pass of scripts/test");
        return;
    };
    let upstream = admin
        .split_once('@')
        .map_or(admin.as_str(), |(_, r)| r)
        .split('/')
        .next()
        .unwrap()
        .to_owned();
    let proxy = Proxy::start(upstream).await;
    let cell = TestCell::spawn_with(CellOptions {
        database_via: Some(proxy.addr.clone()),
        ..CellOptions::default()
    })
    .await;
    let (s, v, _) = grant(&cell, "g-before").await;
    assert_eq!(s, StatusCode::CREATED, "{v}");

    proxy.cut();
    tokio::time::sleep(Duration::from_millis(50)).await; // the aborts take effect
                                                         // The first request may meet a pooled connection just closed; every one answers 503
                                                         // within the bound, and /readyz says why.
    for i in 0..3 {
        let (s, v, took) = grant(&cell, &format!("g-down-{i}")).await;
        assert_eq!(
            (s, v["code"].as_str()),
            (StatusCode::SERVICE_UNAVAILABLE, Some("cell_unavailable")),
            "{v}"
        );
        assert!(
            took <= Duration::from_millis(1_500),
            "answered after {took:?}, not within about a second"
        );
    }
    let started = Instant::now();
    let (s, v) = cell.call(reqwest::Method::GET, "/readyz", None, None).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{v}");
    assert!(started.elapsed() <= Duration::from_millis(1_500));

    proxy.restore().await;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (s, v, _) = grant(&cell, "g-after").await;
        if s == StatusCode::CREATED || s == StatusCode::OK {
            break;
        }
        assert!(Instant::now() < deadline, "never recovered: {s} {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (s, _) = cell.call(reqwest::Method::GET, "/readyz", None, None).await;
    assert_eq!(s, StatusCode::OK);
}

//! The router's serving loop (`serve/`) against a real router process: a slowloris head is
//! closed within the header timeout, and a flood past the connection cap is answered
//! `503 overloaded` (problem+json, Retry-After) while a request after it succeeds. The cell
//! side of the same loop, and its body, URI and header limits, are in `cell/tests/edge.rs`.

mod support;

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use topology::{CellId, CellInfo, CellMap, CellStatus, Region, Slot};

/// Reads what the server sends until it closes (or 3 s pass): the text and whether it closed.
async fn read_to_close(socket: &mut TcpStream) -> (String, bool) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let closed = tokio::time::timeout(Duration::from_secs(3), async {
        loop {
            match socket.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await
    .is_ok();
    (String::from_utf8_lossy(&buf).into_owned(), closed)
}

#[tokio::test]
async fn slowloris_is_cut_off_and_a_flood_gets_503_overloaded() {
    let _serial = support::serial().await;
    // Arrange: a router on a static map (its one cell need not exist: only the router's own
    // /healthz is asked), a 500 ms header timeout and room for 4 connections.
    let dir = tempfile::TempDir::new().unwrap();
    let cell = CellInfo {
        id: CellId::parse("c1").unwrap(),
        region: Region::parse("east").unwrap(),
        url: format!("http://127.0.0.1:{}", support::free_port()),
        status: CellStatus::Active,
    };
    let owners = Slot::all().map(|_| cell.id.clone()).collect();
    let map = CellMap::from_assignment(vec![cell], owners, &Default::default()).unwrap();
    let file = dir.path().join("map.json");
    std::fs::write(&file, serde_json::to_vec(&map).unwrap()).unwrap();
    let args: Vec<String> = [
        "--map",
        &file.display().to_string(),
        "--http-header-timeout-ms",
        "500",
        "--http-max-connections",
        "4",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let router = support::spawn_router(
        &args,
        &dir.path().join("state"),
        dir.path().join("router.log"),
    )
    .await;
    support::wait_ready(&router.url, "router").await;
    let addr = router.url.trim_start_matches("http://").to_owned();

    // Act 1: half a request head, then silence. Assert: closed at about 500 ms.
    let start = Instant::now();
    let mut slow = TcpStream::connect(&addr).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nhost:")
        .await
        .unwrap();
    let (_, closed) = read_to_close(&mut slow).await;
    assert!(closed, "a half-sent head held the connection for 3 s");
    assert!(start.elapsed() >= Duration::from_millis(400));

    // Act 2: hold keep-alive connections (each answered once, within the 500 ms idle bound
    // since they open a few milliseconds apart) until the router refuses one.
    let mut held = Vec::new();
    let (refused, closed) = loop {
        assert!(
            held.len() <= 4,
            "{} connections held past a cap of 4",
            held.len()
        );
        let mut socket = TcpStream::connect(&addr).await.unwrap();
        socket
            .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(3), socket.read(&mut chunk))
            .await
            .expect("an answer within 3 s")
            .unwrap();
        let first = String::from_utf8_lossy(&chunk[..n]).into_owned();
        if first.starts_with("HTTP/1.1 200") {
            held.push(socket);
        } else {
            let (rest, closed) = read_to_close(&mut socket).await;
            break (first + &rest, closed);
        }
    };

    // Assert: 503 problem+json `overloaded` with Retry-After, and closed.
    let lower = refused.to_lowercase();
    assert!(lower.starts_with("http/1.1 503"), "{refused}");
    assert!(lower.contains("retry-after: 1\r\n"), "{refused}");
    assert!(
        lower.contains("content-type: application/problem+json"),
        "{refused}"
    );
    assert!(refused.contains(r#""code":"overloaded""#), "{refused}");
    assert!(closed, "the refused connection was left open");

    // Once the flood lets go, a real request succeeds.
    drop(held);
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let ok = http
            .get(format!("{}/healthz", router.url))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        if ok {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still refused 3 s after the flood"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

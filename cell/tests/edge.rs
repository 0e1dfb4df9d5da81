//! What the serving loop (`serve/`) does to a connection before the API sees it, against a
//! real cell process: slowloris heads and idle keep-alive connections are closed within the
//! header timeout, a flood past the connection cap is answered `503 overloaded`, a body that
//! never arrives gets a timely 408, and oversized URIs and header sets get problem+json (up
//! to hyper's own limits, past which hyper answers bare; see `serve/src/limits.rs`).

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn addr(cell: &TestCell) -> String {
    cell.url.trim_start_matches("http://").to_owned()
}

async fn cell_with(args: &[&str]) -> TestCell {
    TestCell::spawn_with(CellOptions {
        extra_args: args.iter().map(|a| a.to_string()).collect(),
        ..CellOptions::default()
    })
    .await
}

/// One HTTP/1.1 response read off a raw socket: status, lowercased head, body.
struct Answer {
    status: u16,
    head: String,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|l| {
            let (n, v) = l.split_once(':')?;
            (n.trim() == name).then(|| v.trim())
        })
    }

    fn problem(&self) -> Value {
        assert_eq!(
            self.header("content-type"),
            Some("application/problem+json"),
            "{}",
            self.head
        );
        serde_json::from_str(&self.body).expect("a problem+json body")
    }
}

/// Reads one response (head, then `content-length` bytes of body) within 5 s.
async fn read_answer(socket: &mut TcpStream) -> Answer {
    let read = async {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let n = socket.read(&mut chunk).await.expect("read");
            assert!(n > 0, "closed before a whole response head: {buf:?}");
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_lowercase();
        let status = head[9..12].parse().expect("a status code");
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .map_or(0, |v| v.trim().parse().expect("a length"));
        while buf.len() < head_end + len {
            let n = socket.read(&mut chunk).await.expect("read body");
            assert!(n > 0, "closed inside the body");
            buf.extend_from_slice(&chunk[..n]);
        }
        let body = String::from_utf8_lossy(&buf[head_end..head_end + len]).into_owned();
        Answer { status, head, body }
    };
    tokio::time::timeout(Duration::from_secs(5), read)
        .await
        .expect("an answer within 5 s")
}

/// Sends `request` on a fresh connection and reads the answer.
async fn ask(addr: &str, request: &[u8]) -> Answer {
    let mut socket = TcpStream::connect(addr).await.expect("connect");
    socket.write_all(request).await.expect("send");
    read_answer(&mut socket).await
}

/// Waits until the server closes `socket` (EOF or reset), failing after `limit`.
async fn closed_within(socket: &mut TcpStream, limit: Duration) -> Duration {
    let start = Instant::now();
    let mut chunk = [0u8; 1024];
    loop {
        match tokio::time::timeout_at((start + limit).into(), socket.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return start.elapsed(),
            Ok(Ok(_)) => continue,
            Err(_) => panic!("connection still open after {limit:?}"),
        }
    }
}

#[tokio::test]
async fn a_slowloris_head_is_closed_within_the_header_timeout() {
    // Arrange: a 500 ms header timeout.
    let cell = cell_with(&["--http-header-timeout-ms", "500"]).await;
    let mut socket = TcpStream::connect(addr(&cell)).await.expect("connect");

    // Act: a request head one byte every 100 ms, never finished, while watching for the close.
    let start = Instant::now();
    let head = b"GET /healthz HTTP/1.1\r\nx-slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    let (mut rd, mut wr) = socket.split();
    let trickle = async {
        for b in head {
            if wr.write_all(&[*b]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        std::future::pending::<()>().await
    };
    let closed = async {
        let mut chunk = [0u8; 256];
        loop {
            match rd.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(_) => continue,
            }
        }
    };
    let ended = tokio::time::timeout(Duration::from_secs(3), async {
        tokio::select! {
            _ = trickle => {},
            _ = closed => {},
        }
    })
    .await;

    // Assert: closed at about 500 ms, though a byte arrived every 100 ms.
    assert!(
        ended.is_ok(),
        "a trickled head kept the connection open for 3 s"
    );
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(400),
        "closed too early: {took:?}"
    );
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_the_header_timeout() {
    // Arrange: a 500 ms header timeout, one request answered on a keep-alive connection.
    let cell = cell_with(&["--http-header-timeout-ms", "500"]).await;
    let mut socket = TcpStream::connect(addr(&cell)).await.expect("connect");
    socket
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .expect("send");
    let answer = read_answer(&mut socket).await;
    assert_eq!(answer.status, 200);

    // Act: say nothing more. Assert: hyper's header timer also runs while the connection
    // waits for its next request, so the idle connection closes at about 500 ms.
    let idle = closed_within(&mut socket, Duration::from_secs(3)).await;
    assert!(
        idle >= Duration::from_millis(400),
        "closed too early: {idle:?}"
    );
}

#[tokio::test]
async fn a_flood_past_the_connection_cap_gets_503_overloaded_then_recovers() {
    // Arrange: at most 8 connections (the harness' readiness poll may hold one of them).
    let cell = cell_with(&["--http-max-connections", "8"]).await;
    let addr = addr(&cell);

    // Act: open keep-alive connections, each answered once and kept, until one is refused.
    let mut held = Vec::new();
    let refused = loop {
        assert!(
            held.len() <= 8,
            "{} connections accepted past a cap of 8",
            held.len()
        );
        let mut socket = TcpStream::connect(&addr).await.expect("connect");
        socket
            .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .expect("send");
        let answer = read_answer(&mut socket).await;
        match answer.status {
            200 => held.push(socket),
            _ => break answer,
        }
    };

    // Assert: a 503 problem with a stable code and Retry-After, and the connection closed.
    assert_eq!(refused.status, 503, "{}", refused.body);
    assert_eq!(refused.header("retry-after"), Some("1"));
    let problem = refused.problem();
    assert_eq!(problem["code"], "overloaded", "{problem}");
    assert_eq!(problem["status"], 503);
    assert!(
        held.len() >= 6,
        "refused after only {} connections",
        held.len()
    );

    // Once the flood lets go, a real request on a new connection succeeds.
    drop(held);
    let fresh = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .expect("client");
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let status = fresh
            .get(format!("{}/healthz", cell.url))
            .send()
            .await
            .map(|r| r.status().as_u16());
        if matches!(status, Ok(200)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still refused 3 s after the flood: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_declared_body_that_never_arrives_gets_408_promptly() {
    // Arrange: a 300 ms body timeout.
    let cell = cell_with(&["--body-timeout-ms", "300"]).await;
    let token = user("slowbody");
    let request = format!(
        "POST /v1/packets HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {token}\r\n\
         content-type: application/json\r\ncontent-length: 100\r\n\r\n{{\"total\":"
    );

    // Act: 100 bytes declared, 9 sent, then silence.
    let start = Instant::now();
    let answer = ask(&addr(&cell), request.as_bytes()).await;

    // Assert: 408 problem+json after the body timeout, not the request timeout's 30 s.
    let took = start.elapsed();
    assert_eq!(answer.status, 408, "{}", answer.body);
    assert_eq!(answer.problem()["code"], "request_timeout");
    assert!(took < Duration::from_secs(3), "took {took:?}");
}

#[tokio::test]
async fn oversized_uris_and_header_sets_get_problems_up_to_hypers_limits() {
    let cell = TestCell::spawn().await;
    let addr = addr(&cell);

    // A 10 KiB URI: ours, 414 uri_too_long.
    let long = format!(
        "GET /v1/packets/{} HTTP/1.1\r\nhost: x\r\n\r\n",
        "a".repeat(10 * 1024)
    );
    let answer = ask(&addr, long.as_bytes()).await;
    assert_eq!(answer.status, 414);
    assert_eq!(answer.problem()["code"], "uri_too_long");

    // 110 header fields: ours, 431 too_many_headers.
    let headers: String = (0..110).map(|i| format!("x-h{i}: v\r\n")).collect();
    let many = format!("GET /healthz HTTP/1.1\r\nhost: x\r\n{headers}\r\n");
    let answer = ask(&addr, many.as_bytes()).await;
    assert_eq!(answer.status, 431);
    assert_eq!(answer.problem()["code"], "too_many_headers");

    // 40 KiB of headers in few fields: ours, 431 headers_too_large.
    let big = format!(
        "GET /healthz HTTP/1.1\r\nhost: x\r\nx-big: {}\r\n\r\n",
        "b".repeat(40 * 1024)
    );
    let answer = ask(&addr, big.as_bytes()).await;
    assert_eq!(answer.status, 431);
    assert_eq!(answer.problem()["code"], "headers_too_large");

    // Past hyper's own limits (65,534-byte URI, 128 fields) hyper answers before any code
    // of ours runs, with no body and no hook to change it: recorded here so that a hyper
    // that starts offering one shows up.
    let huge = format!("GET /{} HTTP/1.1\r\nhost: x\r\n\r\n", "a".repeat(70 * 1024));
    let answer = ask(&addr, huge.as_bytes()).await;
    assert_eq!((answer.status, answer.body.as_str()), (414, ""));
    let headers: String = (0..200).map(|i| format!("x-h{i}: v\r\n")).collect();
    let too_many = format!("GET /healthz HTTP/1.1\r\nhost: x\r\n{headers}\r\n");
    let answer = ask(&addr, too_many.as_bytes()).await;
    assert_eq!((answer.status, answer.body.as_str()), (431, ""));
}

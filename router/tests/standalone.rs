//! The router alone with a static map: failing cells and hostile input, no cell process.

mod support;

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::json;
use support::{call, own_wallet, token};
use topology::{CellId, CellInfo, CellMap, CellStatus, Region, Slot};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hanging_or_dead_cells_answer_503_and_bad_input_never_5xx() {
    let _serial = support::serial().await;
    let dir = tempfile::TempDir::new().unwrap();
    // c1 accepts connections and never answers; c2 refuses them; c3 sends headers and
    // part of its body, then stalls.
    let hang = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let hang_addr = hang.local_addr().unwrap();
    let stall = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let stall_addr = stall.local_addr().unwrap();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut held = Vec::new();
        while let Ok((mut sock, _)) = stall.accept().await {
            let mut buf = [0u8; 4096];
            let _ = sock.read(&mut buf).await;
            let head = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"partial\":";
            let _ = sock.write_all(head.as_bytes()).await;
            held.push(sock);
        }
    });
    let dead = support::free_port();
    let info = |id: &str, region: &str, url: String| CellInfo {
        id: CellId::parse(id).unwrap(),
        region: Region::parse(region).unwrap(),
        url,
        status: CellStatus::Active,
    };
    let cells = vec![
        info("c1", "east", format!("http://{hang_addr}")),
        info("c2", "west", format!("http://127.0.0.1:{dead}")),
        info("c3", "west", format!("http://{stall_addr}")),
    ];
    let owners = Slot::all()
        .map(|s| CellId::parse(["c1", "c2", "c3"][usize::from(s.get() % 3)]).unwrap())
        .collect();
    let map = CellMap::from_assignment(cells, owners, &Default::default()).unwrap();
    let file = dir.path().join("map.json");
    std::fs::write(&file, serde_json::to_vec(&map).unwrap()).unwrap();
    let args = vec![
        "--map".to_owned(),
        file.display().to_string(),
        "--timeout-ms".into(),
        "300".into(),
        "--rate-per-uid".into(),
        "50".into(),
    ];
    let router = support::spawn_router(
        &args,
        &dir.path().join("state"),
        dir.path().join("router.log"),
    )
    .await;
    support::wait_ready(&router.url, "router").await;
    let http = reqwest::Client::new();
    let r = router.url.as_str();

    for cell in ["c1", "c2"] {
        let u = support::uid_on(&map, cell, &[]);
        let started = Instant::now();
        let (s, _, problem, headers) = own_wallet(&http, r, &u).await;
        assert_eq!(
            (s, problem["code"].as_str()),
            (StatusCode::SERVICE_UNAVAILABLE, Some("cell_unavailable")),
            "{cell}"
        );
        assert!(headers.contains_key("retry-after"));
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{cell}: {:?}",
            started.elapsed()
        );
    }

    // A body that stalls is cut off after the idle timeout, not held for ever.
    let u = support::uid_on(&map, "c3", &[]);
    let started = Instant::now();
    let resp = http
        .get(format!("{r}/v1/users/{u}/wallet"))
        .bearer_auth(token(&u, None))
        .send()
        .await
        .expect("headers arrive");
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(resp.bytes().await.is_err(), "a stalled body must fail");
    assert!(started.elapsed() < Duration::from_secs(3));

    // Odd input is a 4xx, never a 5xx; oversize bodies are refused before they are read.
    let t = token("u1", None);
    let odd = [
        (Method::GET, "/v1/users/%ff/wallet"),
        (Method::GET, "/v1/users//wallet"),
        (Method::DELETE, "/v1/packets"),
        (Method::GET, "/v1/packets/pk_400aaaaaaaaaaaaaaaaaaaa"),
        (
            Method::POST,
            "/v1/payments/pk_000aaaaaaaaaaaaaaaaaaaa/callback",
        ),
        (Method::GET, "/../../etc/passwd"),
        (Method::POST, "/v1/subsidies"),
    ];
    for (m, p) in odd {
        let (s, _, _, _) = call(&http, r, m.clone(), p, Some(&t), Some(json!([1, 2])), None).await;
        assert!(s.is_client_error(), "{m} {p}: {s}");
    }
    let resp = http
        .post(format!("{r}/v1/packets"))
        .bearer_auth(&t)
        .header("content-length", "100000000")
        .body(vec![b'x'; 70_000])
        .send()
        .await;
    if let Ok(resp) = resp {
        assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    }

    // Per-uid rate limit: 429 rate_limited with Retry-After, other uids unaffected.
    let u = support::uid_on(&map, "c2", &[]);
    let tu = token(&u, None);
    let mut limited = None;
    for _ in 0..80 {
        let (s, _, problem, headers) = call(
            &http,
            r,
            Method::GET,
            &format!("/v1/users/{u}/wallet"),
            Some(&tu),
            None,
            None,
        )
        .await;
        if s == StatusCode::TOO_MANY_REQUESTS {
            limited = Some((problem, headers));
            break;
        }
    }
    let (problem, headers) = limited.expect("the per-uid limit bites");
    assert_eq!(problem["code"], "rate_limited");
    assert!(headers.contains_key("retry-after"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_421_is_retried_once_at_the_newer_owner_the_cell_names() {
    let _serial = support::serial().await;
    let dir = tempfile::TempDir::new().unwrap();
    let ports = [support::free_port(), support::free_port()];
    let info = |id: &str, region: &str, port: u16| CellInfo {
        id: CellId::parse(id).unwrap(),
        region: Region::parse(region).unwrap(),
        url: format!("http://127.0.0.1:{port}"),
        status: CellStatus::Active,
    };
    let cells = vec![info("c1", "east", ports[0]), info("c2", "west", ports[1])];
    let owners = Slot::all()
        .map(|s| CellId::parse(if s.get() % 2 == 0 { "c1" } else { "c2" }).unwrap())
        .collect();
    // The router's map is behind the cells': x moved to c2 at epoch 2, y stayed on c1 but
    // at epoch 2 too (so c1 refuses the router's epoch 1 and names itself).
    let router_map = CellMap::from_assignment(cells, owners, &Default::default()).unwrap();
    let x = support::uid_on(&router_map, "c1", &[]);
    let y = support::uid_on(&router_map, "c1", &[&x]);
    let mut cell_map = router_map.clone();
    cell_map.version = 2;
    let slot = |u: &str| Slot::of(u.as_bytes()).index();
    cell_map.slots[slot(&x)] = topology::SlotOwner {
        shard: topology::ShardId::parse("c2").unwrap(),
        epoch: topology::Epoch(2),
    };
    cell_map.slots[slot(&y)].epoch = topology::Epoch(2);
    let write = |name: &str, map: &CellMap| {
        let path = dir.path().join(name);
        std::fs::write(&path, serde_json::to_vec(map).unwrap()).unwrap();
        path
    };
    let (router_file, cell_file) = (
        write("router-map.json", &router_map),
        write("cell-map.json", &cell_map),
    );
    let _c1 = support::spawn_cell(
        "c1",
        ports[0],
        support::CellMapSource::Static(&cell_file),
        dir.path(),
    )
    .await;
    let _c2 = support::spawn_cell(
        "c2",
        ports[1],
        support::CellMapSource::Static(&cell_file),
        dir.path(),
    )
    .await;
    let args = vec!["--map".to_owned(), router_file.display().to_string()];
    let router = support::spawn_router(
        &args,
        &dir.path().join("state"),
        dir.path().join("router.log"),
    )
    .await;
    support::wait_ready(&router.url, "router").await;
    let http = reqwest::Client::new();

    let (s, cell, body, _) = own_wallet(&http, &router.url, &x).await;
    assert_eq!((s, cell.as_deref()), (StatusCode::OK, Some("c2")), "{body}");
    // Retried once, then a 503 rather than a loop.
    let (s, _, body, _) = own_wallet(&http, &router.url, &y).await;
    assert_eq!(
        (s, body["code"].as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, Some("cell_unavailable")),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_hold_across_routers_through_redis() {
    let _serial = support::serial().await;
    let dir = tempfile::TempDir::new().unwrap();
    let Some(redis) = support::spawn_redis(dir.path()).await else {
        eprintln!("redis-server not installed: skipped");
        return;
    };
    // Admitted requests meet a dead cell (503); refused ones are 429.
    let dead = support::free_port();
    let map = CellMap::single(CellInfo {
        id: CellId::parse("c1").unwrap(),
        region: Region::parse("east").unwrap(),
        url: format!("http://127.0.0.1:{dead}"),
        status: CellStatus::Active,
    });
    let file = dir.path().join("map.json");
    std::fs::write(&file, serde_json::to_vec(&map).unwrap()).unwrap();
    let args = vec![
        "--map".to_owned(),
        file.display().to_string(),
        "--rate-per-uid".into(),
        "4".into(),
        "--redis-url".into(),
        redis.url.clone(),
    ];
    let mut routers = Vec::new();
    for n in 0..2 {
        let r = support::spawn_router(
            &args,
            &dir.path().join(format!("state{n}")),
            dir.path().join(format!("router{n}.log")),
        )
        .await;
        support::wait_ready(&r.url, "router").await;
        routers.push(r);
    }
    let http = reqwest::Client::new();
    let get = |n: usize, uid: &str| {
        let (http, url, t) = (http.clone(), routers[n].url.clone(), token(uid, None));
        let uid = uid.to_owned();
        async move {
            http.get(format!("{url}/v1/users/{uid}/wallet"))
                .bearer_auth(t)
                .send()
                .await
                .expect("router answers")
                .status()
        }
    };
    // Wait for both routers to reach Redis: a refusal proves the shared counter.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        // Start at the beginning of a one-second window, so all calls below share it.
        let ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_millis();
        tokio::time::sleep(Duration::from_millis(u64::from(1010 - ms))).await;
        let mut statuses = Vec::new();
        for _ in 0..4 {
            statuses.push(get(0, "u-limited").await);
        }
        let on_b = get(1, "u-limited").await;
        let other = get(1, "u-other").await;
        if statuses
            .iter()
            .all(|s| *s == StatusCode::SERVICE_UNAVAILABLE)
            && on_b == StatusCode::TOO_MANY_REQUESTS
        {
            assert_eq!(
                other,
                StatusCode::SERVICE_UNAVAILABLE,
                "another uid is not limited"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no shared limit: {statuses:?} then {on_b}"
        );
    }
}

/// A minimal OTLP/HTTP collector: hands out the body of every `POST /v1/traces`.
async fn fake_collector() -> (String, tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 8192];
                loop {
                    let Ok(n) = sock.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        continue;
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                    let len = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse::<usize>().ok())
                        .unwrap_or(0);
                    if buf.len() < end + 4 + len {
                        continue;
                    }
                    if head.starts_with("post /v1/traces") {
                        let _ = tx.send(buf[end + 4..end + 4 + len].to_vec());
                    }
                    buf.drain(..end + 4 + len);
                    let ok = "HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n";
                    if sock.write_all(ok.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (url, rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_carry_the_route_decision_to_an_otlp_collector_and_the_trace_to_the_cell() {
    let _serial = support::serial().await;
    let dir = tempfile::TempDir::new().unwrap();
    let (collector, mut spans) = fake_collector().await;
    // A fake cell that answers 200 and hands out the request head it received.
    let cell = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let cell_addr = cell.local_addr().unwrap();
    let (head_tx, mut heads) = tokio::sync::mpsc::unbounded_channel::<String>();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut sock, _)) = cell.accept().await {
            let mut buf = vec![0u8; 16384];
            let n = sock.read(&mut buf).await.unwrap_or(0);
            let _ = head_tx.send(String::from_utf8_lossy(&buf[..n]).to_ascii_lowercase());
            let ok =
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}";
            let _ = sock.write_all(ok.as_bytes()).await;
        }
    });
    let map = CellMap::single(CellInfo {
        id: CellId::parse("c7").unwrap(),
        region: Region::parse("east").unwrap(),
        url: format!("http://{cell_addr}"),
        status: CellStatus::Active,
    });
    let file = dir.path().join("map.json");
    std::fs::write(&file, serde_json::to_vec(&map).unwrap()).unwrap();
    let args = vec!["--map".to_owned(), file.display().to_string()];
    let envs = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", collector.as_str()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
    ];
    let mut router = support::spawn_router_env(
        &args,
        &dir.path().join("state"),
        dir.path().join("router.log"),
        &envs,
    )
    .await;
    support::wait_ready(&router.url, "router").await;
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let resp = reqwest::Client::new()
        .get(format!("{}/v1/users/u1/wallet", router.url))
        .bearer_auth(token("u1", None))
        .header("traceparent", format!("00-{trace}-00f067aa0ba902b7-01"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let head = heads.recv().await.expect("the cell saw the request");
    let slot = Slot::of(b"u1").get();
    assert!(
        head.contains(&format!("traceparent: 00-{trace}-")),
        "{head}"
    );
    assert!(
        !head.contains("00f067aa0ba902b7"),
        "the router adds its own span: {head}"
    );
    assert!(
        head.contains(&format!("x-redcell-slot: {slot}\r\n")),
        "{head}"
    );
    assert!(head.contains("x-redcell-epoch: 1\r\n"), "{head}");
    let body = tokio::time::timeout(Duration::from_secs(10), spans.recv())
        .await
        .expect("spans exported within 10 s")
        .expect("collector running");
    // Protobuf keeps attribute keys and string values as plain bytes.
    let has = |needle: &[u8]| body.windows(needle.len()).any(|w| w == needle);
    assert!(
        has(b"router.request") && has(b"slot") && has(b"epoch"),
        "span lacks the route decision"
    );
    assert!(has(b"c7"), "span lacks the cell");
    let trace_bytes: Vec<u8> = (0..16)
        .map(|i| u8::from_str_radix(&trace[2 * i..2 * i + 2], 16).unwrap())
        .collect();
    assert!(has(&trace_bytes), "span is not in the caller's trace");
    assert!(router.terminate(Duration::from_secs(15)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_any_map_the_router_is_not_ready_and_answers_503() {
    let _serial = support::serial().await;
    let dir = tempfile::TempDir::new().unwrap();
    let dead = support::free_port();
    let args = vec!["--meta".to_owned(), format!("127.0.0.1:{dead}")];
    let router = support::spawn_router(
        &args,
        &dir.path().join("state"),
        dir.path().join("router.log"),
    )
    .await;
    let http = reqwest::Client::new();
    let ready = http
        .get(format!("{}/readyz", router.url))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);
    let (s, _, problem, headers) = call(
        &http,
        &router.url,
        Method::GET,
        "/v1/users/u1/wallet",
        Some(&token("u1", None)),
        None,
        None,
    )
    .await;
    assert_eq!(
        (s, problem["code"].as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, Some("cell_unavailable"))
    );
    assert!(headers.contains_key("retry-after"));
    let health = http
        .get(format!("{}/healthz", router.url))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), StatusCode::OK);
}

/// A fake cell that answers `503` + `Retry-After: 1` (problem+json) to its first `pauses`
/// requests, then `200`; counts what it got.
async fn pausing_cell(pauses: usize) -> (u16, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    refusing_cell(pauses, "cell_unavailable").await
}

/// [`pausing_cell`] whose 503s carry the problem code `code`.
async fn refusing_cell(
    pauses: usize,
    code: &'static str,
) -> (u16, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let seen = std::sync::Arc::new(AtomicUsize::new(0));
    let counter = seen.clone();
    let app = axum::Router::new().fallback(move || {
        let counter = counter.clone();
        async move {
            let n = counter.fetch_add(1, Ordering::SeqCst);
            if n < pauses {
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    [
                        ("content-type", "application/problem+json"),
                        ("retry-after", "1"),
                    ],
                    serde_json::json!({"type": "about:blank", "title": "Service Unavailable",
                        "status": 503, "code": code, "detail": "shard paused"})
                    .to_string(),
                )
            } else {
                (
                    StatusCode::OK,
                    [("content-type", "application/json"), ("retry-after", "0")],
                    r#"{"uid":"u1","balance":0}"#.to_owned(),
                )
            }
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (port, seen)
}

/// A cell pausing writes (a failover, a slot move) answers 503 with Retry-After: the router
/// retries within its budget so the client sees the answer after the pause, and gives the
/// 503 back once the budget is spent; with no budget the client sees the 503 itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cell_s_503_with_retry_after_is_retried_within_the_budget() {
    use std::sync::atomic::Ordering;
    let _serial = support::serial().await;
    let dir = tempfile::TempDir::new().unwrap();
    let http = reqwest::Client::new();
    let wallet = |router: String| {
        let http = http.clone();
        async move {
            let started = Instant::now();
            let (s, _, body, headers) = own_wallet(&http, &router, "u1").await;
            (s, body, headers, started.elapsed())
        }
    };
    let router_on = |port: u16, budget_ms: u64, name: &'static str| {
        let extra = ["--retry-unavailable-ms".to_owned(), budget_ms.to_string()];
        let dir = dir.path().to_path_buf();
        async move { support::router_on_one_cell(&dir, name, port, &extra).await }
    };

    // Three pauses, then the answer: the client sees only the answer.
    let (port, seen) = pausing_cell(3).await;
    let router = router_on(port, 5_000, "patient").await;
    let (s, body, _, took) = wallet(router.url.clone()).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(
        seen.load(Ordering::SeqCst),
        4,
        "three 503s, then the answer"
    );
    assert!(
        took < Duration::from_secs(2),
        "backoff well under the cell's 1 s each: {took:?}"
    );

    // A pause longer than the budget: the client gets the cell's 503 and its Retry-After.
    let (port, seen) = pausing_cell(usize::MAX).await;
    let router = router_on(port, 400, "short").await;
    let (s, body, headers, took) = wallet(router.url.clone()).await;
    assert_eq!(
        (s, body["code"].as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, Some("cell_unavailable")),
        "{body}"
    );
    assert!(headers.contains_key("retry-after"));
    assert!(seen.load(Ordering::SeqCst) > 1, "retried before giving up");
    assert!(
        took >= Duration::from_millis(400) && took < Duration::from_secs(3),
        "{took:?}"
    );

    // No budget: the first 503 goes to the client.
    let (port, seen) = pausing_cell(1).await;
    let router = router_on(port, 0, "none").await;
    let (s, body, _, _) = wallet(router.url.clone()).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(seen.load(Ordering::SeqCst), 1);

    // A final refusal (the cell degraded the flow: its payment breaker is open) is not a
    // pause: the client gets it at once, whole, even with a budget left.
    let (port, seen) = refusing_cell(usize::MAX, "degraded").await;
    let router = router_on(port, 5_000, "degraded").await;
    let (s, body, headers, took) = wallet(router.url.clone()).await;
    assert_eq!(
        (s, body["code"].as_str(), body["detail"].as_str()),
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Some("degraded"),
            Some("shard paused")
        ),
        "{body}"
    );
    assert!(headers.contains_key("retry-after"));
    assert_eq!(
        seen.load(Ordering::SeqCst),
        1,
        "a degraded 503 is not retried"
    );
    assert!(took < Duration::from_secs(1), "{took:?}");
}

/// Hardening finding 4: a cell whose listen queue is full for a moment (a burst) is not a
/// dead cell. The router's connection attempt times out, the request was never sent, and the
/// router tries again within its retry budget, so the client gets the answer once the cell
/// accepts; with no budget the client sees the 503.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connect_that_is_merely_slow_is_retried_not_failed() {
    let _serial = support::serial().await;
    let dir = tempfile::TempDir::new().unwrap();
    let router_on = |port: u16, budget_ms: u64, name: &'static str| {
        let extra = [
            "--connect-timeout-ms".to_owned(),
            "300".to_owned(),
            "--retry-unavailable-ms".to_owned(),
            budget_ms.to_string(),
        ];
        let dir = dir.path().to_path_buf();
        async move { support::router_on_one_cell(&dir, name, port, &extra).await }
    };
    for (budget_ms, want) in [
        (3_000, StatusCode::OK),
        (0, StatusCode::SERVICE_UNAVAILABLE),
    ] {
        // A cell listening with a queue of one, filled, that accepts only when told.
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let listener = socket.listen(1).unwrap();
        let port = listener.local_addr().unwrap().port();
        let mut fillers = Vec::new();
        for _ in 0..3 {
            let connect = tokio::net::TcpStream::connect(("127.0.0.1", port));
            if let Ok(Ok(s)) = tokio::time::timeout(Duration::from_millis(200), connect).await {
                fillers.push(s);
            }
        }
        let (open, opened) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let _ = opened.await;
            let app = axum::Router::new().fallback(|| async {
                (
                    [("content-type", "application/json")],
                    r#"{"uid":"u1","balance":0}"#,
                )
            });
            let _ = axum::serve(listener, app).await;
        });
        let router = router_on(
            port,
            budget_ms,
            if budget_ms > 0 { "patient" } else { "none" },
        )
        .await;

        let url = router.url.clone();
        let asked =
            tokio::spawn(async move { own_wallet(&reqwest::Client::new(), &url, "u1").await });
        // Past at least one connect timeout (300 ms), the cell starts accepting.
        tokio::time::sleep(Duration::from_millis(700)).await;
        let _ = open.send(());
        let (s, _, body, _) = asked.await.unwrap();
        assert_eq!(s, want, "budget {budget_ms} ms: {body}");
        drop(fillers);
    }
}

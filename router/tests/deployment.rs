//! The router against real processes: raft-meta ×3, cells ×2, router, on loopback.

mod support;

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use support::{call, token, Deployment};
use topology::Slot;

/// method, path, token, body, expected status.
type Case = (Method, String, Option<String>, Option<Value>, StatusCode);

fn slot_of(uid: &str) -> Slot {
    Slot::of(uid.as_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_reaches_the_owning_cell_and_bad_credentials_never_pass() {
    let _serial = support::serial().await;
    let d = Deployment::start().await;
    let (http, r) = (&d.http, d.router.url.as_str());
    let a = d.uid_on("c1", &[]);
    let b = d.uid_on("c2", &[]);
    let (ta, tb) = (token(&a, None), token(&b, None));
    let activity = token("svc:activity", Some("subsidy:grant"));
    let payments = token("svc:payments", Some("payment:callback"));
    let admin = token("svc:ops", Some("admin"));

    // Subsidy grant: routed by the body's uid.
    let grant =
        json!({"grant_id": "g-1", "uid": b, "amount": 500, "expires_at": "2026-12-31T00:00:00Z"});
    let (s, cell, sub, _) = call(
        http,
        r,
        Method::POST,
        "/v1/subsidies",
        Some(&activity),
        Some(grant),
        None,
    )
    .await;
    assert_eq!(
        (s, cell.as_deref()),
        (StatusCode::CREATED, Some("c2")),
        "{sub}"
    );
    let subsidy_id = sub["subsidy_id"].as_str().unwrap().to_owned();

    // User reads: routed by the path's uid.
    let (s, cell, list, _) = call(
        http,
        r,
        Method::GET,
        &format!("/v1/users/{b}/subsidies"),
        Some(&tb),
        None,
        None,
    )
    .await;
    assert_eq!((s, cell.as_deref()), (StatusCode::OK, Some("c2")));
    assert_eq!(list["subsidies"][0]["subsidy_id"], subsidy_id.as_str());

    // C2C send: routed by the token's subject; then the callback by the payment id.
    let body = json!({"kind": "c2c", "total": 1000, "count": 2});
    let (s, cell, pk, _) = call(
        http,
        r,
        Method::POST,
        "/v1/packets",
        Some(&ta),
        Some(body),
        Some("k1"),
    )
    .await;
    assert_eq!(
        (s, cell.as_deref()),
        (StatusCode::CREATED, Some("c1")),
        "{pk}"
    );
    let packet_id = pk["packet_id"].as_str().unwrap().to_owned();
    let payment_id = pk["payment"]["payment_id"].as_str().unwrap().to_owned();
    let (s, cell, _, _) = call(
        http,
        r,
        Method::POST,
        &format!("/v1/payments/{payment_id}/callback"),
        Some(&payments),
        Some(json!({"status": "succeeded"})),
        None,
    )
    .await;
    assert_eq!((s, cell.as_deref()), (StatusCode::OK, Some("c1")));

    // Packet routes: by the slot inside the packet id, whoever calls.
    let (s, cell, p, _) = call(
        http,
        r,
        Method::GET,
        &format!("/v1/packets/{packet_id}"),
        Some(&tb),
        None,
        None,
    )
    .await;
    assert_eq!(
        (s, cell.as_deref(), p["status"].as_str()),
        (StatusCode::OK, Some("c1"), Some("active"))
    );
    let (s, cell, claim, _) = call(
        http,
        r,
        Method::POST,
        &format!("/v1/packets/{packet_id}/claims"),
        Some(&tb),
        None,
        None,
    )
    .await;
    assert_eq!(
        (s, cell.as_deref()),
        (StatusCode::CREATED, Some("c1")),
        "{claim}"
    );
    let (s, cell, claims, _) = call(
        http,
        r,
        Method::GET,
        &format!("/v1/packets/{packet_id}/claims"),
        Some(&ta),
        None,
        None,
    )
    .await;
    assert_eq!((s, cell.as_deref()), (StatusCode::OK, Some("c1")));
    assert_eq!(claims["claims"][0]["uid"], b.as_str());

    // B2C send on the other cell, funded by the subsidy.
    let body = json!({"kind": "b2c", "subsidy_id": subsidy_id, "count": 5});
    let (s, cell, p, _) = call(
        http,
        r,
        Method::POST,
        "/v1/packets",
        Some(&tb),
        Some(body),
        Some("k2"),
    )
    .await;
    assert_eq!(
        (s, cell.as_deref()),
        (StatusCode::CREATED, Some("c2")),
        "{p}"
    );
    let (s, cell, _, _) = call(
        http,
        r,
        Method::GET,
        &format!("/v1/users/{a}/wallet"),
        Some(&ta),
        None,
        None,
    )
    .await;
    assert_eq!((s, cell.as_deref()), (StatusCode::OK, Some("c1")));
    let (s, cell, _, _) = call(
        http,
        r,
        Method::GET,
        &format!("/v1/users/{b}/packets?role=sent"),
        Some(&admin),
        None,
        None,
    )
    .await;
    assert_eq!((s, cell.as_deref()), (StatusCode::OK, Some("c2")));

    // Reconciliation covers both cells and sums them, once the claim's transfer to b's home
    // cell is settled (while it is in flight, the home cell has counted it in and the
    // packet's cell not yet out: the home cell answers only after its backup has the credit).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let (s, rec) = loop {
        let (s, _, rec, _) = call(
            http,
            r,
            Method::GET,
            "/v1/admin/reconciliation",
            Some(&admin),
            None,
            None,
        )
        .await;
        if s != StatusCode::OK
            || rec["totals"]["in_flight"] == 0
            || std::time::Instant::now() > deadline
        {
            break (s, rec);
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!(s, StatusCode::OK, "{rec}");
    assert_eq!(rec["cells"], json!(["c1", "c2"]));
    let mut funded = 0;
    for c in &d.cells {
        let (_, _, one, _) = call(
            http,
            &c.url,
            Method::GET,
            "/v1/admin/reconciliation",
            Some(&admin),
            None,
            None,
        )
        .await;
        funded += one["totals"]["funded"].as_i64().unwrap();
    }
    assert_eq!(rec["totals"]["funded"].as_i64(), Some(funded));
    assert_eq!(funded, 1500);

    // Refused at the router: never forwarded (no cell named in the answer).
    let mut tampered = ta.clone();
    tampered.push('x');
    let expired = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &topology::auth::Claims {
            sub: a.clone(),
            exp: 1_000,
            scope: None,
        },
        &jsonwebtoken::EncodingKey::from_secret(support::SECRET.as_bytes()),
    )
    .unwrap();
    let foreign = topology::auth::mint(b"another-deployment-secret", &a, None, 3600);
    let wallet_a = format!("/v1/users/{a}/wallet");
    let cases: Vec<Case> = vec![
        (
            Method::GET,
            wallet_a.clone(),
            None,
            None,
            StatusCode::UNAUTHORIZED,
        ),
        (
            Method::GET,
            wallet_a.clone(),
            Some(tampered),
            None,
            StatusCode::UNAUTHORIZED,
        ),
        (
            Method::GET,
            wallet_a.clone(),
            Some(expired),
            None,
            StatusCode::UNAUTHORIZED,
        ),
        (
            Method::GET,
            wallet_a.clone(),
            Some(foreign),
            None,
            StatusCode::UNAUTHORIZED,
        ),
        (
            Method::GET,
            wallet_a.clone(),
            Some(tb.clone()),
            None,
            StatusCode::FORBIDDEN,
        ),
        (
            Method::POST,
            format!("/v1/payments/{payment_id}/callback"),
            Some(ta.clone()),
            Some(json!({"status": "failed"})),
            StatusCode::FORBIDDEN,
        ),
        (
            Method::POST,
            "/v1/subsidies".into(),
            Some(ta.clone()),
            Some(json!({"uid": a})),
            StatusCode::FORBIDDEN,
        ),
        (
            Method::POST,
            "/v1/packets".into(),
            Some(activity.clone()),
            Some(json!({"kind": "c2c"})),
            StatusCode::FORBIDDEN,
        ),
        (
            Method::POST,
            format!("/v1/packets/{packet_id}/claims"),
            Some(payments.clone()),
            None,
            StatusCode::FORBIDDEN,
        ),
        (
            Method::GET,
            "/v1/admin/reconciliation".into(),
            Some(ta.clone()),
            None,
            StatusCode::FORBIDDEN,
        ),
        (
            Method::POST,
            "/v1/internal/transfers".into(),
            Some(token("svc:c1", Some("internal"))),
            Some(json!({})),
            StatusCode::NOT_FOUND,
        ),
        (
            Method::POST,
            "/v1/admin/clock".into(),
            Some(admin.clone()),
            Some(json!({"advance_s": 1})),
            StatusCode::NOT_FOUND,
        ),
        (
            Method::GET,
            "/v1/users/bad%20uid/wallet".into(),
            Some(admin.clone()),
            None,
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::GET,
            "/v1/packets/pk_nothing".into(),
            Some(ta.clone()),
            None,
            StatusCode::NOT_FOUND,
        ),
        (
            Method::POST,
            "/v1/subsidies".into(),
            Some(activity.clone()),
            Some(json!({"uid": 7})),
            StatusCode::BAD_REQUEST,
        ),
    ];
    for (method, path, tok, body, want) in cases {
        let (s, cell, problem, headers) =
            call(http, r, method.clone(), &path, tok.as_deref(), body, None).await;
        assert_eq!(s, want, "{method} {path}: {problem}");
        assert_eq!(cell, None, "{method} {path} reached a cell");
        assert_eq!(headers["content-type"], "application/problem+json");
        assert_eq!(problem["status"], want.as_u16());
        assert!(problem["code"].is_string() && problem["detail"].is_string());
    }

    // 64 KiB body limit.
    let big = json!({"kind": "c2c", "greeting": "x".repeat(70 * 1024)});
    let (s, cell, problem, _) = call(
        http,
        r,
        Method::POST,
        "/v1/packets",
        Some(&ta),
        Some(big),
        Some("k3"),
    )
    .await;
    assert_eq!(
        (s, cell, problem["code"].as_str()),
        (
            StatusCode::PAYLOAD_TOO_LARGE,
            None,
            Some("payload_too_large")
        )
    );

    // Metrics count requests per route and cell.
    let text = reqwest::Client::new()
        .get(format!("{r}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.contains("router_requests_total"), "{text}");
    assert!(text.contains("cell=\"c2\""));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slot_moves_switches_and_a_dead_control_plane() {
    let _serial = support::serial().await;
    let mut d = Deployment::start().await;
    let a = d.uid_on("c1", &[]);
    let m = d.uid_on("c1", &[&a]);
    let b = d.uid_on("c2", &[]);
    let http = &d.http.clone();
    let r = d.router.url.clone();
    let wallet = |u: &str| (format!("/v1/users/{u}/wallet"), token(u, None));

    // Moving a slot in raft-meta takes effect without a restart.
    let (p, t) = wallet(&m);
    let (_, cell, _, _) = call(http, &r, Method::GET, &p, Some(&t), None, None).await;
    assert_eq!(cell.as_deref(), Some("c1"));
    let client = d.meta.client();
    client
        .move_slots(
            &[slot_of(&m).get()],
            &topology::ShardId::parse("c2").unwrap(),
        )
        .await
        .expect("move");
    let moved = Instant::now();
    loop {
        let (s, cell, _, _) = call(http, &r, Method::GET, &p, Some(&t), None, None).await;
        if cell.as_deref() == Some("c2") {
            assert_eq!(s, StatusCode::OK);
            break;
        }
        assert!(
            moved.elapsed() < Duration::from_secs(5),
            "the move never reached the router"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!("slot move seen by the router after {:?}", moved.elapsed());

    // A switch turned off answers 503 degraded within 1 s; other flows keep working.
    let ta = token(&a, None);
    // One C2C send by `a` under a fresh idempotency key: (status, cell, problem, headers).
    let send_c2c = |key: String| {
        let (r, ta) = (&r, &ta);
        async move {
            let body = json!({"kind": "c2c", "total": 100, "count": 1});
            call(
                http,
                r,
                Method::POST,
                "/v1/packets",
                Some(ta),
                Some(body),
                Some(&key),
            )
            .await
        }
    };
    client
        .set_switch("c2c_send", false, "c2c paused for the gala")
        .await
        .expect("switch off");
    let flipped = Instant::now();
    loop {
        let (s, cell, problem, headers) =
            send_c2c(format!("off-{}", flipped.elapsed().as_nanos())).await;
        if s == StatusCode::SERVICE_UNAVAILABLE {
            assert_eq!(problem["code"], "degraded");
            assert!(problem["detail"]
                .as_str()
                .unwrap()
                .contains("c2c paused for the gala"));
            assert!(headers.contains_key("retry-after"));
            assert_eq!(cell, None);
            break;
        }
        assert_eq!(s, StatusCode::CREATED);
        assert!(
            flipped.elapsed() < Duration::from_secs(1),
            "switch not seen within 1 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (p, t) = wallet(&a);
    let (s, _, _, _) = call(http, &r, Method::GET, &p, Some(&t), None, None).await;
    assert_eq!(s, StatusCode::OK, "other flows keep working");
    client
        .set_switch("c2c_send", true, "")
        .await
        .expect("switch on");
    let flipped = Instant::now();
    loop {
        let (s, _, _, _) = send_c2c(format!("on-{}", flipped.elapsed().as_nanos())).await;
        if s == StatusCode::CREATED {
            break;
        }
        assert!(
            flipped.elapsed() < Duration::from_secs(1),
            "switch back on not seen within 1 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // raft-meta gone entirely: traffic still flows on the last map.
    d.meta.kill_all();
    let (s, cell, _, _) = send_c2c("after-meta".into()).await;
    assert_eq!((s, cell.as_deref()), (StatusCode::CREATED, Some("c1")));

    // A restarted router routes from its persisted map (with the move) while raft-meta is down.
    d.router.kill9();
    let args = vec!["--meta".to_owned(), d.meta.arg()];
    d.router =
        support::spawn_router(&args, &d.router_state(), d.dir.path().join("router-2.log")).await;
    support::wait_ready(&d.router.url, "restarted router").await;
    let r = d.router.url.clone();
    for (u, want) in [(&a, "c1"), (&m, "c2"), (&b, "c2")] {
        let (p, t) = wallet(u);
        let (s, cell, body, _) = call(http, &r, Method::GET, &p, Some(&t), None, None).await;
        assert_eq!(
            (s, cell.as_deref()),
            (StatusCode::OK, Some(want)),
            "{u}: {body}"
        );
    }

    // A dead cell: 503 cell_unavailable with Retry-After, at once, never a hang.
    d.cells[1].kill9();
    let (p, t) = wallet(&b);
    let started = Instant::now();
    let (s, _, problem, headers) = call(http, &r, Method::GET, &p, Some(&t), None, None).await;
    assert_eq!(
        (s, problem["code"].as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, Some("cell_unavailable"))
    );
    assert!(headers.contains_key("retry-after"));
    assert!(started.elapsed() < Duration::from_secs(3));
    let (p, t) = wallet(&a);
    let (s, _, _, _) = call(http, &r, Method::GET, &p, Some(&t), None, None).await;
    assert_eq!(s, StatusCode::OK, "the other cell keeps serving");
    // Reconciliation must not sum a partial deployment.
    let admin = token("svc:ops", Some("admin"));
    let (s, _, problem, _) = call(
        http,
        &r,
        Method::GET,
        "/v1/admin/reconciliation",
        Some(&admin),
        None,
        None,
    )
    .await;
    assert_eq!(
        (s, problem["code"].as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, Some("cell_unavailable"))
    );
    assert!(
        d.router.terminate(Duration::from_secs(15)),
        "the router drains and exits cleanly on SIGTERM"
    );
}

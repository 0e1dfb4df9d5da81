//! Every bad input API.md implies gets its 4xx and problem+json code, writes nothing, and
//! never a 5xx.

mod common;

use common::*;
use reqwest::{Method, StatusCode};
use serde_json::json;

struct Case {
    name: &'static str,
    method: Method,
    path: String,
    token: Option<String>,
    key: Option<String>,
    body: Option<Vec<u8>>,
    status: u16,
    code: &'static str,
}

fn case(
    name: &'static str,
    method: Method,
    path: &str,
    token: Option<String>,
    body: Option<serde_json::Value>,
    status: u16,
    code: &'static str,
) -> Case {
    Case {
        name,
        method,
        path: path.to_owned(),
        token,
        key: Some("key-1".into()),
        body: body.map(|b| b.to_string().into_bytes()),
        status,
        code,
    }
}

fn raw(
    name: &'static str,
    path: &str,
    token: Option<String>,
    body: &[u8],
    status: u16,
    code: &'static str,
) -> Case {
    Case {
        name,
        method: Method::POST,
        path: path.to_owned(),
        token,
        key: Some("key-1".into()),
        body: Some(body.to_vec()),
        status,
        code,
    }
}

fn expired_token() -> String {
    let claims = topology::auth::Claims {
        sub: "u1".into(),
        exp: 1_000_000,
        scope: None,
    };
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

#[tokio::test]
async fn bad_inputs_get_4xx_problems_and_write_nothing() {
    let cell = TestCell::spawn().await;
    let u = || Some(user("u1"));
    let send = |name, body: serde_json::Value, status, code| {
        case(
            name,
            Method::POST,
            "/v1/packets",
            u(),
            Some(body),
            status,
            code,
        )
    };
    let grant = |name, body: serde_json::Value, status, code| {
        case(
            name,
            Method::POST,
            "/v1/subsidies",
            Some(activity()),
            Some(body),
            status,
            code,
        )
    };
    let known_packet_shape = topology::MintedId::mint(
        topology::IdKind::Packet,
        topology::Uid::parse("u1").unwrap().slot(),
    );
    let unknown_packet = format!("/v1/packets/{known_packet_shape}/claims");
    let unknown_payment = format!(
        "/v1/payments/{}/callback",
        topology::MintedId::mint(topology::IdKind::Payment, topology::Slot::new(0).unwrap())
    );
    let mut cases = vec![
        send(
            "zero total",
            json!({"kind": "c2c", "total": 0, "count": 1}),
            400,
            "invalid_request",
        ),
        send(
            "negative total",
            json!({"kind": "c2c", "total": -5, "count": 1}),
            400,
            "invalid_request",
        ),
        send(
            "string total",
            json!({"kind": "c2c", "total": "100", "count": 1}),
            400,
            "invalid_request",
        ),
        send(
            "float total",
            json!({"kind": "c2c", "total": 10.5, "count": 1}),
            400,
            "invalid_request",
        ),
        send(
            "huge total",
            json!({"kind": "c2c", "total": 1e30, "count": 1}),
            400,
            "invalid_request",
        ),
        send(
            "total over limit",
            json!({"kind": "c2c", "total": 20_001, "count": 1}),
            400,
            "invalid_request",
        ),
        send(
            "total < count",
            json!({"kind": "c2c", "total": 9, "count": 10}),
            400,
            "invalid_request",
        ),
        send(
            "zero count",
            json!({"kind": "c2c", "total": 100, "count": 0}),
            400,
            "invalid_request",
        ),
        send(
            "count over limit",
            json!({"kind": "c2c", "total": 1000, "count": 101}),
            400,
            "invalid_request",
        ),
        send(
            "missing count",
            json!({"kind": "c2c", "total": 1000}),
            400,
            "invalid_request",
        ),
        send(
            "long greeting",
            json!({"kind": "c2c", "total": 100, "count": 1, "greeting": "福".repeat(65)}),
            400,
            "invalid_request",
        ),
        send(
            "short expiry",
            json!({"kind": "c2c", "total": 100, "count": 1, "expires_in_s": 59}),
            400,
            "invalid_request",
        ),
        send(
            "long expiry",
            json!({"kind": "c2c", "total": 100, "count": 1, "expires_in_s": 259_201}),
            400,
            "invalid_request",
        ),
        send(
            "unknown kind",
            json!({"kind": "p2p", "total": 100, "count": 1}),
            400,
            "invalid_request",
        ),
        send(
            "unknown field",
            json!({"kind": "c2c", "total": 100, "count": 1, "totl": 5}),
            400,
            "invalid_request",
        ),
        send(
            "b2c without subsidy",
            json!({"kind": "b2c", "count": 1}),
            400,
            "invalid_request",
        ),
        send(
            "unknown subsidy",
            json!({"kind": "b2c", "subsidy_id": "sb_0000000000000000000000", "count": 1}),
            404,
            "subsidy_not_found",
        ),
        raw(
            "overflowing total",
            "/v1/packets",
            u(),
            br#"{"kind":"c2c","total":99999999999999999999,"count":1}"#,
            400,
            "invalid_request",
        ),
        raw(
            "malformed json",
            "/v1/packets",
            u(),
            br#"{"kind": "c2c", "total": "#,
            400,
            "invalid_request",
        ),
        raw(
            "json array",
            "/v1/packets",
            u(),
            b"[1,2]",
            400,
            "invalid_request",
        ),
        raw(
            "empty body",
            "/v1/packets",
            u(),
            b"",
            400,
            "invalid_request",
        ),
        raw(
            "oversized body",
            "/v1/packets",
            u(),
            &vec![b' '; 70 * 1024],
            413,
            "payload_too_large",
        ),
        grant(
            "zero amount",
            json!({"grant_id": "g", "uid": "u1", "amount": 0, "expires_at": "2099-01-01T00:00:00Z"}),
            400,
            "invalid_request",
        ),
        grant(
            "string amount",
            json!({"grant_id": "g", "uid": "u1", "amount": "5", "expires_at": "2099-01-01T00:00:00Z"}),
            400,
            "invalid_request",
        ),
        grant(
            "past expiry",
            json!({"grant_id": "g", "uid": "u1", "amount": 5, "expires_at": "2000-01-01T00:00:00Z"}),
            400,
            "invalid_request",
        ),
        grant(
            "garbage expiry",
            json!({"grant_id": "g", "uid": "u1", "amount": 5, "expires_at": "soon"}),
            400,
            "invalid_request",
        ),
        grant(
            "bad uid",
            json!({"grant_id": "g", "uid": "a b", "amount": 5, "expires_at": "2099-01-01T00:00:00Z"}),
            400,
            "invalid_request",
        ),
        grant(
            "empty grant id",
            json!({"grant_id": "", "uid": "u1", "amount": 5, "expires_at": "2099-01-01T00:00:00Z"}),
            400,
            "invalid_request",
        ),
        case(
            "grant by a user",
            Method::POST,
            "/v1/subsidies",
            u(),
            Some(
                json!({"grant_id": "g", "uid": "u1", "amount": 5, "expires_at": "2099-01-01T00:00:00Z"}),
            ),
            403,
            "forbidden",
        ),
        case(
            "grant by admin without scope",
            Method::POST,
            "/v1/subsidies",
            Some(admin()),
            Some(
                json!({"grant_id": "g", "uid": "u1", "amount": 5, "expires_at": "2099-01-01T00:00:00Z"}),
            ),
            403,
            "forbidden",
        ),
        case(
            "no token",
            Method::POST,
            "/v1/packets",
            None,
            Some(json!({"kind": "c2c", "total": 100, "count": 1})),
            401,
            "unauthorized",
        ),
        case(
            "garbage token",
            Method::POST,
            "/v1/packets",
            Some("nope".into()),
            Some(json!({"kind": "c2c", "total": 100, "count": 1})),
            401,
            "unauthorized",
        ),
        case(
            "expired token",
            Method::POST,
            "/v1/packets",
            Some(expired_token()),
            Some(json!({"kind": "c2c", "total": 100, "count": 1})),
            401,
            "unauthorized",
        ),
        case(
            "foreign token",
            Method::POST,
            "/v1/packets",
            Some(topology::auth::mint(
                b"another-deployment-secret",
                "u1",
                None,
                60,
            )),
            Some(json!({"kind": "c2c", "total": 100, "count": 1})),
            401,
            "unauthorized",
        ),
        case(
            "tampered token",
            Method::POST,
            "/v1/packets",
            Some(format!("{}x", user("u1"))),
            Some(json!({"kind": "c2c", "total": 100, "count": 1})),
            401,
            "unauthorized",
        ),
        case(
            "service sends a packet",
            Method::POST,
            "/v1/packets",
            Some(activity()),
            Some(json!({"kind": "c2c", "total": 100, "count": 1})),
            403,
            "forbidden",
        ),
        case(
            "claim odd id",
            Method::POST,
            "/v1/packets/xyz/claims",
            u(),
            None,
            400,
            "invalid_request",
        ),
        case(
            "claim bad slot id",
            Method::POST,
            "/v1/packets/pk_fffaaaaaaaaaaaaaaaaaaaa/claims",
            u(),
            None,
            400,
            "invalid_request",
        ),
        case(
            "claim unknown packet",
            Method::POST,
            &unknown_packet,
            u(),
            None,
            404,
            "packet_not_found",
        ),
        raw(
            "claim with junk body",
            &unknown_packet,
            u(),
            b"not json",
            400,
            "invalid_request",
        ),
        case(
            "claim by a service",
            Method::POST,
            &unknown_packet,
            Some(payments()),
            None,
            403,
            "forbidden",
        ),
        case(
            "packet id too long",
            Method::GET,
            &format!("/v1/packets/pk_{}", "a".repeat(200)),
            u(),
            None,
            400,
            "invalid_request",
        ),
        case(
            "packet id traversal",
            Method::GET,
            "/v1/packets/..%2F..%2Fetc",
            u(),
            None,
            400,
            "invalid_request",
        ),
        case(
            "packet wrong kind of id",
            Method::GET,
            "/v1/packets/sb_0000000000000000000000",
            u(),
            None,
            400,
            "invalid_request",
        ),
        case(
            "someone else's wallet",
            Method::GET,
            "/v1/users/u2/wallet",
            u(),
            None,
            403,
            "forbidden",
        ),
        case(
            "bad uid in path",
            Method::GET,
            "/v1/users/a%20b/wallet",
            u(),
            None,
            400,
            "invalid_request",
        ),
        case(
            "callback by a user",
            Method::POST,
            &unknown_payment,
            u(),
            Some(json!({"status": "succeeded"})),
            403,
            "forbidden",
        ),
        case(
            "callback odd status",
            Method::POST,
            &unknown_payment,
            Some(payments()),
            Some(json!({"status": "maybe"})),
            400,
            "invalid_request",
        ),
        case(
            "callback unknown payment",
            Method::POST,
            &unknown_payment,
            Some(payments()),
            Some(json!({"status": "succeeded"})),
            404,
            "not_found",
        ),
        case(
            "history zero limit",
            Method::GET,
            "/v1/users/u1/packets?limit=0",
            u(),
            None,
            400,
            "invalid_request",
        ),
        case(
            "history odd role",
            Method::GET,
            "/v1/users/u1/packets?role=stolen",
            u(),
            None,
            400,
            "invalid_request",
        ),
        case(
            "history junk cursor",
            Method::GET,
            "/v1/users/u1/packets?cursor=%%%",
            u(),
            None,
            400,
            "invalid_request",
        ),
        case(
            "reconciliation by a user",
            Method::GET,
            "/v1/admin/reconciliation",
            u(),
            None,
            403,
            "forbidden",
        ),
        case(
            "unknown route",
            Method::GET,
            "/v1/nothing",
            u(),
            None,
            404,
            "not_found",
        ),
        case(
            "wrong method",
            Method::DELETE,
            "/v1/packets",
            u(),
            None,
            405,
            "method_not_allowed",
        ),
    ];
    let mut no_key = send(
        "missing idempotency key",
        json!({"kind": "c2c", "total": 100, "count": 1}),
        400,
        "invalid_request",
    );
    no_key.key = None;
    let mut long_key = send(
        "long idempotency key",
        json!({"kind": "c2c", "total": 100, "count": 1}),
        400,
        "invalid_request",
    );
    long_key.key = Some("k".repeat(65));
    cases.extend([no_key, long_key]);

    let mut failures = Vec::new();
    for c in &cases {
        let mut req = cell
            .http
            .request(c.method.clone(), format!("{}{}", cell.url, c.path));
        if let Some(t) = &c.token {
            req = req.bearer_auth(t);
        }
        if let Some(k) = &c.key {
            req = req.header("idempotency-key", k);
        }
        if let Some(b) = &c.body {
            req = req
                .header("content-type", "application/json")
                .body(b.clone());
        }
        let res = req.send().await.expect("request");
        let status = res.status().as_u16();
        let ctype = res
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap_or("").to_owned())
            .unwrap_or_default();
        let body: serde_json::Value = res.json().await.unwrap_or(json!(null));
        let ok = status == c.status
            && body["code"] == c.code
            && body["status"] == c.status
            && ctype == "application/problem+json"
            && body["detail"].is_string();
        if !ok {
            failures.push(format!(
                "{}: got {status} {ctype} {body}, want {} {}",
                c.name, c.status, c.code
            ));
        }
        assert!(status < 500, "{}: a 5xx for bad input", c.name);
    }
    assert!(
        failures.is_empty(),
        "{} cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );

    // Nothing was written: no money, no packets, no subsidies.
    let report = cell.settled().await;
    assert_eq!(
        report["totals"],
        json!({"funded": 0, "wallets": 0, "escrow": 0, "in_flight": 0, "transferred_in": 0, "transferred_out": 0})
    );
    let (_, h) = cell.get("/v1/users/u1/packets", &user("u1")).await;
    assert_eq!(h["items"], json!([]));
    let (_, s) = cell.get("/v1/users/u1/subsidies", &user("u1")).await;
    assert_eq!(s["subsidies"], json!([]));
    // The field is named in the detail.
    let (_, v) = cell
        .post(
            "/v1/packets",
            &user("u1"),
            json!({"kind": "c2c", "total": "x", "count": 1}),
        )
        .await;
    assert!(
        v["detail"].as_str().unwrap().contains("Idempotency-Key")
            || v["detail"].as_str().unwrap().contains("total")
    );
}

#[tokio::test]
async fn a_claim_on_a_packet_awaiting_payment_or_a_replay_with_another_body_changes_nothing() {
    let cell = TestCell::spawn().await;
    let send = |body: serde_json::Value| {
        cell.http
            .post(format!("{}/v1/packets", cell.url))
            .bearer_auth(user("s"))
            .header("idempotency-key", "same")
            .json(&body)
            .send()
    };
    let first = send(json!({"kind": "c2c", "total": 100, "count": 1}))
        .await
        .unwrap();
    assert_eq!(first.status(), StatusCode::CREATED);
    let second = send(json!({"kind": "c2c", "total": 100, "count": 2}))
        .await
        .unwrap();
    assert_eq!(second.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let (_, h) = cell.get("/v1/users/s/packets", &user("s")).await;
    assert_eq!(h["items"].as_array().unwrap().len(), 1);
}

/// Finding 6 of the hardening issue: who may call a route is decided before its body is
/// read, so a caller without the authority learns nothing from the body's validation (403,
/// never 400 naming a field), on every route that takes a body.
#[tokio::test]
async fn authority_is_checked_before_the_body_is_read() {
    let cell = TestCell::spawn().await;
    let service = token("svc:other", Some("internal"));
    let cases = [
        ("/v1/subsidies", user("u1")),
        ("/v1/internal/transfers", user("u1")),
        ("/v1/internal/grants/reserve", user("u1")),
        ("/v1/internal/grants/confirm", user("u1")),
        ("/v1/internal/grants/resolve", user("u1")),
        ("/v1/internal/replicas/c9/hold", user("u1")),
        (
            "/v1/payments/P0000000000000000000000000/callback",
            user("u1"),
        ),
        ("/v1/packets", service.clone()),
        ("/v1/packets/K0000000000000000000000000/claims", service),
    ];
    let http = reqwest::Client::new();
    for (path, token) in cases {
        let res = http
            .post(format!("{}{path}", cell.url))
            .bearer_auth(&token)
            .header("Idempotency-Key", "key-1")
            .header("content-type", "application/json")
            .body("{ not json")
            .send()
            .await
            .unwrap();
        let status = res.status();
        let body: serde_json::Value = res.json().await.unwrap_or_default();
        assert_eq!(
            (status, body["code"].as_str()),
            (StatusCode::FORBIDDEN, Some("forbidden")),
            "{path}: {body}"
        );
    }
}

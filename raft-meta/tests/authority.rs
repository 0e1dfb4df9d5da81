//! Who may change the map, against real `raft-meta` processes: every leader operation with
//! every kind of token, sent straight to `/internal/leader-op` (on the leader and on a
//! follower) and through a follower's public routes (which forward to the leader). Map writes
//! and membership changes need `admin`; heartbeats, reads and a cell's run-alone grant and
//! withdrawal may be `internal`; a user token may do none of them.

mod support;

use std::collections::{BTreeMap, BTreeSet};

use raft_meta::app::LeaderOp;
use raft_meta::state::{BackupUnreachable, Command, FailoverPolicy, Liveness};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use support::{admin_token, internal_token, serial, Cluster, SECRET};
use topology::{CellId, Epoch, Region, ShardId};

fn shard(s: &str) -> ShardId {
    ShardId::parse(s).unwrap()
}

fn cell(s: &str) -> CellId {
    CellId::parse(s).unwrap()
}

fn user_token() -> String {
    topology::auth::mint(SECRET.as_bytes(), "u42", None, 3600)
}

/// The three kinds of caller, with whether each may do admin-only and internal operations.
fn scopes() -> Vec<(&'static str, String)> {
    vec![
        ("user", user_token()),
        ("internal", internal_token()),
        ("admin", admin_token()),
    ]
}

fn allowed(scope: &str, admin_only: bool) -> bool {
    match scope {
        "admin" => true,
        "internal" => !admin_only,
        _ => false,
    }
}

/// Every kind of leader operation, harmless when carried out on this test's cluster (c1
/// exists; `member` is a voter with address `member_addr`), with whether it needs `admin`.
/// The switch name carries `scope` so that a refused write can be looked for afterwards.
fn leader_ops(scope: &str, member: u64, member_addr: &str) -> Vec<(&'static str, LeaderOp, bool)> {
    let write = |command| LeaderOp::Write { command };
    vec![
        (
            "register_cell",
            write(Command::RegisterCell {
                id: cell("c1"),
                region: Region::parse("east").unwrap(),
                url: "http://127.0.0.1:9001".into(),
                status: None,
                backup: None,
            }),
            true,
        ),
        (
            "set_backup",
            write(Command::SetBackup {
                shard: shard("c1"),
                backup: None,
            }),
            true,
        ),
        (
            "move_slots",
            write(Command::MoveSlots {
                slots: vec![1, 2],
                to: shard("c1"),
            }),
            true,
        ),
        (
            "set_switch",
            write(Command::SetSwitch {
                name: format!("probe-{scope}"),
                on: true,
                message: String::new(),
            }),
            true,
        ),
        (
            "set_policy",
            write(Command::SetPolicy {
                shard: shard("c1"),
                policy: FailoverPolicy {
                    auto_failover: false,
                    on_backup_unreachable: BackupUnreachable::RefuseWrites,
                },
            }),
            true,
        ),
        (
            "set_breaker",
            write(Command::SetBreaker {
                policy: wire::BreakerPolicy {
                    min_calls: 7,
                    ..Default::default()
                },
            }),
            true,
        ),
        (
            "set_liveness",
            write(Command::SetLiveness {
                cell: cell("c1"),
                liveness: Liveness::Alive,
            }),
            true,
        ),
        (
            "add_learner",
            LeaderOp::AddLearner {
                id: member,
                addr: member_addr.to_owned(),
            },
            true,
        ),
        (
            "change_membership",
            LeaderOp::ChangeMembership {
                voters: BTreeSet::from([1, 2, 3]),
            },
            true,
        ),
        // c1's policy refuses, so an allowed caller gets 409 policy_refuses: past the
        // authority check, refused by apply (see `past_authority`).
        (
            "grant_alone",
            write(Command::GrantAlone {
                shard: shard("c1"),
                epoch: Epoch(1),
            }),
            false,
        ),
        (
            "withdraw_alone",
            write(Command::WithdrawAlone { shard: shard("c1") }),
            false,
        ),
        ("read_map", LeaderOp::ReadMap, false),
        (
            "report_positions",
            write(Command::ReportPositions {
                positions: BTreeMap::from([(shard("c1"), 5)]),
            }),
            true,
        ),
        (
            "heartbeat",
            LeaderOp::Heartbeat {
                cell: cell("c1"),
                positions: BTreeMap::new(),
            },
            false,
        ),
        ("liveness", LeaderOp::Liveness, false),
    ]
}

/// What an allowed caller gets from the leader for operation `name`: 200, but 409 for a
/// grant under c1's refusing policy (it got past the authority check and reached apply).
fn past_authority(name: &str) -> StatusCode {
    if name == "grant_alone" {
        StatusCode::CONFLICT
    } else {
        StatusCode::OK
    }
}

async fn send(
    http: &reqwest::Client,
    method: Method,
    url: &str,
    token: &str,
    body: Option<Value>,
) -> (StatusCode, String) {
    let mut req = http.request(method, url).bearer_auth(token);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let res = req.send().await.expect("request");
    let status = res.status();
    (status, res.text().await.unwrap_or_default())
}

/// A cluster of three with cell c1 registered; its leader and one follower.
async fn arrange() -> (Cluster, u64, u64) {
    let c = support::cluster(3, &[]).await;
    c.client()
        .register_cell(
            &cell("c1"),
            &Region::parse("east").unwrap(),
            "http://127.0.0.1:9001",
            None,
            None,
        )
        .await
        .unwrap();
    let leader = c.agreed_leader(&[1, 2, 3]).await;
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    (c, leader, follower)
}

async fn switches(c: &Cluster) -> Vec<String> {
    let view = c.client().map(true).await.unwrap();
    view.switches.keys().cloned().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_op_endpoint_does_only_what_the_callers_scope_may() {
    // Arrange
    let _serial = serial().await;
    let (c, leader, follower) = arrange().await;
    let http = reqwest::Client::new();
    let member_addr = c.addr(follower);

    // Act: every operation with every token, on the leader, then on a follower (which never
    // forwards a leader-op: it answers not_leader, but only to a caller who may send it).
    let mut wrong = Vec::new();
    for (node, role) in [(leader, "leader"), (follower, "follower")] {
        let url = format!("http://{}/internal/leader-op", c.addr(node));
        for (scope, token) in scopes() {
            for (name, op, admin_only) in leader_ops(scope, follower, &member_addr) {
                let body = serde_json::to_value(&op).unwrap();
                let (status, text) = send(&http, Method::POST, &url, &token, Some(body)).await;
                let expected = match (allowed(scope, admin_only), role) {
                    (false, _) => StatusCode::FORBIDDEN,
                    (true, "leader") => past_authority(name),
                    (true, _) => StatusCode::SERVICE_UNAVAILABLE,
                };
                if status != expected {
                    wrong.push(format!(
                        "{role} {scope} {name}: {status} (want {expected}) {text}"
                    ));
                }
            }
        }
    }

    // Assert
    assert!(
        wrong.is_empty(),
        "leader-op answered wrongly:\n{}",
        wrong.join("\n")
    );
    assert_eq!(
        switches(&c).await,
        vec!["probe-admin".to_owned()],
        "only the admin's switch write took effect"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_forwards_with_the_callers_own_authority() {
    // Arrange
    let _serial = serial().await;
    let (c, _leader, follower) = arrange().await;
    let http = reqwest::Client::new();
    let base = format!("http://{}", c.addr(follower));
    let member_addr = c.addr(follower);

    // Act: every public route that becomes a leader operation, with every token, on a
    // follower, which must forward it to the leader (or refuse it) as the caller.
    let mut wrong = Vec::new();
    for (scope, token) in scopes() {
        let routes: Vec<(&str, Method, String, Option<Value>, bool)> = vec![
            (
                "register_cell",
                Method::PUT,
                "/v1/cells/c1".into(),
                Some(json!({"region": "east", "url": "http://127.0.0.1:9001"})),
                true,
            ),
            (
                "set_backup",
                Method::PUT,
                "/v1/cells/c1/backup".into(),
                Some(json!({"backup": null})),
                true,
            ),
            (
                "set_policy",
                Method::PUT,
                "/v1/cells/c1/policy".into(),
                Some(json!({"auto_failover": false})),
                true,
            ),
            (
                "set_breaker",
                Method::PUT,
                "/v1/breaker".into(),
                Some(json!({"min_calls": 7})),
                true,
            ),
            (
                "move_slots",
                Method::POST,
                "/v1/slots/move".into(),
                Some(json!({"slots": [1, 2], "to": "c1"})),
                true,
            ),
            (
                "set_switch",
                Method::PUT,
                format!("/v1/switches/probe-{scope}"),
                Some(json!({"on": true})),
                true,
            ),
            (
                "add_learner",
                Method::POST,
                "/v1/cluster/learners".into(),
                Some(json!({"id": follower, "addr": member_addr})),
                true,
            ),
            (
                "change_membership",
                Method::POST,
                "/v1/cluster/membership".into(),
                Some(json!({"voters": [1, 2, 3]})),
                true,
            ),
            (
                "read_map",
                Method::GET,
                "/v1/map?consistent=true".into(),
                None,
                false,
            ),
            (
                "heartbeat",
                Method::POST,
                "/v1/cells/c1/heartbeat".into(),
                None,
                false,
            ),
            ("liveness", Method::GET, "/v1/liveness".into(), None, false),
            (
                "grant_alone",
                Method::POST,
                "/v1/cells/c1/alone".into(),
                Some(json!({"epoch": 1})),
                false,
            ),
            (
                "withdraw_alone",
                Method::DELETE,
                "/v1/cells/c1/alone".into(),
                None,
                false,
            ),
        ];
        for (name, method, path, body, admin_only) in routes {
            let (status, text) = send(&http, method, &format!("{base}{path}"), &token, body).await;
            let ok = if allowed(scope, admin_only) {
                // `past_authority` is the leader-op's answer; the routes answer 2xx.
                if name == "grant_alone" {
                    status == past_authority(name)
                } else {
                    status.is_success()
                }
            } else {
                status == StatusCode::FORBIDDEN
            };
            if !ok {
                wrong.push(format!("{scope} {name} via follower: {status} {text}"));
            }
        }
    }

    // Assert
    assert!(
        wrong.is_empty(),
        "a follower's routes answered wrongly:\n{}",
        wrong.join("\n")
    );
    assert_eq!(
        switches(&c).await,
        vec!["probe-admin".to_owned()],
        "only the admin's switch write took effect"
    );
}

/// `PUT /v1/breaker`: the scope is checked before the body; a misspelt member or a bound
/// out of range is 400 naming it and changes nothing; a good one reaches the map.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breaker_thresholds_are_admin_only_and_validated() {
    let _serial = serial().await;
    let (c, leader, _) = arrange().await;
    let http = reqwest::Client::new();
    let url = format!("http://{}/v1/breaker", c.addr(leader));
    let put = |token: String, body: Value| {
        let (http, url) = (http.clone(), url.clone());
        async move { send(&http, Method::PUT, &url, &token, Some(body)).await }
    };

    let (s, body) = put(internal_token(), json!({"min_calls": "many"})).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{body}");
    let (s, body) = put(admin_token(), json!({"max_error_percent": 20})).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{body}");
    assert!(body.contains("max_error_percent"), "{body}");
    let (s, body) = put(admin_token(), json!({"max_error_pct": 0})).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{body}");
    assert!(body.contains("max_error_pct"), "{body}");
    let before = c.client().map(true).await.unwrap().breaker;
    assert_eq!(before, wire::BreakerPolicy::default());

    let (s, body) = put(admin_token(), json!({"max_error_pct": 20, "open_s": 9})).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let after = c.client().map(true).await.unwrap().breaker;
    assert_eq!(
        after,
        wire::BreakerPolicy {
            max_error_pct: 20,
            open_s: 9,
            ..Default::default()
        }
    );
}

//! Real `raft-meta` processes on loopback: formation, failover, full restart, membership
//! changes under load, an isolated leader, and a watcher that loses its node.

mod support;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use raft_meta::client::ClientError;
use support::{admin_token, internal_token, serial};
use topology::{CellId, Region};

fn sh(s: &str) -> topology::ShardId {
    topology::ShardId::parse(s).unwrap()
}

fn cell(s: &str) -> CellId {
    CellId::parse(s).unwrap()
}

fn region(s: &str) -> Region {
    Region::parse(s).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_form_and_writes_through_any_node_succeed() {
    let _serial = serial().await;
    let c = support::cluster(3, &[]).await;

    // Writes through each node (two of them followers, which forward).
    let c1 = c.client_for(&[1]);
    let c2 = c.client_for(&[2]);
    let c3 = c.client_for(&[3]);
    c1.register_cell(
        &cell("c1"),
        &region("east"),
        "http://127.0.0.1:9001",
        None,
        None,
    )
    .await
    .unwrap();
    c2.register_cell(
        &cell("c2"),
        &region("west"),
        "http://127.0.0.1:9002",
        None,
        Some(&cell("c1")),
    )
    .await
    .unwrap();
    let v = c3.set_switch("claims", false, "maintenance").await.unwrap();

    for id in 1..=3 {
        let view = c.client_for(&[id]).map(true).await.unwrap();
        assert!(view.version >= v);
        let map = view.map.expect("cells registered, so a map");
        map.validate().unwrap();
        assert_eq!(map.shards[&sh("c2")].backup, Some(cell("c1")));
        let c2_slots = map.slots_served_by(&cell("c2")).count();
        assert!((300..=724).contains(&c2_slots), "c2 owns {c2_slots}");
        assert!(!view.switches["claims"].on);
    }

    // Leader discovery agrees with what every node says.
    let leader = c.agreed_leader(&[1, 2, 3]).await;
    let found = c.client().discover_leader().await.unwrap();
    assert_eq!(found, Some((leader, c.addr(leader))));

    // A backup in the same region is refused, through a follower too, and changes nothing.
    let err = c3
        .register_cell(
            &cell("c3"),
            &region("west"),
            "http://127.0.0.1:9003",
            None,
            Some(&cell("c2")),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ClientError::Rejected { code, .. } if code == "backup_same_region"),
        "{err:?}"
    );
    let cells = c1.map(true).await.unwrap().map.unwrap().cells;
    assert!(
        !cells.contains_key(&cell("c3")),
        "a refused cell was registered"
    );

    // Credentials and bad input.
    let http = reqwest::Client::new();
    let url = format!("http://{}/v1/map", c.addr(2));
    assert_eq!(http.get(&url).send().await.unwrap().status(), 401);
    let user = topology::auth::mint(support::SECRET.as_bytes(), "u42", None, 60);
    assert_eq!(
        http.get(&url)
            .bearer_auth(user)
            .send()
            .await
            .unwrap()
            .status(),
        403
    );
    let internal = internal_token();
    assert_eq!(
        http.get(&url)
            .bearer_auth(&internal)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let put = http
        .put(format!("http://{}/v1/switches/x", c.addr(2)))
        .bearer_auth(&internal)
        .json(&serde_json::json!({"on": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 403, "internal may read, not write");
    for body in ["{", "{\"on\": 3}", "[]", "{\"on\": true, \"extra\": 1}"] {
        let r = http
            .put(format!("http://{}/v1/switches/x", c.addr(3)))
            .bearer_auth(admin_token())
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{body}");
        assert_eq!(r.headers()["content-type"], "application/problem+json");
    }
    let r = http
        .post(format!("http://{}/v1/slots/move", c.addr(1)))
        .bearer_auth(admin_token())
        .json(&serde_json::json!({"slots": [5000], "to": "c1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let metrics = http
        .get(format!("http://{}/metrics", c.addr(1)))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("raft_meta_map_version"));
    let big = "x".repeat(100 * 1024);
    let r = http
        .put(format!("http://{}/v1/switches/x", c.addr(1)))
        .bearer_auth(admin_token())
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    assert_eq!(r.headers()["content-type"], "application/problem+json");

    // SIGTERM: a clean exit, and the other two still have a quorum.
    let mut c = c;
    assert!(c.terminate(3), "SIGTERM: no clean exit within 15 s");
    c.client_for(&[1, 2])
        .set_switch("after-term", true, "")
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_drive_liveness_without_a_log_entry_each() {
    let _serial = serial().await;
    let c = support::cluster(3, &["--suspect-ms", "400", "--down-ms", "1200"]).await;
    let admin = c.client();
    admin
        .register_cell(
            &cell("c1"),
            &region("east"),
            "http://127.0.0.1:9001",
            None,
            None,
        )
        .await
        .unwrap();
    let cellc =
        raft_meta::client::MetaClient::new((1..=3).map(|i| c.addr(i)).collect(), internal_token());
    // 20 heartbeats through a follower: one `alive` entry, not twenty.
    let leader = c.agreed_leader(&[1, 2, 3]).await;
    let follower = (1..=3).find(|i| *i != leader).unwrap();
    let via_follower = raft_meta::client::MetaClient::new(vec![c.addr(follower)], internal_token());
    for _ in 0..20 {
        via_follower
            .heartbeat(&cell("c1"), &Default::default())
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    let alive_version = loop {
        let view = admin.map(true).await.unwrap();
        if view.liveness.get(&cell("c1")) == Some(&raft_meta::state::Liveness::Alive) {
            break view.version;
        }
        assert!(Instant::now() < deadline, "never alive");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(alive_version, 2, "register + one liveness change");
    // Silence: suspect, then down.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = Vec::new();
    loop {
        let l = admin.map(true).await.unwrap().liveness[&cell("c1")];
        if seen.last() != Some(&l) {
            seen.push(l);
        }
        if l == raft_meta::state::Liveness::Down {
            break;
        }
        assert!(Instant::now() < deadline, "never down: {seen:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    use raft_meta::state::Liveness::*;
    assert_eq!(seen, vec![Alive, Suspect, Down]);
    // Back.
    cellc
        .heartbeat(&cell("c1"), &Default::default())
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while admin.map(true).await.unwrap().liveness[&cell("c1")] != Alive {
        assert!(Instant::now() < deadline, "never back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let report: serde_json::Value = reqwest::Client::new()
        .get(format!("http://{}/v1/liveness", c.addr(follower)))
        .bearer_auth(admin_token())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(report["c1"]["state"], "alive");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_the_leader_fails_over_and_loses_nothing() {
    let _serial = serial().await;
    let mut c = support::cluster(3, &[]).await;
    let client = c.client();
    for i in 0..20 {
        client
            .set_switch(&format!("s{i}"), i % 2 == 0, "before")
            .await
            .unwrap();
    }
    let leader = c.agreed_leader(&[1, 2, 3]).await;
    let survivors: Vec<u64> = (1..=3).filter(|i| *i != leader).collect();
    let writer = c
        .client_for(&survivors)
        .with_deadline(Duration::from_secs(15));

    c.kill(leader);
    let killed = Instant::now();
    let v = writer.set_switch("after-kill", true, "").await.unwrap();
    let failover = killed.elapsed();
    eprintln!("failover: first write after SIGKILL of the leader took {failover:?}");
    assert!(
        failover < Duration::from_secs(5),
        "failover took {failover:?}"
    );

    let view = writer.map(true).await.unwrap();
    assert!(view.version >= v);
    for i in 0..20 {
        assert_eq!(view.switches[&format!("s{i}")].on, i % 2 == 0);
    }
    assert!(view.switches["after-kill"].on);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_cluster_killed_and_restarted_keeps_every_committed_change() {
    let _serial = serial().await;
    // Snapshot every 20 entries so the restart goes through snapshot + purged log + tail.
    let mut c = support::cluster(3, &["--snapshot-every", "20"]).await;
    let client = c.client();
    client
        .register_cell(
            &cell("c1"),
            &region("east"),
            "http://127.0.0.1:9001",
            None,
            None,
        )
        .await
        .unwrap();
    client
        .register_cell(
            &cell("c2"),
            &region("west"),
            "http://127.0.0.1:9002",
            None,
            None,
        )
        .await
        .unwrap();
    client.move_slots(&[0, 1, 2, 3], &sh("c2")).await.unwrap();
    for i in 0..75 {
        client
            .set_switch(&format!("s{}", i % 30), i % 3 == 0, &format!("m{i}"))
            .await
            .unwrap();
    }
    let before = client.map(true).await.unwrap();

    for id in 1..=3 {
        c.kill(id);
    }
    for id in 1..=3 {
        assert!(
            c.nodes[&id].dir.join("snapshot").exists(),
            "node {id} has a snapshot"
        );
    }
    // Restart, with `--init` again on node 1: harmless on a node that has state.
    for id in 1..=3 {
        c.spawn(id, id == 1);
    }
    // Read at once, without waiting for readiness: the old leader comes back as leader of
    // its old term before it has re-applied its log, and a consistent read must still see
    // everything.
    let after = c.client().map(true).await.unwrap();
    if after.version != before.version {
        for id in 1..=3 {
            eprintln!("node {id}: {:?}", c.cluster_view(id).await);
        }
    }
    assert_eq!(after.version, before.version);
    assert_eq!(
        serde_json::to_value(&after).unwrap(),
        serde_json::to_value(&before).unwrap()
    );
    for id in 1..=3 {
        c.wait_ready(id).await;
    }
    // And the cluster still takes writes.
    c.client()
        .set_switch("after-restart", true, "")
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_three_to_five_to_three_while_writes_go_on() {
    let _serial = serial().await;
    // Snapshot every 20 entries and write 60 first: the log behind the snapshot is purged, so
    // the new nodes can only catch up through a snapshot sent over the network.
    let mut c = support::cluster(3, &["--snapshot-every", "20"]).await;
    let early = c.client_for(&[1, 2, 3]);
    for i in 0..60 {
        early
            .set_switch(&format!("early{}", i % 7), true, &format!("m{i}"))
            .await
            .unwrap();
    }
    c.add_node(4);
    c.add_node(5);
    c.wait_healthy(4).await;
    c.wait_healthy(5).await;

    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let client = c.client_for(&[1, 2, 3]);
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut acked = Vec::new();
            let mut errors = Vec::new();
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let name = format!("w{i}");
                match client.set_switch(&name, true, "").await {
                    Ok(_) => acked.push(name),
                    Err(e) => errors.push(e.to_string()),
                }
                i += 1;
            }
            (acked, errors)
        })
    };

    let admin = c.client_for(&[1, 2, 3]);
    tokio::time::sleep(Duration::from_millis(200)).await;
    admin.add_learner(4, &c.addr(4)).await.unwrap();
    admin.add_learner(5, &c.addr(5)).await.unwrap();
    let view = admin
        .change_membership(&BTreeSet::from([1, 2, 3, 4, 5]))
        .await
        .unwrap();
    assert_eq!(view.members, vec![1, 2, 3, 4, 5]);
    c.wait_ready(4).await;
    c.wait_ready(5).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let view = admin
        .change_membership(&BTreeSet::from([1, 2, 3]))
        .await
        .unwrap();
    assert_eq!(view.members, vec![1, 2, 3]);
    assert!(view.learners.is_empty());
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::Relaxed);
    let (acked, errors) = writer.await.unwrap();
    assert!(
        errors.is_empty(),
        "writes failed during membership changes: {errors:?}"
    );
    eprintln!("{} writes acknowledged during 3 -> 5 -> 3", acked.len());
    assert!(acked.len() >= 10, "only {} writes", acked.len());

    let final_view = c.client_for(&[1, 2, 3]).map(true).await.unwrap();
    for name in &acked {
        assert!(
            final_view.switches.contains_key(name),
            "{name} acknowledged but missing"
        );
    }
    // The nodes that joined through a snapshot hold the same map.
    for id in [4, 5] {
        let local = c.client_for(&[id]).map(false).await.unwrap();
        assert_eq!(
            local.switches["early6"], final_view.switches["early6"],
            "node {id}"
        );
        assert!(
            c.nodes[&id].dir.join("snapshot").exists(),
            "node {id} got a snapshot"
        );
    }
    // The removed nodes are out: the cluster works without them.
    c.kill(4);
    c.kill(5);
    c.client_for(&[1, 2, 3])
        .set_switch("after-shrink", true, "")
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_isolated_leader_cannot_commit_and_its_lone_write_does_not_survive() {
    let _serial = serial().await;
    let c = support::cluster(3, &["--fault-hooks", "--write-timeout-ms", "1500"]).await;
    let client = c.client();
    client.set_switch("baseline", true, "").await.unwrap();
    let old = c.agreed_leader(&[1, 2, 3]).await;
    let others: Vec<u64> = (1..=3).filter(|i| *i != old).collect();
    let http = reqwest::Client::new();

    let cut = |on: bool| {
        let http = http.clone();
        let addr = c.addr(old);
        async move {
            let r = http
                .post(format!("http://{addr}/internal/fault"))
                .bearer_auth(internal_token())
                .json(&serde_json::json!({ "partitioned": on }))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 204);
        }
    };
    cut(true).await;

    // The old leader still believes it leads; a write sent to it must not commit.
    let lone = http
        .put(format!("http://{}/v1/switches/lone-write", c.addr(old)))
        .bearer_auth(admin_token())
        .json(&serde_json::json!({"on": true, "message": "accepted alone"}))
        .timeout(Duration::from_secs(5))
        .send()
        .await;
    eprintln!("write to the cut-off leader: {lone:?}");
    match lone {
        Ok(r) => assert_eq!(r.status(), 503, "a cut-off leader answered {}", r.status()),
        Err(e) => assert!(e.is_timeout(), "{e}"),
    }

    // The majority elects a new leader and commits.
    let new = c.agreed_leader(&others).await;
    assert_ne!(new, old);
    let majority = c.client_for(&others);
    let v = majority
        .set_switch("majority-write", true, "")
        .await
        .unwrap();

    cut(false).await;
    c.wait_applied(old, v).await;
    let back = c.cluster_view(old).await.unwrap();
    assert_ne!(back.leader, Some(old), "the old leader stepped down");
    for id in 1..=3 {
        let view = c.client_for(&[id]).map(false).await.unwrap();
        assert!(view.switches.contains_key("majority-write"), "node {id}");
        assert!(
            !view.switches.contains_key("lone-write"),
            "node {id} kept the lone write"
        );
    }
    let view = c.client().map(true).await.unwrap();
    assert!(!view.switches.contains_key("lone-write"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_whose_node_dies_sees_every_later_version_in_order() {
    let _serial = serial().await;
    let mut c = support::cluster(3, &[]).await;
    let leader = c.agreed_leader(&[1, 2, 3]).await;
    let mut order = vec![leader];
    order.extend((1..=3).filter(|i| *i != leader));
    // The watcher's first node is the leader, the node that will die.
    let watch_client = c.client_for(&order);
    let start = watch_client.map(false).await.unwrap().version;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let watcher = tokio::spawn(async move {
        let mut w = watch_client.watch(start);
        loop {
            let view = w.next().await;
            if tx.send(view.version).is_err() {
                return;
            }
        }
    });

    let writer = c
        .client_for(&order[1..])
        .with_deadline(Duration::from_secs(15));
    let mut last = 0;
    for i in 0..10 {
        last = writer.set_switch(&format!("a{i}"), true, "").await.unwrap();
    }
    c.kill(leader);
    for i in 0..10 {
        last = writer.set_switch(&format!("b{i}"), true, "").await.unwrap();
    }

    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while seen.last() != Some(&last) {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, rx.recv()).await {
            Ok(Some(v)) => seen.push(v),
            _ => panic!("watch stalled; saw {seen:?}, want up to {last}"),
        }
    }
    watcher.abort();
    eprintln!("watcher saw versions {seen:?}");
    let want: Vec<u64> = (start + 1..=last).collect();
    assert_eq!(seen, want, "every version, in order, no gap");
}

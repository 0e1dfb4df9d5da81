//! Cells that take their map from raft-meta: a slot move takes effect without a restart, the
//! router's epoch is fenced, and a cell keeps serving from its persisted map while raft-meta
//! is down, even across its own restart.

mod common;

use common::*;
use reqwest::StatusCode;
use topology::{CellId, Region, Uid};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cells_follow_the_map_from_raft_meta() {
    // Arrange: raft-meta, two registered cells, each started with --meta.
    let mut meta = MetaNode::start().await;
    let client = meta.client();
    let (p1, p2) = (free_port(), free_port());
    let (c1_id, c2_id) = (CellId::parse("c1").unwrap(), CellId::parse("c2").unwrap());
    client
        .register_cell(
            &c1_id,
            &Region::parse("east").unwrap(),
            &format!("http://127.0.0.1:{p1}"),
            None,
            None,
        )
        .await
        .unwrap();
    client
        .register_cell(
            &c2_id,
            &Region::parse("west").unwrap(),
            &format!("http://127.0.0.1:{p2}"),
            None,
            None,
        )
        .await
        .unwrap();
    let opts = |id: &str, port: u16| CellOptions {
        extra_args: vec![
            "--cell-id".into(),
            id.into(),
            "--meta".into(),
            meta.url.clone(),
            "--heartbeat-ms".into(),
            "100".into(),
        ],
        listen: Some(format!("127.0.0.1:{port}")),
        database_via: None,
    };
    let mut c1 = TestCell::spawn_with(opts("c1", p1)).await;
    let c2 = TestCell::spawn_with(opts("c2", p2)).await;

    // A user homed in c1 by the current map.
    let view = client.map(true).await.unwrap();
    let map = view.map.expect("a map once cells are registered");
    let uid = (0..)
        .map(|i| format!("mover{i}"))
        .find(|u| map.serving(Uid::parse(u).unwrap().slot()) == &c1_id)
        .unwrap();
    let slot = Uid::parse(&uid).unwrap().slot();
    let (s, _) = c1
        .get(&format!("/v1/users/{uid}/wallet"), &user(&uid))
        .await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = c2
        .get(&format!("/v1/users/{uid}/wallet"), &user(&uid))
        .await;
    assert_eq!(s, StatusCode::MISDIRECTED_REQUEST);

    // Act: move the slot to c2.
    client
        .move_slots(&[slot.get()], &topology::ShardId::own(&c2_id))
        .await
        .unwrap();

    // Assert: without a restart, c1 refuses it and c2 serves it.
    let wallet = format!("/v1/users/{uid}/wallet");
    wait_until("c1 refuses the moved slot", || async {
        c1.get(&wallet, &user(&uid)).await.0 == StatusCode::MISDIRECTED_REQUEST
    })
    .await;
    wait_until("c2 serves the moved slot", || async {
        c2.get(&wallet, &user(&uid)).await.0 == StatusCode::OK
    })
    .await;

    // The router's epoch is fenced: the old epoch is refused even by the new owner.
    let new_epoch = client
        .map(true)
        .await
        .unwrap()
        .map
        .unwrap()
        .owner(slot)
        .epoch;
    let res = c2
        .http
        .get(format!("{}{wallet}", c2.url))
        .bearer_auth(user(&uid))
        .header(wire::headers::SLOT, slot.get().to_string())
        .header(wire::headers::EPOCH, (new_epoch.0 - 1).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::MISDIRECTED_REQUEST);
    let res = c2
        .http
        .get(format!("{}{wallet}", c2.url))
        .bearer_auth(user(&uid))
        .header(wire::headers::SLOT, slot.get().to_string())
        .header(wire::headers::EPOCH, new_epoch.0.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);

    // raft-meta dies; c1 restarts and serves from its persisted map (static stability).
    meta.kill9();
    c1.restart().await;
    let (s, _) = c1.get(&wallet, &user(&uid)).await;
    assert_eq!(
        s,
        StatusCode::MISDIRECTED_REQUEST,
        "still the moved map after a restart"
    );
    let other = (0..)
        .map(|i| format!("stay{i}"))
        .find(|u| map.serving(Uid::parse(u).unwrap().slot()) == &c1_id)
        .unwrap();
    let (s, _) = c1
        .get(&format!("/v1/users/{other}/wallet"), &user(&other))
        .await;
    assert_eq!(
        s,
        StatusCode::OK,
        "c1 keeps serving its own slots with raft-meta down"
    );
}

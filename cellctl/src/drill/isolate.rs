//! isolate-cell's own verdict: once the cut ends, raft-meta names another primary for the
//! shard the cut-off cell was primary of, and that cell, reached directly (not through the
//! router), serves nothing of it: it answers `421 wrong_cell` (DESIGN §6.4).

use std::time::Duration;

use harness::api::{Answer, Client};
use topology::{CellMap, ShardId, Slot};

use super::trial::Verdict;
use crate::failover::{self, Ctl};

/// A user whose home slot is in `shard` by `map`.
fn uid_in(map: &CellMap, shard: &ShardId) -> Option<String> {
    (0..100_000)
        .map(|i| format!("fence-probe-{i}"))
        .find(|u| map.owner(Slot::of(u.as_bytes())).shard == *shard)
}

/// Waits (bounded) for `cell`'s shard to have another primary and for `cell` (at `url`) to
/// answer 421 for one of its users.
pub async fn fenced(
    ctl: &Ctl,
    map: &CellMap,
    cell: &str,
    url: &str,
    token: &str,
    within: Duration,
) -> Verdict {
    let name = "the cut-off primary fenced (421) after the cut".to_owned();
    let outcome: anyhow::Result<String> = async {
        let shard = ShardId::parse(cell)?;
        let uid = uid_in(map, &shard)
            .ok_or_else(|| anyhow::anyhow!("no user found in shard {shard}"))?;
        let client = Client::new(url, Duration::from_secs(5), 2)?;
        let last = std::sync::Mutex::new(String::new());
        let found = failover::wait_for(
            &format!("shard {shard} served elsewhere and cell {cell} answering 421"),
            within,
            || async {
                let view = ctl.view().await.ok()?;
                let primary = view.map.as_ref()?.shard(&shard)?.primary.to_string();
                if primary == cell {
                    return None;
                }
                let reply = client.wallet(token, &uid).await;
                if matches!(reply.answer, Answer::Status(421)) {
                    Some(primary)
                } else {
                    *last.lock().expect("last lock") =
                        format!("{:?} {:?}", reply.answer, reply.code);
                    None
                }
            },
        )
        .await;
        match found {
            Ok(primary) => Ok(format!(
                "shard {shard} failed over to {primary}; {cell} answers 421 for {uid} (a user of {shard})"
            )),
            Err(e) => Err(anyhow::anyhow!(
                "{e:#} (last answer from {cell}: {})",
                last.lock().expect("last lock")
            )),
        }
    }
    .await;
    match outcome {
        Ok(detail) => Verdict {
            name,
            ok: true,
            detail,
        },
        Err(e) => Verdict {
            name,
            ok: false,
            detail: format!("{e:#}"),
        },
    }
}

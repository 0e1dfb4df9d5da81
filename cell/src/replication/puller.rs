//! One replica's loop: join the primary's log, then pull, apply, repeat.
//!
//! Joining: a blank database bootstraps from a snapshot. A database that holds data (a
//! former primary after a failover, or a replica of an earlier primary) first compares its
//! shard history with the primary's (`store::diverged_at`): when its log is a prefix of the
//! primary's it tails from its own head (nothing to rebuild); when it forked, the commits
//! past the fork — its divergent tail, acknowledged to no one (DESIGN §6.4) — are written
//! to `DATA_DIR/divergent/`, reported, and never applied; then it starts over from a
//! snapshot.
//!
//! The position sent as `after` is what this replica has durably applied (the store
//! commits each batch before the next request), so the primary may count it as
//! acknowledged. Errors back off (100 ms doubling to 2 s) and never skip anything: the next
//! pull starts again from the applied position.

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use super::{DivergentTail, Replica};
use crate::journal::{Commit, Position, WireCommit};
use crate::ownership::Ownership;
use crate::peer::Peers;
use crate::store::{diverged_at, ApplyError, Promotion, Snapshot};

/// Commits asked for per pull.
const BATCH: i64 = 256;
/// How long the primary may hold a pull open when it has nothing new.
const WAIT_MS: u64 = 2_000;

#[derive(Deserialize)]
struct JournalPage {
    head: Position,
    commits: Vec<WireCommit>,
}

/// The primary's history, as `GET /v1/internal/history` answers it.
#[derive(Deserialize)]
struct HistoryPage {
    head: Position,
    history: Vec<Promotion>,
}

pub(super) async fn run(
    replica: Arc<Replica>,
    ownership: Arc<Ownership>,
    peers: Peers,
    divergent_dir: std::path::PathBuf,
) {
    let mut failures = 0u32;
    loop {
        let outcome = tokio::select! {
            _ = replica.cancel.cancelled() => return,
            r = step(&replica, &ownership, &peers, &divergent_dir) => r,
        };
        match outcome {
            Ok(()) => failures = 0,
            Err(e) => {
                failures += 1;
                if failures == 1 || failures.is_multiple_of(20) {
                    tracing::warn!(shard = %replica.shard, failures, error = %e, "replication pull failed; retrying");
                }
                set_status(&replica, |s| {
                    s.state = "error".into();
                    s.last_error = Some(e.clone());
                });
                let backoff = Duration::from_millis(100 * 2u64.pow(failures.min(5)))
                    .min(Duration::from_secs(2));
                tokio::select! {
                    _ = replica.cancel.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
            }
        }
    }
}

fn set_status(replica: &Replica, f: impl FnOnce(&mut super::ReplicaStatus)) {
    f(&mut replica.status.lock().expect("status lock poisoned"));
}

/// One pull (or the join). `Err` is a reason for the log.
async fn step(
    replica: &Replica,
    ownership: &Ownership,
    peers: &Peers,
    divergent_dir: &std::path::Path,
) -> Result<(), String> {
    let primary = ownership
        .map()
        .and_then(|m| {
            let shard = m.shard(&replica.shard)?;
            m.cell(&shard.primary).map(|c| c.url.clone())
        })
        .ok_or_else(|| format!("shard {} is not in the map", replica.shard))?;
    set_status(replica, |s| s.primary_url = primary.clone());

    use std::sync::atomic::Ordering;
    if !replica.bootstrapped.load(Ordering::Acquire) {
        join(replica, &primary, peers, divergent_dir).await?;
        replica.bootstrapped.store(true, Ordering::Release);
    }

    let applied = replica.applied();
    if let Some(limit) = replica.hold_limit() {
        if applied >= limit {
            set_status(replica, |s| s.state = "held".into());
            tokio::time::sleep(Duration::from_millis(20)).await;
            return Ok(());
        }
    }
    let path = format!(
        "/v1/internal/journal?shard={}&after={applied}&max={BATCH}&wait_ms={WAIT_MS}",
        replica.shard
    );
    let asked = std::time::Instant::now();
    let page: JournalPage = peers
        .get(&primary, &path, Duration::from_millis(WAIT_MS + 5_000))
        .await?;
    let mut commits: Vec<Commit> = page
        .commits
        .into_iter()
        .map(Commit::try_from)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("undecodable commit from {primary}: {e}"))?;
    if let Some(limit) = replica.hold_limit() {
        commits.retain(|c| c.pos <= limit);
    }
    let oldest_unapplied_at = commits.first().map(|c| c.committed_at);
    if !commits.is_empty() {
        // Fetch time includes the long-poll's wait for news; it is the pull's cost only
        // when commits came back.
        metrics::histogram!("redcell_replica_fetch_seconds").record(asked.elapsed().as_secs_f64());
        let applying = std::time::Instant::now();
        let applied = replica.store.apply_commits(&commits).await;
        metrics::histogram!("redcell_replica_apply_seconds")
            .record(applying.elapsed().as_secs_f64());
        metrics::histogram!("redcell_replica_batch_commits").record(commits.len() as f64);
        match applied {
            Ok(done) => {
                replica.applied.send_replace(done.pos);
            }
            Err(ApplyError::Gap { expected, got }) => {
                // The primary no longer has what we need (pruned, or a new shard under the
                // same name): start over from a snapshot rather than skip anything.
                tracing::warn!(shard = %replica.shard, expected, got, "gap in the primary's log: re-bootstrapping from a snapshot");
                return bootstrap(replica, &primary, peers).await;
            }
            Err(e) => return Err(format!("apply: {e}")),
        }
    }
    let applied = replica.applied();
    let now = crate::clock::wall_ms();
    let lag_records = (page.head - applied).max(0);
    set_status(replica, |s| {
        s.state = "tailing".into();
        s.applied = applied;
        s.primary_head = page.head;
        s.lag_records = lag_records;
        s.lag_ms = if lag_records == 0 {
            0
        } else {
            oldest_unapplied_at.map(|t| (now - t).max(0)).unwrap_or(0)
        };
        s.last_error = None;
        s.last_contact_ms = now;
    });
    let shard = replica.shard.to_string();
    metrics::gauge!("redcell_replica_applied_position", "shard" => shard.clone())
        .set(applied as f64);
    metrics::gauge!("redcell_replica_lag_records", "shard" => shard).set(lag_records as f64);
    Ok(())
}

/// Makes the replica's log a prefix of the primary's (see the module): tails from its own
/// head when it is one already, else sets its divergent tail aside and bootstraps.
async fn join(
    replica: &Replica,
    primary: &str,
    peers: &Peers,
    divergent_dir: &std::path::Path,
) -> Result<(), String> {
    let store = &replica.store;
    if store.is_blank().await.map_err(|e| e.to_string())? {
        return bootstrap(replica, primary, peers).await;
    }
    let theirs: HistoryPage = peers
        .get(
            primary,
            &format!("/v1/internal/history?shard={}", replica.shard),
            Duration::from_secs(10),
        )
        .await?;
    let ours = store.promotions().await.map_err(|e| e.to_string())?;
    let head = store.journal_head().await.map_err(|e| e.to_string())?;
    match diverged_at(&ours, head, &theirs.history, theirs.head) {
        None => {
            let at = store
                .become_replica(replica.shard.as_str())
                .await
                .map_err(|e| e.to_string())?;
            replica.applied.send_replace(at);
            tracing::info!(shard = %replica.shard, at, primary,
                "this copy's log is a prefix of the primary's: tailing from its own head");
            Ok(())
        }
        Some(from) => {
            let tail = set_aside(replica, from, head, divergent_dir).await?;
            tracing::error!(shard = %replica.shard, from, to = head, commits = tail.commits,
                records = tail.records, file = %tail.file,
                "DIVERGENT TAIL: this copy of the shard holds commits its primary never had \
                 (acknowledged to no one); set aside, never applied; re-seeding from a snapshot");
            metrics::counter!("redcell_divergent_commits_total", "shard" => replica.shard.to_string())
                .increment(tail.commits as u64);
            set_status(replica, |s| s.divergent = Some(tail));
            bootstrap(replica, primary, peers).await
        }
    }
}

/// Writes this copy's commits from `from` to `to` (those still in its journal) to a new file
/// under `dir`, and describes them.
async fn set_aside(
    replica: &Replica,
    from: Position,
    to: Position,
    dir: &std::path::Path,
) -> Result<DivergentTail, String> {
    let mut commits: Vec<WireCommit> = Vec::new();
    let mut after = from - 1;
    while after < to {
        let page = replica
            .store
            .commits_after(after, 1_000)
            .await
            .map_err(|e| e.to_string())?;
        let Some(last) = page.last().map(|c| c.pos) else {
            break;
        };
        commits.extend(page.iter().filter(|c| c.pos <= to).map(WireCommit::from));
        after = last;
    }
    let records = commits.iter().map(|c| c.records.len()).sum();
    let found_at_ms = crate::clock::wall_ms();
    raft_meta::files::private_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let file = dir.join(format!("{}-{found_at_ms}.json", replica.shard));
    let tail = DivergentTail {
        shard: replica.shard.to_string(),
        from,
        to,
        commits: commits.len(),
        records,
        file: file.display().to_string(),
        found_at_ms,
    };
    let body = serde_json::json!({"tail": tail, "commits": commits});
    raft_meta::files::write_atomic(&file, body.to_string().as_bytes())
        .map_err(|e| format!("{}: {e}", file.display()))?;
    Ok(tail)
}

async fn bootstrap(replica: &Replica, primary: &str, peers: &Peers) -> Result<(), String> {
    set_status(replica, |s| s.state = "bootstrapping".into());
    let snap: Snapshot = peers
        .get(
            primary,
            &format!("/v1/internal/snapshot?shard={}", replica.shard),
            Duration::from_secs(120),
        )
        .await?;
    replica
        .store
        .install_snapshot(replica.shard.as_str(), &snap)
        .await
        .map_err(|e| format!("install snapshot: {e}"))?;
    replica.applied.send_replace(snap.pos);
    tracing::info!(shard = %replica.shard, pos = snap.pos, "replica bootstrapped from a snapshot");
    set_status(replica, |s| {
        s.applied = snap.pos;
        s.state = "tailing".into();
    });
    Ok(())
}

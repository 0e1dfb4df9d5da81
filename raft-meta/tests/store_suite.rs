//! The log store and state machine checked by openraft's own conformance suite, plus
//! reopen-from-disk checks the suite does not do.

use openraft::storage::{RaftLogStorage, RaftStateMachine};
use openraft::testing::{StoreBuilder, Suite};
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, RaftLogReader, StorageError, Vote};
use raft_meta::state::Command;
use raft_meta::store::{self, LogStore, StateMachineStore};
use raft_meta::{NodeId, TypeConfig};
use tempfile::TempDir;

struct DiskBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, TempDir> for DiskBuilder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachineStore), StorageError<NodeId>> {
        let dir = TempDir::new().expect("temp dir");
        let (log, sm) = store::open(dir.path()).expect("open stores");
        Ok((dir, log, sm))
    }
}

#[test]
fn openraft_conformance_suite() {
    Suite::test_all(DiskBuilder).expect("the disk store passes openraft's suite");
}

fn entry(term: u64, index: u64, name: &str) -> Entry<TypeConfig> {
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(term, 1), index),
        payload: EntryPayload::Normal(Command::SetSwitch {
            name: name.into(),
            on: true,
            message: String::new(),
        }),
    }
}

#[tokio::test]
async fn log_vote_and_snapshot_survive_reopen() {
    let dir = TempDir::new().unwrap();
    {
        let (mut log, _sm) = store::open(dir.path()).unwrap();
        log.append_durably((1..=10).map(|i| entry(1, i, &format!("s{i}"))))
            .unwrap();
        log.truncate(LogId::new(CommittedLeaderId::new(1, 1), 8))
            .await
            .unwrap();
        log.purge(LogId::new(CommittedLeaderId::new(1, 1), 3))
            .await
            .unwrap();
        log.save_vote(&Vote::new(4, 2)).await.unwrap();
    }
    // A torn record at the tail (a crash mid-append) must be cut off, not fail the start.
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(dir.path().join("log"))
            .unwrap();
        f.write_all(&[200, 0, 0, 0, b'{', b'"']).unwrap();
    }
    let (mut log, mut sm) = store::open(dir.path()).unwrap();
    let state = log.get_log_state().await.unwrap();
    assert_eq!(state.last_purged_log_id.map(|l| l.index), Some(3));
    assert_eq!(state.last_log_id.map(|l| l.index), Some(7));
    let entries = log.try_get_log_entries(0..100).await.unwrap();
    let indexes: Vec<u64> = entries.iter().map(|e| e.log_id.index).collect();
    assert_eq!(indexes, vec![4, 5, 6, 7]);
    assert_eq!(log.read_vote().await.unwrap(), Some(Vote::new(4, 2)));
    // Appending after the cut tail still works and survives another reopen.
    log.append_durably([entry(2, 8, "after")]).unwrap();
    drop(log);
    let (mut log, _) = store::open(dir.path()).unwrap();
    assert_eq!(
        log.get_log_state().await.unwrap().last_log_id,
        Some(LogId::new(CommittedLeaderId::new(2, 1), 8))
    );

    // The state machine: apply, snapshot, reopen → same state.
    sm.apply(vec![entry(1, 4, "a"), entry(1, 5, "b")])
        .await
        .unwrap();
    let mut builder = sm.get_snapshot_builder().await;
    let snap = openraft::RaftSnapshotBuilder::build_snapshot(&mut builder)
        .await
        .unwrap();
    assert_eq!(snap.meta.last_log_id.map(|l| l.index), Some(5));
    let before = sm.handle().current();
    drop(sm);
    let (_, mut sm) = store::open(dir.path()).unwrap();
    assert_eq!(sm.handle().current(), before);
    assert_eq!(
        sm.applied_state().await.unwrap().0.map(|l| l.index),
        Some(5)
    );
}

#[test]
fn a_data_dir_belongs_to_one_node() {
    let dir = TempDir::new().unwrap();
    store::claim(dir.path(), 1).unwrap();
    store::claim(dir.path(), 1).unwrap();
    let err = store::claim(dir.path(), 2).unwrap_err();
    assert!(err.to_string().contains("belongs to node 1"), "{err}");
}

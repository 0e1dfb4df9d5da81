//! `cellctl policy SHARD refuse|async`: what a shard's primary does when its backup is
//! unreachable (DESIGN.md §6.3), written to raft-meta as the cell's `on_backup_unreachable`.
//!
//! `refuse`: money writes answer 503 until a backup acknowledges again (RPO 0 always).
//! `async`: after a short bound the primary asks raft-meta for a run-alone grant and, once
//! granted, acknowledges alone while raft-meta re-protects it. The rest of the cell's policy
//! (`auto_failover`) is kept as it is.

use anyhow::Context;
use clap::ValueEnum;
use raft_meta::client::MetaClient;
use topology::ShardId;
use wire::{BackupUnreachable, FailoverPolicy};

use crate::deployment::{self, Layout, Record};
use crate::up::admin_client;

/// The operator's names for `BackupUnreachable`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum BackupPolicy {
    /// Refuse money writes while the backup is unreachable (`refuse_writes`).
    Refuse,
    /// Run alone under a raft-meta grant while the backup is unreachable (`go_async`).
    Async,
}

impl BackupPolicy {
    pub fn as_state(self) -> BackupUnreachable {
        match self {
            BackupPolicy::Refuse => BackupUnreachable::RefuseWrites,
            BackupPolicy::Async => BackupUnreachable::GoAsync,
        }
    }

    pub fn of(state: BackupUnreachable) -> BackupPolicy {
        match state {
            BackupUnreachable::RefuseWrites => BackupPolicy::Refuse,
            BackupUnreachable::GoAsync => BackupPolicy::Async,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            BackupPolicy::Refuse => "refuse",
            BackupPolicy::Async => "async",
        }
    }
}

/// What `cellctl policy` did.
#[derive(Debug)]
pub struct Changed {
    pub shard: ShardId,
    pub before: FailoverPolicy,
    pub after: FailoverPolicy,
    pub version: u64,
    /// The shard was running alone and the new policy made its grant lapse.
    pub grant_lapsed: bool,
}

impl std::fmt::Display for Changed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let was = BackupPolicy::of(self.before.on_backup_unreachable).name();
        let now = BackupPolicy::of(self.after.on_backup_unreachable).name();
        let auto = if self.after.auto_failover {
            "on"
        } else {
            "off"
        };
        if was == now {
            write!(f, "shard {}: policy {now} (unchanged", self.shard)?;
        } else {
            write!(f, "shard {}: policy {was} -> {now} (", self.shard)?;
        }
        write!(f, "; auto failover {auto}; map version {})", self.version)?;
        if self.grant_lapsed {
            write!(
                f,
                "\n  its run-alone grant lapsed: money writes are refused until a backup acknowledges"
            )?;
        }
        Ok(())
    }
}

/// Sets `shard`'s backup policy in the deployment under `layout`.
pub async fn run(layout: &Layout, shard: &str, policy: BackupPolicy) -> anyhow::Result<Changed> {
    let record: Record = deployment::read_json(&layout.deployment())?;
    let secret = deployment::secret(layout, false)?;
    set(&admin_client(record.meta_nodes(), &secret), shard, policy).await
}

/// Sets `shard`'s `on_backup_unreachable` to `policy`, keeping `auto_failover` as raft-meta
/// has it. Read then write: an `auto_failover` change landing in between would be undone
/// (operators change policies one at a time).
pub async fn set(meta: &MetaClient, shard: &str, policy: BackupPolicy) -> anyhow::Result<Changed> {
    let view = meta
        .map(true)
        .await
        .context("reading the map from raft-meta")?;
    let known: Vec<String> = view
        .map
        .as_ref()
        .map(|m| m.shards.keys().map(|c| c.to_string()).collect())
        .unwrap_or_default();
    let cell = ShardId::parse(shard)
        .ok()
        .filter(|c| view.map.as_ref().is_some_and(|m| m.shards.contains_key(c)))
        .with_context(|| {
            format!(
                "no shard {shard:?} in this deployment (shards: {})",
                if known.is_empty() {
                    "none registered yet".to_owned()
                } else {
                    known.join(", ")
                }
            )
        })?;
    let before = view.policies.get(&cell).copied().unwrap_or_default();
    let after = FailoverPolicy {
        auto_failover: before.auto_failover,
        on_backup_unreachable: policy.as_state(),
    };
    let version = meta
        .set_policy(&cell, after)
        .await
        .with_context(|| format!("setting the policy of shard {cell}"))?;
    Ok(Changed {
        grant_lapsed: view.alone.contains_key(&cell) && policy == BackupPolicy::Refuse,
        shard: cell,
        before,
        after,
        version,
    })
}

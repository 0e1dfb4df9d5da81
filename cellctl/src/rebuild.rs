//! `cellctl rebuild CELL [--json]` (DESIGN §6.5, failback): a cell that lost shards at a
//! failover becomes their backup again.
//!
//! For each shard whose last failover moved it away from CELL and that CELL does not serve:
//! raft-meta names CELL the shard's backup (in another region than the primary, as always),
//! unless it is already (re-protection may have named it once it answered heartbeats again). The cell then checks its copy of the shard against the new
//! primary's history: its divergent tail — commits it made that the new primary never had,
//! acknowledged to no one — is written to `DATA_DIR/divergent/` and reported, never
//! applied, and the copy is re-seeded from a snapshot and tails the journal. This command
//! waits for that and prints what was set aside. Then `cellctl failover SHARD --planned --to
//! CELL` moves the shard home.

use std::time::Duration;

use anyhow::{bail, Context};
use serde::Serialize;
use serde_json::Value;
use topology::{CellId, ShardId};

use crate::deployment::Layout;
use crate::failover::{wait_for, Ctl};

/// How long the re-seeded copy may take to catch up.
const CATCH_UP: Duration = Duration::from_secs(120);

#[derive(Debug, Serialize)]
pub struct Report {
    pub cell: String,
    pub shards: Vec<Rebuilt>,
}

#[derive(Debug, Serialize)]
pub struct Rebuilt {
    pub shard: String,
    pub primary: String,
    /// The backup the shard had before (re-protection may have named one).
    pub backup_before: Option<String>,
    /// The map version that named CELL the backup (the map's version when it already was).
    pub version: u64,
    /// CELL was already the shard's backup (re-protection named it): nothing was changed in
    /// the map; the command only waited for its copy to tail.
    pub already_backup: bool,
    /// What the cell set aside: `{"shard","from","to","commits","records","file",...}`, or
    /// `null` when its copy was a prefix of the primary's (nothing diverged).
    pub divergent: Option<Value>,
    /// The replica's position once it tails.
    pub applied: i64,
}

pub async fn run(layout: &Layout, cell: &str) -> anyhow::Result<Report> {
    let ctl = Ctl::open(layout)?;
    let cell_id = CellId::parse(cell).context("CELL")?;
    ctl.url_of(cell)?;
    let view = ctl.view().await?;
    let map = view.map.as_ref().context("raft-meta has no map yet")?;
    let lost: Vec<ShardId> = view
        .failovers
        .iter()
        .filter(|(_, f)| f.from == cell_id)
        .filter(|(shard, _)| map.shard(shard).is_some_and(|s| s.primary != cell_id))
        .map(|(shard, _)| shard.clone())
        .collect();
    if lost.is_empty() {
        bail!("nothing to rebuild: no failover moved a shard away from cell {cell} that it does not serve again");
    }
    let mut shards = Vec::new();
    for shard in lost {
        let info = map.shard(&shard).expect("filtered above").clone();
        let already_backup = info.backup.as_ref() == Some(&cell_id);
        let version = if already_backup {
            tracing::info!(%shard, cell, "already the backup; waiting for its copy to tail");
            view.version
        } else {
            let version = ctl
                .meta
                .set_backup(&shard, Some(&cell_id))
                .await
                .with_context(|| format!("naming {cell} the backup of shard {shard}"))?;
            tracing::info!(%shard, cell, version, "named the backup; waiting for its copy to tail");
            version
        };
        let replica = wait_for(
            &format!("cell {cell}'s copy of shard {shard} tailing"),
            CATCH_UP,
            || async {
                let r = ctl.replica(cell, shard.as_str()).await?;
                (r["state"] == "tailing" && r["lag_records"].as_i64().is_some_and(|l| l < 1_000))
                    .then_some(r)
            },
        )
        .await?;
        shards.push(Rebuilt {
            shard: shard.to_string(),
            primary: info.primary.to_string(),
            backup_before: info.backup.as_ref().map(|b| b.to_string()),
            version,
            already_backup,
            divergent: replica["divergent"]
                .is_object()
                .then(|| replica["divergent"].clone()),
            applied: replica["applied"].as_i64().unwrap_or_default(),
        });
    }
    Ok(Report {
        cell: cell.to_owned(),
        shards,
    })
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for s in &self.shards {
            writeln!(
                f,
                "shard {}: {} is its backup again (primary {}, {}), tailing at {}",
                s.shard,
                self.cell,
                s.primary,
                if s.already_backup {
                    "named by re-protection already".to_owned()
                } else {
                    format!(
                        "was backed up by {}",
                        s.backup_before.as_deref().unwrap_or("nobody")
                    )
                },
                s.applied
            )?;
            match &s.divergent {
                None => writeln!(
                    f,
                    "  no divergent tail: its copy was a prefix of the primary's"
                )?,
                Some(d) => {
                    writeln!(
                    f,
                    "  DIVERGENT TAIL set aside: positions {}..={} ({} commits, {} records) in {}",
                    d["from"], d["to"], d["commits"], d["records"],
                    d["file"].as_str().unwrap_or("?")
                )?
                }
            }
            writeln!(
                f,
                "  fail back with: cellctl failover {} --planned --to {}",
                s.shard, self.cell
            )?;
        }
        Ok(())
    }
}

//! `cellctl verify [SHARD]`: proves each backup replica holds exactly its primary's rows.
//!
//! Per shard with a backup (as the map has them now: a failover moves a shard's primary),
//! at one position (Vitess VDiff is the model): the backup holds
//! its replica where it stands; the primary computes per-slot digests of every replicated
//! table in one snapshot at its position P; the backup applies up to exactly P, computes
//! its digests and resumes. Every (slot, table) whose digests differ is named.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::Context;
use serde::Serialize;
use serde_json::{json, Value};

use crate::deployment::{self, Layout, Record};

#[derive(Debug, Serialize)]
pub struct Report {
    pub ok: bool,
    pub shards: Vec<ShardReport>,
}

#[derive(Debug, Serialize)]
pub struct ShardReport {
    pub shard: String,
    pub primary: String,
    pub backup: Option<String>,
    /// The position both sides were compared at.
    pub position: Option<i64>,
    pub equal: bool,
    pub differences: Vec<Difference>,
    /// Why the comparison could not be made, if it could not.
    pub error: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct Difference {
    pub slot: i64,
    pub table: String,
    /// `rows:sha256` on each side (`null`: no rows of that slot in that table).
    pub primary: Option<String>,
    pub replica: Option<String>,
}

/// Compares every shard (or only `only`) of the deployment under `layout`.
pub async fn run(layout: &Layout, only: Option<&str>) -> anyhow::Result<Report> {
    let record: Record = deployment::read_json(&layout.deployment())?;
    let secret = deployment::secret(layout, false)?;
    let token = topology::auth::mint(secret.as_bytes(), "svc:cellctl", Some("admin"), 300);
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()?;
    // Primaries and backups as raft-meta has them now (failover and re-protection move
    // them); the plan's pairs when raft-meta cannot be reached.
    let map = crate::up::admin_client(record.meta_nodes(), &secret)
        .with_deadline(Duration::from_secs(3))
        .map(false)
        .await
        .ok()
        .and_then(|v| v.map);
    // Shards that hold slots (a shard emptied by moves has nothing to compare).
    let all: Vec<(String, String, Option<String>)> = record
        .shards(map.as_ref())
        .into_iter()
        .filter(|(id, _, _)| {
            map.as_ref().is_none_or(|m| {
                topology::ShardId::parse(id).is_ok_and(|id| m.slots_in(&id).next().is_some())
            })
        })
        .collect();
    if let Some(s) = only {
        anyhow::ensure!(
            all.iter().any(|(id, _, _)| id == s),
            "no shard {s:?} in this deployment (shards: {})",
            all.iter()
                .map(|(id, _, _)| id.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let url_of = |cell: &str| {
        record
            .cells
            .iter()
            .find(|c| c.id == cell)
            .map(|c| c.url.clone())
            .with_context(|| format!("cell {cell} is not in the deployment"))
    };
    let mut shards = Vec::new();
    for (shard, primary, backup) in all
        .into_iter()
        .filter(|(id, _, _)| only.is_none_or(|s| s == id))
    {
        let mut report = ShardReport {
            shard: shard.clone(),
            primary: primary.clone(),
            backup: backup.clone(),
            position: None,
            equal: false,
            differences: Vec::new(),
            error: None,
        };
        match &backup {
            None => report.error = Some("this shard has no backup".into()),
            Some(backup) => {
                let (primary_url, backup_url) = (url_of(&primary)?, url_of(backup)?);
                match compare(&http, &token, &shard, &primary_url, &backup_url).await {
                    Ok((pos, differences)) => {
                        report.position = Some(pos);
                        report.equal = differences.is_empty();
                        report.differences = differences;
                    }
                    Err(e) => report.error = Some(format!("{e:#}")),
                }
            }
        }
        shards.push(report);
    }
    Ok(Report {
        ok: shards.iter().all(|s| s.equal),
        shards,
    })
}

async fn call(token: &str, req: reqwest::RequestBuilder) -> anyhow::Result<Value> {
    let res = req.bearer_auth(token).send().await?;
    let status = res.status();
    let body: Value = res.json().await.unwrap_or(Value::Null);
    anyhow::ensure!(status.is_success(), "HTTP {status}: {body}");
    Ok(body)
}

/// The position compared at, and the differences.
async fn compare(
    http: &reqwest::Client,
    token: &str,
    shard: &str,
    primary: &str,
    backup: &str,
) -> anyhow::Result<(i64, Vec<Difference>)> {
    let hold = format!("{backup}/v1/internal/replicas/{shard}/hold");
    let mut last_err = None;
    for _attempt in 0..3 {
        call(token, http.post(&hold).json(&json!({"at": null})))
            .await
            .context("holding the replica")?;
        let p = call(
            token,
            http.get(format!("{primary}/v1/internal/digest?shard={shard}")),
        )
        .await
        .context("the primary's digest")?;
        let pos = p["pos"]
            .as_i64()
            .context("the primary's digest has no position")?;
        let r = call(
            token,
            http.get(format!(
                "{backup}/v1/internal/replicas/{shard}/digest?at={pos}"
            )),
        )
        .await;
        match r {
            Ok(r) => return Ok((pos, differences(&p["slots"], &r["slots"]))),
            Err(e) => {
                let _ = http.delete(&hold).bearer_auth(token).send().await;
                last_err = Some(e.context("the replica's digest"));
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
    Err(last_err.expect("three attempts failed"))
}

fn differences(primary: &Value, replica: &Value) -> Vec<Difference> {
    let empty = serde_json::Map::new();
    let (p, r) = (
        primary.as_object().unwrap_or(&empty),
        replica.as_object().unwrap_or(&empty),
    );
    let slots: BTreeSet<i64> = p
        .keys()
        .chain(r.keys())
        .filter_map(|k| k.parse().ok())
        .collect();
    let mut out = Vec::new();
    for slot in slots {
        let key = slot.to_string();
        let (pt, rt) = (
            p.get(&key).and_then(Value::as_object).unwrap_or(&empty),
            r.get(&key).and_then(Value::as_object).unwrap_or(&empty),
        );
        let tables: BTreeSet<&String> = pt.keys().chain(rt.keys()).collect();
        for t in tables {
            let (a, b) = (
                pt.get(t).and_then(Value::as_str),
                rt.get(t).and_then(Value::as_str),
            );
            if a != b {
                out.push(Difference {
                    slot,
                    table: t.clone(),
                    primary: a.map(str::to_owned),
                    replica: b.map(str::to_owned),
                });
            }
        }
    }
    out
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for s in &self.shards {
            let backup = s.backup.as_deref().unwrap_or("-");
            match (&s.error, s.equal) {
                (Some(e), _) => writeln!(f, "{} -> {backup}: NOT VERIFIED: {e}", s.shard)?,
                (None, true) => writeln!(
                    f,
                    "{} -> {backup}: equal at position {}",
                    s.shard,
                    s.position.unwrap_or_default()
                )?,
                (None, false) => {
                    writeln!(
                        f,
                        "{} -> {backup}: {} DIFFERENCES at position {}",
                        s.shard,
                        s.differences.len(),
                        s.position.unwrap_or_default()
                    )?;
                    for d in &s.differences {
                        writeln!(
                            f,
                            "  slot {} table {}: primary {} replica {}",
                            d.slot,
                            d.table,
                            d.primary.as_deref().unwrap_or("(no rows)"),
                            d.replica.as_deref().unwrap_or("(no rows)")
                        )?;
                    }
                }
            }
        }
        writeln!(f, "{}", if self.ok { "ok" } else { "NOT OK" })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    #[test]
    fn differences_name_every_slot_and_table() {
        let p = json!({"1": {"wallets": "2:aa", "claims": "1:bb"}, "2": {"packets": "1:cc"}});
        let r = json!({"1": {"wallets": "2:aa", "claims": "1:xx"}, "3": {"packets": "1:dd"}});
        let d = super::differences(&p, &r);
        let names: Vec<(i64, &str)> = d.iter().map(|d| (d.slot, d.table.as_str())).collect();
        assert_eq!(names, vec![(1, "claims"), (2, "packets"), (3, "packets")]);
        assert!(super::differences(&p, &p).is_empty());
    }
}

//! `cellctl failover SHARD --planned|--emergency [--to CELL] [--json]` (DESIGN §6.5).
//!
//! Planned (a switchover with nothing lost and nothing for the client to see but latency):
//! 1. the primary pauses the shard's writes (`POST /v1/internal/shards/{id}/pause`, a 10 s
//!    lease, so an interrupted `cellctl` cannot leave it paused): the writes in flight end,
//!    new ones answer 503 + `Retry-After: 1`, which the router retries itself;
//! 2. the backup catches up: the primary's journal head at the pause is acknowledged by the
//!    backup (durably applied);
//! 3. raft-meta moves the shard to the backup and raises its slots' epochs in one entry, at
//!    the epoch read before the pause (another decision taken meanwhile makes this one fail);
//! 4. the backup promotes (it sees the map), the router follows the watch, writes resume on
//!    the new primary;
//! 5. the old primary demotes and becomes the shard's backup from its own head (reversed
//!    replication: its log is a prefix of the new primary's, nothing to rebuild).
//!
//! `unavailable_ms` runs from the pause to the new primary serving the shard.
//!
//! Emergency (the primary is dead or cut off): step 3 at once; the backup promotes what it
//! durably has, which by §6.3 is every acknowledged write unless the shard ran alone under
//! a grant: then the writes acknowledged alone are at risk, and the report says how many
//! the old primary had counted (when it still answers).

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Serialize;
use serde_json::{json, Value};
use topology::{CellId, Epoch, ShardId};
use wire::{FailoverKind, MapView};

use crate::deployment::{self, Layout, Record};
use crate::up::admin_client;

/// How long the primary's writes stay paused at most if this command never finishes.
const PAUSE_LEASE_MS: u64 = 10_000;
/// How long the backup may take to acknowledge the paused head.
const CATCH_UP: Duration = Duration::from_secs(5);
/// How long the new primary may take to serve the shard once raft-meta moved it.
const PROMOTION: Duration = Duration::from_secs(15);
/// How long the old primary may take to follow as the backup (planned).
const REVERSAL: Duration = Duration::from_secs(15);
/// How often the cells' states are polled while waiting.
const POLL: Duration = Duration::from_millis(5);

#[derive(Debug, Clone, clap::Args)]
pub struct FailoverArgs {
    /// The shard to move (e.g. c1: each cell's own shard has its name).
    pub shard: String,
    /// A switchover: pause, catch up, move, resume; the old primary becomes the backup.
    #[arg(
        long,
        conflicts_with = "emergency",
        required_unless_present = "emergency"
    )]
    pub planned: bool,
    /// The primary is dead or cut off: move now; the backup serves what it durably has.
    #[arg(long)]
    pub emergency: bool,
    /// The cell to move to: must be the shard's backup (a failback names the old primary,
    /// once `cellctl rebuild` made it the backup again). Default: the backup.
    #[arg(long, value_name = "CELL")]
    pub to: Option<String>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// One timed step of the failover.
#[derive(Debug, Serialize)]
pub struct Step {
    pub name: String,
    /// Milliseconds since the command started, when the step ended.
    pub at_ms: u64,
    pub detail: String,
}

/// What `cellctl failover` did.
#[derive(Debug, Serialize)]
pub struct Report {
    pub shard: String,
    /// `planned` or `emergency`.
    pub kind: String,
    pub from: String,
    pub to: String,
    /// The epoch every slot of the shard holds since the move.
    pub epoch: u64,
    /// The map version that committed the move.
    pub version: u64,
    /// Planned: from the pause to the new primary serving the shard. Emergency: from the
    /// decision to the new primary serving it.
    pub unavailable_ms: u64,
    /// The primary's journal head at the pause (planned).
    pub paused_at: Option<i64>,
    /// Writes the old primary acknowledged alone under a run-alone grant (emergency; when it
    /// still answered): they may be missing from the new primary.
    pub at_risk: Option<u64>,
    /// A run-alone grant stood when the shard moved (emergency).
    pub was_alone: bool,
    /// Planned: the old primary replicates from the new one (reversed replication).
    pub reversed: Option<bool>,
    pub steps: Vec<Step>,
}

/// Talks to the deployment for one command.
pub struct Ctl {
    pub record: Record,
    pub token: String,
    pub http: reqwest::Client,
    pub meta: raft_meta::client::MetaClient,
    started: Instant,
    steps: Vec<Step>,
}

impl Ctl {
    pub fn open(layout: &Layout) -> anyhow::Result<Ctl> {
        let record: Record = deployment::read_json(&layout.deployment())?;
        let secret = deployment::secret(layout, false)?;
        Ok(Ctl {
            token: topology::auth::mint(secret.as_bytes(), "svc:cellctl", Some("admin"), 600),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(3))
                .build()?,
            meta: admin_client(record.meta_nodes(), &secret),
            record,
            started: Instant::now(),
            steps: Vec::new(),
        })
    }

    pub fn url_of(&self, cell: &str) -> anyhow::Result<String> {
        self.record
            .cells
            .iter()
            .find(|c| c.id == cell)
            .map(|c| c.url.clone())
            .with_context(|| format!("cell {cell} is not in this deployment"))
    }

    pub fn step(&mut self, name: &str, detail: String) {
        let at_ms = self.started.elapsed().as_millis() as u64;
        tracing::debug!(step = name, at_ms, "{detail}");
        self.steps.push(Step {
            name: name.into(),
            at_ms,
            detail,
        });
    }

    pub fn take_steps(&mut self) -> Vec<Step> {
        std::mem::take(&mut self.steps)
    }

    /// raft-meta's map now (a linearizable read).
    pub async fn view(&self) -> anyhow::Result<MapView> {
        self.meta
            .map(true)
            .await
            .context("reading the map from raft-meta")
    }

    /// A cell's `GET /v1/internal/replication`.
    pub async fn replication(&self, cell: &str) -> anyhow::Result<Value> {
        let url = self.url_of(cell)?;
        let res = self
            .http
            .get(format!("{url}/v1/internal/replication"))
            .bearer_auth(&self.token)
            .send()
            .await
            .with_context(|| format!("asking cell {cell}"))?;
        let status = res.status();
        let body: Value = res.json().await.unwrap_or(Value::Null);
        anyhow::ensure!(status.is_success(), "cell {cell} answered {status}: {body}");
        Ok(body)
    }

    /// The entry of `shard` among the shards `cell` serves, if it serves it.
    pub async fn served(&self, cell: &str, shard: &str) -> Option<Value> {
        let r = self.replication(cell).await.ok()?;
        r["shards"]
            .as_array()?
            .iter()
            .find(|s| s["shard"] == shard)
            .cloned()
    }

    /// The replica of `shard` `cell` hosts, if it hosts one.
    pub async fn replica(&self, cell: &str, shard: &str) -> Option<Value> {
        let r = self.replication(cell).await.ok()?;
        r["replicas"]
            .as_array()?
            .iter()
            .find(|s| s["shard"] == shard)
            .cloned()
    }

    /// POSTs (or DELETEs) on a cell's admin route.
    async fn cell_call(
        &self,
        method: reqwest::Method,
        cell: &str,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let url = self.url_of(cell)?;
        let mut req = self
            .http
            .request(method, format!("{url}{path}"))
            .bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let res = req
            .send()
            .await
            .with_context(|| format!("asking cell {cell}"))?;
        let status = res.status();
        let body: Value = res.json().await.unwrap_or(Value::Null);
        anyhow::ensure!(status.is_success(), "cell {cell} answered {status}: {body}");
        Ok(body)
    }
}

/// Records raft-meta's move (at map `version`) and waits until `to` serves the shard: the
/// end of either kind of failover.
async fn moved_then_served(
    ctl: &mut Ctl,
    shard: &ShardId,
    to: &str,
    version: u64,
) -> anyhow::Result<()> {
    ctl.step(
        "move",
        format!("raft-meta moved shard {shard} to {to} (map version {version})"),
    );
    wait_for("the new primary serving the shard", PROMOTION, || async {
        ctl.served(to, shard.as_str()).await
    })
    .await
    .with_context(|| format!("shard {shard} moved to {to}, which does not serve it yet"))?;
    Ok(())
}

/// Lifts a planned failover's pause on `from` (the failover did not happen).
async fn resume(ctl: &Ctl, shard: &ShardId, from: &str) {
    let path = format!("/v1/internal/shards/{shard}/pause");
    if let Err(e) = ctl
        .cell_call(reqwest::Method::DELETE, from, &path, None)
        .await
    {
        tracing::warn!(%shard, from, "could not lift the pause (its lease ends it): {e:#}");
    }
}

/// Polls `check` every [`POLL`] until it answers `Some`, or fails after `within`.
pub async fn wait_for<T, F, Fut>(what: &str, within: Duration, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = check().await {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            bail!("{what}: not within {} ms", within.as_millis());
        }
        tokio::time::sleep(POLL).await;
    }
}

pub async fn run(layout: &Layout, args: &FailoverArgs) -> anyhow::Result<Report> {
    let mut ctl = Ctl::open(layout)?;
    let shard = ShardId::parse(&args.shard).context("SHARD")?;
    let view = ctl.view().await?;
    let map = view.map.as_ref().context("raft-meta has no map yet")?;
    let info = map
        .shard(&shard)
        .with_context(|| format!("no shard {shard} in the map"))?
        .clone();
    let Some(backup) = info.backup.clone() else {
        bail!(
            "shard {shard} has no backup to fail over to (after an emergency failover, \
             `cellctl rebuild CELL` makes a cell its backup again)"
        );
    };
    if let Some(to) = &args.to {
        let to = CellId::parse(to).context("--to")?;
        if to == info.primary {
            bail!("cell {to} is already the primary of shard {shard}");
        }
        if to != backup {
            bail!(
                "cell {to} is not shard {shard}'s backup ({backup} is): a failover moves a shard \
                 to its backup; `cellctl rebuild {to}` makes {to} the backup first"
            );
        }
    }
    let epoch = map.shard_epoch(&shard);
    let from = info.primary.to_string();
    let to = backup.to_string();
    ctl.step(
        "read the map",
        format!(
            "shard {shard}: primary {from}, backup {to}, epoch {epoch}, map version {}",
            view.version
        ),
    );
    if args.planned {
        planned(&mut ctl, &shard, &from, &to, epoch).await
    } else {
        emergency(&mut ctl, &view, &shard, &from, &to, epoch).await
    }
}

async fn planned(
    ctl: &mut Ctl,
    shard: &ShardId,
    from: &str,
    to: &str,
    epoch: Epoch,
) -> anyhow::Result<Report> {
    // The backup must be a caught-up replica, or the catch-up cannot succeed.
    let replica = ctl
        .replica(to, shard.as_str())
        .await
        .with_context(|| format!("the backup {to} hosts no replica of shard {shard}"))?;
    anyhow::ensure!(
        replica["state"] == "tailing" || replica["state"] == "held",
        "the backup {to}'s replica of shard {shard} is {} (not tailing yet): retry once it is",
        replica["state"]
    );
    let paused = ctl
        .cell_call(
            reqwest::Method::POST,
            from,
            &format!("/v1/internal/shards/{shard}/pause"),
            Some(json!({"lease_ms": PAUSE_LEASE_MS})),
        )
        .await
        .with_context(|| {
            format!(
                "pausing shard {shard} on its primary {from} (dead or cut off? use --emergency)"
            )
        })?;
    let pause_started = Instant::now();
    let head = paused["head"]
        .as_i64()
        .context("the pause's answer has no head")?;
    ctl.step(
        "pause",
        format!("{from} paused writes at journal head {head}"),
    );

    let caught_up = wait_for("the backup catching up", CATCH_UP, || async {
        let s = ctl.served(from, shard.as_str()).await?;
        let acked = s["backup"]["acked"].as_i64()?;
        (s["backup"]["cell"] == to && acked >= head).then_some(acked)
    })
    .await;
    let acked = match caught_up {
        Ok(a) => a,
        Err(e) => {
            resume(ctl, shard, from).await;
            return Err(e.context(format!(
                "the backup {to} did not acknowledge position {head}; writes resumed, nothing moved"
            )));
        }
    };
    ctl.step("catch up", format!("{to} acknowledged position {acked}"));

    let version = match ctl
        .meta
        .fail_over(shard, FailoverKind::Planned, epoch)
        .await
    {
        Ok(v) => v,
        Err(e) => {
            resume(ctl, shard, from).await;
            return Err(anyhow::Error::new(e).context(format!(
                "raft-meta did not move shard {shard}; writes resumed"
            )));
        }
    };
    moved_then_served(ctl, shard, to, version).await?;
    let unavailable_ms = pause_started.elapsed().as_millis() as u64;
    ctl.step("promote", format!("{to} serves shard {shard}"));

    let reversed = wait_for(
        "the old primary following as the backup",
        REVERSAL,
        || async {
            let r = ctl.replica(from, shard.as_str()).await?;
            (r["state"] == "tailing").then_some(r)
        },
    )
    .await;
    let reversed = match reversed {
        Ok(r) => {
            let rebuilt = r["divergent"].is_object();
            ctl.step(
                "reverse",
                if rebuilt {
                    format!("{from} replicates shard {shard}, after setting a divergent tail aside")
                } else {
                    format!(
                        "{from} replicates shard {shard} from its own head (nothing to rebuild)"
                    )
                },
            );
            !rebuilt
        }
        Err(e) => {
            ctl.step("reverse", format!("{e:#}"));
            false
        }
    };
    Ok(Report {
        shard: shard.to_string(),
        kind: "planned".into(),
        from: from.into(),
        to: to.into(),
        epoch: epoch.next().0,
        version,
        unavailable_ms,
        paused_at: Some(head),
        at_risk: None,
        was_alone: false,
        reversed: Some(reversed),
        steps: ctl.take_steps(),
    })
}

async fn emergency(
    ctl: &mut Ctl,
    view: &MapView,
    shard: &ShardId,
    from: &str,
    to: &str,
    epoch: Epoch,
) -> anyhow::Result<Report> {
    let was_alone = view.alone.contains_key(shard);
    // What the old primary acknowledged alone, if it still answers (quickly).
    let at_risk = if was_alone {
        let answer = tokio::time::timeout(Duration::from_secs(1), ctl.served(from, shard.as_str()))
            .await
            .ok()
            .flatten();
        answer.and_then(|s| s["durability"]["at_risk"].as_u64())
    } else {
        None
    };
    if was_alone {
        tracing::warn!(%shard, from, at_risk = ?at_risk,
            "the shard runs alone under a grant: writes it acknowledged without its backup may be lost by this failover");
    }
    let decided = Instant::now();
    let version = ctl
        .meta
        .fail_over(shard, FailoverKind::Emergency, epoch)
        .await
        .with_context(|| format!("raft-meta did not move shard {shard}"))?;
    moved_then_served(ctl, shard, to, version).await?;
    let unavailable_ms = decided.elapsed().as_millis() as u64;
    ctl.step("promote", format!("{to} serves shard {shard}"));
    Ok(Report {
        shard: shard.to_string(),
        kind: "emergency".into(),
        from: from.into(),
        to: to.into(),
        epoch: epoch.next().0,
        version,
        unavailable_ms,
        paused_at: None,
        at_risk,
        was_alone,
        reversed: None,
        steps: ctl.take_steps(),
    })
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "{} failover of shard {}: {} -> {} at epoch {} (map version {})",
            self.kind, self.shard, self.from, self.to, self.epoch, self.version
        )?;
        for s in &self.steps {
            writeln!(f, "  {:>6} ms  {:<13} {}", s.at_ms, s.name, s.detail)?;
        }
        writeln!(f, "unavailable_ms: {}", self.unavailable_ms)?;
        if self.was_alone {
            writeln!(
                f,
                "WARNING: the shard ran alone under a grant; writes acknowledged alone may be lost (at risk: {})",
                self.at_risk
                    .map(|n| n.to_string())
                    .unwrap_or_else(|| "unknown, the old primary did not answer".into())
            )?;
        }
        match self.reversed {
            Some(true) => writeln!(
                f,
                "{} is the shard's backup now (reversed replication)",
                self.from
            )?,
            Some(false) => writeln!(
                f,
                "{} is not following as the backup yet; see `cellctl status`",
                self.from
            )?,
            None => writeln!(
                f,
                "{} serves nothing of shard {} until `cellctl rebuild {}`",
                self.from, self.shard, self.from
            )?,
        }
        Ok(())
    }
}

//! `cellctl drill`: a disaster injected under live traffic into the deployment a `cellctl
//! up` runs, and proof of what was lost (nothing) and how long recovery took (DESIGN §6.6).
//!
//! One trial: the steady state is checked (everything green; otherwise the drill refuses to
//! inject and says why); a ledger-keeping open-loop load (the harness engine, the mixed flows
//! of `cellctl load`, fresh users, client retries with the same idempotency key) runs
//! through the router; at `--fault-at` its baseline is checked and the scenario's fault is
//! injected ([`inject::Injector`]); a guard aborts (and restores) if the healthy shards'
//! success falls below a bound; after the load, the drill waits (bounded) for transfers to
//! settle and judges: acknowledged operations lost, duplicated effects, money conserved,
//! replicas equal, recovery time per affected shard, the blast radius on healthy shards.
//! Then it puts the deployment back (starts what it stopped, rebuilds a cell that lost its
//! shards, fails them back home, waits for green) so the next trial can run.
//!
//! - `inject.rs`: the injectors and the undo that restores on drop;
//! - `isolate.rs`: isolate-cell's own verdict (the cut-off primary fenced afterwards);
//! - `trial.rs`: one trial, from the steady-state check to the restore;
//! - `timeline.rs`: the per-request records and everything computed from them (pure);
//! - `report.rs`: the terminal summary, `report.json` and the self-contained `report.html`
//!   with its charts rendered here to inline SVG, kept in `DIR/drills/` for the console.

pub mod inject;
mod isolate;
pub mod report;
pub mod timeline;
mod trial;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use harness::load::{parse_duration, Mix};
use serde::Serialize;

use crate::deployment::{self, Layout, Record};
pub use trial::Trial;

/// The disasters a drill can inject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// SIGKILL a shard's primary cell and keep it down; raft-meta fails its shard over.
    KillCell,
    /// SIGSTOP a primary cell for `--freeze-for`, then SIGCONT: the grey failure.
    FreezeCell,
    /// An operator's planned switchover of a shard to its backup, under load (every shard
    /// on either cell is affected).
    PlannedFailover,
    /// SIGKILL every cell and the raft-meta voter of one region, kept down.
    KillRegion,
    /// SIGKILL a shard's backup cell: the primary follows its policy and re-protection
    /// names another backup. (Every cell of `cellctl up` is also a primary: its own shard
    /// fails over as in kill-cell.)
    KillBackup,
    /// SIGKILL raft-meta's leader, kept down; the other voters elect another.
    KillMetaLeader,
    /// Cut a primary cell off from raft-meta and from its backup for `--isolate-for` while
    /// the router and its database still reach it (the split-brain case): it must stop
    /// acknowledging, raft-meta fails its shard over, and once the cut ends it is fenced
    /// (421). Needs `cellctl up --fault-proxy` (the proxies of `faultproxy.rs`).
    IsolateCell,
}

impl Scenario {
    pub fn name(self) -> &'static str {
        match self {
            Scenario::KillCell => "kill-cell",
            Scenario::FreezeCell => "freeze-cell",
            Scenario::PlannedFailover => "planned-failover",
            Scenario::KillRegion => "kill-region",
            Scenario::KillBackup => "kill-backup",
            Scenario::KillMetaLeader => "kill-meta-leader",
            Scenario::IsolateCell => "isolate-cell",
        }
    }
}

/// Flags of `cellctl drill`.
#[derive(Debug, Clone, clap::Args)]
pub struct DrillArgs {
    /// The disaster to inject.
    #[arg(long, value_enum)]
    pub scenario: Scenario,
    /// Operations per second offered through the router (open loop), e.g. 200.
    #[arg(long, value_name = "OPS_PER_S", default_value_t = 100.0)]
    pub rate: f64,
    /// How long the load runs, e.g. 30s.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    pub duration: Duration,
    /// When the fault is injected, from the load's start (the time before it is the
    /// baseline), e.g. 10s.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub fault_at: Duration,
    /// How long freeze-cell keeps the cell stopped.
    #[arg(long, value_name = "DURATION", default_value = "8s", value_parser = parse_duration)]
    pub freeze_for: Duration,
    /// How long isolate-cell keeps the cell cut off.
    #[arg(long, value_name = "DURATION", default_value = "8s", value_parser = parse_duration)]
    pub isolate_for: Duration,
    /// Trials to run, one after the other, each on the restored deployment.
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=100))]
    pub trials: u32,
    /// Seed of the choices (the target when not named, the load's operations); trial k uses
    /// SEED+k. Random when omitted; the report names it.
    #[arg(long, value_name = "SEED")]
    pub seed: Option<u64>,
    /// What is hit: a cell (kill-cell, freeze-cell, isolate-cell: a primary), a shard (planned-failover,
    /// kill-backup), a region (kill-region). Chosen by the seed when omitted.
    #[arg(long, value_name = "NAME")]
    pub target: Option<String>,
    /// Also write report.json and report.html into this directory (created if missing).
    /// Every drill's report is kept in DIR/drills/ anyway, where the console lists it.
    #[arg(long, value_name = "DIR")]
    pub report: Option<PathBuf>,
    /// Print the JSON summary on stdout instead of the terminal summary.
    #[arg(long)]
    pub json: bool,
    /// The operation mix, as for `cellctl load`.
    #[arg(
        long,
        value_name = "MIX",
        default_value = "grant=5,send=10,claim=60,read=25"
    )]
    pub mix: Mix,
    /// Distinct users of each trial (fresh uids per trial, so their wallets start empty).
    #[arg(long, value_name = "N", default_value_t = 400,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub users: u32,
    /// How long, after the load, recovery may take: transfers settled, re-protection, the
    /// restore (each step bounded by it).
    #[arg(long, value_name = "DURATION", default_value = "90s", value_parser = parse_duration)]
    pub recovery_timeout: Duration,
    /// Healthy shards must keep at least this success ratio after the fault.
    #[arg(long, value_name = "RATIO", default_value_t = 0.999)]
    pub min_healthy_success: f64,
    /// Healthy shards' p99 after the fault must stay within this factor of their baseline
    /// p99…
    #[arg(long, value_name = "FACTOR", default_value_t = 1.5)]
    pub max_p99_factor: f64,
    /// …or within this many milliseconds of it, whichever is larger (a few-millisecond
    /// baseline on a small machine is noise, not a bound).
    #[arg(long, value_name = "MS", default_value_t = 50.0)]
    pub p99_slack_ms: f64,
    /// The healthy p99 is judged only when the healthy shards had at least this many
    /// requests before the fault and after it (the p99 of fewer is close to their maximum).
    #[arg(long, value_name = "N", default_value_t = 1_000)]
    pub min_p99_samples: u64,
    /// Refuse to inject when the baseline's error ratio is above this.
    #[arg(long, value_name = "RATIO", default_value_t = 0.01)]
    pub max_baseline_errors: f64,
    /// Refuse to inject when the baseline's p99 is above this, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 1_000.0)]
    pub max_baseline_p99_ms: f64,
    /// Abort (and restore) when the healthy shards' success ratio over the last two seconds
    /// falls below this.
    #[arg(long, value_name = "RATIO", default_value_t = 0.9)]
    pub guard_min_success: f64,
}

impl DrillArgs {
    /// Checks what clap cannot; the messages name the flag.
    pub fn validate(&self) -> anyhow::Result<()> {
        let ratio = |v: f64, flag: &str| {
            anyhow::ensure!(
                (0.0..=1.0).contains(&v),
                "{flag} must be within 0..=1, not {v}"
            );
            Ok(())
        };
        anyhow::ensure!(
            self.rate.is_finite() && self.rate > 0.0 && self.rate <= 100_000.0,
            "--rate must be within (0, 100000], not {}",
            self.rate
        );
        anyhow::ensure!(
            self.fault_at >= Duration::from_secs(1),
            "--fault-at must be at least 1s: the baseline is measured before it"
        );
        anyhow::ensure!(
            self.fault_at + Duration::from_secs(1) <= self.duration,
            "--fault-at ({:?}) must come at least 1s before the end of --duration ({:?})",
            self.fault_at,
            self.duration
        );
        anyhow::ensure!(
            !self.freeze_for.is_zero(),
            "--freeze-for must be longer than zero"
        );
        anyhow::ensure!(
            !self.isolate_for.is_zero(),
            "--isolate-for must be longer than zero"
        );
        anyhow::ensure!(
            !self.recovery_timeout.is_zero(),
            "--recovery-timeout must be longer than zero"
        );
        ratio(self.min_healthy_success, "--min-healthy-success")?;
        ratio(self.max_baseline_errors, "--max-baseline-errors")?;
        ratio(self.guard_min_success, "--guard-min-success")?;
        anyhow::ensure!(
            self.max_p99_factor.is_finite() && self.max_p99_factor >= 1.0,
            "--max-p99-factor must be at least 1"
        );
        anyhow::ensure!(
            self.p99_slack_ms.is_finite() && self.p99_slack_ms >= 0.0,
            "--p99-slack-ms must not be negative"
        );
        anyhow::ensure!(
            self.max_baseline_p99_ms.is_finite() && self.max_baseline_p99_ms > 0.0,
            "--max-baseline-p99-ms must be positive"
        );
        if self.scenario == Scenario::KillMetaLeader && self.target.is_some() {
            bail!("kill-meta-leader hits raft-meta's leader, whichever it is: no --target");
        }
        Ok(())
    }
}

/// RTO over the trials (each trial's slowest affected shard).
#[derive(Clone, Debug, Default, Serialize)]
pub struct RtoSummary {
    pub p50: Option<u64>,
    pub max: Option<u64>,
}

/// Every trial and what they add up to. `ok` only when every guarantee held in every trial.
#[derive(Debug, Serialize)]
pub struct Summary {
    pub ok: bool,
    pub scenario: Scenario,
    pub seed: u64,
    pub rate: f64,
    pub duration_s: f64,
    pub fault_at_s: f64,
    pub rto_ms: RtoSummary,
    pub acknowledged: u64,
    pub acknowledged_lost: u64,
    pub duplicated: u64,
    pub money_conserved: bool,
    pub replicas_equal: bool,
    /// The lowest of the trials' (`null` when no trial had a healthy shard).
    pub healthy_success_ratio: Option<f64>,
    /// Client-visible errors of every trial, by code.
    pub errors_by_code: BTreeMap<String, u64>,
    /// When the drill started (UTC, RFC 3339).
    pub started_at: String,
    pub command: String,
    pub trials: Vec<Trial>,
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[u64], q: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1])
}

impl Summary {
    fn of(args: &DrillArgs, seed: u64, started_at: String, trials: Vec<Trial>) -> Summary {
        let mut rtos: Vec<u64> = trials.iter().filter_map(|t| t.rto_ms).collect();
        rtos.sort_unstable();
        let mut errors_by_code = BTreeMap::new();
        for t in &trials {
            for (code, n) in &t.errors_by_code {
                *errors_by_code.entry(code.clone()).or_default() += n;
            }
        }
        Summary {
            ok: !trials.is_empty() && trials.iter().all(|t| t.ok),
            scenario: args.scenario,
            seed,
            rate: args.rate,
            duration_s: args.duration.as_secs_f64(),
            fault_at_s: args.fault_at.as_secs_f64(),
            rto_ms: RtoSummary {
                p50: percentile(&rtos, 0.5),
                max: rtos.last().copied(),
            },
            acknowledged: trials.iter().map(|t| t.acknowledged).sum(),
            acknowledged_lost: trials.iter().map(|t| t.acknowledged_lost).sum(),
            duplicated: trials.iter().map(|t| t.duplicated).sum(),
            money_conserved: trials.iter().all(|t| t.money_conserved),
            replicas_equal: trials.iter().all(|t| t.replicas_equal),
            healthy_success_ratio: trials
                .iter()
                .filter_map(|t| t.healthy_success_ratio)
                .reduce(f64::min),
            errors_by_code,
            started_at,
            command: std::env::args().collect::<Vec<_>>().join(" "),
            trials,
        }
    }
}

/// Runs the drill's trials against the deployment of `layout` and writes the report.
pub async fn run(layout: &Layout, args: &DrillArgs) -> anyhow::Result<Summary> {
    args.validate()?;
    let record: Record = deployment::read_json(&layout.deployment())
        .context("reading deployment.json (is `cellctl up` running on this data dir?)")?;
    let secret = deployment::secret(layout, false)?;
    let seed = args.seed.unwrap_or_else(rand::random);
    let started_at = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    let ctx = trial::Ctx {
        layout: layout.clone(),
        args: args.clone(),
        injector: inject::Injector::Local(inject::Local {
            layout: layout.clone(),
        }),
        router_url: record.router.url.clone(),
        secret,
        nonce: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or_else(|_| rand::random()),
    };
    let mut trials = Vec::new();
    for k in 0..args.trials {
        let t = trial::run(&ctx, k, seed.wrapping_add(u64::from(k))).await?;
        let stop = t.refused.is_some() || !t.restored;
        if !args.json {
            eprintln!("{}", report::one_line(&t));
        }
        trials.push(t);
        if stop && k + 1 < args.trials {
            eprintln!("the deployment is not back to green: no further trial");
            break;
        }
    }
    let summary = Summary::of(args, seed, started_at, trials);
    let kept = layout.drills().join(report::kept_name(&summary));
    report::write(&kept, &summary)?;
    if !args.json {
        eprintln!("report: {}", kept.join("report.html").display());
    }
    if let Some(dir) = &args.report {
        report::write(dir, &summary)?;
    }
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        drill: DrillArgs,
    }

    fn parse(args: &[&str]) -> anyhow::Result<DrillArgs> {
        let mut all = vec!["drill"];
        all.extend_from_slice(args);
        let cli = Cli::try_parse_from(all)?;
        cli.drill.validate()?;
        Ok(cli.drill)
    }

    #[test]
    fn flags_are_checked_at_the_edge() {
        assert!(parse(&["--scenario", "kill-cell"]).is_ok());
        assert!(parse(&["--scenario", "nuke"]).is_err());
        assert!(parse(&["--scenario", "kill-cell", "--rate", "0"]).is_err());
        assert!(parse(&[
            "--scenario",
            "kill-cell",
            "--duration",
            "5s",
            "--fault-at",
            "5s"
        ])
        .is_err());
        assert!(parse(&["--scenario", "kill-cell", "--fault-at", "0s"]).is_err());
        assert!(parse(&["--scenario", "kill-cell", "--trials", "0"]).is_err());
        assert!(parse(&["--scenario", "kill-cell", "--min-healthy-success", "1.5"]).is_err());
        assert!(parse(&["--scenario", "kill-meta-leader", "--target", "meta1"]).is_err());
        assert!(parse(&["--scenario", "isolate-cell", "--isolate-for", "0s"]).is_err());
        assert!(parse(&["--scenario", "isolate-cell", "--target", "c1"]).is_ok());
        let a = parse(&[
            "--scenario",
            "freeze-cell",
            "--rate",
            "50",
            "--duration",
            "8s",
            "--fault-at",
            "3s",
        ])
        .unwrap();
        assert_eq!(a.duration, Duration::from_secs(8));
    }

    #[test]
    fn rto_percentiles_are_nearest_rank() {
        assert_eq!(percentile(&[], 0.5), None);
        assert_eq!(percentile(&[7], 0.5), Some(7));
        assert_eq!(percentile(&[1, 2, 3, 4], 0.5), Some(2));
        assert_eq!(percentile(&[1, 2, 3, 4, 5], 0.5), Some(3));
    }
}

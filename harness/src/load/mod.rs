//! The open-loop load engine: `cellctl load`, the drill's traffic, and the benches' due
//! times (`crate::schedule`).
//!
//! Operations are due at fixed intervals from the start (`--rate`), and each is launched on
//! its own task when due, whether or not earlier ones have been answered; only
//! `--max-in-flight` bounds them, and an operation due while the bound is reached is counted
//! as *dropped*, never skipped in silence. Latency counts from the due time, so a stall in
//! the deployment (or in this generator) shows in the percentiles instead of stretching the
//! gaps between requests (coordinated omission).
//!
//! - `parse.rs`: durations and the operation mix, as typed on the command line.
//! - `crate::schedule`: the due times, warm-up and measured window (pure arithmetic).
//! - `flows.rs`: the operations as API.md requests (through `crate::api`), how answers are
//!   judged, retries with the same key, the packet pool, what goes into the ledger.
//! - `report.rs`: histograms, outcome counts, the printed and JSON report.
//!
//! [`run`] is `cellctl load`; [`run_with`] adds what a drill needs: its own users, client
//! retries, a [`Ledger`](crate::ledger::Ledger), a tap of every finished operation (for
//! per-second timelines) and an early stop.
//!
//! Before the clock starts, `--initial-packets` paid packets seed the pool so the first
//! claims have targets; seeding that fails (wrong URL, wrong secret) fails the run at once.

mod flows;
mod parse;
mod report;

#[cfg(test)]
mod tests;

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use indicatif::{ProgressBar, ProgressStyle};
use rand::{Rng, SeedableRng};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub use crate::api::Answer;
use crate::ledger::Ledger;
use crate::schedule::Schedule;
pub use flows::{classify, Class, Retry, Step, StepResult};
use flows::{Api, Plan, Pool};
pub use parse::{parse_duration, Mix, OpKind};
pub use report::{LatencyRow, OutcomeRow, Report, RunInfo};
use report::{Recorder, Sample};

/// Activated packets kept for claims and reads to target (the most recent ones).
const POOL_CAPACITY: usize = 1024;

/// Flags of `cellctl load`.
///
/// Offers a fixed rate of operations to the router for a fixed time, then prints latency
/// percentiles per operation and per request, and every outcome by status and problem code.
/// Exits nonzero when any operation failed or was dropped.
#[derive(Debug, Clone, clap::Args)]
pub struct LoadArgs {
    /// Operations per second to offer, e.g. 500 or 2.5. Open loop: operations start on
    /// schedule whether or not earlier ones were answered.
    #[arg(long, value_name = "OPS_PER_S", value_parser = parse_rate)]
    pub rate: f64,

    /// How long to measure, e.g. 60s, 2m, 1m30s, 500ms (a bare number is seconds).
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration)]
    pub duration: Duration,

    /// Relative weights of the operations, `kind=weight` separated by commas; kinds left out
    /// are not sent. grant: a subsidy grant then the user's B2C packet from it. send: a C2C
    /// packet then the payment provider's callback. claim: a claim on a recent packet by a
    /// random user. read: a packet, a wallet or a packet's claims.
    #[arg(long, value_name = "MIX", default_value = Mix::DEFAULT)]
    pub mix: Mix,

    /// How many distinct users act (uids load-u0 … load-u{N-1}); uids hash over every slot,
    /// so claims and grants cross cells.
    #[arg(long, value_name = "N", default_value_t = 10_000,
          value_parser = clap::value_parser!(u32).range(1..=10_000_000))]
    pub users: u32,

    /// Load offered before the measured window, not counted in the report (warms
    /// connections and caches), e.g. 5s.
    #[arg(long, value_name = "DURATION", default_value = "0s", value_parser = parse_duration)]
    pub warmup: Duration,

    /// At most this many operations in flight; an operation due while the bound is reached
    /// is dropped and counted as such (and the run fails).
    #[arg(long, value_name = "N", default_value_t = 2048,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_in_flight: u32,

    /// Each request's limit; a request unanswered by then counts as an error (timeout).
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_positive_duration)]
    pub timeout: Duration,

    /// Seed of the choices (operation kinds, users, amounts, targets); random when omitted.
    /// The report names the seed used.
    #[arg(long, value_name = "SEED")]
    pub seed: Option<u64>,

    /// Paid packets of 100 shares created before the clock starts, so the first claims and
    /// reads have targets.
    #[arg(long, value_name = "N", default_value_t = 16,
          value_parser = clap::value_parser!(u32).range(0..=10_000))]
    pub initial_packets: u32,

    /// Print the report as JSON on stdout instead of the table (and show no progress bar).
    #[arg(long)]
    pub json: bool,
}

/// What a drill adds to a run (all off by default: `cellctl load`).
#[derive(Default)]
pub struct Options {
    /// Uids `{prefix}0 …` (default `load-u`): a drill uses fresh users, whose wallets start
    /// empty, so the ledger can account for every cent credited to them.
    pub user_prefix: Option<String>,
    /// How requests that got no answer or a 5xx are retried (default: never).
    pub retry: Option<Retry>,
    /// Where acknowledged writes are recorded.
    pub ledger: Option<Arc<Ledger>>,
    /// Every finished operation, as it finishes.
    pub tap: Option<mpsc::UnboundedSender<Finished>>,
    /// Stops scheduling when cancelled; what was launched still finishes.
    pub stop: Option<CancellationToken>,
    /// Told when the clock starts (after seeding), with the instant of operation 0's due time.
    pub started: Option<oneshot::Sender<Instant>>,
    /// Mint with this ring's current key instead of the target's secret (a load across a
    /// key rotation: the ring follows the deployment's keys file).
    pub keys: Option<topology::keys::KeyRing>,
}

/// One finished operation, for a tap.
#[derive(Clone, Debug)]
pub struct Finished {
    pub kind: OpKind,
    pub scheduled: Instant,
    pub measured: bool,
    pub steps: Vec<StepResult>,
}

/// Where the load goes and how it signs its tokens.
pub struct Target {
    /// The router's base URL, e.g. `http://127.0.0.1:7000`.
    pub router_url: String,
    /// The deployment's HS256 secret; tokens for users and services are minted with it.
    pub secret: String,
}

fn parse_rate(text: &str) -> Result<f64, String> {
    let rate: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a number of ops/s"))?;
    if !(rate.is_finite() && rate > 0.0) {
        return Err(format!("the rate must be positive, not {text}"));
    }
    Ok(rate)
}

fn parse_positive_duration(text: &str) -> Result<Duration, String> {
    let d = parse_duration(text)?;
    if d.is_zero() {
        return Err("must be longer than zero".into());
    }
    Ok(d)
}

/// What the progress bar shows, updated by the operations as they finish.
#[derive(Default)]
struct Live {
    done: AtomicU64,
    errors: AtomicU64,
    dropped: AtomicU64,
}

/// Runs the load and returns what it measured. Errors only when the run cannot start (bad
/// arguments, seeding the pool failed); errors of the load itself are in the report.
pub async fn run(args: &LoadArgs, target: &Target) -> anyhow::Result<Report> {
    run_with(args, target, Options::default()).await
}

/// [`run`] with a drill's [`Options`].
pub async fn run_with(
    args: &LoadArgs,
    target: &Target,
    mut opts: Options,
) -> anyhow::Result<Report> {
    let schedule =
        Schedule::new(args.rate, args.warmup, args.duration).map_err(anyhow::Error::msg)?;
    let needs_pool = args.mix.weight(OpKind::Claim) > 0 || args.mix.weight(OpKind::Read) > 0;
    if needs_pool && args.initial_packets == 0 {
        bail!("--mix has claims or reads, so --initial-packets must be at least 1");
    }
    let seed = args.seed.unwrap_or_else(rand::random);
    let users = args.users as usize;
    let max_in_flight = args.max_in_flight as usize;
    let run_s = (args.warmup + args.duration + args.timeout * 4).as_secs();
    let mut api = Api::new(
        &target.router_url,
        target.secret.as_bytes(),
        users,
        args.timeout,
        run_s + 3600,
        max_in_flight,
    )?;
    if let Some(prefix) = &opts.user_prefix {
        api = api.with_user_prefix(prefix);
    }
    if let Some(keys) = &opts.keys {
        api = api.with_keys(keys.clone());
    }
    if let Some(retry) = opts.retry {
        api = api.with_retry(retry);
    }
    if let Some(ledger) = &opts.ledger {
        api = api.with_ledger(ledger.clone());
    }
    let api = Arc::new(api);
    let pool = Arc::new(Pool::new(POOL_CAPACITY));
    seed_pool(&api, &pool, args.initial_packets, schedule.total())
        .await
        .with_context(|| format!("seeding the packet pool through {}", target.router_url))?;

    let info = RunInfo {
        router_url: target.router_url.clone(),
        target_rate: args.rate,
        duration_s: args.duration.as_secs_f64(),
        warmup_s: args.warmup.as_secs_f64(),
        mix: args.mix.to_string(),
        users,
        seed,
        max_in_flight,
        timeout_s: args.timeout.as_secs_f64(),
    };
    let (tx, mut rx) = mpsc::unbounded_channel::<Sample>();
    let collector = tokio::spawn(async move {
        let mut recorder = Recorder::new();
        while let Some(sample) = rx.recv().await {
            recorder.record(sample);
        }
        recorder
    });
    let live = Arc::new(Live::default());
    let in_flight = Arc::new(Semaphore::new(max_in_flight));
    let bar = progress_bar(args, schedule.total());
    let start = Instant::now();
    if let Some(tell) = opts.started.take() {
        let _ = tell.send(start);
    }
    let stop = opts.stop.clone().unwrap_or_default();
    let ticker = tokio::spawn(tick(
        bar.clone(),
        live.clone(),
        in_flight.clone(),
        max_in_flight,
        start,
    ));

    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut stopped_at = None;
    for i in 0..schedule.total() {
        let due = start + schedule.due(i);
        if due > Instant::now() {
            tokio::select! {
                _ = tokio::time::sleep_until(due) => {}
                _ = stop.cancelled() => {}
            }
        }
        if stop.is_cancelled() {
            stopped_at = Some(i);
            break;
        }
        // Draw before looking at the bound, so the sequence of choices does not depend on
        // how fast the deployment answers.
        let kind = args.mix.pick(rng.gen_range(0..args.mix.total()));
        let plan = Plan::draw(kind, i, users, &mut rng);
        let measured = schedule.is_measured(i);
        let Ok(permit) = in_flight.clone().try_acquire_owned() else {
            live.dropped.fetch_add(1, Ordering::Relaxed);
            let _ = tx.send(Sample::Dropped { kind, measured });
            continue;
        };
        let (api, pool, live, tx) = (api.clone(), pool.clone(), live.clone(), tx.clone());
        let tap = opts.tap.clone();
        tokio::spawn(async move {
            let launched = Instant::now();
            let steps = flows::run_op(&api, &pool, &plan).await;
            live.done.fetch_add(1, Ordering::Relaxed);
            if steps.iter().any(|s| s.class == Class::Error) {
                live.errors.fetch_add(1, Ordering::Relaxed);
            }
            if let Some(tap) = tap {
                let _ = tap.send(Finished {
                    kind,
                    scheduled: due,
                    measured,
                    steps: steps.clone(),
                });
            }
            let _ = tx.send(Sample::Done {
                kind,
                scheduled: due,
                launched,
                measured,
                steps,
            });
            drop(permit);
        });
    }
    drop(tx);
    // Every launched operation holds a permit until its sample is sent; requests time out,
    // so this wait is bounded.
    let _all_back = in_flight
        .acquire_many(args.max_in_flight)
        .await
        .context("the in-flight semaphore is never closed")?;
    let recorder = collector.await.context("the recorder task panicked")?;
    ticker.abort();
    bar.finish_and_clear();
    let mut report = recorder.finish(info, start + schedule.warmup());
    // An early stop schedules no more: what was due before it is what counts.
    let due = stopped_at.map_or(schedule.total(), |i| i);
    report.set_scheduled(due.saturating_sub(schedule.warmup_ops()));
    Ok(report)
}

/// Creates `count` paid packets of 100 shares, concurrently, outside the measurement.
async fn seed_pool(
    api: &Arc<Api>,
    pool: &Arc<Pool>,
    count: u32,
    first_n: u64,
) -> anyhow::Result<()> {
    let mut tasks = tokio::task::JoinSet::new();
    for k in 0..u64::from(count) {
        let (api, pool) = (api.clone(), pool.clone());
        tasks.spawn(async move {
            let plan = Plan {
                kind: OpKind::Send,
                n: first_n + k,
                user: (k as usize) % api.users(),
                pick: 0,
                count: 100,
                amount: 20_000,
                read: 0,
            };
            flows::send(&api, &pool, &plan, 100, 20_000).await
        });
    }
    while let Some(steps) = tasks.join_next().await {
        let steps = steps.context("a seeding task panicked")?;
        if let Some(bad) = steps.iter().find(|s| s.class != Class::Ok) {
            bail!(
                "{} answered {} {}",
                bad.step.label(),
                bad.answer,
                bad.code.as_deref().unwrap_or("")
            );
        }
    }
    Ok(())
}

/// A bar on stderr, or a hidden one when stderr is not a terminal or the report is JSON.
fn progress_bar(args: &LoadArgs, total: u64) -> ProgressBar {
    if args.json || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:20}] {pos}/{len} due  {msg}")
            .expect("static template")
            .progress_chars("=> "),
    );
    bar
}

async fn tick(
    bar: ProgressBar,
    live: Arc<Live>,
    in_flight: Arc<Semaphore>,
    max_in_flight: usize,
    start: Instant,
) {
    let mut every = tokio::time::interval(Duration::from_millis(250));
    loop {
        every.tick().await;
        let done = live.done.load(Ordering::Relaxed);
        let dropped = live.dropped.load(Ordering::Relaxed);
        let running = max_in_flight - in_flight.available_permits();
        let elapsed = start.elapsed().as_secs_f64().max(1e-3);
        bar.set_position(done + dropped + running as u64);
        bar.set_message(format!(
            "{:.0}/s done  {running} in flight  {} errors  {dropped} dropped",
            done as f64 / elapsed,
            live.errors.load(Ordering::Relaxed),
        ));
    }
}

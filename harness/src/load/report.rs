//! What a run measured: HDR histograms per operation kind, per request and overall, outcome
//! counts by request, status and code; and the [`Report`] built from them, printed as a table
//! (`Display`) or as JSON (`Serialize`).

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::time::Instant;

use super::flows::{Class, Step, StepResult};
use super::parse::OpKind;
use crate::api::Answer;

/// Latencies are recorded in µs up to this bound (an hour); longer ones are clamped.
const MAX_US: u64 = 3_600_000_000;

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_US, 3).expect("static histogram bounds are valid")
}

fn record(h: &mut Histogram<u64>, latency: Duration) {
    let us = u64::try_from(latency.as_micros()).unwrap_or(MAX_US);
    h.saturating_record(us.clamp(1, MAX_US));
}

/// What the driver hands the recorder for every due operation.
#[derive(Debug)]
pub enum Sample {
    /// The operation ran; `scheduled` is when it was due, `steps` its requests in order.
    Done {
        kind: OpKind,
        scheduled: Instant,
        /// When its task began to run: later than `scheduled` by this generator's own lag.
        launched: Instant,
        measured: bool,
        steps: Vec<StepResult>,
    },
    /// The operation was due but `--max-in-flight` operations were already running.
    Dropped { kind: OpKind, measured: bool },
}

/// Accumulates the measured samples; warm-up samples count only toward progress.
pub struct Recorder {
    ops: BTreeMap<OpKind, Histogram<u64>>,
    steps: BTreeMap<Step, Histogram<u64>>,
    all: Histogram<u64>,
    /// From due to the task's start: the generator's own share of every latency.
    lag: Histogram<u64>,
    outcomes: BTreeMap<(Step, Answer, Option<String>), (Class, u64)>,
    dropped: BTreeMap<OpKind, u64>,
    completed: u64,
    ok: u64,
    expected: u64,
    errors: u64,
    /// When the last measured operation finished; stretches the achieved-rate window when
    /// the answers come late.
    last_finish: Option<Instant>,
}

impl Recorder {
    pub fn new() -> Recorder {
        Recorder {
            ops: BTreeMap::new(),
            steps: BTreeMap::new(),
            all: histogram(),
            lag: histogram(),
            outcomes: BTreeMap::new(),
            dropped: BTreeMap::new(),
            completed: 0,
            ok: 0,
            expected: 0,
            errors: 0,
            last_finish: None,
        }
    }

    /// Records one sample. Latency of an operation counts from when it was *due*, so time
    /// spent waiting to be launched (a stalled generator, a full in-flight bound) is counted,
    /// not omitted. The first request of an operation also counts from the due time; later
    /// requests of the same flow from their own start.
    pub fn record(&mut self, sample: Sample) {
        match sample {
            Sample::Dropped { kind, measured } => {
                if measured {
                    *self.dropped.entry(kind).or_default() += 1;
                }
            }
            Sample::Done {
                kind,
                scheduled,
                launched,
                measured,
                steps,
            } => {
                if !measured {
                    return;
                }
                record(&mut self.lag, launched.saturating_duration_since(scheduled));
                let Some(last) = steps.last() else {
                    return;
                };
                let finished = last.finished;
                let latency = finished.saturating_duration_since(scheduled);
                record(self.ops.entry(kind).or_insert_with(histogram), latency);
                record(&mut self.all, latency);
                self.completed += 1;
                self.last_finish = Some(self.last_finish.map_or(finished, |t| t.max(finished)));
                let class = steps.iter().map(|s| s.class).max().unwrap_or(Class::Ok);
                match class {
                    Class::Ok => self.ok += 1,
                    Class::Expected => self.expected += 1,
                    Class::Error => self.errors += 1,
                }
                for (i, s) in steps.into_iter().enumerate() {
                    let from = if i == 0 { scheduled } else { s.started };
                    record(
                        self.steps.entry(s.step).or_insert_with(histogram),
                        s.finished.saturating_duration_since(from),
                    );
                    let entry = self
                        .outcomes
                        .entry((s.step, s.answer, s.code))
                        .or_insert((s.class, 0));
                    entry.1 += 1;
                }
            }
        }
    }

    /// The report; `measure_start` is when the measured window opened.
    pub fn finish(self, run: RunInfo, measure_start: Instant) -> Report {
        let window = run.duration_s;
        let stretched = self
            .last_finish
            .map(|t| t.saturating_duration_since(measure_start).as_secs_f64())
            .unwrap_or(0.0);
        let achieved_window = window.max(stretched);
        let dropped: u64 = self.dropped.values().sum();
        let mut operations: Vec<LatencyRow> = OpKind::ALL
            .into_iter()
            .filter_map(|k| {
                let h = self.ops.get(&k);
                let dropped = self.dropped.get(&k).copied().unwrap_or(0);
                (h.is_some() || dropped > 0).then(|| LatencyRow::of(k.name(), h, dropped))
            })
            .collect();
        operations.push(LatencyRow::of("all", Some(&self.all), dropped));
        let requests = self
            .steps
            .iter()
            .map(|(step, h)| LatencyRow::of(step.label(), Some(h), 0))
            .collect();
        let mut outcomes: Vec<OutcomeRow> = self
            .outcomes
            .into_iter()
            .map(|((step, answer, code), (class, count))| OutcomeRow {
                class,
                request: step.label(),
                status: answer.to_string(),
                code,
                count,
            })
            .collect();
        outcomes.sort_by(|a, b| b.class.cmp(&a.class).then(b.count.cmp(&a.count)));
        Report {
            run,
            scheduled: 0,
            launched: self.completed,
            dropped,
            completed: self.completed,
            ok: self.ok,
            expected: self.expected,
            errors: self.errors,
            achieved_rate: self.completed as f64 / achieved_window.max(1e-9),
            achieved_window_s: achieved_window,
            launch_lag: LatencyRow::of("launch lag", Some(&self.lag), 0),
            operations,
            requests,
            outcomes,
        }
    }
}

/// How the run was asked for, echoed in the report.
#[derive(Clone, Debug, Serialize)]
pub struct RunInfo {
    pub router_url: String,
    /// ops/s asked for.
    pub target_rate: f64,
    /// The measured window, in seconds.
    pub duration_s: f64,
    /// Unmeasured warm-up before it, in seconds.
    pub warmup_s: f64,
    pub mix: String,
    pub users: usize,
    pub seed: u64,
    pub max_in_flight: usize,
    pub timeout_s: f64,
}

/// Latency percentiles of one row, in milliseconds.
#[derive(Clone, Debug, Serialize)]
pub struct LatencyRow {
    pub name: &'static str,
    /// Operations (or requests) that completed in the measured window.
    pub count: u64,
    /// Due but never launched because `--max-in-flight` was reached (operations only).
    pub dropped: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

impl LatencyRow {
    fn of(name: &'static str, h: Option<&Histogram<u64>>, dropped: u64) -> LatencyRow {
        let ms = |us: u64| us as f64 / 1000.0;
        match h.filter(|h| !h.is_empty()) {
            Some(h) => LatencyRow {
                name,
                count: h.len(),
                dropped,
                p50_ms: ms(h.value_at_quantile(0.5)),
                p99_ms: ms(h.value_at_quantile(0.99)),
                p999_ms: ms(h.value_at_quantile(0.999)),
                max_ms: ms(h.max()),
            },
            None => LatencyRow {
                name,
                count: 0,
                dropped,
                p50_ms: 0.0,
                p99_ms: 0.0,
                p999_ms: 0.0,
                max_ms: 0.0,
            },
        }
    }
}

/// Requests with one answer: a status (or `timeout` / `transport`) and a problem `code`.
#[derive(Clone, Debug, Serialize)]
pub struct OutcomeRow {
    pub class: Class,
    pub request: &'static str,
    pub status: String,
    /// The problem+json `code`; `bad_body` when a success lacked a field the flow needed.
    pub code: Option<String>,
    pub count: u64,
}

/// The result of `cellctl load`. Every count and percentile covers the measured window only
/// (operations due after the warm-up).
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub run: RunInfo,
    /// Operations due in the measured window: rate × duration, whatever the answers.
    pub scheduled: u64,
    /// Of those, launched (the rest were dropped).
    pub launched: u64,
    /// Due but not launched because `--max-in-flight` operations were running.
    pub dropped: u64,
    /// Launched and finished (every launched operation finishes: requests time out).
    pub completed: u64,
    /// Operations whose every request succeeded.
    pub ok: u64,
    /// Operations that ended in an expected domain outcome (see the outcomes).
    pub expected: u64,
    /// Operations with an error: a 5xx, an unexpected 4xx, a timeout, a transport error.
    pub errors: u64,
    /// Completed operations per second of the measured window, stretched to the last answer
    /// when answers came after it.
    pub achieved_rate: f64,
    pub achieved_window_s: f64,
    /// From each operation's due time to the start of its task: this generator's own delay,
    /// included in every latency below. When it is large, the client machine is the bottleneck.
    pub launch_lag: LatencyRow,
    /// Per operation kind, then `all`; latency from each operation's due time.
    pub operations: Vec<LatencyRow>,
    /// Per request; the first request of a flow from the due time, later ones from their start.
    pub requests: Vec<LatencyRow>,
    /// Errors first, then expected outcomes, then successes; most frequent first in each.
    pub outcomes: Vec<OutcomeRow>,
}

impl Report {
    /// Whether the run saw any error or dropped any operation; `cellctl load` then exits
    /// nonzero.
    pub fn failed(&self) -> bool {
        self.errors > 0 || self.dropped > 0
    }

    pub(super) fn set_scheduled(&mut self, scheduled: u64) {
        self.scheduled = scheduled;
        self.launched = scheduled - self.dropped;
    }
}

fn latency_table(f: &mut fmt::Formatter<'_>, head: &str, rows: &[LatencyRow]) -> fmt::Result {
    let width = rows
        .iter()
        .map(|r| r.name.len())
        .max()
        .unwrap_or(0)
        .max(head.len());
    writeln!(
        f,
        "  {head:<width$}  {:>8} {:>8} {:>9} {:>9} {:>9} {:>9}",
        "count", "dropped", "p50", "p99", "p99.9", "max"
    )?;
    for r in rows {
        writeln!(
            f,
            "  {:<width$}  {:>8} {:>8} {:>9.2} {:>9.2} {:>9.2} {:>9.2}",
            r.name, r.count, r.dropped, r.p50_ms, r.p99_ms, r.p999_ms, r.max_ms
        )?;
    }
    Ok(())
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let run = &self.run;
        writeln!(
            f,
            "cellctl load → {}: {} ops/s for {}s (+{}s warm-up), mix {}, {} users, seed {}",
            run.router_url,
            run.target_rate,
            run.duration_s,
            run.warmup_s,
            run.mix,
            run.users,
            run.seed
        )?;
        writeln!(
            f,
            "achieved {:.1} ops/s (target {}) over {:.1}s; scheduled {}, launched {}, dropped {}, completed {}",
            self.achieved_rate,
            run.target_rate,
            self.achieved_window_s,
            self.scheduled,
            self.launched,
            self.dropped,
            self.completed
        )?;
        writeln!(
            f,
            "operations: {} ok, {} expected outcomes, {} errors",
            self.ok, self.expected, self.errors
        )?;
        let lag = &self.launch_lag;
        writeln!(
            f,
            "launch lag of this generator (included below): p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            lag.p50_ms, lag.p99_ms, lag.max_ms
        )?;
        writeln!(f, "\nlatency from each operation's due time (ms)")?;
        latency_table(f, "operation", &self.operations)?;
        writeln!(
            f,
            "\nper request (ms; a flow's first request from the due time, the next from its own start)"
        )?;
        latency_table(f, "request", &self.requests)?;
        writeln!(f, "\noutcomes (requests)")?;
        let width = self
            .outcomes
            .iter()
            .map(|o| o.request.len())
            .max()
            .unwrap_or(0);
        for o in &self.outcomes {
            let class = match o.class {
                Class::Ok => "ok",
                Class::Expected => "expected",
                Class::Error => "ERROR",
            };
            writeln!(
                f,
                "  {class:<8}  {:<width$}  {:<9}  {:<22}  {:>8}",
                o.request,
                o.status,
                o.code.as_deref().unwrap_or("-"),
                o.count
            )?;
        }
        if self.failed() {
            write!(
                f,
                "\nFAILED: {} operations with errors, {} dropped at --max-in-flight {}",
                self.errors, self.dropped, run.max_in_flight
            )
        } else {
            write!(f, "\nno errors, nothing dropped")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(
        step: Step,
        started: Instant,
        finished: Instant,
        answer: Answer,
        code: Option<&str>,
        class: Class,
    ) -> StepResult {
        StepResult {
            step,
            started,
            finished,
            answer,
            code: code.map(str::to_owned),
            class,
            attempt: 0,
            keys: Vec::new(),
        }
    }

    fn info() -> RunInfo {
        RunInfo {
            router_url: "http://r".into(),
            target_rate: 10.0,
            duration_s: 1.0,
            warmup_s: 0.0,
            mix: "claim=1".into(),
            users: 1,
            seed: 1,
            max_in_flight: 8,
            timeout_s: 10.0,
        }
    }

    #[test]
    fn latency_counts_from_the_due_time_and_the_worst_request_classes_the_op() {
        let due = Instant::now();
        let ms = Duration::from_millis;
        let mut rec = Recorder::new();
        // A send due at 0, launched late at 40 ms, answered at 50 ms; its callback 50→60 ms.
        rec.record(Sample::Done {
            kind: OpKind::Send,
            scheduled: due,
            launched: due + ms(40),
            measured: true,
            steps: vec![
                step(
                    Step::SendC2c,
                    due + ms(40),
                    due + ms(50),
                    Answer::Status(201),
                    None,
                    Class::Ok,
                ),
                step(
                    Step::Callback,
                    due + ms(50),
                    due + ms(60),
                    Answer::Status(503),
                    Some("degraded"),
                    Class::Error,
                ),
            ],
        });
        rec.record(Sample::Done {
            kind: OpKind::Claim,
            scheduled: due,
            launched: due,
            measured: true,
            steps: vec![step(
                Step::Claim,
                due,
                due + ms(5),
                Answer::Status(410),
                Some("packet_exhausted"),
                Class::Expected,
            )],
        });
        rec.record(Sample::Dropped {
            kind: OpKind::Claim,
            measured: true,
        });
        rec.record(Sample::Dropped {
            kind: OpKind::Claim,
            measured: false,
        });
        let mut report = rec.finish(info(), due);
        report.set_scheduled(3);
        assert_eq!(
            (report.scheduled, report.launched, report.dropped),
            (3, 2, 1)
        );
        assert_eq!((report.ok, report.expected, report.errors), (0, 1, 1));
        assert!(report.failed());
        let send = report.operations.iter().find(|r| r.name == "send").unwrap();
        assert!((send.max_ms - 60.0).abs() < 0.1, "{send:?}");
        assert!(
            (report.launch_lag.max_ms - 40.0).abs() < 0.1,
            "{:?}",
            report.launch_lag
        );
        let c2c = report
            .requests
            .iter()
            .find(|r| r.name == Step::SendC2c.label())
            .unwrap();
        assert!((c2c.max_ms - 50.0).abs() < 0.1, "{c2c:?}");
        let callback = report
            .requests
            .iter()
            .find(|r| r.name == Step::Callback.label())
            .unwrap();
        assert!((callback.max_ms - 10.0).abs() < 0.1, "{callback:?}");
        assert_eq!(report.outcomes[0].class, Class::Error);
        assert_eq!(report.outcomes[0].code.as_deref(), Some("degraded"));
        let claim = report
            .operations
            .iter()
            .find(|r| r.name == "claim")
            .unwrap();
        assert_eq!((claim.count, claim.dropped), (1, 1));
        let text = report.to_string();
        assert!(text.contains("FAILED"), "{text}");
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["outcomes"][0]["class"], "error");
        assert_eq!(json["dropped"], 1);
    }

    #[test]
    fn warmup_samples_are_not_reported() {
        let due = Instant::now();
        let mut rec = Recorder::new();
        rec.record(Sample::Done {
            kind: OpKind::Read,
            scheduled: due,
            launched: due,
            measured: false,
            steps: vec![step(
                Step::ReadWallet,
                due,
                due + Duration::from_millis(1),
                Answer::Transport,
                None,
                Class::Error,
            )],
        });
        let report = rec.finish(info(), due);
        assert_eq!((report.completed, report.errors), (0, 0));
        assert!(report.outcomes.is_empty());
        assert!(!report.failed());
    }
}

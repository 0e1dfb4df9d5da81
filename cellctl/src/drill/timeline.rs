//! What the drill's load saw, request by request, and what is computed from it: the
//! per-second series (success ratio, errors by code, p50/p99) of the affected and the
//! healthy shards, the baseline before the fault, the blast radius after it, and each
//! affected shard's recovery time. Pure: no I/O, no clock; every instant is relative to the
//! load's start.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use harness::load::{Class, StepResult};
use hdrhistogram::Histogram;
use serde::Serialize;
use topology::{CellMap, MintedId, Slot};

/// One request (one attempt: a client retry is another), as the drill keeps it.
#[derive(Clone, Debug)]
pub struct Rec {
    /// The shard its routing key belongs to.
    pub shard: String,
    /// Every shard it touched: its routing key's and those of the other keys it names (a
    /// grant's id is reserved in the shard of its own slot, synchronously).
    pub touched: Vec<String>,
    /// From the load's start.
    pub started: Duration,
    pub finished: Duration,
    /// A success or an outcome the API promises under contention (a repeat claim, 410).
    pub ok: bool,
    /// Whether it changes state (grants, sends, callbacks, claims).
    pub write: bool,
    /// `status code` (e.g. `503 cell_unavailable`), `timeout` or `transport`; for errors.
    pub error: Option<String>,
}

impl Rec {
    /// Whether it touched any of `shards` (then it counts as affected).
    pub fn hits(&self, shards: &BTreeSet<String>) -> bool {
        self.touched.iter().any(|s| shards.contains(s))
    }

    pub fn latency(&self) -> Duration {
        self.finished.saturating_sub(self.started)
    }
}

/// The shard of the slot a routing key (a uid or a minted id) hashes to, as the router
/// decides it.
pub fn shard_of(map: &CellMap, key: &str) -> String {
    let slot = match MintedId::parse_any(key) {
        Ok(id) => id.slot(),
        Err(_) => Slot::of(key.as_bytes()),
    };
    map.owner(slot).shard.to_string()
}

/// Turns a finished step into a record; `None` for a step without a routing key.
pub fn rec_of(map: &CellMap, origin: tokio::time::Instant, s: &StepResult) -> Option<Rec> {
    let key = s.keys.first()?;
    let ok = matches!(s.class, Class::Ok | Class::Expected);
    Some(Rec {
        shard: shard_of(map, key),
        touched: s.keys.iter().map(|k| shard_of(map, k)).collect(),
        started: s.started.saturating_duration_since(origin),
        finished: s.finished.saturating_duration_since(origin),
        ok,
        write: s.step.is_write(),
        error: (!ok).then(|| match &s.code {
            Some(code) => format!("{} {code}", s.answer),
            None => s.answer.to_string(),
        }),
    })
}

/// One second of one group of shards.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Bucket {
    /// Requests started in this second.
    pub requests: u64,
    pub ok: u64,
    /// `ok / requests`; `null` for a second without requests.
    pub success_ratio: Option<f64>,
    pub errors_by_code: BTreeMap<String, u64>,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

/// One second of the run.
#[derive(Clone, Debug, Serialize)]
pub struct Second {
    /// Seconds from the load's start.
    pub t: u64,
    pub affected: Bucket,
    pub healthy: Bucket,
}

/// Aggregates of a set of requests.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Stats {
    pub requests: u64,
    pub ok: u64,
    pub success_ratio: Option<f64>,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub errors_by_code: BTreeMap<String, u64>,
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("static histogram bounds")
}

fn ms(h: &Histogram<u64>, q: f64) -> Option<f64> {
    (!h.is_empty()).then(|| h.value_at_quantile(q) as f64 / 1_000.0)
}

/// Stats of the records `keep` selects.
pub fn stats<'a>(recs: impl Iterator<Item = &'a Rec>) -> Stats {
    let mut h = histogram();
    let mut s = Stats::default();
    for r in recs {
        s.requests += 1;
        if r.ok {
            s.ok += 1;
        }
        if let Some(code) = &r.error {
            *s.errors_by_code.entry(code.clone()).or_default() += 1;
        }
        h.saturating_record((r.latency().as_micros() as u64).max(1));
    }
    s.success_ratio = (s.requests > 0).then(|| s.ok as f64 / s.requests as f64);
    s.p50_ms = ms(&h, 0.5);
    s.p99_ms = ms(&h, 0.99);
    s
}

/// Per-second series of the affected and the healthy shards, by start second.
pub fn seconds(recs: &[Rec], affected: &BTreeSet<String>) -> Vec<Second> {
    let last = recs.iter().map(|r| r.started.as_secs()).max().unwrap_or(0);
    (0..=last)
        .map(|t| {
            let in_second = |r: &&Rec| r.started.as_secs() == t;
            let bucket = |want: bool| {
                let s = stats(
                    recs.iter()
                        .filter(in_second)
                        .filter(|r| r.hits(affected) == want),
                );
                Bucket {
                    requests: s.requests,
                    ok: s.ok,
                    success_ratio: s.success_ratio,
                    errors_by_code: s.errors_by_code,
                    p50_ms: s.p50_ms,
                    p99_ms: s.p99_ms,
                }
            };
            Second {
                t,
                affected: bucket(true),
                healthy: bucket(false),
            }
        })
        .collect()
}

/// Recovery time of `shard`: from the fault to the end of the first successful request of
/// the shard's users that started after it — a write when the shard had any (reads may be
/// served while writes are not), else any request. `None`: no such success in the run.
pub fn rto(recs: &[Rec], shard: &str, fault: Duration) -> Option<Duration> {
    let after = || {
        recs.iter()
            .filter(move |r| r.shard == shard && r.started >= fault && r.ok)
    };
    let had_writes = recs
        .iter()
        .any(|r| r.shard == shard && r.write && r.started >= fault);
    after()
        .filter(|r| r.write || !had_writes)
        .map(|r| r.finished.saturating_sub(fault))
        .min()
}

/// The guard's view: the success ratio of the healthy shards' requests that finished in the
/// window `[from, to)`, and how many there were.
pub fn healthy_window(
    recs: &[Rec],
    affected: &BTreeSet<String>,
    from: Duration,
    to: Duration,
) -> (u64, f64) {
    let (mut n, mut ok) = (0u64, 0u64);
    for r in recs
        .iter()
        .filter(|r| !r.hits(affected) && r.finished >= from && r.finished < to)
    {
        n += 1;
        if r.ok {
            ok += 1;
        }
    }
    (n, if n == 0 { 1.0 } else { ok as f64 / n as f64 })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(shard: &str, started_ms: u64, latency_ms: u64, ok: bool, write: bool) -> Rec {
        Rec {
            shard: shard.into(),
            touched: vec![shard.into()],
            started: Duration::from_millis(started_ms),
            finished: Duration::from_millis(started_ms + latency_ms),
            ok,
            write,
            error: (!ok).then(|| "503 cell_unavailable".into()),
        }
    }

    #[test]
    fn rto_is_the_first_write_success_started_after_the_fault() {
        let fault = Duration::from_millis(1_000);
        let recs = vec![
            rec("c1", 900, 50, true, true),     // before the fault
            rec("c1", 1_010, 5, true, false),   // a read served at once
            rec("c1", 1_020, 900, false, true), // a write failing
            rec("c1", 1_500, 700, true, true),  // the first write success, ends at 2_200
            rec("c1", 2_000, 100, true, true),  // ends at 2_100: earlier
            rec("c2", 1_100, 10, true, true),
        ];
        assert_eq!(rto(&recs, "c1", fault), Some(Duration::from_millis(1_100)));
        assert_eq!(rto(&recs, "c2", fault), Some(Duration::from_millis(110)));
        assert_eq!(rto(&recs, "c3", fault), None);
        // A shard with reads only after the fault: the first read counts.
        let reads = vec![rec("c4", 1_200, 30, true, false)];
        assert_eq!(rto(&reads, "c4", fault), Some(Duration::from_millis(230)));
    }

    #[test]
    fn seconds_split_affected_from_healthy_with_errors_by_code() {
        let affected: BTreeSet<String> = ["c1".to_string()].into();
        let recs = vec![
            rec("c1", 100, 10, true, true),
            rec("c1", 1_100, 10, false, true),
            rec("c2", 1_200, 20, true, false),
            rec("c2", 1_300, 40, true, false),
        ];
        let s = seconds(&recs, &affected);
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].affected.requests, 1);
        assert_eq!(s[0].healthy.requests, 0);
        assert_eq!(s[0].healthy.success_ratio, None);
        assert_eq!(s[1].affected.success_ratio, Some(0.0));
        assert_eq!(s[1].affected.errors_by_code["503 cell_unavailable"], 1);
        assert_eq!(s[1].healthy.success_ratio, Some(1.0));
        assert!(s[1].healthy.p99_ms.unwrap() >= 39.0);
        let (n, ratio) = healthy_window(
            &recs,
            &affected,
            Duration::from_millis(1_000),
            Duration::from_millis(2_000),
        );
        assert_eq!((n, ratio), (2, 1.0));
    }
}

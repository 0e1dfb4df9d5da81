//! Per-cell series for the console's charts, sampled from each cell's `/metrics`
//! (Prometheus text) into an in-memory ring over the last 15 minutes.
//!
//! A point covers the interval since the cell's previous sample: requests per second and
//! errors per second by status code (application routes only: `/v1/…` but neither the
//! internal replication routes nor the admin ones, which are the deployment's own traffic),
//! the p50 and p99 latency of the slowest application route that served requests in the
//! interval (the cell's summaries, which cover its last minute or so), and the mean claim
//! batch size. A counter that went down (the cell restarted) counts from zero.

use std::collections::{BTreeMap, VecDeque};

use serde::Serialize;

/// How often the console samples every cell's `/metrics`.
pub const INTERVAL_MS: u64 = 5_000;
/// Samples kept per cell: 15 minutes.
pub const KEEP: usize = (15 * 60 * 1000 / INTERVAL_MS) as usize;

/// One metric sample: name, labels, value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// Parses Prometheus text exposition; comment lines and malformed lines are skipped.
pub fn parse(text: &str) -> Vec<Sample> {
    text.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<Sample> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let name_end = line.find(['{', ' '])?;
    let name = line[..name_end].to_owned();
    let mut labels = BTreeMap::new();
    let mut rest = &line[name_end..];
    if let Some(body) = rest.strip_prefix('{') {
        let mut chars = body.char_indices().peekable();
        let mut end = None;
        loop {
            // key
            while chars.peek().is_some_and(|(_, c)| *c == ',' || *c == ' ') {
                chars.next();
            }
            match chars.peek() {
                Some((i, '}')) => {
                    end = Some(*i);
                    break;
                }
                None => break,
                _ => {}
            }
            let mut key = String::new();
            for (_, c) in chars.by_ref() {
                if c == '=' {
                    break;
                }
                key.push(c);
            }
            if chars.next().map(|(_, c)| c) != Some('"') {
                return None;
            }
            let mut value = String::new();
            let mut escaped = false;
            let mut closed = false;
            for (_, c) in chars.by_ref() {
                match (escaped, c) {
                    (true, 'n') => {
                        value.push('\n');
                        escaped = false;
                    }
                    (true, c) => {
                        value.push(c);
                        escaped = false;
                    }
                    (false, '\\') => escaped = true,
                    (false, '"') => {
                        closed = true;
                        break;
                    }
                    (false, c) => value.push(c),
                }
            }
            if !closed {
                return None;
            }
            labels.insert(key.trim().to_owned(), value);
        }
        rest = &body[end? + 1..];
    }
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some(Sample {
        name,
        labels,
        value,
    })
}

/// Whether a cell route is application traffic (what the charts count).
pub fn is_app_route(route: &str) -> bool {
    route.starts_with("/v1/")
        && !route.starts_with("/v1/internal/")
        && !route.starts_with("/v1/admin/")
}

/// The totals of one scrape that points are differences of.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Totals {
    /// Wall clock of the scrape, milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// Requests by status code, application routes only.
    pub requests: BTreeMap<u16, f64>,
    /// Requests by route (for the latency of routes that served in the interval).
    pub by_route: BTreeMap<String, f64>,
    /// (p50, p99) seconds by route.
    pub quantiles: BTreeMap<String, (f64, f64)>,
    pub batch_sum: f64,
    pub batch_count: f64,
}

impl Totals {
    pub fn of(samples: &[Sample], at_ms: u64) -> Totals {
        let mut t = Totals {
            at_ms,
            ..Totals::default()
        };
        let route = |s: &Sample| s.labels.get("route").cloned().unwrap_or_default();
        for s in samples {
            match s.name.as_str() {
                "redcell_http_requests_total" if is_app_route(&route(s)) => {
                    let code = s
                        .labels
                        .get("status")
                        .and_then(|c| c.parse().ok())
                        .unwrap_or(0);
                    *t.requests.entry(code).or_default() += s.value;
                    *t.by_route.entry(route(s)).or_default() += s.value;
                }
                "redcell_http_request_duration_seconds" if is_app_route(&route(s)) => {
                    let q = t.quantiles.entry(route(s)).or_insert((f64::NAN, f64::NAN));
                    match s.labels.get("quantile").map(String::as_str) {
                        Some("0.5") => q.0 = s.value,
                        Some("0.99") => q.1 = s.value,
                        _ => {}
                    }
                }
                "redcell_claim_batch_size_sum" => t.batch_sum += s.value,
                "redcell_claim_batch_size_count" => t.batch_count += s.value,
                _ => {}
            }
        }
        t
    }
}

/// One point of a cell's series. `None`: the cell did not answer (a gap in the chart).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Point {
    /// End of the interval, milliseconds since the Unix epoch.
    pub t: u64,
    pub rps: Option<f64>,
    /// Errors per second by status code (4xx and 5xx), over the interval.
    pub errors: BTreeMap<u16, f64>,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    /// Mean claim batch size over the interval (`None`: no batch ran).
    pub batch: Option<f64>,
}

impl Point {
    /// A gap: the cell did not answer at `t`.
    pub fn gap(t: u64) -> Point {
        Point {
            t,
            rps: None,
            errors: BTreeMap::new(),
            p50_ms: None,
            p99_ms: None,
            batch: None,
        }
    }

    /// The point of the interval between two scrapes of one cell.
    pub fn between(prev: &Totals, now: &Totals) -> Point {
        let secs = (now.at_ms.saturating_sub(prev.at_ms) as f64 / 1000.0).max(0.001);
        // A counter that went down restarted from zero with the process.
        let delta = |a: f64, b: f64| if b >= a { b - a } else { b };
        let mut total = 0.0;
        let mut errors = BTreeMap::new();
        for (code, n) in &now.requests {
            let d = delta(prev.requests.get(code).copied().unwrap_or(0.0), *n);
            total += d;
            if *code >= 400 && d > 0.0 {
                errors.insert(*code, d / secs);
            }
        }
        let mut p50: Option<f64> = None;
        let mut p99: Option<f64> = None;
        for (route, n) in &now.by_route {
            if delta(prev.by_route.get(route).copied().unwrap_or(0.0), *n) <= 0.0 {
                continue;
            }
            if let Some((a, b)) = now.quantiles.get(route) {
                if a.is_finite() {
                    p50 = Some(p50.map_or(*a, |p| p.max(*a)));
                }
                if b.is_finite() {
                    p99 = Some(p99.map_or(*b, |p| p.max(*b)));
                }
            }
        }
        let batches = delta(prev.batch_count, now.batch_count);
        let batch = (batches > 0.0).then(|| delta(prev.batch_sum, now.batch_sum) / batches);
        Point {
            t: now.at_ms,
            rps: Some(total / secs),
            errors,
            p50_ms: p50.map(|s| s * 1000.0),
            p99_ms: p99.map(|s| s * 1000.0),
            batch,
        }
    }

    /// The share of the interval's requests answered 5xx (`None` without requests).
    pub fn server_error_share(&self) -> Option<f64> {
        let rps = self.rps.filter(|r| *r > 0.0)?;
        let fivexx: f64 = self
            .errors
            .iter()
            .filter(|(c, _)| **c >= 500)
            .map(|(_, r)| r)
            .sum();
        Some(fivexx / rps)
    }
}

/// Every cell's ring of points and its last scrape's totals.
#[derive(Debug, Default)]
pub struct Rings {
    cells: BTreeMap<String, Ring>,
}

#[derive(Debug, Default)]
struct Ring {
    last: Option<Totals>,
    points: VecDeque<Point>,
}

impl Rings {
    /// Records a scrape of `cell` at `at_ms` (`None`: it did not answer).
    pub fn record(&mut self, cell: &str, at_ms: u64, scraped: Option<Totals>) {
        let ring = self.cells.entry(cell.to_owned()).or_default();
        let point = match (&ring.last, &scraped) {
            (Some(prev), Some(now)) => Some(Point::between(prev, now)),
            // The first answer (or the first after a gap) starts the next interval.
            (None, Some(_)) => None,
            (_, None) => Some(Point::gap(at_ms)),
        };
        ring.last = scraped;
        if let Some(p) = point {
            ring.points.push_back(p);
            while ring.points.len() > KEEP {
                ring.points.pop_front();
            }
        }
    }

    /// The newest point of `cell`.
    pub fn latest(&self, cell: &str) -> Option<&Point> {
        self.cells.get(cell).and_then(|r| r.points.back())
    }

    /// Every cell's points, oldest first.
    pub fn export(&self) -> BTreeMap<String, Vec<Point>> {
        self.cells
            .iter()
            .map(|(c, r)| (c.clone(), r.points.iter().cloned().collect()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# TYPE redcell_http_requests_total counter
redcell_http_requests_total{route="/v1/packets/{packet_id}/claims",status="200"} 90
redcell_http_requests_total{route="/v1/packets/{packet_id}/claims",status="503"} 10
redcell_http_requests_total{route="/v1/internal/replication/pull",status="200"} 5000
redcell_http_requests_total{route="/readyz",status="200"} 7
# TYPE redcell_http_request_duration_seconds summary
redcell_http_request_duration_seconds{route="/v1/packets/{packet_id}/claims",quantile="0.5"} 0.002
redcell_http_request_duration_seconds{route="/v1/packets/{packet_id}/claims",quantile="0.99"} 0.040
redcell_http_request_duration_seconds_sum{route="/v1/packets/{packet_id}/claims"} 1.5
redcell_http_request_duration_seconds_count{route="/v1/packets/{packet_id}/claims"} 100
redcell_http_request_duration_seconds{route="/v1/internal/replication/pull",quantile="0.99"} 9
redcell_claim_batch_size_sum 60
redcell_claim_batch_size_count 20
"#;

    #[test]
    fn parses_labels_values_and_escapes() {
        let s = parse(TEXT);
        assert_eq!(s.len(), 11);
        assert_eq!(s[0].labels["status"], "200");
        assert_eq!(s[0].value, 90.0);
        let odd = parse("m{a=\"x\\\"y,z\",b=\"\"} +Inf\nbroken{a=\"x} 1\nplain 3 1700000000\n");
        assert_eq!(odd.len(), 2);
        assert_eq!(odd[0].labels["a"], "x\"y,z");
        assert!(odd[0].value.is_infinite());
        assert_eq!(odd[1].value, 3.0);
    }

    #[test]
    fn points_count_app_routes_only_and_survive_restarts() {
        let t0 = Totals::of(&parse(TEXT), 0);
        assert_eq!(t0.requests[&200], 90.0, "internal and /readyz not counted");
        let later = TEXT
            .replace("status=\"200\"} 90", "status=\"200\"} 140")
            .replace("status=\"503\"} 10", "status=\"503\"} 20")
            .replace("_sum 60", "_sum 90")
            .replace("_count 20", "_count 25");
        let t1 = Totals::of(&parse(&later), 5_000);
        let p = Point::between(&t0, &t1);
        assert_eq!(p.rps, Some(12.0));
        assert_eq!(p.errors.get(&503), Some(&2.0));
        assert_eq!(p.p50_ms, Some(2.0));
        assert_eq!(
            p.p99_ms,
            Some(40.0),
            "the internal route's 9 s is not shown"
        );
        assert_eq!(p.batch, Some(6.0));
        assert!((p.server_error_share().unwrap() - 2.0 / 12.0).abs() < 1e-9);
        // Restarted: counters back near zero count from zero.
        let restarted = Totals::of(
            &parse("redcell_http_requests_total{route=\"/v1/x\",status=\"200\"} 5"),
            10_000,
        );
        assert_eq!(Point::between(&t1, &restarted).rps, Some(1.0));
    }

    #[test]
    fn the_ring_keeps_fifteen_minutes_with_gaps() {
        let mut rings = Rings::default();
        let totals = |at: u64, n: f64| Totals {
            at_ms: at,
            requests: BTreeMap::from([(200, n)]),
            ..Totals::default()
        };
        rings.record("c1", 0, Some(totals(0, 0.0)));
        assert!(
            rings.latest("c1").is_none(),
            "one scrape is no interval yet"
        );
        rings.record("c1", 5_000, None);
        assert_eq!(rings.latest("c1"), Some(&Point::gap(5_000)));
        rings.record("c1", 10_000, Some(totals(10_000, 10.0)));
        assert!(
            rings.latest("c1").unwrap().rps.is_none(),
            "a new interval starts"
        );
        for i in 3..(KEEP as u64 + 10) {
            rings.record("c1", i * 5_000, Some(totals(i * 5_000, i as f64 * 5.0)));
        }
        let all = &rings.export()["c1"];
        assert_eq!(all.len(), KEEP);
        assert_eq!(all.last().unwrap().rps, Some(1.0));
    }
}

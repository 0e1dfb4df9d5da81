//! The drill's report: the terminal summary (verdicts first), `report.json`, and
//! `report.html` — one self-contained page (no script, no stylesheet or image fetched: the
//! charts are inline SVG rendered here with `plotters`).

use std::fmt::{self, Write as _};
use std::path::Path;

use anyhow::Context;
use plotters::prelude::*;

use super::trial::Trial;
use super::Summary;

const AFFECTED: RGBColor = RGBColor(214, 39, 40);
const HEALTHY: RGBColor = RGBColor(31, 119, 180);
const MARK: RGBColor = RGBColor(90, 90, 90);

/// One line per trial, printed as it ends.
pub fn one_line(t: &Trial) -> String {
    let failed: Vec<&str> = t
        .verdicts
        .iter()
        .filter(|v| !v.ok)
        .map(|v| v.name.as_str())
        .collect();
    format!(
        "trial {} ({}, seed {}, target {}): {}{}; RTO {}; {} acknowledged, {} lost, {} duplicated",
        t.trial,
        t.scenario.name(),
        t.seed,
        t.target.as_deref().unwrap_or("-"),
        if t.ok { "ok" } else { "FAILED" },
        if failed.is_empty() {
            String::new()
        } else {
            format!(" ({})", failed.join(", "))
        },
        t.rto_ms.map_or("-".into(), |r| format!("{r} ms")),
        t.acknowledged,
        t.acknowledged_lost,
        t.duplicated
    )
}

fn yes(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "NO"
    }
}

fn mark(b: bool) -> &'static str {
    if b {
        "ok  "
    } else {
        "FAIL"
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.trials.iter().all(|t| t.refused.is_some()) {
            writeln!(
                f,
                "drill {}: REFUSED to inject (seed {})",
                self.scenario.name(),
                self.seed
            )?;
            for t in &self.trials {
                writeln!(
                    f,
                    "  trial {}: {}",
                    t.trial,
                    t.refused.as_deref().unwrap_or("")
                )?;
            }
            return Ok(());
        }
        writeln!(
            f,
            "drill {}: {} ({} trial{}, seed {})",
            self.scenario.name(),
            if self.ok {
                "every guarantee held"
            } else {
                "A GUARANTEE FAILED"
            },
            self.trials.len(),
            if self.trials.len() == 1 { "" } else { "s" },
            self.seed
        )?;
        writeln!(
            f,
            "  acknowledged lost   {:>8} of {} {}",
            self.acknowledged_lost,
            self.acknowledged,
            mark(self.acknowledged_lost == 0)
        )?;
        writeln!(
            f,
            "  duplicated          {:>8}       {}",
            self.duplicated,
            mark(self.duplicated == 0)
        )?;
        writeln!(f, "  money conserved     {:>8}", yes(self.money_conserved))?;
        writeln!(f, "  replicas equal      {:>8}", yes(self.replicas_equal))?;
        writeln!(
            f,
            "  healthy success     {:>8}",
            self.healthy_success_ratio
                .map_or("-".into(), |r| format!("{r:.4}"))
        )?;
        writeln!(
            f,
            "  RTO                 p50 {} ms, max {} ms",
            self.rto_ms.p50.map_or("-".into(), |v| v.to_string()),
            self.rto_ms.max.map_or("-".into(), |v| v.to_string())
        )?;
        for t in &self.trials {
            writeln!(f, "{}", one_line(t))?;
            if let Some(why) = &t.refused {
                writeln!(f, "  refused: {why}")?;
            }
            for v in &t.verdicts {
                writeln!(f, "  {} {}: {}", mark(v.ok), v.name, v.detail)?;
            }
            if !t.errors_by_code.is_empty() {
                let codes: Vec<String> = t
                    .errors_by_code
                    .iter()
                    .map(|(c, n)| format!("{c} ×{n}"))
                    .collect();
                writeln!(
                    f,
                    "  client-visible errors (every attempt): {}",
                    codes.join(", ")
                )?;
            }
        }
        Ok(())
    }
}

/// Writes `dir/report.json` and `dir/report.html`.
/// The directory name a drill's report is kept under in `DIR/drills/`: its start time (UTC,
/// digits only) and scenario, e.g. `20261207T180512Z-kill-cell`; only `[0-9A-Za-z-]`.
pub fn kept_name(summary: &Summary) -> String {
    let when: String = summary
        .started_at
        .split('.')
        .next()
        .unwrap_or_default()
        .trim_end_matches('Z')
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .collect();
    format!("{when}Z-{}", summary.scenario.name())
}

pub fn write(dir: &Path, summary: &Summary) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let json = dir.join("report.json");
    std::fs::write(&json, serde_json::to_vec_pretty(summary)?)
        .with_context(|| format!("writing {}", json.display()))?;
    let html = dir.join("report.html");
    std::fs::write(&html, page(summary)?).with_context(|| format!("writing {}", html.display()))?;
    Ok(())
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// One series of a chart.
struct Series {
    name: &'static str,
    color: RGBColor,
    points: Vec<(f64, f64)>,
}

/// A vertical mark: (x, label).
type Mark = (f64, String);

/// A line chart as an SVG string.
fn chart(
    title: &str,
    y_desc: &str,
    y_max: f64,
    x_max: f64,
    series: &[Series],
    marks: &[Mark],
) -> anyhow::Result<String> {
    let mut svg = String::new();
    draw(&mut svg, title, y_desc, y_max, x_max, series, marks)
        .map_err(|e| anyhow::anyhow!("drawing {title}: {e}"))?;
    Ok(svg)
}

fn draw(
    svg: &mut String,
    title: &str,
    y_desc: &str,
    y_max: f64,
    x_max: f64,
    series: &[Series],
    marks: &[Mark],
) -> Result<(), Box<dyn std::error::Error>> {
    let root = SVGBackend::with_string(svg, (880, 300)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut c = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..x_max.max(1.0), 0f64..y_max)?;
    c.configure_mesh()
        .x_desc("seconds from the load's start")
        .y_desc(y_desc)
        .light_line_style(WHITE)
        .draw()?;
    for (x, label) in marks {
        c.draw_series(LineSeries::new(
            [(*x, 0.0), (*x, y_max)],
            MARK.stroke_width(1),
        ))?;
        c.draw_series(std::iter::once(Text::new(
            label.clone(),
            (*x, y_max * 0.97),
            ("sans-serif", 12).into_font().color(&MARK),
        )))?;
    }
    for s in series {
        let color = s.color;
        c.draw_series(LineSeries::new(s.points.clone(), color.stroke_width(2)))?
            .label(s.name)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 18, y)], color.stroke_width(2)));
    }
    c.configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

/// The charts of one trial: success ratio, p99 and errors per second, affected vs healthy,
/// the fault and the recovery marked.
fn charts(t: &Trial) -> anyhow::Result<Vec<(String, usize)>> {
    let x_max = t.timeline.len() as f64;
    let mut marks: Vec<Mark> = Vec::new();
    if let Some(at) = t.fault_at_ms {
        let at = at as f64 / 1_000.0;
        marks.push((at, format!("fault ({})", t.scenario.name())));
        if let Some(rto) = t.rto_ms {
            marks.push((at + rto as f64 / 1_000.0, format!("recovered (+{rto} ms)")));
        }
    }
    // Each second's point at its middle.
    let pts = |f: &dyn Fn(&super::timeline::Second) -> Option<f64>| -> Vec<(f64, f64)> {
        t.timeline
            .iter()
            .filter_map(|s| f(s).map(|v| (s.t as f64 + 0.5, v)))
            .collect()
    };
    let mut out = Vec::new();
    let success = [
        Series {
            name: "affected shards",
            color: AFFECTED,
            points: pts(&|s| s.affected.success_ratio.map(|r| r * 100.0)),
        },
        Series {
            name: "healthy shards",
            color: HEALTHY,
            points: pts(&|s| s.healthy.success_ratio.map(|r| r * 100.0)),
        },
    ];
    let n: usize = success.iter().map(|s| s.points.len()).sum();
    out.push((
        chart(
            "Success rate per second",
            "% of requests",
            105.0,
            x_max,
            &success,
            &marks,
        )?,
        n,
    ));
    let p99 = [
        Series {
            name: "affected p99",
            color: AFFECTED,
            points: pts(&|s| s.affected.p99_ms),
        },
        Series {
            name: "healthy p99",
            color: HEALTHY,
            points: pts(&|s| s.healthy.p99_ms),
        },
    ];
    let top = p99
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .fold(1.0f64, f64::max)
        * 1.1;
    let n: usize = p99.iter().map(|s| s.points.len()).sum();
    out.push((
        chart(
            "Latency per second (p99 of each request)",
            "ms",
            top,
            x_max,
            &p99,
            &marks,
        )?,
        n,
    ));
    let errors = [
        Series {
            name: "affected errors",
            color: AFFECTED,
            points: pts(&|s| Some((s.affected.requests - s.affected.ok) as f64)),
        },
        Series {
            name: "healthy errors",
            color: HEALTHY,
            points: pts(&|s| Some((s.healthy.requests - s.healthy.ok) as f64)),
        },
    ];
    let top = errors
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .fold(1.0f64, f64::max)
        * 1.1;
    let n: usize = errors.iter().map(|s| s.points.len()).sum();
    out.push((
        chart(
            "Errors per second (every attempt)",
            "requests",
            top,
            x_max,
            &errors,
            &marks,
        )?,
        n,
    ));
    Ok(out)
}

const STYLE: &str = "body{font-family:sans-serif;margin:24px;color:#222;max-width:960px}\
table{border-collapse:collapse;margin:8px 0 16px}td,th{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}\
.ok{color:#176317;font-weight:bold}.fail{color:#b00;font-weight:bold}\
.banner{padding:10px 14px;font-size:20px;border-radius:4px}.banner.ok{background:#e3f4e3}.banner.fail{background:#fbe3e3}\
figure{margin:8px 0}code{background:#f3f3f3;padding:1px 4px}";

/// The whole page.
pub fn page(s: &Summary) -> anyhow::Result<String> {
    let mut h = String::new();
    let cls = |ok: bool| if ok { "ok" } else { "fail" };
    let _ = write!(
        h,
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Drill {}: {}</title><style>{STYLE}</style></head><body>",
        esc(s.scenario.name()),
        if s.ok { "passed" } else { "FAILED" }
    );
    let _ = write!(
        h,
        "<h1>Drill: {}</h1><p id=\"verdict\" class=\"banner {}\">{}</p>",
        esc(s.scenario.name()),
        cls(s.ok),
        if s.ok {
            "Every guarantee held."
        } else {
            "A guarantee FAILED."
        }
    );
    let _ = write!(
        h,
        "<table id=\"summary\"><tr><th>acknowledged</th><td>{}</td></tr>\
<tr><th>acknowledged lost</th><td class=\"{}\">{}</td></tr>\
<tr><th>duplicated</th><td class=\"{}\">{}</td></tr>\
<tr><th>money conserved</th><td class=\"{}\">{}</td></tr>\
<tr><th>replicas equal</th><td class=\"{}\">{}</td></tr>\
<tr><th>healthy success ratio (lowest)</th><td>{}</td></tr>\
<tr><th>RTO p50 / max</th><td>{} / {} ms</td></tr>\
<tr><th>trials</th><td>{}</td></tr>\
<tr><th>seed</th><td>{}</td></tr>\
<tr><th>load</th><td>{} ops/s for {} s, fault at {} s</td></tr>\
<tr><th>started</th><td>{}</td></tr>\
<tr><th>command</th><td><code>{}</code></td></tr></table>",
        s.acknowledged,
        cls(s.acknowledged_lost == 0),
        s.acknowledged_lost,
        cls(s.duplicated == 0),
        s.duplicated,
        cls(s.money_conserved),
        yes(s.money_conserved),
        cls(s.replicas_equal),
        yes(s.replicas_equal),
        s.healthy_success_ratio
            .map_or("-".into(), |r| format!("{r:.4}")),
        s.rto_ms.p50.map_or("-".into(), |v| v.to_string()),
        s.rto_ms.max.map_or("-".into(), |v| v.to_string()),
        s.trials.len(),
        s.seed,
        s.rate,
        s.duration_s,
        s.fault_at_s,
        esc(&s.started_at),
        esc(&s.command)
    );
    for t in &s.trials {
        let _ = write!(
            h,
            "<section class=\"trial\"><h2>Trial {} — target {} — <span class=\"{}\">{}</span></h2>",
            t.trial,
            esc(t.target.as_deref().unwrap_or("-")),
            cls(t.ok),
            if t.ok { "passed" } else { "FAILED" }
        );
        h.push_str(
            "<table class=\"verdicts\"><tr><th>guarantee</th><th>held</th><th>detail</th></tr>",
        );
        for v in &t.verdicts {
            let _ = write!(
                h,
                "<tr><td>{}</td><td class=\"{}\">{}</td><td>{}</td></tr>",
                esc(&v.name),
                cls(v.ok),
                if v.ok { "yes" } else { "NO" },
                esc(&v.detail)
            );
        }
        h.push_str("</table>");
        let _ = write!(
            h,
            "<p>Affected shards: {} · healthy shards: {}</p>",
            esc(&t.affected_shards.join(", ")),
            esc(&t.healthy_shards.join(", "))
        );
        if t.refused.is_none() {
            for (svg, points) in charts(t)? {
                let _ = write!(
                    h,
                    "<figure class=\"chart\" data-points=\"{points}\">{svg}</figure>"
                );
            }
        }
        h.push_str("<h3>Events</h3><table class=\"events\"><tr><th>at (ms)</th><th>what</th></tr>");
        for e in &t.events {
            let _ = write!(h, "<tr><td>{}</td><td>{}</td></tr>", e.at_ms, esc(&e.what));
        }
        h.push_str("</table>");
        if !t.errors_by_code.is_empty() {
            h.push_str("<h3>Errors by code (every attempt)</h3><table class=\"errors\">");
            for (code, n) in &t.errors_by_code {
                let _ = write!(h, "<tr><td>{}</td><td>{n}</td></tr>", esc(code));
            }
            h.push_str("</table>");
        }
        h.push_str("</section>");
    }
    h.push_str("</body></html>\n");
    Ok(h)
}

//! `cellctl drill` (DESIGN §6.6) on a whole `cellctl up` deployment: every scenario in a
//! short form passes every verdict (and leaves the deployment restored, green; isolate-cell
//! on a deployment started with `--fault-proxy`, the old primary fenced after its cut);
//! a deployment that acknowledges writes before its backup has them makes kill-cell report
//! lost operations and exit non-zero (the drill can fail); and the report page, opened in
//! headless Chromium, shows its charts with data and fetches nothing.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::browser::{browser, Driver};
use harness::procs::eventually;
use harness::up::{bin_dir, token, Backend, Up, SECRET};
use serde_json::{json, Value};
use tempfile::TempDir;

/// One deployment at a time in this file (the machine is small; each test runs its own).
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// `cellctl drill ARGS --json` on `up`: (exit code, the JSON summary).
fn drill(up: &Up, args: &[&str]) -> (i32, Value) {
    let started = Instant::now();
    let out = Command::new(bin_dir().join("cellctl"))
        .arg("--data-dir")
        .arg(&up.dir)
        .arg("drill")
        .args(args)
        .arg("--json")
        .env("REDCELL_AUTH_SECRET", SECRET)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run cellctl drill");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let code = out.status.code().unwrap_or(-1);
    let summary: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "cellctl drill {args:?} exited {code}: {e}\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    eprintln!(
        "drill {args:?}: exit {code} in {:.1} s; RTO {} ms; {} acknowledged, {} lost",
        started.elapsed().as_secs_f64(),
        summary["rto_ms"]["max"],
        summary["acknowledged"],
        summary["acknowledged_lost"]
    );
    (code, summary)
}

/// The short form every scenario runs in: 5 s of load at 40 ops/s, the fault after 2 s. The
/// baseline's p99 may be seconds on a busy two-core CI machine whose deployment has just
/// started: the steady-state bound on it is raised here (its refusal is the drill's, not
/// this test's subject; the error-ratio bound stays).
const SHORT: &[&str] = &[
    "--max-baseline-p99-ms",
    "5000",
    "--rate",
    "40",
    "--duration",
    "5s",
    "--fault-at",
    "2s",
    "--freeze-for",
    "3s",
    "--seed",
    "13",
];

/// [`drill`], run again (at most three times more, once green again) while it refuses
/// to inject: a refusal (a busy machine's baseline, a fresh deployment's first seconds) is
/// no verdict on the guarantees, and the test is about those.
async fn drill_injected(up: &Up, args: &[&str]) -> (i32, Value) {
    let mut tries = 0;
    loop {
        let (code, s) = drill(up, args);
        tries += 1;
        let refused = &s["trials"][0]["refused"];
        if refused.is_null() || tries == 4 {
            return (code, s);
        }
        eprintln!("the drill refused to inject ({refused}); again once green");
        tokio::time::sleep(Duration::from_secs(3)).await;
        green(up).await;
    }
}

/// Waits for `cellctl status` to be green (backups pulled): the drill refuses otherwise.
async fn green(up: &Up) {
    eventually("the deployment green", Duration::from_secs(60), || async {
        (up.cellctl(&["status", "--json"]).0 == 0).then_some(())
    })
    .await;
}

fn failed_verdicts(trial: &Value) -> Vec<&Value> {
    trial["verdicts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|v| v["ok"] != true)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_scenario_passes_every_verdict_in_its_short_form() {
    let _one = SERIAL.lock().await;
    let tmp = TempDir::new().unwrap();
    pass_short_forms(
        tmp.path(),
        &[
            "planned-failover",
            "kill-cell",
            "freeze-cell",
            "kill-backup",
            "kill-meta-leader",
            "kill-region",
        ],
    )
    .await;
    // The report page of the kill-cell drill, in a real browser.
    report_page_shows_charts_with_data(&tmp.path().join("report-kill-cell/report.html")).await;
}

/// isolate-cell (a test of its own: it alone needs `up --fault-proxy`): the primary cut off
/// from raft-meta and its backup loses nothing acknowledged, its shard fails over, and once
/// the cut ends it is fenced (421).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn isolate_cell_passes_every_verdict_in_its_short_form() {
    let _one = SERIAL.lock().await;
    let tmp = TempDir::new().unwrap();
    pass_short_forms(tmp.path(), &["isolate-cell"]).await;
}

/// Runs each of `scenarios` in its short form on a fresh deployment under `dir` and checks
/// every verdict held.
async fn pass_short_forms(dir: &Path, scenarios: &[&str]) {
    for &scenario in scenarios {
        let report = dir.join(format!("report-{scenario}"));
        let mut args = vec!["--scenario", scenario, "--report", report.to_str().unwrap()];
        if scenario == "isolate-cell" {
            // The cut lasts past raft-meta's down bound and the failover, and the load goes
            // on after it ends (the old primary reconnects and must be fenced).
            args.extend_from_slice(&SHORT[..2]);
            args.extend_from_slice(&[
                "--rate",
                "40",
                "--duration",
                "10s",
                "--fault-at",
                "2s",
                "--isolate-for",
                "5s",
                "--seed",
                "13",
            ]);
        } else {
            args.extend_from_slice(SHORT);
        }
        // One scenario runs two trials: the second runs on the deployment the first put
        // back, and the summary's RTO is over both.
        let trials = if scenario == "planned-failover" { 2 } else { 1 };
        if trials == 2 {
            args.extend_from_slice(&["--trials", "2"]);
        }
        // A fresh deployment each (it starts in seconds): raft-meta fails a shard over on
        // its own at most once a minute, and the previous drill's fail-back counts.
        let mut attempt = 0;
        let (code, s) = loop {
            attempt += 1;
            let backend = Backend::from_env();
            let mut extra = backend.args();
            if scenario == "isolate-cell" {
                // The TCP proxies that can cut a cell off (`cellctl up --fault-proxy`).
                extra.push("--fault-proxy");
            }
            let up = Up::start(&dir.join(format!("{scenario}-{attempt}")), &extra).await;
            green(&up).await;
            let (code, s) = drill_injected(&up, &args).await;
            // Only the blast radius (healthy shards' success and p99) depends on how busy
            // the machine is: a drill failing on it alone runs once more. Lost, duplicated,
            // money, replicas, recovery and the restore are never given a second chance.
            let failed = failed_verdicts(&s["trials"][0]);
            let only_blast = !failed.is_empty()
                && failed
                    .iter()
                    .all(|v| v["name"].as_str().is_some_and(|n| n.starts_with("healthy")));
            if !(only_blast && attempt == 1) {
                break (code, s);
            }
            eprintln!("{scenario}: only the blast radius failed ({failed:?}); once more");
        };
        let trial = &s["trials"][0];
        assert_eq!(
            (code, &s["ok"]),
            (0, &json!(true)),
            "{scenario}: failed verdicts {:#?}\nevents {:#}\nerrors {:#}",
            failed_verdicts(trial),
            trial["events"],
            trial["errors_by_code"]
        );
        assert_eq!(s["scenario"], scenario);
        let all = s["trials"].as_array().unwrap();
        assert_eq!(all.len(), trials, "{scenario}: trials");
        assert!(all.iter().all(|t| t["ok"] == true && t["restored"] == true));
        if scenario != "kill-meta-leader" {
            let rtos: Vec<u64> = all.iter().map(|t| t["rto_ms"].as_u64().unwrap()).collect();
            assert_eq!(s["rto_ms"]["max"], json!(rtos.iter().max().unwrap()), "{s}");
            assert_eq!(s["rto_ms"]["p50"], json!(rtos.iter().min().unwrap()), "{s}");
        }
        assert!(s["acknowledged"].as_u64().unwrap() > 0, "{s}");
        assert_eq!(s["acknowledged_lost"], 0);
        assert_eq!(s["duplicated"], 0);
        assert_eq!(s["money_conserved"], true);
        assert_eq!(s["replicas_equal"], true);
        assert_eq!(
            trial["restored"], true,
            "{scenario}: {}",
            trial["restore_steps"]
        );
        let affected = trial["affected_shards"].as_array().unwrap();
        if scenario == "kill-meta-leader" {
            assert!(affected.is_empty(), "{trial}");
            assert!(s["healthy_success_ratio"].as_f64().unwrap() >= 0.999);
        } else {
            assert!(!affected.is_empty(), "{scenario}: nothing affected");
            // Every affected shard has an RTO, and the summary's max is one of them.
            for shard in affected {
                let rto = &trial["rto_by_shard"][shard.as_str().unwrap()];
                assert!(
                    rto.as_u64().is_some(),
                    "{scenario}: {shard} never recovered"
                );
            }
            assert!(s["rto_ms"]["max"].as_u64().is_some());
        }
        if scenario == "kill-backup" {
            assert_eq!(trial["reprotected"], true, "{trial}");
        }
        if scenario == "isolate-cell" {
            // The cut-off primary stopped acknowledging (nothing lost, above), its shard
            // failed over, and once reconnected it answers 421 for that shard.
            let fenced = trial["verdicts"]
                .as_array()
                .unwrap()
                .iter()
                .find(|v| v["name"] == "the cut-off primary fenced (421) after the cut")
                .unwrap_or_else(|| panic!("no fencing verdict: {trial}"));
            assert_eq!(fenced["ok"], true, "{fenced}");
        }
        // The per-second series covers the run, the fault inside it.
        let seconds = trial["timeline"].as_array().unwrap().len();
        assert!(seconds >= 5, "{seconds} seconds of timeline");
        assert!(report.join("report.json").exists() && report.join("report.html").exists());
    }
}

/// A deployment whose cells acknowledge money writes before their backup has them
/// (`--acknowledge=local`) and whose backup of shard c1 has fallen behind (held at its
/// position, as a slow backup would be): killing c1 under load loses acknowledged writes,
/// and the drill says so and exits non-zero.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_deployment_acknowledging_alone_fails_the_kill_cell_drill() {
    let _one = SERIAL.lock().await;
    let tmp = TempDir::new().unwrap();
    let backend = Backend::from_env();
    let mut extra = backend.args();
    extra.push("--cell-arg=--acknowledge=local");
    let up = Up::start(&tmp.path().join("d"), &extra).await;
    green(&up).await;
    let map = up.map().await;
    let backup = map
        .shard(&topology::ShardId::parse("c1").unwrap())
        .and_then(|s| s.backup.clone())
        .expect("shard c1 has a backup")
        .to_string();
    let backup_url = up.record()["cells"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == backup.as_str())
        .and_then(|c| c["url"].as_str())
        .unwrap()
        .to_owned();
    // The backup stops applying shard c1 (a 30 s lease, longer than the drill's load).
    let (status, body) = up
        .call(
            "POST",
            &format!("{backup_url}/v1/internal/replicas/c1/hold"),
            &token("svc:e2e", Some("admin")),
            Some(json!({"at": null})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let report = tmp.path().join("report-broken");
    let mut args = vec![
        "--scenario",
        "kill-cell",
        "--target",
        "c1",
        // What was lost may leave the books unbalanced for good: do not wait 90 s for them.
        "--recovery-timeout",
        "20s",
        "--report",
        report.to_str().unwrap(),
    ];
    args.extend_from_slice(SHORT);
    let (code, s) = drill_injected(&up, &args).await;
    assert_eq!(
        code, 1,
        "the drill passed a deployment that loses writes: {s}"
    );
    assert_eq!(s["ok"], false);
    let lost = s["acknowledged_lost"].as_u64().unwrap();
    assert!(lost > 0, "no lost operation reported: {s}");
    let trial = &s["trials"][0];
    assert!(
        failed_verdicts(trial)
            .iter()
            .any(|v| v["name"] == "no acknowledged operation lost"),
        "{:#?}",
        failed_verdicts(trial)
    );
    assert!(!trial["lost_items"].as_array().unwrap().is_empty());
    eprintln!("broken deployment: {lost} acknowledged operations lost, as the drill reports");
    console_lists_the_drill(&up).await;
}

/// The console of `up` lists the drill as an event, failed, with a link to its report, and
/// serves that page to an admin only.
async fn console_lists_the_drill(up: &Up) {
    let console = up.record()["console"]["url"]
        .as_str()
        .expect("up serves a console")
        .to_owned();
    let admin = token("svc:ops", Some("admin"));
    let event = eventually(
        "the drill among the console's events",
        Duration::from_secs(15),
        || async {
            let (_, state) = up
                .call("GET", &format!("{console}/api/state"), &admin, None)
                .await;
            state["events"]
                .as_array()?
                .iter()
                .find(|e| e["kind"] == "drill")
                .cloned()
        },
    )
    .await;
    let text = event["text"].as_str().unwrap();
    assert!(text.starts_with("drill kill-cell: FAIL"), "{event}");
    let link = event["report"].as_str().expect("a report link");
    let (status, _) = up
        .call("GET", &format!("{console}{link}"), &token("u1", None), None)
        .await;
    assert_eq!(status, 403, "a user's token reads no drill report");
    let page = reqwest::Client::new()
        .get(format!("{console}{link}"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    assert!(
        html.contains("kill-cell") && html.contains("<svg"),
        "{html:.300}"
    );
}

/// Opens the report in headless Chromium: the verdict banner and table are there, three
/// charts per trial each drawn with data (polylines of many points), nothing fetched from
/// anywhere (no script, no stylesheet, no image: one self-contained file).
async fn report_page_shows_charts_with_data(page: &Path) {
    let driver = Driver::start().await;
    let profile = TempDir::new().unwrap();
    let b = browser(&driver, profile.path(), 1200, 1600).await;
    b.goto(&format!("file://{}", page.display()))
        .await
        .expect("open the report");
    let facts = b
        .execute(
            r#"
            const charts = [...document.querySelectorAll('figure.chart svg')];
            const lines = charts.map(svg => Math.max(0, ...[...svg.querySelectorAll('polyline')]
                .map(p => p.points.numberOfItems)));
            return {
                ready: document.readyState,
                title: document.title,
                verdict: document.getElementById('verdict').textContent,
                verdict_rows: document.querySelectorAll('table.verdicts tr').length,
                charts: charts.length,
                longest_line: lines,
                visible: charts.map(svg => svg.getBoundingClientRect().height),
                scripts: document.scripts.length,
                fetched: performance.getEntriesByType('resource').length,
            };
            "#,
            vec![],
        )
        .await
        .expect("run a script in the page");
    b.close().await.expect("close the browser");
    eprintln!("report page: {facts}");
    assert_eq!(facts["ready"], "complete");
    assert_eq!(facts["verdict"], "Every guarantee held.", "{facts}");
    assert!(facts["verdict_rows"].as_u64().unwrap() >= 6, "{facts}");
    assert_eq!(facts["charts"], 3, "{facts}");
    for n in facts["longest_line"].as_array().unwrap() {
        assert!(n.as_u64().unwrap() >= 4, "a chart without data: {facts}");
    }
    for h in facts["visible"].as_array().unwrap() {
        assert!(h.as_f64().unwrap() > 100.0, "a chart not laid out: {facts}");
    }
    assert_eq!(facts["scripts"], 0, "{facts}");
    assert_eq!(facts["fetched"], 0, "the page fetched something: {facts}");
}

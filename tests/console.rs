//! The operators' console (`cellctl console`, served by `cellctl up`) on a whole deployment:
//! its data endpoints (shape, admin token), then the page itself in headless Chromium through
//! WebDriver (Debian's `chromium` and `chromium-driver`): every process green, a frozen cell
//! red with a reason within 5 s, its shard's automatic failover drawn and listed as an event,
//! and a switch turned off from the page that the router then enforces.
//!
//! Screenshots of each state go to `target/console-artifacts/`. One deployment, one browser,
//! one test, so that it costs one start of the deployment.

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::browser::{browser, Driver};
use fantoccini::{Client, Locator};
use harness::load::{self, LoadArgs, Options, Target};
use harness::procs::eventually;
use harness::up::{token, Up, SECRET};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};
use tempfile::TempDir;

const CELLS: [&str; 4] = ["c1", "c2", "c3", "c4"];

fn artifacts() -> PathBuf {
    // target/PROFILE/deps/console-HASH -> target/console-artifacts
    let exe = std::env::current_exe().expect("test executable");
    let target = exe
        .ancestors()
        .nth(3)
        .expect("the test runs from target/PROFILE/deps")
        .to_path_buf();
    let dir = target.join("console-artifacts");
    std::fs::create_dir_all(&dir).expect("artifacts dir");
    dir
}

async fn shot(page: &Client, name: &str) {
    let png = page.screenshot().await.expect("screenshot");
    let path = artifacts().join(name);
    std::fs::write(&path, png).expect("write screenshot");
    eprintln!("screenshot: {}", path.display());
}

/// Runs `script` in the page and returns its value.
async fn js(page: &Client, script: &str) -> Value {
    page.execute(script, vec![]).await.unwrap_or(Value::Null)
}

/// (health, text) of the node box `id`.
async fn node(page: &Client, id: &str) -> (String, String) {
    let v = js(
        page,
        &format!(
            "const b = document.querySelector('[data-node=\"{id}\"]'); \
             return b ? [b.dataset.health, b.innerText] : null;"
        ),
    )
    .await;
    (
        v[0].as_str().unwrap_or("").to_owned(),
        v[1].as_str().unwrap_or("").to_owned(),
    )
}

/// Resumes a frozen process when dropped (a failing test leaves nothing stopped).
struct Thaw(i32);
impl Drop for Thaw {
    fn drop(&mut self) {
        let _ = kill(Pid::from_raw(self.0), Signal::SIGCONT);
    }
}

/// `console.url` of `deployment.json` (written once the router is ready and the console
/// serves).
async fn console_url(up: &Up) -> String {
    eventually(
        "deployment.json records console.url",
        Duration::from_secs(10),
        || async { up.record()["console"]["url"].as_str().map(str::to_owned) },
    )
    .await
}

/// The data endpoints: 401 problem+json without an admin token, 403 for a user's token;
/// with one, the picture in its documented shape and the series.
async fn data_endpoints(up: &Up, console: &str) {
    let http = &up.http;
    let r = http
        .get(format!("{console}/api/state"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(
        r.headers()["content-type"],
        "application/problem+json",
        "401 is problem+json"
    );
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["code"], "unauthorized", "{body}");
    let r = http
        .get(format!("{console}/api/series"))
        .bearer_auth("not-a-token")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = http
        .post(format!("{console}/api/switches/c2c_send"))
        .json(&json!({"on": false}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "flipping a switch needs the token too");
    let (status, body) = up
        .call(
            "GET",
            &format!("{console}/api/state"),
            &token("u1", None),
            None,
        )
        .await;
    assert_eq!((status, body["code"].as_str()), (403, Some("forbidden")));
    // The page itself holds no data and needs no token.
    let page = http.get(format!("{console}/")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    assert!(
        html.contains("/console.js") && !html.contains("http://") && !html.contains("https://")
    );

    let admin = token("svc:ops", Some("admin"));
    // (raft-meta may still be electing on a busy machine: a picture with its leader.)
    let state: Value = eventually(
        "a picture with a leader",
        Duration::from_secs(30),
        || async {
            let (s, b) = up
                .call("GET", &format!("{console}/api/state"), &admin, None)
                .await;
            (s == 200 && b["status"]["leader"].is_u64()).then_some(b)
        },
    )
    .await;
    let regions: Vec<&str> = state["regions"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for r in ["east", "west", "tiebreak"] {
        assert!(regions.contains(&r), "region {r} is a column: {regions:?}");
    }
    let nodes = state["nodes"].as_array().unwrap();
    let ids: Vec<&str> = nodes.iter().filter_map(|n| n["id"].as_str()).collect();
    assert_eq!(
        ids,
        ["router", "meta1", "meta2", "meta3", "c1", "c2", "c3", "c4"]
    );
    for n in nodes {
        assert!(
            ["green", "amber", "red"].contains(&n["health"].as_str().unwrap()),
            "{n}"
        );
        assert!(n["label"].is_string() && n["reasons"].is_array() && n["region"].is_string());
    }
    assert_eq!(state["status"]["shards"].as_array().unwrap().len(), 4);
    let switches = state["switches"].as_array().unwrap();
    assert!(
        switches
            .iter()
            .any(|s| s["name"] == "c2c_send" && s["on"] == true),
        "{switches:?}"
    );
    assert!(state["events"].is_array());
    assert!(state["at_ms"].is_u64());
    assert!(
        !state.to_string().contains(SECRET),
        "the picture never carries the secret"
    );

    let (status, series) = up
        .call("GET", &format!("{console}/api/series"), &admin, None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(series["interval_ms"], 5000);
    assert!(series["cells"].is_object());

    // Input is validated at the edge.
    let (status, body) = up
        .call(
            "POST",
            &format!("{console}/api/switches/Not-A-Switch"),
            &admin,
            Some(json!({"on": false})),
        )
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("invalid_switch"))
    );
    let (status, body) = up
        .call(
            "POST",
            &format!("{console}/api/switches/c2c_send"),
            &admin,
            Some(json!({"on": "no"})),
        )
        .await;
    assert_eq!((status, body["code"].as_str()), (400, Some("invalid_body")));
}

/// `cellctl console --listen 127.0.0.1:0` next to the running deployment: prints its URL and
/// serves the same picture behind the same token.
async fn standalone(up: &Up) {
    use std::io::{BufRead, BufReader};
    let mut child = Command::new(harness::up::bin_dir().join("cellctl"))
        .arg("--data-dir")
        .arg(&up.dir)
        .args(["console", "--listen", "127.0.0.1:0"])
        .env("REDCELL_AUTH_SECRET", SECRET)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("cellctl console");
    struct Kill(Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let stdout = child.stdout.take().expect("stdout");
    let _guard = Kill(child);
    let first = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).map(|_| line)
    })
    .await
    .unwrap()
    .expect("cellctl console prints its URL");
    let url = first
        .trim()
        .strip_prefix("console: ")
        .unwrap_or_else(|| panic!("first line names the URL: {first:?}"))
        .trim_end_matches('/')
        .to_owned();
    let (status, _) = up.call("GET", &format!("{url}/api/state"), "", None).await;
    assert_eq!(status, 401);
    let admin = token("svc:ops", Some("admin"));
    eventually(
        "the standalone console's picture",
        Duration::from_secs(20),
        || async {
            let (s, b) = up
                .call("GET", &format!("{url}/api/state"), &admin, None)
                .await;
            (s == 200 && b["nodes"].as_array().is_some_and(|n| n.len() == 8)).then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_console_shows_the_deployment_live_and_flips_switches() {
    let tmp = TempDir::new().unwrap();
    // This run's screenshots only.
    let _ = std::fs::remove_file(artifacts().join("failed.png"));
    // `refuse`: no shard runs alone under a grant (which would hold raft-meta's automatic
    // failover back, as it should) when a busy machine slows its backup down.
    let up = Up::start(&tmp.path().join("d"), &["--backup-policy", "refuse"]).await;
    let console = console_url(&up).await;
    data_endpoints(&up, &console).await;
    standalone(&up).await;

    let driver = Driver::start().await;
    let page = browser(&driver, &tmp.path().join("chromium"), 1360, 1500).await;
    let admin = token("svc:ops", Some("admin"));
    page.goto(&format!("{console}/"))
        .await
        .expect("open the console");
    let outcome = match sign_in(&page, &admin).await {
        Ok(()) => scenario(&up, &page).await,
        Err(e) => Err(e),
    };
    if outcome.is_err() {
        shot(&page, "failed.png").await;
    }
    let _ = page.close().await;
    if let Err(e) = outcome {
        panic!("{e}");
    }
}

/// The sign-in form: a token that is not admin is refused with the reason, an admin token
/// opens the picture.
async fn sign_in(page: &Client, admin: &str) -> Result<(), String> {
    const ENTER: &str = "\u{E007}";
    let field = page
        .find(Locator::Id("token"))
        .await
        .map_err(|e| format!("the sign-in field: {e}"))?;
    field
        .send_keys(&format!("{}{ENTER}", token("u1", None)))
        .await
        .map_err(|e| format!("typing: {e}"))?;
    let started = Instant::now();
    loop {
        let v = js(
            page,
            "return [document.getElementById('signin').hidden, \
                     document.getElementById('signin-error').textContent];",
        )
        .await;
        if v[0] == false && v[1].as_str().is_some_and(|t| t.contains("admin")) {
            break;
        }
        if started.elapsed() > Duration::from_secs(10) {
            return Err(format!(
                "a user's token is not refused with its reason: {v}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    page.find(Locator::Id("token"))
        .await
        .map_err(|e| format!("the sign-in field: {e}"))?
        .send_keys(&format!("{admin}{ENTER}"))
        .await
        .map_err(|e| format!("typing: {e}"))?;
    let started = Instant::now();
    while js(page, "return document.getElementById('app').hidden;").await != false {
        if started.elapsed() > Duration::from_secs(10) {
            return Err("the admin token does not open the picture".into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// Waits until every box is green and one raft-meta node is marked leader (every box green
/// implies a leader: without one, raft-meta's boxes are amber).
async fn all_green(page: &Client, within: Duration) -> Result<(), String> {
    let started = Instant::now();
    loop {
        let mut all = Vec::new();
        for id in ["router", "meta1", "meta2", "meta3"].iter().chain(&CELLS) {
            all.push((id, node(page, id).await));
        }
        let leaders = js(
            page,
            "return document.querySelectorAll('.node .leader').length;",
        )
        .await;
        if all.iter().all(|(_, (h, _))| h == "green") && leaders == 1 {
            return Ok(());
        }
        if started.elapsed() > within {
            return Err(format!("not every process green after {within:?}: {all:?}"));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The browser part; an `Err` leaves a screenshot of the page as it was.
async fn scenario(up: &Up, page: &Client) -> Result<(), String> {
    // 1. Every process green (shards settle within seconds of the start).
    all_green(page, Duration::from_secs(45)).await?;
    shot(page, "1-all-green.png").await;

    // A light load through the router for 8 s, for the charts (stopped before the freeze:
    // raft-meta fails over no shard that ran alone under load on a busy machine).
    let args = LoadArgs {
        rate: 10.0,
        duration: Duration::from_secs(8),
        mix: "send=20,claim=50,read=30".parse().expect("mix"),
        users: 50,
        warmup: Duration::ZERO,
        max_in_flight: 256,
        // Generous: a busy CI machine answers slowly, and only the charts need this load.
        timeout: Duration::from_secs(10),
        seed: Some(14),
        initial_packets: 2,
        json: true,
    };
    let target = Target {
        router_url: up.router(),
        secret: SECRET.into(),
    };
    let report = load::run_with(&args, &target, Options::default())
        .await
        .map_err(|e| format!("the load: {e:#}"))?;
    eprintln!("load: {} operations scheduled", report.scheduled);
    // The series saw it: some cell's requests/s above zero, drawn on the page.
    let charted = Instant::now();
    loop {
        let (_, series) = up
            .call(
                "GET",
                &format!("{}/api/series", console_url(up).await),
                &token("svc:ops", Some("admin")),
                None,
            )
            .await;
        let busy = series["cells"]
            .as_object()
            .into_iter()
            .flat_map(|cells| cells.values())
            .flat_map(|points| points.as_array().into_iter().flatten())
            .any(|p| p["rps"].as_f64().is_some_and(|r| r > 1.0));
        let drawn = js(
            page,
            "return document.querySelectorAll('[data-chart=\"rps\"] svg path').length;",
        )
        .await;
        if busy && drawn.as_u64().is_some_and(|n| n > 0) {
            break;
        }
        if charted.elapsed() > Duration::from_secs(15) {
            return Err(format!("the charts do not show the load: {series}"));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // 2. Freeze c1, primary of shard c1 (backed up by c3 in the other region), once all is
    //    green again after the load.
    all_green(page, Duration::from_secs(45)).await?;
    let pid = up.record()["cells"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == "c1")
        .and_then(|c| c["pid"].as_i64())
        .expect("c1's pid") as i32;
    kill(Pid::from_raw(pid), Signal::SIGSTOP).expect("SIGSTOP c1");
    let thaw = Thaw(pid);
    let frozen = Instant::now();
    // Red, and saying why: the first red may come from a gathering that caught the freeze
    // half-way (the cell's replication status unanswered, its /readyz answered just before).
    let red = loop {
        let (health, text) = node(page, "c1").await;
        if health == "red" && text.contains("DOWN") && text.contains("down:") {
            break text;
        }
        if frozen.elapsed() > Duration::from_secs(5) {
            return Err(format!(
                "c1 frozen 5 s ago is not red on the page: {health}: {text}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    eprintln!(
        "c1 red on the page {} ms after SIGSTOP: {red:?}",
        frozen.elapsed().as_millis()
    );
    shot(page, "2-cell-frozen.png").await;

    // 3. raft-meta fails shard c1 over to c3 by itself; the page moves the shard and lists
    //    the failover.
    let moved = Instant::now();
    loop {
        let v = js(
            page,
            "const s = document.querySelector('[data-node=\"c3\"] [data-shard=\"c1\"]'); \
             const e = [...document.querySelectorAll('#events li[data-kind=\"failover\"]')] \
               .map(l => l.innerText).find(t => t.includes('shard c1')); \
             return [s ? s.dataset.primary : null, e || null];",
        )
        .await;
        // The event gets its RTO once the new primary reports the promotion.
        if v[0] == "c3" && v[1].as_str().is_some_and(|t| t.contains("RTO")) {
            eprintln!("failover on the page: {}", v[1]);
            break;
        }
        if moved.elapsed() > Duration::from_secs(30) {
            return Err(format!(
                "shard c1 not shown moved to c3 with its RTO within 30 s: {v}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    shot(page, "3-failed-over.png").await;
    drop(thaw);

    // 4. Turn c2c_send off from the page, by keyboard: Enter on its button, the message,
    //    Enter to confirm; the router then refuses C2C sends.
    const ENTER: &str = "\u{E007}";
    page.find(Locator::Css("[data-flip=\"c2c_send\"]"))
        .await
        .map_err(|e| format!("switch button: {e}"))?
        .send_keys(ENTER)
        .await
        .map_err(|e| format!("Enter on the switch: {e}"))?;
    let message = page
        .find(Locator::Id("confirm-message"))
        .await
        .map_err(|e| format!("confirmation dialog: {e}"))?;
    message
        .send_keys("paused from the console")
        .await
        .map_err(|e| format!("typing: {e}"))?;
    shot(page, "4-confirm.png").await;
    message
        .send_keys(ENTER)
        .await
        .map_err(|e| format!("Enter to confirm: {e}"))?;
    let sender = "u7";
    let off = Instant::now();
    loop {
        let (status, body) = up
            .call_with(
                "POST",
                "/v1/packets",
                &token(sender, None),
                Some(json!({"kind": "c2c", "total": 100, "count": 1})),
                &[("idempotency-key", "console-degraded")],
            )
            .await;
        if status == 503 && body["code"] == "degraded" {
            if body["detail"] != "paused from the console" {
                return Err(format!("the switch's message reaches callers: {body}"));
            }
            break;
        }
        if off.elapsed() > Duration::from_secs(10) {
            return Err(format!(
                "c2c sends not degraded 10 s after the flip: {status} {body}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let shown = loop {
        let v = js(
            page,
            "const r = document.querySelector('[data-switch=\"c2c_send\"]'); \
             return r ? [r.dataset.on, r.innerText] : null;",
        )
        .await;
        if v[0] == "false" {
            break v[1].as_str().unwrap_or("").to_owned();
        }
        if off.elapsed() > Duration::from_secs(10) {
            return Err(format!("the page does not show c2c_send off: {v}"));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    if !shown.contains("OFF") {
        return Err(format!("the switch row says OFF in words: {shown:?}"));
    }
    let (router_health, router_text) = node(page, "router").await;
    if router_health != "amber" || !router_text.contains("switch c2c_send off") {
        return Err(format!(
            "the router box tells the switch: {router_health}: {router_text}"
        ));
    }
    shot(page, "5-switch-off.png").await;

    // 5. On a phone's screen: one column, nothing wider than the screen.
    page.set_window_size(390, 844)
        .await
        .map_err(|e| format!("resize: {e}"))?;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let overflow = js(
        page,
        "return document.documentElement.scrollWidth - document.documentElement.clientWidth;",
    )
    .await;
    if overflow.as_i64().is_none_or(|o| o > 1) {
        return Err(format!(
            "the page is wider than a phone's screen by {overflow} px"
        ));
    }
    shot(page, "6-phone.png").await;
    Ok(())
}

//! `cellctl console`: the whole deployment on one live web page (DESIGN.md §8), red / amber /
//! green with the reasons in words.
//!
//! One gatherer feeds every viewer: each second, and at once whenever raft-meta's map
//! changes (the console follows its watch, so a failover or a switch shows without waiting
//! for the tick), it runs `cellctl status`'s gathering ([`crate::status::gather_with`]:
//! raft-meta's map, every process's `/readyz`, every cell's replication status) and derives
//! the picture ([`model`]), with the drills kept in `DIR/drills/` as events whose report
//! pages it serves ([`drills`]); every five seconds it samples
//! each cell's `/metrics` into a 15-minute ring ([`series`]). The page (embedded in the
//! binary: HTML, CSS and a small script, no library, no CDN) polls `GET /api/state` every
//! second and `GET /api/series` every five.
//!
//! The page itself holds no data; every `/api/` route asks for an admin token (the
//! deployment's, `cellctl token svc:ops --scope admin`) as a bearer token: 401 problem+json
//! without one, 403 with a token that is not admin. A switch is turned through raft-meta's
//! API as `cellctl switch` does. The deployment's secret never leaves the process.

pub mod drills;
pub mod model;
pub mod series;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use anyhow::Context;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::deployment::{self, Layout, Record};
use crate::status::{self, Status};
use drills::Drills;
use model::{Event, Events, Node, SwitchRow};
use series::{Rings, Totals};

/// How often the picture is gathered.
pub const STATE_EVERY: Duration = Duration::from_secs(1);
/// How long each process has to answer a gathering (a frozen process shows red after it).
pub const PROBE_TIMEOUT: Duration = Duration::from_millis(1_000);

#[derive(Debug, Clone, clap::Args)]
pub struct ConsoleArgs {
    /// Address to serve the console on. Every data route asks for an admin token, so another
    /// interface is possible, but the page is plain HTTP: keep it on loopback or behind TLS.
    #[arg(long, default_value = "127.0.0.1:7080")]
    pub listen: String,
}

/// The picture as `GET /api/state` answers it.
#[derive(Debug, Serialize)]
pub struct Picture {
    /// When it was gathered, milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// Region columns, left to right (the cells' regions, then the tie-breaker's).
    pub regions: Vec<String>,
    pub nodes: Vec<Node>,
    pub switches: Vec<SwitchRow>,
    pub events: Vec<Event>,
    /// Exactly `cellctl status --json`.
    pub status: Status,
}

/// What the handlers share with the gatherer.
struct Shared {
    verifier: topology::auth::Verifier,
    layout: Layout,
    /// The deployment's keys, following the keys file as the services do (a rotation
    /// reaches the console without a restart).
    keys: topology::keys::KeyRing,
    picture: RwLock<Option<Arc<Picture>>>,
    /// Why the last gathering failed (no deployment.json yet, …).
    error: RwLock<Option<String>>,
    rings: Mutex<Rings>,
    events: Mutex<Events>,
    drills: Mutex<Drills>,
    /// Raised by the map watch: gather now.
    map_changed: tokio::sync::Notify,
}

struct AbortOnDrop(Vec<tokio::task::JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

/// A running console.
pub struct Console {
    pub url: String,
    pub task: tokio::task::JoinHandle<()>,
}

/// Binds `listen` and serves the console of the deployment under `layout` in the
/// background, with its gatherer.
pub async fn start(layout: &Layout, secret: &str, listen: &str) -> anyhow::Result<Console> {
    let keys = raft_meta::keys::ring(Some(secret), Some(&layout.keys()))?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding the console to {listen}"))?;
    let addr: SocketAddr = listener.local_addr()?;
    let shared = Arc::new(Shared {
        verifier: topology::auth::Verifier::with_ring(keys.clone()),
        layout: layout.clone(),
        keys,
        picture: RwLock::new(None),
        error: RwLock::new(None),
        rings: Mutex::new(Rings::default()),
        events: Mutex::new(Events::default()),
        drills: Mutex::new(Drills::default()),
        map_changed: tokio::sync::Notify::new(),
    });
    let app = router(shared.clone());
    let task = tokio::spawn(async move {
        // The gatherer stops with the server, including when this task is aborted.
        let _loops = AbortOnDrop(vec![
            tokio::spawn(gather_loop(shared.clone())),
            tokio::spawn(watch_loop(shared.clone())),
            tokio::spawn(sample_loop(shared)),
        ]);
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!("console stopped serving: {e}");
        }
    });
    Ok(Console {
        url: format!("http://{addr}"),
        task,
    })
}

/// `cellctl console`: serves until Ctrl-C.
pub async fn run(layout: &Layout, args: &ConsoleArgs) -> anyhow::Result<()> {
    let secret = deployment::secret(layout, false)?;
    let console = start(layout, &secret, &args.listen).await?;
    println!("console: {}/", console.url);
    println!("  sign in with an admin token: cellctl token svc:ops --scope admin");
    if !is_loopback(&args.listen) {
        println!(
            "  note: {} is not loopback; the page is plain HTTP, tokens cross the network",
            args.listen
        );
    }
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = console.task => {}
    }
    Ok(())
}

fn is_loopback(listen: &str) -> bool {
    listen
        .parse::<SocketAddr>()
        .map(|a| a.ip().is_loopback())
        .unwrap_or_else(|_| listen.starts_with("localhost:"))
}

fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/console.js", get(script))
        .route("/console.css", get(style))
        .route("/api/state", get(api_state))
        .route("/api/series", get(api_series))
        .route("/api/switches/{name}", post(api_switch))
        .route("/api/drills/{id}/report.html", get(api_drill_report))
        .fallback(|| async { problem(StatusCode::NOT_FOUND, "not_found", "no such page") })
        .with_state(shared)
}

const INDEX: &str = include_str!("assets/index.html");
const SCRIPT: &str = include_str!("assets/console.js");
const STYLE: &str = include_str!("assets/console.css");

/// Headers every asset carries: nothing may load from elsewhere.
fn asset(kind: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, kind),
            (header::CACHE_CONTROL, "no-cache"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
            ),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response()
}

async fn index() -> Response {
    asset("text/html; charset=utf-8", INDEX)
}
async fn script() -> Response {
    asset("text/javascript; charset=utf-8", SCRIPT)
}
async fn style() -> Response {
    asset("text/css; charset=utf-8", STYLE)
}

/// problem+json in the shape of `wire::problem::Problem`.
fn problem(status: StatusCode, code: &str, detail: &str) -> Response {
    let body = wire::problem::Problem {
        kind: format!("https://redcell.dev/problems/{code}"),
        title: status.canonical_reason().unwrap_or("error").to_owned(),
        status: status.as_u16(),
        code: code.to_owned(),
        detail: detail.to_owned(),
    };
    let mut res = (status, Json(body)).into_response();
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/problem+json"),
    );
    if status == StatusCode::UNAUTHORIZED {
        res.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer"),
        );
    }
    res
}

/// Lets an admin through; anyone else gets 401 (no or a bad token) or 403 (not admin).
#[allow(clippy::result_large_err)]
fn admin(shared: &Shared, headers: &HeaderMap) -> Result<(), Response> {
    let header = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if header.is_none() {
        return Err(problem(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "an admin bearer token is required (cellctl token svc:ops --scope admin)",
        ));
    }
    match shared.verifier.verify_header(header) {
        Ok(p) if p.is_admin() => Ok(()),
        Ok(_) => Err(problem(
            StatusCode::FORBIDDEN,
            "forbidden",
            "the console requires scope admin",
        )),
        Err(e) => Err(problem(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            &format!("the token is not accepted: {e}"),
        )),
    }
}

async fn api_state(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    if let Err(r) = admin(&shared, &headers) {
        return r;
    }
    let picture = shared.picture.read().expect("picture lock").clone();
    match picture {
        Some(p) => no_store(Json(&*p).into_response()),
        None => {
            let why = shared
                .error
                .read()
                .expect("error lock")
                .clone()
                .unwrap_or_else(|| "the first gathering is under way".into());
            problem(StatusCode::SERVICE_UNAVAILABLE, "not_gathered", &why)
        }
    }
}

fn no_store(mut res: Response) -> Response {
    res.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    res
}

async fn api_series(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    if let Err(r) = admin(&shared, &headers) {
        return r;
    }
    let cells = shared.rings.lock().expect("rings lock").export();
    no_store(
        Json(json!({
            "interval_ms": series::INTERVAL_MS,
            "cells": cells,
        }))
        .into_response(),
    )
}

/// `POST /api/switches/{name}` `{"on": bool, "message": "…"}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SwitchBody {
    on: bool,
    #[serde(default)]
    message: String,
}

/// A switch name as raft-meta takes it: 1-64 of `a-z 0-9 _`.
pub fn valid_switch_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

async fn api_switch(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    if let Err(r) = admin(&shared, &headers) {
        return r;
    }
    if !valid_switch_name(&name) {
        return problem(
            StatusCode::BAD_REQUEST,
            "invalid_switch",
            "a switch name is 1-64 of a-z 0-9 _",
        );
    }
    let body: SwitchBody = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => {
            return problem(
                StatusCode::BAD_REQUEST,
                "invalid_body",
                &format!("expected {{\"on\": bool, \"message\": string}}: {e}"),
            )
        }
    };
    if body.message.chars().count() > 200 || body.message.chars().any(char::is_control) {
        return problem(
            StatusCode::BAD_REQUEST,
            "invalid_message",
            "the message is at most 200 printable characters",
        );
    }
    let record: Record = match deployment::read_json(&shared.layout.deployment()) {
        Ok(r) => r,
        Err(e) => {
            return problem(
                StatusCode::SERVICE_UNAVAILABLE,
                "no_deployment",
                &e.to_string(),
            )
        }
    };
    let credential =
        topology::auth::Credential::minted_with(&shared.keys, "svc:cellctl", Some("admin"), 3600);
    let client = raft_meta::client::MetaClient::new(record.meta_nodes(), credential)
        .with_deadline(Duration::from_secs(5));
    match client.set_switch(&name, body.on, &body.message).await {
        Ok(version) => {
            tracing::info!(switch = %name, on = body.on, version, "switch set from the console");
            Json(
                json!({"switch": name, "on": body.on, "message": body.message, "version": version}),
            )
            .into_response()
        }
        Err(e) => problem(
            StatusCode::BAD_GATEWAY,
            "meta_unavailable",
            &format!("raft-meta did not take the switch: {e}"),
        ),
    }
}

fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

async fn gather_loop(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(STATE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shared.map_changed.notified() => {}
        }
        match status::gather_with(&shared.layout, PROBE_TIMEOUT).await {
            Ok((status, view)) => {
                let now = wall_ms();
                let latest = {
                    let rings = shared.rings.lock().expect("rings lock");
                    status
                        .cells
                        .iter()
                        .filter_map(|c| {
                            rings
                                .latest(&c.process.name)
                                .map(|p| (c.process.name.clone(), p.clone()))
                        })
                        .collect()
                };
                let nodes = model::nodes(&status, &latest);
                let switches = model::switches(view.as_ref());
                let events = {
                    let mut ev = shared.events.lock().expect("events lock");
                    ev.observe(&status, &nodes, &switches, now);
                    let fresh = shared
                        .drills
                        .lock()
                        .expect("drills lock")
                        .fresh(&shared.layout.drills());
                    for e in fresh {
                        ev.push(e);
                    }
                    ev.list.iter().cloned().collect()
                };
                let picture = Picture {
                    at_ms: now,
                    regions: model::regions(&status),
                    nodes,
                    switches,
                    events,
                    status,
                };
                *shared.picture.write().expect("picture lock") = Some(Arc::new(picture));
                *shared.error.write().expect("error lock") = None;
            }
            Err(e) => {
                tracing::debug!("console: gathering failed: {e:#}");
                *shared.error.write().expect("error lock") = Some(format!("{e:#}"));
            }
        }
    }
}

/// Follows raft-meta's map watch and wakes the gatherer on every new version. The watch
/// retries across raft-meta's nodes by itself; the deployment record is read again only when
/// there is none yet (the console may start before `up` has written it).
async fn watch_loop(shared: Arc<Shared>) {
    let record = loop {
        match deployment::read_json::<Record>(&shared.layout.deployment()) {
            Ok(r) => break r,
            Err(_) => tokio::time::sleep(STATE_EVERY).await,
        }
    };
    // A credential that re-mints with the keys file: the watch outlives key rotations.
    let credential =
        topology::auth::Credential::minted_with(&shared.keys, "svc:cellctl", Some("admin"), 3600);
    let client = raft_meta::client::MetaClient::new(record.meta_nodes(), credential);
    let mut watch = client.watch(0);
    loop {
        let view = watch.next().await;
        tracing::debug!(version = view.version, "console: map changed");
        shared.map_changed.notify_one();
    }
}

/// `GET /api/drills/{id}/report.html`: a kept drill's report page (the page opens it in a
/// new tab; the report is self-contained: inline SVG, no script, nothing fetched).
async fn api_drill_report(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Err(refused) = admin(&shared, &headers) {
        return refused;
    }
    match drills::page(&shared.layout.drills(), &id) {
        Some(html) => no_store(
            (
                [
                    (header::CONTENT_TYPE, "text/html; charset=utf-8"),
                    (
                        header::CONTENT_SECURITY_POLICY,
                        "default-src 'none'; style-src 'unsafe-inline'; img-src data:",
                    ),
                ],
                html,
            )
                .into_response(),
        ),
        None => problem(
            StatusCode::NOT_FOUND,
            "drill_not_found",
            "no such drill report (drills are kept in DIR/drills/)",
        ),
    }
}

async fn sample_loop(shared: Arc<Shared>) {
    // More lenient than the probes: a busy cell's metrics still make a point.
    let http = match reqwest::Client::builder()
        .timeout(Duration::from_secs(3))
        .build()
    {
        Ok(h) => h,
        Err(e) => {
            tracing::error!("console: no HTTP client for sampling: {e}");
            return;
        }
    };
    let mut tick = tokio::time::interval(Duration::from_millis(series::INTERVAL_MS));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Ok(record) = deployment::read_json::<Record>(&shared.layout.deployment()) else {
            continue;
        };
        let scrapes: Vec<_> = record
            .cells
            .iter()
            .map(|c| {
                let (http, url, id) = (http.clone(), c.url.clone(), c.id.clone());
                tokio::spawn(async move {
                    let text = async {
                        let r = http.get(format!("{url}/metrics")).send().await.ok()?;
                        if !r.status().is_success() {
                            return None;
                        }
                        r.text().await.ok()
                    }
                    .await;
                    let at = wall_ms();
                    (id, at, text.map(|t| Totals::of(&series::parse(&t), at)))
                })
            })
            .collect();
        for s in scrapes {
            if let Ok((id, at, totals)) = s.await {
                shared
                    .rings
                    .lock()
                    .expect("rings lock")
                    .record(&id, at, totals);
            }
        }
    }
}

//! Wiring: [`App::build`] loads the map, binds the listener and starts following raft-meta;
//! [`App::run_until_stopped`] serves until SIGTERM (or Ctrl-C), then drains.
//!
//! Every public request passes the same short pipeline, each step able to answer by itself:
//! route (404/405) → token (401) → body ≤ 64 KiB (413) → decision and permission
//! (400/403) → switches (503 `degraded`) → rate limits (429) → forward (503
//! `cell_unavailable` when the cell cannot answer), with one retry after a 421.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::request::Parts;
use axum::http::uri::PathAndQuery;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use metrics::{Counter, Histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use raft_meta::client::MetaClient;
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use topology::auth::{Credential, Principal};
use topology::Slot;
use tower::ServiceExt as _;
use tracing::Instrument;

use crate::error::RouterError;
use crate::limit::Limiter;
use crate::limit_redis::RedisLimiter;
use crate::mapstate::{MapState, MapStateError, Snapshot};
use crate::proxy::{self, Forwarder, Outgoing, Target};
use crate::route::{self, Decision, Route};
use crate::settings::Settings;
use crate::tokens::Tokens;
use crate::{recon, BODY_LIMIT};

/// Shared by every request (behind one `Arc`, which the `Edge` service and axum clone for
/// every request; the token cache alone could not be cloned cheaply).
pub struct Ctx {
    pub maps: Arc<MapState>,
    pub tokens: Tokens,
    pub forwarder: Forwarder,
    pub limiter: Arc<Limiter>,
    pub metrics: PrometheusHandle,
    request_metrics: RequestMetrics,
    body_timeout: Duration,
    /// How long a request may be retried while its cell answers 503 with Retry-After.
    retry_unavailable: Duration,
}

/// The per-request metrics' handles, registered once per label set and reused: looking them
/// up in the recorder on every request (building, hashing and comparing the labels) cost
/// more than the rest of the router's bookkeeping.
#[derive(Default)]
struct RequestMetrics {
    handles: std::sync::Mutex<HashMap<LabelSet, (Counter, Histogram)>>,
}

/// Route, cell, status.
type LabelSet = (&'static str, String, u16);

impl RequestMetrics {
    /// `router_requests_total` and `router_request_duration_seconds` for one route, cell
    /// and status.
    fn handles(&self, flow: &'static str, cell: String, status: u16) -> (Counter, Histogram) {
        let mut handles = self.handles.lock().expect("metrics handles poisoned");
        let key = (flow, cell, status);
        if let Some(h) = handles.get(&key) {
            return h.clone();
        }
        let h = (
            metrics::counter!("router_requests_total", "route" => flow, "cell" => key.1.clone(), "status" => status.to_string()),
            metrics::histogram!("router_request_duration_seconds", "route" => flow, "cell" => key.1.clone()),
        );
        handles.insert(key, h.clone());
        h
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("invalid settings: {0}")]
    Settings(String),
    #[error(transparent)]
    Map(#[from] MapStateError),
    #[error("cannot listen on {0}: {1}")]
    Bind(SocketAddr, std::io::Error),
}

pub struct App {
    listener: TcpListener,
    ctx: Arc<Ctx>,
    cancel: CancellationToken,
    follower: Option<tokio::task::JoinHandle<()>>,
    /// The serving loop's connection limits.
    http: serve::Limits,
}

fn metrics_handle() -> PrometheusHandle {
    static HANDLE: std::sync::OnceLock<PrometheusHandle> = std::sync::OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let buckets = [
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ];
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Full("router_request_duration_seconds".into()),
                    &buckets,
                )
                .expect("non-empty buckets")
                .build_recorder();
            let handle = recorder.handle();
            // Only the first App of a process installs the recorder; later ones share it.
            let _ = metrics::set_global_recorder(recorder);
            // A recorder built by hand does not drain its latency samples into the histograms
            // by itself: without this every request's sample would stay in memory until the
            // next scrape. On a thread of its own: draining 5 s of samples would hold up one
            // of the runtime's workers, and the requests queued on it.
            let upkeep = handle.clone();
            std::thread::Builder::new()
                .name("metrics-upkeep".into())
                .spawn(move || loop {
                    std::thread::sleep(Duration::from_secs(5));
                    upkeep.run_upkeep();
                })
                .expect("spawning the metrics upkeep thread");
            handle
        })
        .clone()
}

impl App {
    pub async fn build(settings: Settings) -> Result<App, StartError> {
        settings.validate().map_err(StartError::Settings)?;
        let keys = raft_meta::keys::ring(
            Some(&settings.auth_secret),
            settings.auth_keys_file.as_deref(),
        )
        .map_err(|e| StartError::Settings(e.to_string()))?;
        let nodes = settings.meta_nodes();
        let meta = (!nodes.is_empty()).then(|| {
            // The router's own credential towards raft-meta: reads only (scope internal).
            let token = Credential::minted_with(
                &keys,
                "svc:router",
                Some("internal"),
                topology::auth::SERVICE_TOKEN_TTL_S,
            );
            MetaClient::new(nodes, token)
        });
        let maps = Arc::new(MapState::load(
            &settings.state_dir,
            settings.map.as_deref(),
            meta,
        )?);
        let cancel = CancellationToken::new();
        let mut limiter = Limiter::new(settings.rate_global, settings.rate_per_uid);
        if let Some(url) = &settings.redis_url {
            let redis = RedisLimiter::start(url, cancel.clone())
                .map_err(|e| StartError::Settings(format!("--redis-url: {e}")))?;
            limiter = limiter.with_redis(redis);
        }
        let ctx = Arc::new(Ctx {
            maps: maps.clone(),
            tokens: Tokens::with_ring(keys.clone(), settings.token_cache),
            forwarder: Forwarder::new(
                Duration::from_millis(settings.timeout_ms),
                Duration::from_millis(settings.connect_timeout_ms),
            ),
            limiter: Arc::new(limiter),
            metrics: metrics_handle(),
            request_metrics: RequestMetrics::default(),
            body_timeout: Duration::from_millis(settings.body_timeout_ms),
            retry_unavailable: Duration::from_millis(settings.retry_unavailable_ms),
        });
        let listener = serve::listen::bind(settings.listen)
            .await
            .map_err(|e| StartError::Bind(settings.listen, e))?;
        let follower = Some(tokio::spawn(maps.follow(cancel.clone())));
        Ok(App {
            listener,
            ctx,
            cancel,
            follower,
            http: settings.http.clone(),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// The service every connection gets: the operational paths through a small axum
    /// router, every other request straight into the public pipeline.
    pub fn service(ctx: Arc<Ctx>) -> Edge {
        let ops = Router::new()
            .route(
                "/healthz",
                get(|| async { axum::Json(json!({"status": "ok"})) }),
            )
            .route("/readyz", get(handle_readyz))
            .route("/metrics", get(handle_metrics))
            .route(
                "/openapi.json",
                get(|| async {
                    (
                        [(header::CONTENT_TYPE, "application/json")],
                        wire::openapi::PUBLIC,
                    )
                }),
            )
            .with_state(ctx.clone());
        Edge { ctx, ops }
    }

    /// Serves until SIGTERM or Ctrl-C; in-flight requests finish first.
    pub async fn run_until_stopped(mut self) -> std::io::Result<()> {
        let app = App::service(self.ctx.clone());
        let cancel = self.cancel.clone();
        // Responses stream through in pieces (the head, then the cell's body as it comes):
        // `serve` turns Nagle's algorithm off, so a piece never waits for a delayed ACK.
        let result = serve::serve(self.listener, app, self.http.clone(), async move {
            shutdown_signal().await;
            tracing::info!("stopping: draining in-flight requests");
            cancel.cancel();
        })
        .await;
        self.cancel.cancel();
        if let Some(f) = self.follower.take() {
            let _ = f.await;
        }
        result
    }
}

/// The paths `ops` serves (every other path is the public pipeline's, [`crate::route::classify`]).
pub const OPS_PATHS: &[&str] = &["/healthz", "/readyz", "/metrics", "/openapi.json"];

/// The router's front service. Public paths are classified by [`route::classify`] in the
/// pipeline itself, so they skip axum's path matching, which cost as much as classifying,
/// verifying and routing together; [`OPS_PATHS`] go to `ops`.
#[derive(Clone)]
pub struct Edge {
    ctx: Arc<Ctx>,
    ops: Router,
}

impl tower::Service<Request> for Edge {
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request) -> Self::Future {
        match req.uri().path() {
            path if OPS_PATHS.contains(&path) => Box::pin(self.ops.clone().oneshot(req)),
            _ => {
                let ctx = self.ctx.clone();
                Box::pin(async move { Ok(handle_public(ctx, req).await) })
            }
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = ctrl_c => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

async fn handle_readyz(State(ctx): State<Arc<Ctx>>) -> Response {
    let snap = ctx.maps.current();
    match &snap.map {
        Some(_) => {
            axum::Json(json!({"status": "ready", "map_version": snap.version})).into_response()
        }
        None => RouterError::CellUnavailable("no map yet".into()).into_response(),
    }
}

async fn handle_metrics(State(ctx): State<Arc<Ctx>>) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        ctx.metrics.render(),
    )
        .into_response()
}

/// Labels of one request for metrics and the log: filled in as the pipeline learns them.
struct Labels {
    flow: &'static str,
    cell: String,
    trace_id: String,
}

async fn handle_public(ctx: Arc<Ctx>, req: Request) -> Response {
    let started = Instant::now();
    let mut labels = Labels {
        flow: "unknown",
        cell: "none".into(),
        trace_id: String::new(),
    };
    let (parts, body) = req.into_parts();
    // One span per request, carrying the route decision; exported when OTLP is configured.
    // Its name is `crate::REQUEST_SPAN`.
    let span = tracing::info_span!(
        "router.request",
        http.method = %parts.method,
        flow = tracing::field::Empty,
        slot = tracing::field::Empty,
        cell = tracing::field::Empty,
        epoch = tracing::field::Empty,
        trace_id = tracing::field::Empty,
        status = tracing::field::Empty,
    );
    crate::telemetry::adopt_parent(&span, &parts.headers);
    let served = serve(&ctx, parts, body, &mut labels)
        .instrument(span.clone())
        .await;
    let resp = match served {
        Ok(r) => r,
        Err(e) => {
            if e.status().is_server_error() {
                tracing::warn!(flow = labels.flow, cell = %labels.cell, trace_id = %labels.trace_id, "{e}");
            }
            e.into_response()
        }
    };
    span.record("status", resp.status().as_u16());
    let (count, duration) =
        ctx.request_metrics
            .handles(labels.flow, labels.cell, resp.status().as_u16());
    count.increment(1);
    duration.record(started.elapsed().as_secs_f64());
    resp
}

fn authenticate(ctx: &Ctx, headers: &HeaderMap) -> Result<Principal, RouterError> {
    let header = match headers.get(header::AUTHORIZATION).map(|v| v.to_str()) {
        Some(Ok(v)) => Some(v),
        Some(Err(_)) => {
            return Err(RouterError::Unauthorized(
                "the Authorization header is not text".into(),
            ))
        }
        None => None,
    };
    ctx.tokens
        .verify_header(header)
        .map_err(|e| RouterError::Unauthorized(e.to_string()))
}

async fn read_body(
    ctx: &Ctx,
    headers: &HeaderMap,
    body: Body,
) -> Result<bytes::Bytes, RouterError> {
    if proxy::declared_too_large(headers, BODY_LIMIT) {
        return Err(RouterError::PayloadTooLarge);
    }
    if hyper::body::Body::is_end_stream(&body) {
        // No body at all (most GETs): nothing to wait for.
        return Ok(bytes::Bytes::new());
    }
    match tokio::time::timeout(ctx.body_timeout, axum::body::to_bytes(body, BODY_LIMIT)).await {
        Ok(Ok(bytes)) => Ok(bytes),
        // `to_bytes` fails past the limit, or when the client broke off; either way the
        // request cannot be forwarded, and 413 is right for the only case a client sees.
        Ok(Err(_)) => Err(RouterError::PayloadTooLarge),
        Err(_) => Err(RouterError::invalid("body", "not received in time")),
    }
}

async fn serve(
    ctx: &Ctx,
    parts: Parts,
    body: Body,
    labels: &mut Labels,
) -> Result<Response, RouterError> {
    let route = route::classify(&parts.method, parts.uri.path())?;
    let who = authenticate(ctx, &parts.headers)?;
    let span = tracing::Span::current();
    let (traceparent, trace_id) = crate::telemetry::traceparent_of(&span)
        .unwrap_or_else(|| proxy::next_traceparent(parts.headers.get("traceparent")));
    span.record("trace_id", trace_id.as_str());
    labels.trace_id = trace_id;
    if route == Route::Reconciliation {
        labels.flow = "reconciliation";
        span.record("flow", "reconciliation");
        return recon::handle(ctx, &who, &parts.headers, traceparent).await;
    }
    let body = read_body(ctx, &parts.headers, body).await?;
    let decision = route::decide(&route, &who, &body)?;
    labels.flow = decision.flow;
    span.record("flow", decision.flow);
    span.record("slot", decision.slot.get());
    let snap = ctx.maps.current();
    if let Some((switch, message)) = snap.switched_off(decision.switches) {
        return Err(RouterError::Degraded {
            switch: switch.to_owned(),
            message,
        });
    }
    ctx.limiter.admit_async(who.uid()).await?;
    let out = Outgoing {
        method: parts.method,
        path_and_query: parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/")),
        headers: parts.headers,
        body,
        traceparent,
    };
    forward(ctx, &snap, &decision, &out, labels, &span).await
}

fn target_for(snap: &Snapshot, slot: Slot) -> Result<Target, RouterError> {
    let map = snap
        .map
        .as_ref()
        .ok_or_else(|| RouterError::CellUnavailable("the router has no map yet".into()))?;
    // slot → shard (and epoch) → the shard's primary cell → its URL.
    let owner = map.owner(slot);
    let serving = map.serving(slot);
    let info = map.cell(serving).ok_or_else(|| {
        RouterError::CellUnavailable(format!(
            "slot {slot}: shard {}'s cell {serving} unknown",
            owner.shard
        ))
    })?;
    Ok(Target {
        cell: serving.clone(),
        url: info.url.clone(),
        route: Some((slot, owner.epoch)),
    })
}

/// Sends the request to the slot's cell, and when the cell answers a deliberate `503` (it
/// carries `Retry-After`: a shard pausing its writes for a failover or a slot move, a backup
/// not confirming yet) sends it again, at the cell the map then names, after a short backoff
/// no longer than the delay the cell asked for, for as long as the retry budget lasts; the client sees the first answer
/// that is not such a 503, or the last one. A connection that could not be opened within the
/// connect timeout (a listen queue full under a burst) is tried again the same way: that
/// request was never sent. Safe to repeat: every money write through the
/// router is idempotent by its key (Idempotency-Key, packet and uid, grant id, payment id),
/// and a 503 from a cell means "not done" or "done, not yet confirmed; repeat to learn".
/// Except a final refusal ([`FINAL_503_CODES`]: the flow is degraded), which goes to the
/// client at once.
async fn forward(
    ctx: &Ctx,
    snap: &Snapshot,
    decision: &Decision,
    out: &Outgoing,
    labels: &mut Labels,
    span: &tracing::Span,
) -> Result<Response, RouterError> {
    let mut deadline = Instant::now() + ctx.retry_unavailable;
    // After the first try, each retry routes by the map as it is then.
    let mut fresh: Option<Arc<Snapshot>> = None;
    let mut attempt = 0u32;
    loop {
        let snap = fresh.as_deref().unwrap_or(snap);
        let cell = target_for(snap, decision.slot).ok().map(|t| t.cell);
        // While the cell has not answered, the map may move the slot away from it (a frozen
        // or dead primary failed over): the request is then sent where the slot lives now,
        // at once and whatever the budget. The abandoned attempt cannot have been
        // acknowledged by the old primary (it lost the shard: §6.4), and the retry is safe
        // for the reason above.
        let once = forward_once(ctx, snap, decision, out, labels, span);
        let outcome = match &cell {
            Some(cell) => tokio::select! {
                r = once => Some(r),
                _ = ctx.maps.moved_away(decision.slot, cell) => None,
            },
            None => Some(once.await),
        };
        let Some(outcome) = outcome else {
            metrics::counter!("router_moved_retries_total").increment(1);
            tracing::info!(slot = decision.slot.get(), trace_id = %labels.trace_id,
                "the map moved the slot while its cell was answering: sending it to the new owner");
            fresh = Some(ctx.maps.current());
            // The new owner may still be promoting: a full budget to wait for it.
            deadline = Instant::now() + ctx.retry_unavailable;
            continue;
        };
        // A deliberate 503 from the cell, or no connection at all (never sent), is tried
        // again while the budget lasts; anything else is the answer.
        let (wait, last) = match outcome {
            Ok(resp) => match retry_after(&resp) {
                Some(wait) => match refusal(resp).await {
                    Refusal::Final(resp) => return Ok(resp),
                    Refusal::Pause(resp) => (wait, Ok(resp)),
                    Refusal::Unread(e) => (wait, Err(e)),
                },
                None => return Ok(resp),
            },
            Err(e @ RouterError::NotSent(_)) => (Duration::from_secs(1), Err(e)),
            Err(e) => return Err(e),
        };
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return last;
        }
        attempt += 1;
        metrics::counter!("router_unavailable_retries_total").increment(1);
        tracing::debug!(slot = decision.slot.get(), cell = %labels.cell, attempt, trace_id = %labels.trace_id, "cell paused or not connected: retrying");
        // Sooner than the cell's whole-second delay (a failover's pause is meant to last
        // well under a second): 25 ms, doubling to at most 200 ms (so a pause that ends is
        // noticed within 200 ms), at most the cell's delay, always within the budget.
        let backoff = Duration::from_millis((25u64 << (attempt - 1).min(3)).min(200));
        tokio::time::sleep(backoff.min(wait.max(Duration::from_millis(50))).min(left)).await;
        fresh = Some(ctx.maps.current());
    }
}

/// How long the cell asked to wait, when its answer is a deliberate `503` (with
/// `Retry-After` in seconds); `None` for any other answer.
fn retry_after(resp: &Response) -> Option<Duration> {
    if resp.status() != StatusCode::SERVICE_UNAVAILABLE {
        return None;
    }
    let secs: u64 = resp
        .headers()
        .get(axum::http::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_secs(secs))
}

/// Codes of a cell's `503` (with `Retry-After`) that are an answer, not a pause: the cell
/// refused the flow by itself and wrote nothing (`degraded`: C2C sends while its payment
/// breaker is open). Retrying would only hand the client the same refusal a whole retry
/// budget later.
const FINAL_503_CODES: &[&str] = &["degraded"];

/// The largest 503 body the router reads to learn its code (problem+json bodies are small).
const PROBLEM_READ_LIMIT: usize = 8 * 1024;

enum Refusal {
    /// Give it to the client as it is.
    Final(Response),
    /// A pause: retry within the budget (the response, kept whole, is the last word if the
    /// budget ends).
    Pause(Response),
    /// Its body could not be read: retried like a pause; the client gets this error (a
    /// problem+json 503) if the budget ends.
    Unread(RouterError),
}

/// Reads a cell's 503 problem body (small, declared length) to tell a final refusal from a
/// pause; anything else is a pause, as before.
async fn refusal(resp: Response) -> Refusal {
    let headers = resp.headers();
    let small = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok())
        .is_some_and(|n| n <= PROBLEM_READ_LIMIT);
    let problem = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.starts_with("application/problem+json"));
    if !(small && problem) {
        return Refusal::Pause(resp);
    }
    let (parts, body) = resp.into_parts();
    match axum::body::to_bytes(body, PROBLEM_READ_LIMIT).await {
        Ok(bytes) => {
            let code = serde_json::from_slice::<serde_json::Value>(&bytes)
                .ok()
                .and_then(|v| v["code"].as_str().map(str::to_owned));
            let resp = Response::from_parts(parts, Body::from(bytes));
            match code {
                Some(c) if FINAL_503_CODES.contains(&c.as_str()) => Refusal::Final(resp),
                _ => Refusal::Pause(resp),
            }
        }
        Err(e) => Refusal::Unread(RouterError::CellUnavailable(format!(
            "the cell's 503 could not be read: {e}"
        ))),
    }
}

async fn forward_once(
    ctx: &Ctx,
    snap: &Snapshot,
    decision: &Decision,
    out: &Outgoing,
    labels: &mut Labels,
    span: &tracing::Span,
) -> Result<Response, RouterError> {
    let first = target_for(snap, decision.slot)?;
    labels.cell = first.cell.to_string();
    span.record("cell", first.cell.as_str());
    span.record("epoch", first.route.map(|r| r.1 .0).unwrap_or(0));
    let resp = ctx.forwarder.send(&first, out).await?;
    if resp.status() != StatusCode::MISDIRECTED_REQUEST {
        return finish(resp, &first, ctx.forwarder.timeout());
    }
    // The cell does not own the slot (at our epoch): refresh the map, retry once.
    let body = ctx
        .forwarder
        .read_body(&first, resp, BODY_LIMIT)
        .await
        .unwrap_or_default();
    let hint = proxy::owner_hint(&body);
    ctx.maps.refresh().await;
    let fresh = ctx.maps.current();
    let mut retry = target_for(&fresh, decision.slot)?;
    if retry.cell == first.cell {
        // Our map did not move (raft-meta unreachable, or behind the cell). Follow the cell's
        // word only when it knows a newer epoch than ours, and only to a cell our map knows,
        // at the URL our map gives; a cell that is behind us is retried as it is.
        let ours = retry.route.map(|r| r.1).unwrap_or_default();
        if let Some((cell, Some(epoch))) = hint.filter(|(c, e)| *c != first.cell && *e > Some(ours))
        {
            if let Some(info) = fresh.map.as_ref().and_then(|m| m.cell(&cell)) {
                retry = Target {
                    cell,
                    url: info.url.clone(),
                    route: Some((decision.slot, epoch)),
                };
            }
        }
    }
    tracing::info!(slot = decision.slot.get(), from = %first.cell, to = %retry.cell, trace_id = %labels.trace_id, "421: retrying once");
    labels.cell = retry.cell.to_string();
    span.record("cell", retry.cell.as_str());
    span.record("epoch", retry.route.map(|r| r.1 .0).unwrap_or(0));
    let resp = ctx.forwarder.send(&retry, out).await?;
    if resp.status() == StatusCode::MISDIRECTED_REQUEST {
        return Err(RouterError::CellUnavailable(format!(
            "slot {} is moving between cells",
            decision.slot
        )));
    }
    finish(resp, &retry, ctx.forwarder.timeout())
}

fn finish(
    resp: proxy::CellResponse,
    target: &Target,
    idle: Duration,
) -> Result<Response, RouterError> {
    let status = resp.status();
    if status.is_server_error() && status != StatusCode::SERVICE_UNAVAILABLE {
        return Err(RouterError::CellUnavailable(format!(
            "cell {} answered {status}",
            target.cell
        )));
    }
    Ok(proxy::into_client_response(resp, &target.cell, idle))
}

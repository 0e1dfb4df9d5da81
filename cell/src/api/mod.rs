//! The HTTP API of one cell (API.md), for the slots it owns.

pub mod admin;
pub mod claims;
pub mod error;
pub mod extract;
pub mod internal;
pub mod openapi;
pub mod packets;
pub mod replication;
pub mod subsidies;
pub mod users;

use std::time::{Duration, Instant};

use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, MethodRouter};
use axum::Router;
use wire::headers;

use crate::app::Ctx;
use error::ApiError;

/// Every request ends within this, whatever it waits on.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Who a route is for. `Public` routes are API.md's (and the operational ones): each must
/// be in the OpenAPI document ([`openapi`]), which a test checks against [`ROUTES`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Audience {
    Public,
    /// Between cells, for operators through `cellctl`, or for tests (README's extensions).
    Internal,
}

/// One route: method, path, audience, whether a 2xx waits for the backup ([`durable`]),
/// and its handler.
pub struct RouteDef {
    pub method: Method,
    pub path: &'static str,
    pub audience: Audience,
    pub durable: bool,
    pub handler: fn() -> MethodRouter<Ctx>,
}

const fn route(
    method: Method,
    path: &'static str,
    audience: Audience,
    durable: bool,
    handler: fn() -> MethodRouter<Ctx>,
) -> RouteDef {
    RouteDef {
        method,
        path,
        audience,
        durable,
        handler,
    }
}

use Audience::{Internal, Public};

/// Every route of the cell: the one list [`router`] registers and the OpenAPI test reads.
pub const ROUTES: &[RouteDef] = &[
    route(Method::POST, "/v1/subsidies", Public, true, || {
        post(subsidies::handle_grant)
    }),
    route(
        Method::GET,
        "/v1/users/{uid}/subsidies",
        Public,
        false,
        || get(subsidies::handle_list_subsidies),
    ),
    route(Method::POST, "/v1/packets", Public, true, || {
        post(packets::handle_send)
    }),
    route(
        Method::GET,
        "/v1/packets/{packet_id}",
        Public,
        false,
        || get(packets::handle_get_packet),
    ),
    route(
        Method::POST,
        "/v1/packets/{packet_id}/claims",
        Public,
        true,
        || post(claims::handle_claim),
    ),
    route(
        Method::GET,
        "/v1/packets/{packet_id}/claims",
        Public,
        false,
        || get(claims::handle_list_claims),
    ),
    route(
        Method::POST,
        "/v1/payments/{payment_id}/callback",
        Public,
        true,
        || post(packets::handle_payment_callback),
    ),
    route(Method::GET, "/v1/users/{uid}/wallet", Public, false, || {
        get(users::handle_wallet)
    }),
    route(
        Method::GET,
        "/v1/users/{uid}/packets",
        Public,
        false,
        || get(users::handle_history),
    ),
    route(
        Method::POST,
        "/v1/internal/transfers",
        Internal,
        true,
        || post(internal::handle_receive_transfers),
    ),
    route(
        Method::POST,
        "/v1/internal/grants/reserve",
        Internal,
        true,
        || post(internal::handle_reserve_grant),
    ),
    route(
        Method::POST,
        "/v1/internal/grants/confirm",
        Internal,
        true,
        || post(internal::handle_confirm_grant),
    ),
    route(
        Method::POST,
        "/v1/internal/grants/resolve",
        Internal,
        true,
        || post(internal::handle_resolve_grant),
    ),
    route(Method::GET, "/v1/internal/journal", Internal, false, || {
        get(replication::handle_journal)
    }),
    route(
        Method::GET,
        "/v1/internal/snapshot",
        Internal,
        false,
        || get(replication::handle_snapshot),
    ),
    route(Method::GET, "/v1/internal/digest", Internal, false, || {
        get(replication::handle_digest)
    }),
    route(
        Method::GET,
        "/v1/internal/replication",
        Internal,
        false,
        || get(replication::handle_status),
    ),
    route(Method::GET, "/v1/internal/history", Internal, false, || {
        get(replication::handle_history)
    }),
    route(
        Method::POST,
        "/v1/internal/shards/{shard}/pause",
        Internal,
        false,
        || post(replication::handle_pause),
    ),
    route(
        Method::DELETE,
        "/v1/internal/shards/{shard}/pause",
        Internal,
        false,
        || delete(replication::handle_resume),
    ),
    route(
        Method::POST,
        "/v1/internal/replicas/{shard}/hold",
        Internal,
        false,
        || post(replication::handle_hold),
    ),
    route(
        Method::DELETE,
        "/v1/internal/replicas/{shard}/hold",
        Internal,
        false,
        || delete(replication::handle_release),
    ),
    route(
        Method::GET,
        "/v1/internal/replicas/{shard}/digest",
        Internal,
        false,
        || get(replication::handle_replica_digest),
    ),
    route(
        Method::GET,
        "/v1/admin/reconciliation",
        Public,
        false,
        || get(admin::handle_reconciliation),
    ),
    route(Method::POST, "/v1/admin/clock", Internal, false, || {
        post(admin::handle_clock)
    }),
    route(Method::GET, "/healthz", Public, false, || {
        get(admin::handle_healthz)
    }),
    route(Method::GET, "/readyz", Public, false, || {
        get(admin::handle_readyz)
    }),
    route(Method::GET, "/metrics", Public, false, || {
        get(admin::handle_metrics)
    }),
    route(Method::GET, "/openapi.json", Public, false, || {
        get(openapi::handle_openapi)
    }),
];

pub fn router(ctx: Ctx) -> Router {
    // Money-moving routes: a 2xx answer waits for the backup (see `durable`).
    let mut router = Router::new();
    for r in ROUTES {
        let mut method_router = (r.handler)();
        if r.durable {
            method_router =
                method_router.route_layer(middleware::from_fn_with_state(ctx.clone(), durable));
        }
        // Two entries with one path (GET and POST of the claims) merge into one route.
        router = router.route(r.path, method_router);
    }
    router
        .fallback(|| async { ApiError::not_found("not_found", "no such route") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "method not allowed on this route",
            )
        })
        .layer(middleware::from_fn_with_state(ctx.clone(), fence))
        .layer(middleware::from_fn_with_state(ctx.clone(), observe))
        .layer(middleware::from_fn(request_timeout))
        .layer(DefaultBodyLimit::max(extract::BODY_LIMIT))
        .with_state(ctx)
}

/// Ends a request still running after [`REQUEST_TIMEOUT`] with `503 timeout` (problem+json,
/// `Retry-After`); a body that never arrives is answered 408 well before, by the extractor.
async fn request_timeout(req: Request, next: Next) -> Response {
    match tokio::time::timeout(REQUEST_TIMEOUT, next.run(req)).await {
        Ok(res) => res,
        Err(_) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "timeout",
            format!("no answer within {} s; retry", REQUEST_TIMEOUT.as_secs()),
        )
        .retry_after(1)
        .into_response(),
    }
}

/// Fencing on the router's route decision: when a request says which slot and epoch it
/// was routed by (`x-redcell-slot`, `x-redcell-epoch`), this cell must own that slot at that
/// epoch, or it answers 421 with its own view so the router refreshes its map and retries.
/// Handlers still check the slot of the request's own routing key either way.
async fn fence(State(ctx): State<Ctx>, req: Request, next: Next) -> Response {
    let (slot, epoch) = {
        let header = |name: &str| {
            req.headers()
                .get(name)
                .map(|v| v.to_str().unwrap_or("?").to_owned())
        };
        (header(headers::SLOT), header(headers::EPOCH))
    };
    if slot.is_none() && epoch.is_none() {
        return next.run(req).await;
    }
    let slot = slot
        .and_then(|s| s.parse::<u16>().ok())
        .and_then(topology::Slot::new);
    let epoch = epoch.map(|e| e.parse::<u64>().map(topology::Epoch));
    let (Some(slot), Some(Ok(epoch))) = (slot, epoch) else {
        return ApiError::invalid(
            headers::SLOT,
            "x-redcell-slot and x-redcell-epoch go together, as numbers",
        )
        .into_response();
    };
    match ctx.shards.serve_at(slot, Some(epoch)) {
        Ok(_) => next.run(req).await,
        Err(e) => e.into_response(),
    }
}

/// Semi-synchronous acknowledgement at the edge of every money-moving route: a 2xx answer
/// leaves only once the backup of every shard the handler was routed to (`shards::tracking`)
/// has durably applied everything up to that shard's journal head after the handler ran
/// (which covers the handler's own commit, or the earlier commit a replay answers from), or
/// as raft-meta's policy allows (`replication::Durability` holds the invariant). A handler
/// routed to no shard waits for every shard served here, so forgetting cannot weaken it.
/// Otherwise 503 + Retry-After: the write is committed here, and a retry with the same key
/// is answered from it. One place, so no money route can forget it; a client that hangs up
/// drops only this wait.
async fn durable(State(ctx): State<Ctx>, req: Request, next: Next) -> Response {
    let (res, touched) = crate::shards::tracking(next.run(req)).await;
    if !res.status().is_success() {
        return res;
    }
    let shards = if touched.is_empty() {
        ctx.shards.all()
    } else {
        touched
    };
    for shard in shards {
        if let Err(e) = shard.durability.settle().await {
            return ApiError::from(e).into_response();
        }
    }
    res
}

/// Counts and times every request by route, and logs server-side failures.
async fn observe(State(_ctx): State<Ctx>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".into());
    let method = req.method().clone();
    let started = Instant::now();
    let res = next.run(req).await.into_response();
    let status = res.status();
    let elapsed = started.elapsed();
    metrics::counter!("redcell_http_requests_total", "route" => route.clone(), "status" => status.as_u16().to_string())
        .increment(1);
    metrics::histogram!("redcell_http_request_duration_seconds", "route" => route.clone())
        .record(elapsed.as_secs_f64());
    if status.is_server_error() {
        tracing::warn!(%method, route, status = status.as_u16(), ms = elapsed.as_millis() as u64, "request failed");
    }
    res
}

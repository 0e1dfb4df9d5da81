//! The redcell edge router: where all app traffic enters.
//!
//! It verifies every token, decides from the request alone which slot it belongs to (a uid
//! in the path, the token's subject, the body's `uid`, or the slot carried inside a minted
//! id), looks the slot's owner up in its copy of the map and forwards the request to that
//! cell over pooled connections, with `x-redcell-slot`, `x-redcell-epoch` and `traceparent`.
//! A `421` from a cell refreshes the map and retries once.
//!
//! The map comes from raft-meta's watch through the map follower the cells use too
//! (`raft_meta::follow`), and is persisted after every change, so the router
//! keeps routing on its last map when raft-meta is unreachable, also across a restart
//! (static stability). The router never touches a database, never decides ownership, and
//! never trusts a cell's answer about who owns a slot beyond one retry to a cell it knows.
//!
//! Crate map:
//! - [`settings`]: the binary's `Settings` (defaults, env `REDCELL_…`, flags).
//! - [`route`]: pure route decisions: method + path (+ principal + body) → flow and slot, or
//!   the refusal (404/400/403).
//! - [`mapstate`]: the current map and switches (the route table), loaded from `map.json`
//!   or `--map`, and kept current as the hook of raft-meta's shared map follower
//!   (`raft_meta::follow`), which also persists it.
//! - [`proxy`]: forwarding to a cell (hyper pooled client, timeouts, 421 retry).
//! - [`recon`]: `GET /v1/admin/reconciliation` fanned out to every cell and summed.
//! - [`tokens`]: token verification, remembering verified tokens until they expire.
//! - [`limit`]: rate limits (global and per uid), in process; [`limit_redis`]: the same
//!   cluster-wide through Redis.
//! - [`telemetry`]: trace context in and out, OTLP export when configured.
//! - [`error`]: the one error type that picks HTTP statuses (problem+json).
//! - [`app`]: wiring: [`app::App::build`] binds, [`app::App::run_until_stopped`] serves.
#![forbid(unsafe_code)]

pub mod app;
pub mod error;
pub mod limit;
pub mod limit_redis;
pub mod mapstate;
pub mod proxy;
pub mod recon;
pub mod route;
pub mod settings;
pub mod telemetry;
pub mod tokens;

/// The name of the one span each public request runs in (`tracing::info_span!` needs the
/// literal; `app::handle_public` spells the same). The log leaves it out; OTLP exports it.
pub const REQUEST_SPAN: &str = "router.request";

/// Request bodies over this many bytes are refused with 413 (API.md).
pub const BODY_LIMIT: usize = 64 * 1024;

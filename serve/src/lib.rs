//! The one HTTP/1.1 serving loop of every redcell process (cell, router, raft-meta).
//!
//! It owns what happens to a connection before and around the application: accepting
//! (TCP_NODELAY), the cap on open connections ([`Limits::max_connections`], a full process
//! answers `503 overloaded` and closes instead of hanging), the time a client has to send a
//! request head ([`Limits::header_timeout_ms`], which with hyper is also the idle bound of a
//! keep-alive connection), the size of what it lets reach the application (URI, headers),
//! problem+json for every error it or the layers under the application would otherwise
//! answer without a body, and graceful shutdown (stop accepting, let in-flight requests
//! finish, then return).
//!
//! It must never know a route, a token or a cell: it takes any axum service and gives it
//! requests. Errors a handler returns are the application's; this crate only dresses an
//! error response that has no body at all.
//!
//! - [`Limits`]: the knobs, as clap flags each binary flattens into its settings.
//! - [`serve`]: the accept loop.
//! - [`listen::bind`]: the listening socket (one a supervisor passed down, or a bind).
//! - [`problem`]: problem+json responses in the shape of `wire::problem::Problem`.

#![forbid(unsafe_code)]

mod limits;
pub mod listen;
pub mod problem;
mod serving;

pub use limits::{Limits, HYPER_MAX_HEADERS, MAX_HEADERS, MAX_HEADER_BYTES, MAX_URI_BYTES};
pub use serving::serve;

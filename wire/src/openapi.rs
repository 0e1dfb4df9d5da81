//! The public API's OpenAPI 3.1 document, as the router and the cells serve it at
//! `GET /openapi.json`. Generated from the cell's handlers (`cell/src/api/openapi.rs`); a
//! cell test fails when this file differs from what the code generates
//! (`REDCELL_BLESS=1 cargo test -p cell --lib openapi` rewrites it).

/// The document's JSON text.
pub const PUBLIC: &str = include_str!("../openapi/public.json");

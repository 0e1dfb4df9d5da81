//! The HTTP headers a router and a cell agree on (DESIGN.md §3).
//!
//! All lower case, as `http::HeaderName` wants them.

/// The slot the router routed the request by (a number in `0..1024`). Set by the router only:
/// a client's value is dropped before forwarding.
pub const SLOT: &str = "x-redcell-slot";

/// The epoch at which the router believes the slot's owner holds it. Goes with [`SLOT`]; a cell
/// that owns the slot at another epoch answers 421 ([`crate::WrongCell`]).
pub const EPOCH: &str = "x-redcell-epoch";

/// Added by the router to every forwarded response: the cell that answered.
pub const CELL: &str = "x-redcell-cell";

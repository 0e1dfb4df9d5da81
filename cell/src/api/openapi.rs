//! The public API's OpenAPI 3.1 document, generated from the handlers' `#[utoipa::path]`
//! annotations and the body types here (API.md is the prose; this is the machine form).
//!
//! The cell serves it at `GET /openapi.json`; the router serves the same document, which is
//! committed as `wire/openapi/public.json` (a test fails when that file is stale, and
//! another when a public route of [`super::ROUTES`] is missing from the document).
//!
//! Problems common to every operation (400, 401, 403, 404, 405, 408, 413, 414, 421, 431,
//! 503 with `Retry-After`) are added to each operation by [`Common`], so that a handler's
//! annotation lists only what is particular to it.

use serde::Serialize;
use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::response::ResponseBuilder;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::openapi::{
    ContentBuilder, ObjectBuilder, OpenApi as Document, Ref, RefOr, Response, Type,
};
use utoipa::{Modify, OpenApi, ToSchema};

use super::{admin, claims, packets, subsidies, users};

/// Every stable `code` a problem+json body of a public route may carry (API.md and the
/// extensions in README.md).
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
#[allow(dead_code)]
pub enum ProblemCode {
    InvalidRequest,
    Unauthorized,
    Forbidden,
    NotFound,
    PacketNotFound,
    SubsidyNotFound,
    MethodNotAllowed,
    RequestTimeout,
    PacketNotActive,
    GrantIdConflict,
    SubsidyUnavailable,
    PacketExhausted,
    PacketExpired,
    PayloadTooLarge,
    UriTooLong,
    WrongCell,
    StaleEpoch,
    IdempotencyKeyReused,
    RateLimited,
    ClaimBusy,
    TooManyHeaders,
    HeadersTooLarge,
    Degraded,
    CellUnavailable,
    Overloaded,
    Timeout,
    Unavailable,
}

/// `application/problem+json` (RFC 9457). A `421` adds `slot`, `owner`, `owner_url`,
/// `epoch` (`wrong_cell`) or `slot`, `map_epoch`, `shard_epoch` (`stale_epoch`).
#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
pub struct Problem {
    #[serde(rename = "type")]
    #[schema(example = "https://redcell.dev/problems/packet_exhausted")]
    kind: String,
    title: String,
    #[schema(minimum = 400, maximum = 599)]
    status: u16,
    code: ProblemCode,
    detail: String,
}

/// `POST /v1/subsidies`.
#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
pub struct GrantRequest {
    /// The activity system's order id: 1–64 visible ASCII characters.
    #[schema(min_length = 1, max_length = 64, example = "act-2026-0001")]
    grant_id: String,
    #[schema(
        min_length = 1,
        max_length = 64,
        pattern = "^[A-Za-z0-9_.-]{1,64}$",
        example = "u42"
    )]
    uid: String,
    /// Cents.
    #[schema(minimum = 1, example = 888)]
    amount: i64,
    /// RFC 3339, in the future.
    #[schema(format = DateTime, example = "2030-12-31T00:00:00Z")]
    expires_at: String,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
#[allow(dead_code)]
pub enum PacketKind {
    C2c,
    B2c,
}

/// `POST /v1/packets`: `c2c` with `total`; `b2c` with `subsidy_id` (its total is the
/// subsidy's amount).
#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
pub struct SendRequest {
    kind: PacketKind,
    /// Cents, 1..=20000 by default, at least `count`.
    #[schema(minimum = 1, example = 1000)]
    total: Option<i64>,
    #[schema(minimum = 1, maximum = 100, example = 10)]
    count: i64,
    #[schema(max_length = 64, example = "新年快乐")]
    greeting: Option<String>,
    #[schema(minimum = 60, maximum = 259200, example = 86400)]
    expires_in_s: Option<i64>,
    #[schema(max_length = 40)]
    subsidy_id: Option<String>,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
#[allow(dead_code)]
pub enum CallbackStatus {
    Succeeded,
    Failed,
}

/// `POST /v1/payments/{payment_id}/callback`.
#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
pub struct CallbackRequest {
    status: CallbackStatus,
}

#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
pub struct Subsidy {
    subsidy_id: String,
    grant_id: String,
    uid: String,
    amount: i64,
    /// `available`, `used` or `expired`.
    status: String,
    #[schema(format = DateTime)]
    expires_at: String,
}

#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
pub struct SubsidyList {
    subsidies: Vec<Subsidy>,
}

#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
pub struct PaymentView {
    payment_id: String,
    amount: i64,
    /// `pending`, `succeeded` or `failed`.
    status: String,
}

#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
pub struct Packet {
    packet_id: String,
    sender: String,
    kind: PacketKind,
    total: i64,
    count: i64,
    remaining_amount: i64,
    remaining_count: i64,
    /// `awaiting_payment`, `active`, `exhausted`, `expired`, `refunded`, `cancelled`.
    status: String,
    greeting: String,
    #[schema(format = DateTime)]
    created_at: String,
    #[schema(format = DateTime)]
    expires_at: String,
    /// `c2c` only.
    #[serde(skip_serializing_if = "Option::is_none")]
    payment: Option<PaymentView>,
    /// `b2c` only.
    #[serde(skip_serializing_if = "Option::is_none")]
    subsidy_id: Option<String>,
}

#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
pub struct Transfer {
    transfer_id: String,
    /// `pending` or `completed`.
    status: String,
}

#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
pub struct Claim {
    claim_id: String,
    packet_id: String,
    uid: String,
    amount: i64,
    #[schema(format = DateTime)]
    claimed_at: String,
    remaining_count: i64,
    transfer: Transfer,
}

#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
pub struct ClaimListItem {
    uid: String,
    amount: i64,
    #[schema(format = DateTime)]
    claimed_at: String,
}

#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
pub struct ClaimList {
    claims: Vec<ClaimListItem>,
    /// Once the packet is exhausted.
    best_uid: Option<String>,
}

#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
pub struct CallbackReply {
    payment_id: String,
    /// `succeeded` or `failed`.
    status: String,
    packet_id: String,
}

#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
pub struct Wallet {
    uid: String,
    /// Completed credits, cents.
    balance: i64,
}

/// A received history item: a credit in the user's home cell.
#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
pub struct Received {
    transfer_id: String,
    packet_id: String,
    amount: i64,
    #[schema(format = DateTime)]
    received_at: String,
}

#[derive(Serialize, ToSchema)]
#[serde(untagged)]
#[allow(dead_code)]
pub enum HistoryItem {
    Sent(Packet),
    Received(Received),
}

#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
pub struct History {
    items: Vec<HistoryItem>,
    next_cursor: Option<String>,
}

#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
pub struct Totals {
    funded: i64,
    wallets: i64,
    escrow: i64,
    in_flight: i64,
    transferred_in: Option<i64>,
    transferred_out: Option<i64>,
}

#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
pub struct Reconciliation {
    ok: bool,
    findings: Vec<serde_json::Value>,
    totals: Totals,
}

#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
pub struct Status {
    status: String,
}

/// The query of `GET /v1/users/{uid}/packets`.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct HistoryParams {
    /// `sent` (default) or `received`.
    #[param(pattern = "^(sent|received)$")]
    role: Option<String>,
    /// 1..=100, default 50.
    #[param(pattern = "^[0-9]{1,3}$")]
    limit: Option<String>,
    /// `next_cursor` of the previous page.
    #[param(max_length = 200)]
    cursor: Option<String>,
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "redcell",
        description = "The public API of redcell (API.md): red packets, subsidies, claims, wallets.",
        version = "1",
    ),
    paths(
        subsidies::handle_grant,
        subsidies::handle_list_subsidies,
        packets::handle_send,
        packets::handle_get_packet,
        claims::handle_claim,
        claims::handle_list_claims,
        packets::handle_payment_callback,
        users::handle_wallet,
        users::handle_history,
        admin::handle_reconciliation,
        admin::handle_healthz,
        admin::handle_readyz,
        admin::handle_metrics,
        handle_openapi,
    ),
    modifiers(&Common),
)]
struct Public;

/// The public document.
pub fn document() -> Document {
    Public::openapi()
}

/// The public document as the router serves it (`wire/openapi/public.json`).
pub fn document_json() -> String {
    document()
        .to_pretty_json()
        .expect("the document serializes")
}

/// `GET /openapi.json`: this document.
#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    responses((status = 200, description = "this document (OpenAPI 3.1)", content_type = "application/json", body = Object)))]
pub async fn handle_openapi() -> axum::response::Response {
    use axum::response::IntoResponse;
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        wire::openapi::PUBLIC,
    )
        .into_response()
}

fn problem(description: &str, retry_after: bool) -> RefOr<Response> {
    let mut r = ResponseBuilder::new().description(description).content(
        "application/problem+json",
        ContentBuilder::new()
            .schema(Some(Ref::from_schema_name("Problem")))
            .build(),
    );
    if retry_after {
        r = r.header(
            "Retry-After",
            HeaderBuilder::new()
                .schema(
                    ObjectBuilder::new()
                        .schema_type(Type::Integer)
                        .minimum(Some(0)),
                )
                .description(Some("seconds"))
                .build(),
        );
    }
    RefOr::T(r.build())
}

/// The bearer scheme, and the problems every operation may answer.
struct Common;

impl Modify for Common {
    fn modify(&self, doc: &mut Document) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                Http::builder()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
        for item in doc.paths.paths.values_mut() {
            let ops = [
                &mut item.get,
                &mut item.post,
                &mut item.put,
                &mut item.delete,
                &mut item.patch,
            ];
            for op in ops.into_iter().flatten() {
                let secured = op.security.is_some();
                let mut common = vec![
                    (
                        "400",
                        "invalid_request: the detail names the field or header",
                        false,
                    ),
                    ("404", "not_found (and the route's own 404 codes)", false),
                    ("405", "method_not_allowed", false),
                    (
                        "408",
                        "request_timeout: a declared body did not arrive in time",
                        false,
                    ),
                    ("413", "payload_too_large: bodies over 64 KiB", false),
                    ("414", "uri_too_long", false),
                    (
                        "421",
                        "wrong_cell / stale_epoch: another cell serves this slot",
                        false,
                    ),
                    ("431", "too_many_headers / headers_too_large", false),
                    ("429", "rate_limited (router)", true),
                    (
                        "503",
                        "degraded (a switch is off; on a C2C send also: the cell's payment breaker is open, nothing written), cell_unavailable, overloaded, timeout",
                        true,
                    ),
                ];
                if secured {
                    common.push(("401", "unauthorized: a missing or bad token", false));
                    common.push((
                        "403",
                        "forbidden: the token's subject or scope may not",
                        false,
                    ));
                }
                for (status, description, retry) in common {
                    op.responses
                        .responses
                        .entry(status.to_owned())
                        .or_insert_with(|| problem(description, retry));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Audience, ROUTES};
    use super::*;

    fn operation<'a>(
        doc: &'a Document,
        method: &axum::http::Method,
        path: &str,
    ) -> Option<&'a utoipa::openapi::path::Operation> {
        let item = doc.paths.paths.get(path)?;
        match *method {
            axum::http::Method::GET => item.get.as_ref(),
            axum::http::Method::POST => item.post.as_ref(),
            axum::http::Method::DELETE => item.delete.as_ref(),
            axum::http::Method::PUT => item.put.as_ref(),
            _ => None,
        }
    }

    /// Every public route the cell registers is in the document, and the document has no
    /// operation the cell does not register as public.
    #[test]
    fn every_public_route_is_documented_and_nothing_else() {
        let doc = document();
        let mut public = 0;
        for r in ROUTES.iter().filter(|r| r.audience == Audience::Public) {
            public += 1;
            assert!(
                operation(&doc, &r.method, r.path).is_some(),
                "{} {} is a public route but missing from the OpenAPI document",
                r.method,
                r.path
            );
        }
        let documented: usize = doc
            .paths
            .paths
            .values()
            .map(|i| {
                [&i.get, &i.post, &i.put, &i.delete, &i.patch]
                    .iter()
                    .filter(|o| o.is_some())
                    .count()
            })
            .sum();
        assert_eq!(
            documented, public,
            "the document has an operation no public route serves"
        );
        for r in ROUTES.iter().filter(|r| r.audience == Audience::Internal) {
            assert!(
                operation(&doc, &r.method, r.path).is_none(),
                "{} is internal",
                r.path
            );
        }
    }

    /// Authenticated operations say so, and every operation documents its problems.
    #[test]
    fn operations_carry_bearer_auth_and_problems() {
        let doc = document();
        let json: serde_json::Value = serde_json::from_str(&document_json()).unwrap();
        assert!(json["openapi"].as_str().unwrap().starts_with("3.1"));
        assert_eq!(
            json["components"]["securitySchemes"]["bearer"]["scheme"],
            "bearer"
        );
        let codes = json["components"]["schemas"]["ProblemCode"]["enum"]
            .as_array()
            .unwrap();
        for code in [
            "invalid_request",
            "claim_busy",
            "degraded",
            "cell_unavailable",
            "idempotency_key_reused",
        ] {
            assert!(codes.iter().any(|c| c == code), "{code}");
        }
        let send = &json["paths"]["/v1/packets"]["post"];
        assert!(send["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == "Idempotency-Key" && p["in"] == "header"));
        assert!(send["responses"]["503"]["headers"]["Retry-After"].is_object());
        assert!(
            json["paths"]["/v1/packets/{packet_id}/claims"]["post"]["responses"]["429"]["headers"]
                ["Retry-After"]
                .is_object()
        );
        for r in ROUTES.iter().filter(|r| r.audience == Audience::Public) {
            let op = operation(&doc, &r.method, r.path).unwrap();
            let open = ["/healthz", "/readyz", "/metrics", "/openapi.json"].contains(&r.path);
            assert_eq!(op.security.is_none(), open, "{} {}", r.method, r.path);
            assert!(op.responses.responses.contains_key("503"), "{}", r.path);
        }
    }

    /// The committed copy the router serves is what this code generates.
    #[test]
    fn committed_public_document_is_current() {
        let generated = document_json() + "\n";
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../wire/openapi/public.json");
        if std::env::var_os("REDCELL_BLESS").is_some() {
            std::fs::write(path, &generated).unwrap();
            return;
        }
        assert!(
            wire::openapi::PUBLIC == generated,
            "wire/openapi/public.json is stale: run REDCELL_BLESS=1 cargo test -p cell --lib openapi"
        );
    }
}

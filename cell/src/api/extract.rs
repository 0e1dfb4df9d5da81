//! Extractors that validate at the edge: credentials, JSON bodies (64 KiB at most, errors
//! naming the field), path ids and query strings. Each rejection is an [`ApiError`].

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::request::Parts;
use axum::http::StatusCode;
use serde::de::DeserializeOwned;
use topology::auth::Principal;
use topology::{IdKind, MintedId, Uid};

use super::error::ApiError;
use crate::app::Ctx;

/// Bodies over this many bytes are refused with 413 (API.md).
pub const BODY_LIMIT: usize = 64 * 1024;

/// The verified caller.
pub struct Caller(pub Principal);

impl FromRequestParts<Ctx> for Caller {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, ctx: &Ctx) -> Result<Self, ApiError> {
        let header = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .map(|v| v.to_str());
        let header = match header {
            Some(Ok(v)) => Some(v),
            Some(Err(_)) => {
                return Err(ApiError::unauthorized(
                    "the Authorization header is not text",
                ))
            }
            None => None,
        };
        ctx.verifier
            .verify_header(header)
            .map(Caller)
            .map_err(|e| ApiError::unauthorized(e.to_string()))
    }
}

impl Caller {
    /// The caller as an app user; services cannot act as users.
    pub fn user(&self) -> Result<&Uid, ApiError> {
        self.0
            .uid()
            .ok_or_else(|| ApiError::forbidden("only an app user may do this"))
    }

    pub fn require_scope(&self, scope: &str) -> Result<(), ApiError> {
        if self.0.has_scope(scope) {
            Ok(())
        } else {
            Err(ApiError::forbidden(format!("requires scope {scope}")))
        }
    }

    /// The user themself, or an admin.
    pub fn may_read(&self, uid: &Uid) -> Result<(), ApiError> {
        if self.0.uid() == Some(uid) || self.0.is_admin() {
            Ok(())
        } else {
            Err(ApiError::forbidden(
                "a user may only read their own records",
            ))
        }
    }
}

/// Who may call a route: checked by [`Authorized`] while the request's head is extracted,
/// before any body extractor reads a byte (axum runs the body extractor last), so a caller
/// without the authority is told 403 and never learns what the body's validation says.
pub trait Rule {
    fn check(caller: &Caller) -> Result<(), ApiError>;
}

/// The verified caller, allowed by `R`. Use it in place of [`Caller`] on every route whose
/// permission does not depend on the body.
pub struct Authorized<R: Rule>(pub Caller, std::marker::PhantomData<R>);

impl<R: Rule> std::ops::Deref for Authorized<R> {
    type Target = Caller;
    fn deref(&self) -> &Caller {
        &self.0
    }
}

impl<R: Rule> FromRequestParts<Ctx> for Authorized<R> {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, ctx: &Ctx) -> Result<Self, ApiError> {
        let caller = Caller::from_request_parts(parts, ctx).await?;
        R::check(&caller)?;
        Ok(Authorized(caller, std::marker::PhantomData))
    }
}

/// Rules, one per kind of caller a route admits.
pub mod rule {
    use super::{ApiError, Caller, Rule};

    /// An app user (services cannot act as users).
    pub struct AppUser;
    impl Rule for AppUser {
        fn check(c: &Caller) -> Result<(), ApiError> {
            c.user().map(|_| ())
        }
    }

    /// Another cell (scope `internal`).
    pub struct Internal;
    impl Rule for Internal {
        fn check(c: &Caller) -> Result<(), ApiError> {
            c.require_scope("internal")
        }
    }

    /// Another cell or an operator (`internal` or `admin`).
    pub struct InternalOrAdmin;
    impl Rule for InternalOrAdmin {
        fn check(c: &Caller) -> Result<(), ApiError> {
            if c.0.has_scope("internal") || c.0.is_admin() {
                Ok(())
            } else {
                Err(ApiError::forbidden("requires scope internal or admin"))
            }
        }
    }

    /// An operator (`admin`).
    pub struct Admin;
    impl Rule for Admin {
        fn check(c: &Caller) -> Result<(), ApiError> {
            if c.0.is_admin() {
                Ok(())
            } else {
                Err(ApiError::forbidden("requires scope admin"))
            }
        }
    }

    /// The activity service granting subsidies (`subsidy:grant`).
    pub struct GrantsSubsidies;
    impl Rule for GrantsSubsidies {
        fn check(c: &Caller) -> Result<(), ApiError> {
            c.require_scope("subsidy:grant")
        }
    }

    /// The payment provider's callback (`payment:callback`).
    pub struct PaymentCallback;
    impl Rule for PaymentCallback {
        fn check(c: &Caller) -> Result<(), ApiError> {
            c.require_scope("payment:callback")
        }
    }
}

/// A JSON body parsed into `T`, and its canonical text (for idempotency hashing).
pub struct Json<T> {
    pub value: T,
    pub canonical: String,
}

/// The whole body, within [`BODY_LIMIT`] bytes and the cell's body timeout: a client that
/// declares a body and never sends it gets a timely 408, not the request timeout's 503.
async fn body_bytes(req: Request, ctx: &Ctx) -> Result<Bytes, ApiError> {
    let read = axum::body::to_bytes(req.into_body(), BODY_LIMIT);
    match tokio::time::timeout(ctx.body_timeout, read).await {
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(_)) => Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("bodies are limited to {BODY_LIMIT} bytes"),
        )),
        Err(_) => Err(ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "request_timeout",
            format!(
                "the request body did not arrive within {} ms",
                ctx.body_timeout.as_millis()
            ),
        )),
    }
}

pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<Json<T>, ApiError> {
    let raw: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|e| ApiError::invalid("body", format!("not JSON: {e}")))?;
    if !raw.is_object() {
        return Err(ApiError::invalid("body", "must be a JSON object"));
    }
    let canonical = raw.to_string();
    let value = serde_path_to_error::deserialize(raw).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." { "body".to_owned() } else { path };
        ApiError::invalid(&field, e.into_inner())
    })?;
    Ok(Json { value, canonical })
}

impl<T: DeserializeOwned> FromRequest<Ctx> for Json<T> {
    type Rejection = ApiError;
    async fn from_request(req: Request, ctx: &Ctx) -> Result<Self, ApiError> {
        let bytes = body_bytes(req, ctx).await?;
        if bytes.is_empty() {
            return Err(ApiError::invalid("body", "a JSON body is required"));
        }
        parse_json(&bytes)
    }
}

/// A body that may be empty; when present it must be a JSON object.
pub struct OptionalBody;

impl FromRequest<Ctx> for OptionalBody {
    type Rejection = ApiError;
    async fn from_request(req: Request, ctx: &Ctx) -> Result<Self, ApiError> {
        let bytes = body_bytes(req, ctx).await?;
        if !bytes.iter().all(u8::is_ascii_whitespace) {
            parse_json::<serde_json::Map<String, serde_json::Value>>(&bytes)?;
        }
        Ok(OptionalBody)
    }
}

/// The single `{…}` segment of a path, as text.
pub struct PathText(pub String);

impl FromRequestParts<Ctx> for PathText {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, ctx: &Ctx) -> Result<Self, ApiError> {
        Path::<String>::from_request_parts(parts, ctx)
            .await
            .map(|Path(s)| PathText(s))
            .map_err(|e| ApiError::invalid("path", e.body_text()))
    }
}

impl PathText {
    pub fn uid(&self) -> Result<Uid, ApiError> {
        Uid::parse(&self.0).map_err(|e| ApiError::invalid("uid", e))
    }

    pub fn id(&self, kind: IdKind, field: &str) -> Result<MintedId, ApiError> {
        MintedId::parse(kind, &self.0).map_err(|e| ApiError::invalid(field, e))
    }
}

/// A query string parsed into `T`.
pub struct QueryOf<T>(pub T);

impl<T: DeserializeOwned + Send> FromRequestParts<Ctx> for QueryOf<T> {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, ctx: &Ctx) -> Result<Self, ApiError> {
        Query::<T>::from_request_parts(parts, ctx)
            .await
            .map(|Query(q)| QueryOf(q))
            .map_err(|e| ApiError::invalid("query", e.body_text()))
    }
}

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

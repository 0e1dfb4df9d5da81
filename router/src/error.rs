//! The router's one error type; it alone picks HTTP statuses and problem+json bodies.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// Why the router answered a request itself instead of the cell's answer.
#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    #[error("{1}")]
    NotFound(&'static str, String),
    #[error("{0} is not allowed on this route")]
    MethodNotAllowed(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{field}: {detail}")]
    Invalid { field: &'static str, detail: String },
    #[error("request bodies are limited to 65536 bytes")]
    PayloadTooLarge,
    #[error("{message}")]
    Degraded { switch: String, message: String },
    #[error("{0}")]
    CellUnavailable(String),
    /// The cell could not be reached in time and the request was never sent: safe to try
    /// again whatever it is (the router does, within its retry budget).
    #[error("{0}")]
    NotSent(String),
    #[error("too many requests ({0})")]
    RateLimited(&'static str, u64),
}

impl RouterError {
    pub fn invalid(field: &'static str, detail: impl Into<String>) -> RouterError {
        RouterError::Invalid {
            field,
            detail: detail.into(),
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            RouterError::NotFound(..) => StatusCode::NOT_FOUND,
            RouterError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            RouterError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            RouterError::Forbidden(_) => StatusCode::FORBIDDEN,
            RouterError::Invalid { .. } => StatusCode::BAD_REQUEST,
            RouterError::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            RouterError::Degraded { .. }
            | RouterError::CellUnavailable(_)
            | RouterError::NotSent(_) => StatusCode::SERVICE_UNAVAILABLE,
            RouterError::RateLimited(..) => StatusCode::TOO_MANY_REQUESTS,
        }
    }

    /// The stable `code` of API.md.
    pub fn code(&self) -> &'static str {
        match self {
            RouterError::NotFound(code, _) => code,
            RouterError::MethodNotAllowed(_) => "method_not_allowed",
            RouterError::Unauthorized(_) => "unauthorized",
            RouterError::Forbidden(_) => "forbidden",
            RouterError::Invalid { .. } => "invalid_request",
            RouterError::PayloadTooLarge => "payload_too_large",
            RouterError::Degraded { .. } => "degraded",
            RouterError::CellUnavailable(_) | RouterError::NotSent(_) => "cell_unavailable",
            RouterError::RateLimited(..) => "rate_limited",
        }
    }

    /// Seconds a client should wait before retrying, for the statuses that carry one.
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            RouterError::Degraded { .. } => Some(5),
            RouterError::CellUnavailable(_) | RouterError::NotSent(_) => Some(1),
            RouterError::RateLimited(_, s) => Some(*s),
            _ => None,
        }
    }
}

impl IntoResponse for RouterError {
    fn into_response(self) -> Response {
        let status = self.status();
        let mut body = json!({
            "type": format!("https://redcell.dev/problems/{}", self.code()),
            "title": status.canonical_reason().unwrap_or("error"),
            "status": status.as_u16(),
            "code": self.code(),
            "detail": self.to_string(),
        });
        if let RouterError::Degraded { switch, .. } = &self {
            body["switch"] = json!(switch);
        }
        let mut resp = (status, body.to_string()).into_response();
        let headers = resp.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if matches!(self, RouterError::PayloadTooLarge) {
            // The unread rest of the body is still on the wire: this connection is done, and
            // saying so keeps clients from reusing it.
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        if let Some(s) = self.retry_after() {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        resp
    }
}

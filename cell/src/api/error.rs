//! The one place errors become HTTP: `application/problem+json` with a stable `code`.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use crate::claims::ClaimError;
use crate::domain::validate::Invalid;
use crate::fence::FenceError;
use crate::store::StoreError;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub detail: String,
    pub retry_after_s: Option<u32>,
    /// Extra members of the problem object (e.g. the owner cell of a 421).
    pub extra: Option<Value>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            detail: detail.into(),
            retry_after_s: None,
            extra: None,
        }
    }

    pub fn invalid(field: &str, reason: impl std::fmt::Display) -> ApiError {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            format!("{field}: {reason}"),
        )
    }

    pub fn unauthorized(detail: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", detail)
    }

    pub fn forbidden(detail: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, "forbidden", detail)
    }

    pub fn not_found(code: &'static str, detail: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, code, detail)
    }

    pub fn retry_after(mut self, seconds: u32) -> ApiError {
        self.retry_after_s = Some(seconds);
        self
    }

    /// 503 `degraded`: a feature is paused by the cell itself (the payment breaker) while
    /// the rest serves; the same code as the router's switches.
    pub fn degraded(detail: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "degraded", detail).retry_after(1)
    }

    pub fn unavailable(detail: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "cell_unavailable", detail).retry_after(1)
    }
}

impl From<Invalid> for ApiError {
    fn from(e: Invalid) -> ApiError {
        ApiError::invalid(&e.field, e.reason)
    }
}

/// The fence refused the write inside its transaction (nothing was written): 421
/// `stale_epoch`, distinct from the request-time `wrong_cell` because this cell's map said
/// it owned the slot. The caller (router or peer) should refresh its map and retry where
/// the slot lives now.
impl From<FenceError> for ApiError {
    fn from(e: FenceError) -> ApiError {
        tracing::warn!(error = %e, "write refused by the fence");
        let extra = match &e {
            FenceError::StaleEpoch {
                slot,
                map_epoch,
                shard_epoch,
            } => json!({"slot": slot, "map_epoch": map_epoch, "shard_epoch": shard_epoch}),
            FenceError::NotHeld { slot, map_epoch } => {
                json!({"slot": slot, "map_epoch": map_epoch, "shard_epoch": null})
            }
            FenceError::NotOwned { slot } => json!({"slot": slot}),
            FenceError::NoMap => return ApiError::unavailable("this cell has no map yet"),
        };
        let mut err = ApiError::new(
            StatusCode::MISDIRECTED_REQUEST,
            "stale_epoch",
            e.to_string(),
        );
        err.extra = Some(extra);
        err
    }
}

/// A planned failover is moving the shard: the write is refused before it began (nothing
/// written), `Retry-After: 1`; the router retries it itself, so a client sees latency.
fn paused() -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "cell_unavailable",
        "the shard's writes are paused for a planned failover; retry",
    )
    .retry_after(1)
}

impl From<crate::replication::DurabilityError> for ApiError {
    fn from(e: crate::replication::DurabilityError) -> ApiError {
        ApiError::unavailable(e.to_string()).retry_after(1)
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        if let StoreError::Fenced(f) = e {
            return f.into();
        }
        if let StoreError::Paused = e {
            return paused();
        }
        tracing::error!(error = %e, "storage failed");
        ApiError::unavailable("the cell's database is unavailable; retry")
    }
}

impl From<ClaimError> for ApiError {
    fn from(e: ClaimError) -> ApiError {
        if let ClaimError::Store(s) = &e {
            if let Some(f) = s.fenced() {
                return f.clone().into();
            }
            if let StoreError::Paused = **s {
                return paused();
            }
        }
        tracing::error!(error = %e, "claim failed");
        ApiError::unavailable("the claim could not be committed; retry")
    }
}

fn title(status: StatusCode) -> &'static str {
    status.canonical_reason().unwrap_or("Error")
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({
            "type": format!("https://redcell.dev/problems/{}", self.code),
            "title": title(self.status),
            "status": self.status.as_u16(),
            "code": self.code,
            "detail": self.detail,
        });
        if let (Some(Value::Object(extra)), Some(obj)) = (self.extra, body.as_object_mut()) {
            obj.extend(extra);
        }
        let mut res = (self.status, body.to_string()).into_response();
        let headers = res.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some(s) = self.retry_after_s {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        res
    }
}

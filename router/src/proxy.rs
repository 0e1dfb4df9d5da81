//! Forwarding to a cell: pooled HTTP/1.1 connections (hyper-util), a timeout on every
//! attempt, routing headers added, hop-by-hop headers dropped, response bodies streamed back.
//!
//! Request bodies are at most 64 KiB and already read (the router needs some of them to
//! route, and a `421` retry must resend them), so they travel as one `Full<Bytes>`.

use std::future::Future;
use std::pin::Pin;
use std::str::FromStr;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::http::uri::PathAndQuery;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, Request, Response, Uri};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rand::Rng;
use topology::{CellId, Epoch, Slot};

use crate::error::RouterError;

pub const SLOT_HEADER: &str = "x-redcell-slot";
pub const EPOCH_HEADER: &str = "x-redcell-epoch";
/// Added to every forwarded response: the cell that answered.
pub const CELL_HEADER: &str = "x-redcell-cell";

/// Headers that belong to one connection, never forwarded (RFC 9110 §7.6.1), plus `host`
/// (the client builds its own) and the routing headers a caller must not set.
const DROPPED: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
    SLOT_HEADER,
    EPOCH_HEADER,
    CELL_HEADER,
    "traceparent",
];

/// One attempt's target.
#[derive(Clone, Debug)]
pub struct Target {
    pub cell: CellId,
    pub url: String,
    /// The slot and the epoch the router believes its owner holds it at (none for fan-outs).
    pub route: Option<(Slot, Epoch)>,
}

/// What went wrong talking to a cell.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("cell {0} has a bad url: {1}")]
    BadUrl(CellId, String),
    #[error("cell {0} is unreachable: {1}")]
    Unreachable(CellId, String),
    #[error("cell {0} did not answer within {1:?}")]
    Timeout(CellId, Duration),
}

impl From<ForwardError> for RouterError {
    fn from(e: ForwardError) -> RouterError {
        RouterError::CellUnavailable(e.to_string())
    }
}

/// The request as it will be forwarded (and re-forwarded once after a 421).
pub struct Outgoing {
    pub method: Method,
    /// Path and query, as received.
    pub path_and_query: PathAndQuery,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub traceparent: String,
}

#[derive(Clone)]
pub struct Forwarder {
    client: Client<HttpConnector, Full<Bytes>>,
    timeout: Duration,
}

impl Forwarder {
    /// The per-attempt timeout (response headers; longest pause inside a response body).
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    pub fn new(timeout: Duration, connect_timeout: Duration) -> Forwarder {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(connect_timeout));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(256)
            .build(connector);
        Forwarder { client, timeout }
    }

    /// One attempt: the cell's response headers within the timeout, its body streamed.
    pub async fn send(
        &self,
        target: &Target,
        out: &Outgoing,
    ) -> Result<Response<hyper::body::Incoming>, ForwardError> {
        let bad_url =
            |e: &dyn std::fmt::Display| ForwardError::BadUrl(target.cell.clone(), e.to_string());
        // The cell's scheme and authority, the request's own path and query (not re-parsed).
        let mut uri = Uri::from_str(&target.url)
            .map_err(|e| bad_url(&e))?
            .into_parts();
        let host = uri
            .authority
            .as_ref()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
            .ok_or_else(|| bad_url(&"no host"))?;
        uri.path_and_query = Some(out.path_and_query.clone());
        let uri = Uri::from_parts(uri).map_err(|e| bad_url(&e))?;
        let mut req = Request::builder()
            .method(out.method.clone())
            .uri(uri)
            .body(Full::new(out.body.clone()))
            .map_err(|e| ForwardError::BadUrl(target.cell.clone(), e.to_string()))?;
        let headers = req.headers_mut();
        for (name, value) in &out.headers {
            if !DROPPED.contains(&name.as_str()) {
                headers.append(name.clone(), value.clone());
            }
        }
        // Set here, the client does not format one for every request.
        headers.insert(header::HOST, host);
        if let Some((slot, epoch)) = target.route {
            headers.insert(SLOT_HEADER, HeaderValue::from(slot.get()));
            headers.insert(EPOCH_HEADER, HeaderValue::from(epoch.0));
        }
        if let Ok(v) = HeaderValue::from_str(&out.traceparent) {
            headers.insert(HeaderName::from_static("traceparent"), v);
        }
        match tokio::time::timeout(self.timeout, self.client.request(req)).await {
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(e)) => Err(ForwardError::Unreachable(
                target.cell.clone(),
                error_chain(&e),
            )),
            Err(_) => Err(ForwardError::Timeout(target.cell.clone(), self.timeout)),
        }
    }

    /// Reads a small response body whole (a 421's problem, a reconciliation report).
    pub async fn read_body(
        &self,
        target: &Target,
        resp: Response<hyper::body::Incoming>,
        limit: usize,
    ) -> Result<Bytes, ForwardError> {
        let body = Limited::new(resp.into_body(), limit);
        match tokio::time::timeout(self.timeout, body.collect()).await {
            Ok(Ok(c)) => Ok(c.to_bytes()),
            Ok(Err(e)) => Err(ForwardError::Unreachable(
                target.cell.clone(),
                e.to_string(),
            )),
            Err(_) => Err(ForwardError::Timeout(target.cell.clone(), self.timeout)),
        }
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

/// A cell's response body, streamed, that fails when the cell pauses longer than `idle`
/// between frames: a cell that stalls mid-body must not hold the client for ever.
pub struct IdleTimeoutBody {
    inner: hyper::body::Incoming,
    idle: Duration,
    sleep: Pin<Box<tokio::time::Sleep>>,
}

impl hyper::body::Body for IdleTimeoutBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                let next = tokio::time::Instant::now() + this.idle;
                this.sleep.as_mut().reset(next);
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => match this.sleep.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err("the cell stalled mid-body".into()))),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// A cell's response for the client: hop-by-hop headers dropped, the cell named, the body
/// streamed with an idle timeout.
pub fn into_client_response(
    resp: Response<hyper::body::Incoming>,
    cell: &CellId,
    idle: Duration,
) -> Response<Body> {
    let (mut parts, body) = resp.into_parts();
    for name in [
        "connection",
        "keep-alive",
        "transfer-encoding",
        "upgrade",
        "trailer",
    ] {
        parts.headers.remove(name);
    }
    if let Ok(v) = HeaderValue::from_str(cell.as_str()) {
        parts.headers.insert(CELL_HEADER, v);
    }
    let body = IdleTimeoutBody {
        inner: body,
        idle,
        sleep: Box::pin(tokio::time::sleep(idle)),
    };
    Response::from_parts(parts, Body::new(body))
}

/// The `traceparent` to send on: the caller's trace with a new span id for this hop, or a
/// new trace when the caller sent none (or a malformed one). W3C Trace Context level 1.
/// Returns the header and the trace id. Built by hand: it runs on every request.
pub fn next_traceparent(incoming: Option<&HeaderValue>) -> (String, String) {
    let mut rng = rand::thread_rng();
    let span: u64 = rng.gen::<u64>().max(1);
    let parsed = incoming.and_then(|v| v.to_str().ok()).and_then(|t| {
        let mut parts = t.trim().split('-');
        let (ver, trace, parent, flags) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
        let valid = parts.next().is_none()
            && hex(ver, 2)
            && ver != "ff"
            && hex(trace, 32)
            && trace.bytes().any(|b| b != b'0')
            && hex(parent, 16)
            && hex(flags, 2);
        valid.then(|| (trace.to_ascii_lowercase(), flags.to_ascii_lowercase()))
    });
    let (trace, flags) = parsed.unwrap_or_else(|| {
        let t: u128 = rng.gen::<u128>().max(1);
        let mut trace = String::with_capacity(32);
        push_hex(&mut trace, t, 32);
        (trace, "01".to_owned())
    });
    let mut header = String::with_capacity(55);
    header.push_str("00-");
    header.push_str(&trace);
    header.push('-');
    push_hex(&mut header, u128::from(span), 16);
    header.push('-');
    header.push_str(&flags);
    (header, trace)
}

/// Appends the low `digits` hex digits of `v`, lower case, zero padded.
fn push_hex(out: &mut String, v: u128, digits: u32) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for i in (0..digits).rev() {
        out.push(char::from(HEX[((v >> (i * 4)) & 0xf) as usize]));
    }
}

/// The owner (and its epoch) a cell named in its 421 answer, if it named one.
pub fn owner_hint(body: &[u8]) -> Option<(CellId, Option<Epoch>)> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let cell = CellId::parse(v.get("owner")?.as_str()?).ok()?;
    Some((cell, v.get("epoch").and_then(|e| e.as_u64()).map(Epoch)))
}

/// Whether a header list carries a body length past the limit (cheap early refusal).
pub fn declared_too_large(headers: &HeaderMap, limit: usize) -> bool {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .is_some_and(|n| n > limit as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_keeps_the_trace_and_makes_a_new_span() {
        let inc =
            HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
        let (tp, trace) = next_traceparent(Some(&inc));
        assert_eq!(trace, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert!(tp.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
        assert!(!tp.contains("00f067aa0ba902b7"));
        let (tp, _) = next_traceparent(Some(&HeaderValue::from_static("garbage")));
        assert_eq!(tp.len(), 55);
        let (tp2, trace2) = next_traceparent(None);
        assert_ne!(tp, tp2);
        assert_eq!(tp2.len(), 55);
        assert!(tp2.starts_with(&format!("00-{trace2}-")) && tp2.ends_with("-01"));
        let mut s = String::new();
        push_hex(&mut s, 0xab, 4);
        assert_eq!(s, "00ab");
        let extra =
            HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x");
        assert_ne!(
            next_traceparent(Some(&extra)).1,
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
    }
}

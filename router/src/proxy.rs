//! Forwarding to a cell: pooled HTTP/1.1 keep-alive connections (hyper's connection API), a
//! timeout on every attempt, routing headers added, hop-by-hop headers dropped, response
//! bodies streamed back.
//!
//! Request bodies are at most 64 KiB and already read (the router needs some of them to
//! route, and a `421` retry must resend them), so they travel as one `Full<Bytes>`.
//!
//! The pool is ours, not hyper-util's: a connection goes back to the pool when the body of
//! its response has been read to the end, by the body itself. hyper-util's general client
//! spawned a task per request to wait for that and kept its pool in a map keyed by scheme
//! and authority; the two together were an eighth of the router's instructions per request.
//! A connection whose response was not read to the end (the client went away, a timeout) is
//! dropped, which closes it.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::uri::{Authority, PathAndQuery};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, Request, Response, Uri};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use rand::Rng;
use topology::{CellId, Epoch, Slot};
use wire::headers::{CELL as CELL_HEADER, EPOCH as EPOCH_HEADER, SLOT as SLOT_HEADER};
use wire::WrongCell;

use crate::error::RouterError;

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
    /// No connection within the connect timeout: the request was never sent (a cell whose
    /// listen queue is full under a burst, or one that is gone without a word).
    #[error("no connection to cell {0} within {1:?}")]
    NoConnection(CellId, Duration),
}

impl From<ForwardError> for RouterError {
    fn from(e: ForwardError) -> RouterError {
        match e {
            ForwardError::NoConnection(..) => RouterError::NotSent(e.to_string()),
            _ => RouterError::CellUnavailable(e.to_string()),
        }
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

/// A cell's response as the forwarder hands it on: its body returns the connection to the
/// pool once read to the end.
pub type CellResponse = Response<PooledBody>;

/// Idle connections are closed after this long unused.
const POOL_IDLE: Duration = Duration::from_secs(30);
/// Idle connections kept per cell at most.
const POOL_MAX_IDLE: usize = 256;

type Sender = SendRequest<Full<Bytes>>;

/// Idle keep-alive connections, by cell URL; the most recently used first out.
#[derive(Default)]
struct Pool {
    idle: Mutex<HashMap<String, Vec<(Sender, Instant)>>>,
}

impl Pool {
    /// An idle connection to `url` that is still open, if there is one.
    fn take(&self, url: &str) -> Option<Sender> {
        let mut idle = self.idle.lock().expect("pool poisoned");
        let list = idle.get_mut(url)?;
        while let Some((sender, since)) = list.pop() {
            if !sender.is_closed() && since.elapsed() < POOL_IDLE {
                return Some(sender);
            }
        }
        None
    }

    fn put(&self, url: &str, sender: Sender) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().expect("pool poisoned");
        let list = match idle.get_mut(url) {
            Some(l) => l,
            None => idle.entry(url.to_owned()).or_default(),
        };
        // The oldest sit first; drop those past their idle time while here.
        let stale = list
            .iter()
            .take_while(|(_, since)| since.elapsed() >= POOL_IDLE)
            .count();
        list.drain(..stale);
        if list.len() < POOL_MAX_IDLE {
            list.push((sender, Instant::now()));
        }
    }
}

#[derive(Clone)]
pub struct Forwarder {
    pool: Arc<Pool>,
    timeout: Duration,
    connect_timeout: Duration,
}

impl Forwarder {
    /// The per-attempt timeout (response headers; longest pause inside a response body).
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    pub fn new(timeout: Duration, connect_timeout: Duration) -> Forwarder {
        Forwarder {
            pool: Arc::default(),
            timeout,
            connect_timeout,
        }
    }

    /// A new connection to the cell at `authority` (`host[:port]`), its driver task spawned.
    async fn connect(
        &self,
        target: &Target,
        authority: &Authority,
    ) -> Result<Sender, ForwardError> {
        let unreachable = |e: &dyn std::error::Error| {
            ForwardError::Unreachable(target.cell.clone(), error_chain(e))
        };
        let tcp = tokio::time::timeout(
            self.connect_timeout,
            tokio::net::TcpStream::connect((authority.host(), authority.port_u16().unwrap_or(80))),
        )
        .await
        .map_err(|_| ForwardError::NoConnection(target.cell.clone(), self.connect_timeout))?
        .map_err(|e| unreachable(&e))?;
        // Requests and responses are written in pieces (head, then body): with Nagle's
        // algorithm a piece could wait for the cell's delayed ACK.
        let _ = tcp.set_nodelay(true);
        let (sender, connection) = http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(|e| unreachable(&e))?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!("connection to a cell ended: {e}");
            }
        });
        Ok(sender)
    }

    /// Sends on a pooled connection, or a new one. A pooled connection the cell has closed
    /// in the meantime gives the request back unsent; it is then sent on a new connection.
    async fn round_trip(
        &self,
        target: &Target,
        authority: &Authority,
        mut req: Request<Full<Bytes>>,
    ) -> Result<(Response<hyper::body::Incoming>, Sender), ForwardError> {
        while let Some(mut sender) = self.pool.take(&target.url) {
            if sender.ready().await.is_err() {
                continue;
            }
            match sender.try_send_request(req).await {
                Ok(resp) => return Ok((resp, sender)),
                Err(mut e) => match e.take_message() {
                    Some(unsent) => req = unsent,
                    None => {
                        return Err(ForwardError::Unreachable(
                            target.cell.clone(),
                            error_chain(e.error()),
                        ))
                    }
                },
            }
        }
        let mut sender = self.connect(target, authority).await?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| ForwardError::Unreachable(target.cell.clone(), error_chain(&e)))?;
        Ok((resp, sender))
    }

    /// One attempt: the cell's response headers within the timeout, its body streamed.
    pub async fn send(
        &self,
        target: &Target,
        out: &Outgoing,
    ) -> Result<CellResponse, ForwardError> {
        let bad_url =
            |e: &dyn std::fmt::Display| ForwardError::BadUrl(target.cell.clone(), e.to_string());
        let cell = Uri::from_str(&target.url).map_err(|e| bad_url(&e))?;
        if cell.scheme_str() != Some("http") {
            return Err(bad_url(&"only http:// cells are supported"));
        }
        if !matches!(cell.path(), "" | "/") || cell.query().is_some() {
            return Err(bad_url(&"a cell URL is http://host:port, without a path"));
        }
        let authority = cell.authority().ok_or_else(|| bad_url(&"no host"))?;
        let host = HeaderValue::from_str(authority.as_str()).map_err(|e| bad_url(&e))?;
        // Origin form on the wire: the request's own path and query (not re-parsed).
        let uri = Uri::from(out.path_and_query.clone());
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
        headers.insert(header::HOST, host);
        if let Some((slot, epoch)) = target.route {
            headers.insert(SLOT_HEADER, HeaderValue::from(slot.get()));
            headers.insert(EPOCH_HEADER, HeaderValue::from(epoch.0));
        }
        if let Ok(v) = HeaderValue::from_str(&out.traceparent) {
            headers.insert(HeaderName::from_static("traceparent"), v);
        }
        let attempt = self.round_trip(target, authority, req);
        let (resp, sender) = match tokio::time::timeout(self.timeout, attempt).await {
            Ok(r) => r?,
            Err(_) => return Err(ForwardError::Timeout(target.cell.clone(), self.timeout)),
        };
        let (parts, body) = resp.into_parts();
        let mut body = PooledBody {
            inner: body,
            checkin: Some(Checkin {
                pool: self.pool.clone(),
                url: target.url.clone(),
                sender,
            }),
        };
        if hyper::body::Body::is_end_stream(&body.inner) {
            // Nothing to read (a 204, an empty body): the connection is free already.
            body.check_in();
        }
        Ok(Response::from_parts(parts, body))
    }

    /// Reads a small response body whole (a 421's problem, a reconciliation report).
    pub async fn read_body(
        &self,
        target: &Target,
        resp: CellResponse,
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

/// Gives a connection back to the pool.
struct Checkin {
    pool: Arc<Pool>,
    url: String,
    sender: Sender,
}

/// A cell's response body; read to its end, it returns its connection to the pool.
pub struct PooledBody {
    inner: hyper::body::Incoming,
    checkin: Option<Checkin>,
}

impl PooledBody {
    fn check_in(&mut self) {
        if let Some(c) = self.checkin.take() {
            c.pool.put(&c.url, c.sender);
        }
    }
}

impl hyper::body::Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let frame = Pin::new(&mut this.inner).poll_frame(cx);
        match &frame {
            // The end: read whole, the connection can carry the next request.
            Poll::Ready(None) => this.check_in(),
            Poll::Ready(Some(Ok(_))) if this.inner.is_end_stream() => this.check_in(),
            // A failed body leaves the connection unusable; it closes when dropped.
            Poll::Ready(Some(Err(_))) => this.checkin = None,
            _ => {}
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// A cell's response body, streamed, that fails when the cell pauses longer than `idle`
/// between frames: a cell that stalls mid-body must not hold the client for ever.
///
/// The timer starts only when the body has to wait: most responses arrive whole with their
/// head, and arming a timer for each of them cost more than the rest of the response's
/// handling in the router.
pub struct IdleTimeoutBody {
    inner: PooledBody,
    idle: Duration,
    /// Armed while the body waits for the cell; dropped when a frame comes.
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
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
                this.sleep = None;
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => {
                let idle = this.idle;
                let sleep = this
                    .sleep
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
                match sleep.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err("the cell stalled mid-body".into()))),
                    Poll::Pending => Poll::Pending,
                }
            }
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
pub fn into_client_response(resp: CellResponse, cell: &CellId, idle: Duration) -> Response<Body> {
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
        sleep: None,
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
    let hint: WrongCell = serde_json::from_slice(body).ok()?;
    Some((hint.owner, hint.epoch))
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
    use std::sync::atomic::{AtomicUsize, Ordering};

    use axum::serve::ListenerExt;

    /// A stand-in cell that counts the connections it accepts. `/close` answers with
    /// `Connection: close`, so the cell closes the connection after answering.
    async fn counting_cell() -> (String, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        let listener = listener.tap_io(move |_| {
            counter.fetch_add(1, Ordering::SeqCst);
        });
        let app = axum::Router::new()
            .route("/keep", axum::routing::get(|| async { "kept" }))
            .route(
                "/close",
                axum::routing::get(|| async { ([(header::CONNECTION, "close")], "closing") }),
            );
        tokio::spawn(async move { axum::serve(listener, app).await });
        (url, accepted)
    }

    fn get(path: &'static str) -> Outgoing {
        Outgoing {
            method: Method::GET,
            path_and_query: PathAndQuery::from_static(path),
            headers: HeaderMap::new(),
            body: Bytes::new(),
            traceparent: next_traceparent(None).0,
        }
    }

    #[tokio::test]
    async fn the_pool_reuses_connections_read_to_the_end_and_replaces_closed_ones() {
        let (url, accepted) = counting_cell().await;
        let fwd = Forwarder::new(Duration::from_secs(5), Duration::from_secs(1));
        let t = Target {
            cell: CellId::parse("c1").unwrap(),
            url,
            route: None,
        };
        let fetch = |path| {
            let (fwd, t) = (fwd.clone(), t.clone());
            async move {
                let resp = fwd.send(&t, &get(path)).await.expect("forwarded");
                fwd.read_body(&t, resp, 1024).await.expect("body")
            }
        };
        for _ in 0..3 {
            assert_eq!(fetch("/keep").await, "kept");
        }
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            1,
            "one connection for all three"
        );

        // A response dropped before its body was read: that connection is not reused.
        drop(fwd.send(&t, &get("/keep")).await.expect("forwarded"));
        assert_eq!(fetch("/keep").await, "kept");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);

        // The cell closes every connection after answering: each next request finds the
        // pooled one closed and goes out on a new one, and none fails.
        for _ in 0..3 {
            assert_eq!(fetch("/close").await, "closing");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 4);

        // A cell that is gone: 503 material, quickly, not a hang.
        let gone = Target {
            cell: CellId::parse("c2").unwrap(),
            url: format!("http://127.0.0.1:{}", free_port()),
            route: None,
        };
        let err = fwd
            .send(&gone, &get("/keep"))
            .await
            .map(|_| ())
            .unwrap_err();
        assert!(matches!(err, ForwardError::Unreachable(..)), "{err}");
        let bad = Target {
            url: "https://127.0.0.1:1".into(),
            ..gone
        };
        let err = fwd.send(&bad, &get("/keep")).await.map(|_| ()).unwrap_err();
        assert!(matches!(err, ForwardError::BadUrl(..)), "{err}");
        let with_path = Target {
            url: "http://127.0.0.1:1/prefix".into(),
            ..bad
        };
        let err = fwd
            .send(&with_path, &get("/keep"))
            .await
            .map(|_| ())
            .unwrap_err();
        assert!(matches!(err, ForwardError::BadUrl(..)), "{err}");
    }

    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

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

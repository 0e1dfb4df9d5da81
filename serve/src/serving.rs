//! The accept loop and what each connection task does.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::Request;
use axum::http::StatusCode;
use axum::response::Response;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tower::{Service, ServiceExt};

use crate::limits::{Limits, HYPER_MAX_HEADERS, MAX_HEADERS, MAX_HEADER_BYTES, MAX_URI_BYTES};
use crate::problem;

/// Refused connections answered at once by a task that also reads what the client sent
/// (closing a socket with unread input sends a reset, which can destroy the 503 before the
/// client reads it). Past this many, a refusal is one non-blocking write and a close.
const REFUSERS: usize = 64;

/// How long a refusing task spends on one connection.
const REFUSE_BUDGET: Duration = Duration::from_secs(1);

/// Refusals and accept errors are logged at most this often.
const LOG_EVERY: Duration = Duration::from_secs(5);

/// Serves `service` on `listener` until `shutdown` completes; then stops accepting, lets
/// every open connection finish the request it is in (idle ones close at once) and
/// returns once all have closed.
pub async fn serve<S>(
    listener: TcpListener,
    service: S,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send,
) -> io::Result<()>
where
    S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    limits
        .validate()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let max = limits.max_connections;
    // One permit per open connection, held by its task: released when the task ends,
    // however the connection ended (closed, timed out, errored, panicked).
    let permits = Arc::new(Semaphore::new(max));
    let refusers = Arc::new(Semaphore::new(REFUSERS));
    let refusals = Arc::new(EveryFewSeconds::new());
    let accept_errors = EveryFewSeconds::new();
    let stop = CancellationToken::new();
    let mut builder = http1::Builder::new();
    // With a timer, hyper's header timeout runs whenever it waits for a request head: from
    // the accept, and again from the end of each response (tests/edge.rs shows both).
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout())
        .max_headers(HYPER_MAX_HEADERS)
        .keep_alive(true);
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            _ = &mut shutdown => break,
            a = listener.accept() => a,
        };
        let (tcp, peer) = match accepted {
            Ok(a) => a,
            // The peer gave up before we took it: nothing to do.
            Err(e) if is_connection_error(&e) => continue,
            // Out of file descriptors and the like: back off rather than spin.
            Err(e) => {
                if let Some(n) = accept_errors.note() {
                    tracing::error!(errors = n, "accept failed: {e}");
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        // Nagle's algorithm off: a response written in pieces must not wait for the
        // client's delayed ACK.
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!("cannot set TCP_NODELAY: {e}");
        }
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            metrics::counter!("redcell_http_connections_refused_total").increment(1);
            if let Some(n) = refusals.note() {
                tracing::warn!(
                    refused = n,
                    max_connections = max,
                    "connection limit reached: answering 503 overloaded and closing \
                     (logged at most every {LOG_EVERY:?})"
                );
            }
            refuse(tcp, &refusers);
            continue;
        };
        tokio::spawn(serve_connection(
            tcp,
            peer,
            builder.clone(),
            service.clone(),
            stop.clone(),
            permit,
        ));
    }
    drop(listener);
    stop.cancel();
    // Every connection task holds a permit until it ends: all back means all drained.
    let _ = permits.acquire_many(max as u32).await;
    Ok(())
}

/// Counts the open connections while alive (so a task that ends any way is uncounted).
struct Open(#[allow(dead_code)] OwnedSemaphorePermit);

impl Open {
    fn new(permit: OwnedSemaphorePermit) -> Open {
        metrics::gauge!("redcell_http_connections_open").increment(1.0);
        Open(permit)
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        metrics::gauge!("redcell_http_connections_open").decrement(1.0);
    }
}

async fn serve_connection<S>(
    tcp: TcpStream,
    peer: SocketAddr,
    builder: http1::Builder,
    service: S,
    stop: CancellationToken,
    permit: OwnedSemaphorePermit,
) where
    S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    let _open = Open::new(permit);
    let hyper_service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
        handle(service.clone(), req)
    });
    let conn = builder.serve_connection(TokioIo::new(tcp), hyper_service);
    tokio::pin!(conn);
    let ended = tokio::select! {
        r = conn.as_mut() => r,
        _ = stop.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = ended {
        if e.is_timeout() {
            metrics::counter!("redcell_http_header_timeouts_total").increment(1);
            tracing::debug!(%peer, "connection closed: no whole request head in time");
        } else {
            tracing::debug!(%peer, "connection ended: {e}");
        }
    }
}

async fn handle<S>(service: S, req: hyper::Request<Incoming>) -> Result<Response, Infallible>
where
    S: Service<Request, Response = Response, Error = Infallible> + Send + 'static,
    S::Future: Send + 'static,
{
    if let Some(refused) = refuse_head(&req) {
        return Ok(refused);
    }
    let method = req.method().clone();
    let res = service.oneshot(req.map(Body::new)).await?;
    Ok(problem::dress_bare(&method, res))
}

/// A problem for a request head past the limits of [`crate::limits`], before the
/// application sees it.
fn refuse_head<B>(req: &hyper::Request<B>) -> Option<Response> {
    let uri_len = req.uri().path_and_query().map_or(0, |p| p.as_str().len());
    if uri_len > MAX_URI_BYTES {
        return Some(problem::response(
            StatusCode::URI_TOO_LONG,
            "uri_too_long",
            &format!("the request URI is {uri_len} bytes; at most {MAX_URI_BYTES} are accepted"),
            None,
        ));
    }
    let count = req.headers().len();
    if count > MAX_HEADERS {
        return Some(problem::response(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "too_many_headers",
            &format!("the request has {count} header fields; at most {MAX_HEADERS} are accepted"),
            None,
        ));
    }
    let bytes: usize = req
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len())
        .sum();
    if bytes > MAX_HEADER_BYTES {
        return Some(problem::response(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers_too_large",
            &format!(
                "the request headers are {bytes} bytes; at most {MAX_HEADER_BYTES} are accepted"
            ),
            None,
        ));
    }
    None
}

/// Answers a connection the process has no room for with `503 overloaded` and closes it.
fn refuse(mut tcp: TcpStream, refusers: &Arc<Semaphore>) {
    static ANSWER: OnceLock<Vec<u8>> = OnceLock::new();
    let answer = ANSWER.get_or_init(problem::overloaded_bytes);
    let Ok(permit) = refusers.clone().try_acquire_owned() else {
        // A fresh socket's send buffer takes these few hundred bytes at once.
        let _ = tcp.try_write(answer);
        return;
    };
    tokio::spawn(async move {
        let _permit = permit;
        let _ = tokio::time::timeout(REFUSE_BUDGET, async {
            tcp.write_all(answer).await?;
            tcp.shutdown().await?;
            // Read what the client sent until it closes, so our close is not a reset.
            let mut sink = [0u8; 4096];
            while tcp.read(&mut sink).await? > 0 {}
            Ok::<_, io::Error>(())
        })
        .await;
    });
}

fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// Rate limits a log line: [`EveryFewSeconds::note`] counts an event and says, at most once
/// per [`LOG_EVERY`], how many happened since it last said.
struct EveryFewSeconds {
    start: Instant,
    /// Milliseconds since `start` of the last log line, plus one (0: never logged). An
    /// atomic so concurrent notes need no lock; a lost race only skips one line.
    last_ms: AtomicU64,
    /// Events since the last log line.
    since: AtomicU64,
}

impl EveryFewSeconds {
    fn new() -> EveryFewSeconds {
        EveryFewSeconds {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
            since: AtomicU64::new(0),
        }
    }

    fn note(&self) -> Option<u64> {
        self.since.fetch_add(1, Ordering::Relaxed);
        let now = self.start.elapsed().as_millis() as u64 + 1;
        let last = self.last_ms.load(Ordering::Relaxed);
        if last != 0 && now.saturating_sub(last) < LOG_EVERY.as_millis() as u64 {
            return None;
        }
        self.last_ms
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .ok()?;
        Some(self.since.swap(0, Ordering::Relaxed))
    }
}

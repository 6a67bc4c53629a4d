//! The pod client: one HTTP/1.1 exchange with one pod, over a pooled
//! keep-alive connection (plain TCP, or TLS for `scheme = "https"`).
//!
//! The pool knows whether a connection is new or reused, which matters
//! when a pod closes an idle connection at the very moment the router
//! reuses it: the request then fails before any byte of an answer arrived,
//! and the pod never saw it. Such a request is sent again at once on a new
//! connection, without counting as a retry. A request that failed on a new
//! connection may have reached the pod, so it keeps the ordinary retry
//! rules (a reset is final).
//!
//! Idle connections are closed by the router after `[server]
//! pod_idle_timeout`, which defaults below the keep-alive timeouts pods
//! commonly use (Node.js 5 s, nginx 75 s), so the router usually closes
//! first and the race above stays rare.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderValue};
use http::{HeaderMap, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::telemetry;
use crate::tls::{ConnectError, PodTls};
use crate::vocabulary::delivery::{DeliveryError, ErrorKind, PodBody, PodRequest};

/// Bytes of a pod's body read past what the answer keeps, so that the
/// connection can be reused; a longer body closes the connection instead.
const DRAIN_LIMIT: usize = 1 << 20;

/// A pod's answer: status and headers, then its body (or why the body
/// could not be read).
pub(super) struct Answer {
    pub(super) status: StatusCode,
    pub(super) headers: HeaderMap,
    pub(super) body: Result<PodBody, DeliveryError>,
}

/// Sends requests to pods over pooled connections.
pub struct PodClient {
    pool: Arc<Pool>,
}

impl PodClient {
    /// A client that keeps idle connections for `idle_timeout` (zero:
    /// a new connection for every request).
    pub fn new(idle_timeout: Duration) -> Self {
        let pool = Arc::new(Pool {
            idle: Mutex::default(),
            idle_timeout_ms: AtomicU64::new(millis(idle_timeout)),
        });
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(sweep(Arc::downgrade(&pool)));
        }
        Self { pool }
    }

    /// Changes how long idle connections are kept (a reloaded
    /// `pod_idle_timeout`).
    pub fn set_idle_timeout(&self, idle_timeout: Duration) {
        self.pool
            .idle_timeout_ms
            .store(millis(idle_timeout), Ordering::Relaxed);
    }

    /// Sends `request` (its path already parsed into `uri`) to the pod at
    /// `addr`, over `tls` when given, and reads the answer, keeping up to
    /// `limit` bytes of its body.
    pub(super) async fn exchange(
        &self,
        addr: SocketAddr,
        tls: Option<&PodTls>,
        request: &PodRequest,
        uri: &Uri,
        limit: usize,
    ) -> Result<Answer, DeliveryError> {
        let key = Key {
            addr,
            tls: tls.map(PodTls::identity),
        };
        let (mut sender, reused) = match self.pool.checkout(&key) {
            Some(sender) => (sender, true),
            None => (connect(addr, tls).await?, false),
        };
        let sent = send(&mut sender, request, uri, addr, tls.is_some()).await;
        let response = match sent {
            Ok(response) => response,
            Err(error) if reused && closed_before_answer(&error) => {
                // The pod closed the idle connection as it was reused: it
                // never saw the request. Send it again on a new one.
                telemetry::pod_request_resent();
                tracing::debug!(%addr, %error, "Reused connection was closed by the pod; sending again on a new one.");
                sender = connect(addr, tls).await?;
                send(&mut sender, request, uri, addr, tls.is_some())
                    .await
                    .map_err(|error| classify(&error))?
            }
            Err(error) => return Err(classify(&error)),
        };
        let (parts, body) = response.into_parts();
        let (body, complete) = read_capped(body, limit).await;
        if complete {
            self.pool.checkin(key, sender);
        }
        Ok(Answer {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }
}

/// Where a pooled connection goes: a pod's address, and the TLS client it
/// was made with (`None`: plain TCP).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Key {
    addr: SocketAddr,
    tls: Option<usize>,
}

/// Idle connections by pod, newest last.
struct Pool {
    idle: Mutex<HashMap<Key, Vec<Idle>>>,
    idle_timeout_ms: AtomicU64,
}

struct Idle {
    sender: SendRequest<Full<Bytes>>,
    since: Instant,
}

impl Pool {
    fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.idle_timeout_ms.load(Ordering::Relaxed))
    }

    /// The most recently used idle connection to `key` that is still
    /// open, if any; expired ones are closed on the way.
    fn checkout(&self, key: &Key) -> Option<SendRequest<Full<Bytes>>> {
        let timeout = self.idle_timeout();
        let mut idle = self.idle.lock().expect("pool lock");
        let connections = idle.get_mut(key)?;
        while let Some(connection) = connections.pop() {
            if connection.since.elapsed() < timeout
                && connection.sender.is_ready()
                && !connection.sender.is_closed()
            {
                return Some(connection.sender);
            }
        }
        None
    }

    /// Puts a connection whose exchange finished back, unless it closed
    /// or connections are not kept.
    fn checkin(&self, key: Key, sender: SendRequest<Full<Bytes>>) {
        if sender.is_closed() || self.idle_timeout().is_zero() {
            return;
        }
        let mut idle = self.idle.lock().expect("pool lock");
        idle.entry(key).or_default().push(Idle {
            sender,
            since: Instant::now(),
        });
    }

    /// Closes every connection idle for longer than the timeout.
    fn sweep(&self) {
        let timeout = self.idle_timeout();
        let mut idle = self.idle.lock().expect("pool lock");
        idle.retain(|_, connections| {
            connections.retain(|connection| {
                connection.since.elapsed() < timeout && !connection.sender.is_closed()
            });
            !connections.is_empty()
        });
    }
}

/// Sweeps `pool` every second until it is dropped, so connections to pods
/// that are gone do not stay open.
async fn sweep(pool: Weak<Pool>) {
    let mut every = tokio::time::interval(Duration::from_secs(1));
    loop {
        every.tick().await;
        match pool.upgrade() {
            Some(pool) => pool.sweep(),
            None => return,
        }
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// A new connection to the pod at `addr` (over TLS with `tls`).
async fn connect(
    addr: SocketAddr,
    tls: Option<&PodTls>,
) -> Result<SendRequest<Full<Bytes>>, DeliveryError> {
    let connect_error = |detail: String| DeliveryError {
        kind: ErrorKind::Connect,
        detail,
    };
    let handshake = match tls {
        None => {
            let tcp = TcpStream::connect(addr)
                .await
                .map_err(|error| connect_error(error.to_string()))?;
            let _ = tcp.set_nodelay(true);
            handshake(TokioIo::new(tcp)).await
        }
        Some(tls) => {
            let stream = tls.connect(addr).await.map_err(|error| match error {
                ConnectError::Tcp(error) => connect_error(error.to_string()),
                handshake => connect_error(handshake.to_string()),
            })?;
            handshake(TokioIo::new(stream)).await
        }
    };
    handshake.map_err(|error| classify(&error))
}

/// The HTTP/1.1 handshake over `io`; the connection runs in its own task
/// until either side closes it.
async fn handshake<I>(io: I) -> Result<SendRequest<Full<Bytes>>, hyper::Error>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (sender, connection) = http1::handshake(io).await?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::trace!(%error, "Pod connection ended with an error.");
        }
    });
    Ok(sender)
}

/// Sends one request on `sender` and waits for the answer's head.
async fn send(
    sender: &mut SendRequest<Full<Bytes>>,
    request: &PodRequest,
    uri: &Uri,
    addr: SocketAddr,
    https: bool,
) -> Result<hyper::Response<Incoming>, hyper::Error> {
    sender.ready().await?;
    let mut pod_request = Request::new(Full::new(request.body.clone()));
    *pod_request.method_mut() = request.method.clone();
    *pod_request.uri_mut() = uri.clone();
    *pod_request.headers_mut() = request.headers.clone();
    if !pod_request.headers().contains_key(header::HOST) {
        pod_request
            .headers_mut()
            .insert(header::HOST, host(addr, https));
    }
    sender.send_request(pod_request).await
}

/// The pod's address as a `Host` value: `ip:port`, IPv6 in brackets, the
/// port left out when it is the scheme's default.
fn host(addr: SocketAddr, https: bool) -> HeaderValue {
    let default_port = if https { 443 } else { 80 };
    let text = match (addr, addr.port() == default_port) {
        (SocketAddr::V4(v4), true) => v4.ip().to_string(),
        (SocketAddr::V6(v6), true) => format!("[{}]", v6.ip()),
        (addr, false) => addr.to_string(),
    };
    HeaderValue::from_str(&text).expect("an address is a valid header value")
}

/// Whether a request failed because the pod closed the connection before
/// any answer: the connection was already closed, or closed after the
/// request was written and before a response began.
fn closed_before_answer(error: &hyper::Error) -> bool {
    if error.is_canceled() || error.is_closed() || error.is_incomplete_message() {
        return true;
    }
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind as Io;
            return matches!(
                io.kind(),
                Io::ConnectionReset | Io::ConnectionAborted | Io::BrokenPipe
            );
        }
        source = cause.source();
    }
    false
}

/// Reads the body, keeping at most `limit` bytes and reading (then
/// dropping) up to [`DRAIN_LIMIT`] more. Returns whether the body was read
/// to its end, so that the connection can be reused.
async fn read_capped(mut body: Incoming, limit: usize) -> (Result<PodBody, DeliveryError>, bool) {
    let mut kept = BytesMut::new();
    let mut seen = 0usize;
    loop {
        match body.frame().await {
            None => break,
            Some(Err(error)) => return (Err(classify(&error)), false),
            Some(Ok(frame)) => {
                let Ok(chunk) = frame.into_data() else {
                    continue; // trailers
                };
                seen += chunk.len();
                if kept.len() < limit {
                    let room = limit - kept.len();
                    kept.extend_from_slice(&chunk[..chunk.len().min(room)]);
                }
                if seen > limit.saturating_add(DRAIN_LIMIT) {
                    let body = PodBody {
                        truncated: true,
                        bytes: kept.freeze(),
                    };
                    return (Ok(body), false);
                }
            }
        }
    }
    let body = PodBody {
        truncated: seen > kept.len(),
        bytes: kept.freeze(),
    };
    (Ok(body), true)
}

/// Sorts an exchange's error into the fixed set of kinds, keeping the
/// innermost cause as the detail (e.g. "connection closed before message
/// completed").
fn classify(error: &hyper::Error) -> DeliveryError {
    let mut kind = if error.is_incomplete_message() || error.is_canceled() || error.is_closed() {
        ErrorKind::Reset
    } else {
        ErrorKind::Protocol
    };
    let mut detail = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        if kind == ErrorKind::Protocol
            && let Some(io) = cause.downcast_ref::<std::io::Error>()
        {
            use std::io::ErrorKind as Io;
            if matches!(
                io.kind(),
                Io::ConnectionReset | Io::ConnectionAborted | Io::BrokenPipe | Io::UnexpectedEof
            ) {
                kind = ErrorKind::Reset;
            }
        }
        detail = cause.to_string();
        source = cause.source();
    }
    DeliveryError { kind, detail }
}

#[cfg(test)]
mod tests {
    #[test]
    fn host_leaves_out_the_default_port() {
        let host = |addr: &str, https| super::host(addr.parse().unwrap(), https);
        assert_eq!(host("10.0.0.7:8080", false), "10.0.0.7:8080");
        assert_eq!(host("10.0.0.7:80", false), "10.0.0.7");
        assert_eq!(host("10.0.0.7:443", true), "10.0.0.7");
        assert_eq!(host("10.0.0.7:80", true), "10.0.0.7:80");
        assert_eq!(host("[fd00::5]:9000", false), "[fd00::5]:9000");
        assert_eq!(host("[fd00::5]:80", false), "[fd00::5]");
    }
}

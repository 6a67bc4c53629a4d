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
//!
//! A connection has no task of its own: the exchange that holds it drives
//! it while it waits for its answer, and a connection taken from the pool
//! is polled once first, which notices a pod's close while it was idle.
//! So a delivery is one future in its broadcast's task, and a pod's answer
//! wakes that task directly instead of a connection task that would then
//! wake it. On a multi-threaded runtime every such hand-over may also wake
//! the other worker thread: in a bare fan-out to 3 pods, a task per pod
//! cost about 55 µs of an unloaded broadcast's 92 µs
//! (`bench/results/hot-path-third-round-20261207.md`).

use std::collections::HashMap;
use std::future::{Future, poll_fn};
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::Poll;
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
use tokio_rustls::client::TlsStream;
use tokio_util::either::Either;

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
        let (mut connection, reused) = match self.pool.checkout(&key) {
            Some(connection) => (connection, true),
            None => (connect(addr, tls).await?, false),
        };
        let sent = connection
            .drive(|sender, host| send(sender, host, request, uri))
            .await;
        let response = match sent {
            Ok(response) => response,
            Err(error) if reused && closed_before_answer(&error) => {
                // The pod closed the idle connection as it was reused: it
                // never saw the request. Send it again on a new one.
                telemetry::pod_request_resent();
                tracing::debug!(%addr, %error, "Reused connection was closed by the pod; sending again on a new one.");
                connection = connect(addr, tls).await?;
                connection
                    .drive(|sender, host| send(sender, host, request, uri))
                    .await
                    .map_err(|error| classify(&error))?
            }
            Err(error) => return Err(classify(&error)),
        };
        let (parts, body) = response.into_parts();
        let (body, complete) = connection.drive(|_, _| read_capped(body, limit)).await;
        if complete {
            self.pool.checkin(key, connection);
        }
        Ok(Answer {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }
}

/// A pod's stream: plain TCP, or TLS over TCP.
type PodStream = Either<TcpStream, TlsStream<TcpStream>>;

/// One keep-alive connection to a pod: the handle requests are sent on,
/// and the connection itself, which whoever holds it drives.
struct Connection {
    sender: SendRequest<Full<Bytes>>,
    /// The `Host` its requests carry when the request has none.
    host: HeaderValue,
    /// `None` once it has ended (the pod closed it, or it failed): dropped
    /// at once, which fails whatever still waited on it.
    io: Option<http1::Connection<TokioIo<PodStream>, Full<Bytes>>>,
}

impl Connection {
    /// Runs `work` on the sender while driving the connection (reading
    /// and writing its socket) until `work` finishes. When the connection
    /// ends first, hyper fails whatever `work` waits for, so `work` still
    /// finishes, with that error.
    async fn drive<'a, F: Future>(
        &'a mut self,
        work: impl FnOnce(&'a mut SendRequest<Full<Bytes>>, &'a HeaderValue) -> F,
    ) -> F::Output {
        let Connection { sender, host, io } = self;
        let mut work = pin!(work(sender, host));
        poll_fn(|cx| {
            if let Poll::Ready(output) = work.as_mut().poll(cx) {
                return Poll::Ready(output);
            }
            // Hand over what `work` queued, and read what arrived for it.
            if let Some(connection) = io
                && let Poll::Ready(ended) = Pin::new(connection).poll(cx)
            {
                if let Err(error) = ended {
                    tracing::trace!(%error, "Pod connection ended with an error.");
                }
                *io = None;
            }
            work.as_mut().poll(cx)
        })
        .await
    }

    /// Polls the connection once, without waiting: an idle connection the
    /// pod closed, or that failed, ends here. Whether it is still open and
    /// ready for a request (not, say, still writing the last one's body).
    fn still_open(&mut self) -> bool {
        let mut context = std::task::Context::from_waker(std::task::Waker::noop());
        if let Some(connection) = &mut self.io
            && Pin::new(connection).poll(&mut context).is_ready()
        {
            self.io = None;
        }
        self.io.is_some() && !self.sender.is_closed() && self.sender.is_ready()
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
    connection: Connection,
    since: Instant,
}

impl Pool {
    fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.idle_timeout_ms.load(Ordering::Relaxed))
    }

    /// The most recently used idle connection to `key` that is still
    /// open, if any; expired and closed ones are dropped on the way.
    fn checkout(&self, key: &Key) -> Option<Connection> {
        let timeout = self.idle_timeout();
        loop {
            let idle = {
                let mut idle = self.idle.lock().expect("pool lock");
                idle.get_mut(key)?.pop()?
            };
            let mut connection = idle.connection;
            // Polled outside the lock: it may read the pod's close.
            if idle.since.elapsed() < timeout && connection.still_open() {
                return Some(connection);
            }
        }
    }

    /// Puts a connection whose exchange finished back, unless it ended
    /// or connections are not kept.
    fn checkin(&self, key: Key, mut connection: Connection) {
        if self.idle_timeout().is_zero() || !connection.still_open() {
            return;
        }
        let mut idle = self.idle.lock().expect("pool lock");
        idle.entry(key).or_default().push(Idle {
            connection,
            since: Instant::now(),
        });
    }

    /// Closes every connection idle for longer than the timeout, and
    /// drops those the pods closed.
    fn sweep(&self) {
        let timeout = self.idle_timeout();
        let mut idle = self.idle.lock().expect("pool lock");
        idle.retain(|_, connections| {
            connections
                .retain_mut(|idle| idle.since.elapsed() < timeout && idle.connection.still_open());
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
async fn connect(addr: SocketAddr, tls: Option<&PodTls>) -> Result<Connection, DeliveryError> {
    let connect_error = |detail: String| DeliveryError {
        kind: ErrorKind::Connect,
        detail,
    };
    let stream = match tls {
        None => {
            let tcp = TcpStream::connect(addr)
                .await
                .map_err(|error| connect_error(error.to_string()))?;
            let _ = tcp.set_nodelay(true);
            Either::Left(tcp)
        }
        Some(tls) => Either::Right(tls.connect(addr).await.map_err(|error| match error {
            ConnectError::Tcp(error) => connect_error(error.to_string()),
            handshake => connect_error(handshake.to_string()),
        })?),
    };
    let (sender, io) = http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|error| classify(&error))?;
    Ok(Connection {
        sender,
        host: host(addr, tls.is_some()),
        io: Some(io),
    })
}

/// Sends one request on `sender` (with `host` unless the request has a
/// `Host`) and waits for the answer's head.
async fn send(
    sender: &mut SendRequest<Full<Bytes>>,
    host: &HeaderValue,
    request: &PodRequest,
    uri: &Uri,
) -> Result<hyper::Response<Incoming>, hyper::Error> {
    sender.ready().await?;
    let mut pod_request = Request::new(Full::new(request.body.clone()));
    *pod_request.method_mut() = request.method.clone();
    *pod_request.uri_mut() = uri.clone();
    *pod_request.headers_mut() = request.headers.clone();
    if !pod_request.headers().contains_key(header::HOST) {
        pod_request.headers_mut().insert(header::HOST, host.clone());
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
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A pod that answers one request per connection, then closes it.
    async fn one_answer_per_connection() -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buffer = [0; 1024];
                    while !head.windows(4).any(|end| end == b"\r\n\r\n") {
                        match stream.read(&mut buffer).await {
                            Ok(0) | Err(_) => return,
                            Ok(read) => head.extend_from_slice(&buffer[..read]),
                        }
                    }
                    let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                    let _ = stream.write_all(answer).await;
                });
            }
        });
        addr
    }

    #[tokio::test]
    async fn a_connection_the_pod_closed_while_idle_is_dropped_not_reused() {
        let addr = one_answer_per_connection().await;
        let client = PodClient::new(Duration::from_secs(30));
        let request = PodRequest {
            method: http::Method::GET,
            path_and_query: "/".into(),
            headers: HeaderMap::new(),
            body: Bytes::new(),
        };
        let uri = Uri::from_static("/");
        let answer = client
            .exchange(addr, None, &request, &uri, 64)
            .await
            .unwrap();
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(answer.body.unwrap().bytes, "ok");
        let key = Key { addr, tls: None };
        // Pooled and open until the pod's close arrives; then a checkout
        // notices it, drops the connection and finds none.
        for _ in 0..500 {
            match client.pool.checkout(&key) {
                Some(open) => client.pool.checkin(key, open),
                None => {
                    let idle = client.pool.idle.lock().unwrap();
                    assert!(idle.get(&key).is_none_or(Vec::is_empty));
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the pod's close was never noticed");
    }

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

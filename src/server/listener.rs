//! The accept loop both listeners share: HTTP/1.1 connections served by
//! hyper within the client limits of `[server]` (header count and size,
//! time to send the headers), each request tagged with the client's
//! address, and a graceful stop that lets requests already received finish.
//!
//! With TLS, each connection's handshake comes first, bounded by the same
//! time a client has to send its headers (a client that stalls mid-handshake
//! is cut off); with a client CA, a client without a certificate signed by
//! it is refused during the handshake, before any request is read.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use super::error::ApiError;
use crate::telemetry;
use axum::response::IntoResponse;

/// What a client connection may cost before it is answered or closed.
#[derive(Debug, Clone, Copy)]
pub struct ClientLimits {
    /// Most header fields in one request (more: 431).
    pub max_headers: usize,
    /// Most bytes of request line and headers together (more: 431).
    pub max_header_bytes: usize,
    /// How long a client may take to send a request's headers, idle
    /// keep-alive time included (then the connection is closed).
    pub header_read_timeout: Duration,
}

/// The TLS settings for the next connection (the active configuration's
/// certificate, so a reload can rotate it).
pub type CurrentTls = Arc<dyn Fn() -> Arc<rustls::ServerConfig> + Send + Sync>;

/// Serves `app` on `listener` until `shutdown`, then stops accepting and
/// waits for the connections' requests in progress to be answered. With
/// `tls`, every connection starts with a TLS handshake.
pub async fn serve(
    listener: TcpListener,
    app: axum::Router,
    limits: ClientLimits,
    tls: Option<CurrentTls>,
    shutdown: CancellationToken,
) {
    let mut http = hyper::server::conn::http1::Builder::new();
    // The limits are checked on each parsed request (431 with a JSON
    // error, see `head_refusal`); hyper's own, looser, bounds stop heads
    // far beyond them before they are buffered whole (431 without a body).
    // hyper's read buffer cannot be smaller than 8 KiB.
    http.timer(TokioTimer::new())
        .max_headers(limits.max_headers.saturating_add(HARD_EXTRA_HEADERS))
        .max_buf_size(
            limits
                .max_header_bytes
                .max(8192)
                .saturating_mul(2)
                .saturating_add(HARD_EXTRA_BYTES),
        )
        .header_read_timeout(limits.header_read_timeout);
    let graceful = GracefulShutdown::new();
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors, most likely: back off a
                    // little instead of spinning.
                    tracing::warn!(%error, "Cannot accept a connection.");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => break,
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
            request.extensions_mut().insert(ConnectInfo(peer));
            let app = app.clone();
            async move {
                if let Some(refusal) = head_refusal(&request, limits) {
                    return Ok(refusal.into_response());
                }
                let response = app.oneshot(request.map(Body::new)).await;
                Ok::<_, Infallible>(response.unwrap_or_else(|never| match never {}))
            }
        });
        let Some(tls) = &tls else {
            let connection = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
            tokio::spawn(finish(connection, peer));
            continue;
        };
        let acceptor = tokio_rustls::TlsAcceptor::from(tls());
        let (http, watcher) = (http.clone(), graceful.watcher());
        let handshake_timeout = limits.header_read_timeout;
        tokio::spawn(async move {
            let stream =
                match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
                    Ok(Ok(stream)) => stream,
                    Ok(Err(error)) => {
                        tracing::debug!(%peer, %error, "TLS handshake refused.");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%peer, "TLS handshake not finished in time.");
                        return;
                    }
                };
            let connection = watcher.watch(http.serve_connection(TokioIo::new(stream), service));
            finish(connection, peer).await;
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// Waits for a client connection to end, logging why when it broke.
async fn finish<C, E>(connection: C, peer: SocketAddr)
where
    C: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    if let Err(error) = connection.await {
        tracing::debug!(%peer, %error, "Client connection ended with an error.");
    }
}

/// Headers hyper accepts beyond `max_header_count` before it refuses a
/// request itself.
const HARD_EXTRA_HEADERS: usize = 64;
/// Bytes hyper buffers beyond twice `max_header_bytes` before it refuses a
/// request itself.
const HARD_EXTRA_BYTES: usize = 64 << 10;

/// 431 (as a JSON error, like every other refusal) for a request with more
/// header fields, or a longer head, than the limits allow.
fn head_refusal<B>(request: &hyper::Request<B>, limits: ClientLimits) -> Option<ApiError> {
    let headers = request.headers();
    let count = headers.len();
    // The request line and each `name: value` line with its CRLF.
    let bytes = request.method().as_str().len()
        + request.uri().to_string().len()
        + "  HTTP/1.1\r\n\r\n".len()
        + headers
            .iter()
            .map(|(name, value)| name.as_str().len() + value.len() + 4)
            .sum::<usize>();
    let allowed_bytes = limits.max_header_bytes.max(8192);
    if count > limits.max_headers || bytes > allowed_bytes {
        let error = ApiError::HeadersTooLarge {
            count,
            bytes,
            max_count: limits.max_headers,
            max_bytes: allowed_bytes,
        };
        telemetry::refused("listener", error.outcome(), None, &error);
        return Some(error);
    }
    None
}

/// The client's address, as [`serve`] attaches it to every request.
pub type Peer = ConnectInfo<SocketAddr>;

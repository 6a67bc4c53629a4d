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
    http.timer(TokioTimer::new())
        .max_headers(limits.max_headers)
        // hyper's read buffer bounds the request head; it cannot be
        // smaller than 8 KiB.
        .max_buf_size(limits.max_header_bytes.max(8192))
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

/// The client's address, as [`serve`] attaches it to every request.
pub type Peer = ConnectInfo<SocketAddr>;

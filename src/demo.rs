//! Echo pods: HTTP servers that answer every request with 200 and a JSON
//! summary of what they received.
//!
//! `broadcast-router demo` runs a router and a few of them on loopback
//! addresses (127.0.0.2, 127.0.0.3, …, all on one port, like pods behind a
//! headless Service), so a newcomer can try a broadcast with nothing else
//! installed; `broadcast-router echo` runs one as a real receiver, e.g. as
//! the pods of the Kubernetes example in `deploy/examples/`.

use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};

use axum::Json;
use axum::extract::Request;
use axum::http::HeaderMap;
use serde_json::json;
use tokio::net::TcpListener;

use crate::config::Config;

/// Starts `count` echo pods on 127.0.0.2… sharing one port; returns their
/// addresses. Each pod answers any request with a JSON summary of what it
/// received.
pub async fn spawn_echo_pods(count: usize) -> std::io::Result<Vec<SocketAddr>> {
    let count = count.clamp(1, 250);
    'port: for _ in 0..20 {
        let first = TcpListener::bind((Ipv4Addr::new(127, 0, 0, 2), 0)).await?;
        let port = first.local_addr()?.port();
        let mut listeners = vec![first];
        for host in 3..(2 + count) {
            let ip = Ipv4Addr::new(127, 0, 0, u8::try_from(host).expect("at most 250 pods"));
            match TcpListener::bind((ip, port)).await {
                Ok(listener) => listeners.push(listener),
                Err(_) => continue 'port, // port taken on that address; pick another
            }
        }
        let mut addrs = Vec::with_capacity(count);
        for listener in listeners {
            let addr = listener.local_addr()?;
            addrs.push(addr);
            let pod = addr.to_string();
            tokio::spawn(serve_echo(listener, pod, std::future::pending()));
        }
        return Ok(addrs);
    }
    Err(std::io::Error::other(
        "no port is free on all demo pod addresses",
    ))
}

/// Serves an echo pod named `pod` on `listener` until `shutdown` completes,
/// then finishes the requests already received.
///
/// Every request, whatever its method and path, is answered 200 with
/// `{"pod", "method", "path", "broadcast_id", "bytes"}`: the pod's name,
/// what was asked, the `X-Broadcast-Id` header (or `null`) and the body's
/// length (bodies are read up to 1 MiB). Each request is logged at `info`.
pub async fn serve_echo(
    listener: TcpListener,
    pod: String,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let local_addr = listener.local_addr()?;
    tracing::info!(%local_addr, %pod, "Echo pod listening.");
    let pod: std::sync::Arc<str> = pod.into();
    let app = axum::Router::new().fallback(move |request: Request| echo(pod.clone(), request));
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

/// The name an echo pod started by `broadcast-router echo` reports when
/// none is given: the `HOSTNAME` environment variable (in Kubernetes, the
/// pod's name), else the kernel's host name, else `"echo"`.
pub fn host_name() -> String {
    let from_env = std::env::var("HOSTNAME").ok();
    let from_kernel = || {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|name| name.trim().to_owned())
    };
    from_env
        .filter(|name| !name.trim().is_empty())
        .or_else(from_kernel)
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "echo".to_owned())
}

async fn echo(pod: std::sync::Arc<str>, request: Request) -> Json<serde_json::Value> {
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, 1 << 20)
        .await
        .unwrap_or_default();
    let header = |headers: &HeaderMap, name: &str| {
        headers
            .get(name)
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned)
    };
    let broadcast_id = header(&parts.headers, "x-broadcast-id");
    tracing::info!(
        %pod,
        method = %parts.method,
        path = %parts.uri,
        broadcast_id = broadcast_id.as_deref().unwrap_or("-"),
        bytes = body.len(),
        "Echo pod received a request."
    );
    Json(json!({
        "pod": &*pod,
        "method": parts.method.as_str(),
        "path": parts.uri.to_string(),
        "broadcast_id": broadcast_id,
        "bytes": body.len(),
    }))
}

/// The demo configuration (TOML text, validated like any file): two routes
/// over `pods`, served on `listen` and `admin_listen`.
pub fn config(pods: &[SocketAddr], listen: SocketAddr, admin_listen: SocketAddr) -> Config {
    let targets: Vec<String> = pods.iter().map(ToString::to_string).collect();
    let text = format!(
        r#"[server]
listen = "{listen}"
admin_listen = "{admin_listen}"

[[routes]]
name = "invalidate"
path = "/cache/invalidate"
upstream_path = "/cache-invalidation"
targets = {targets:?}
policy = "all"

[[routes]]
name = "refresh"
path = "/config/refresh"
upstream_path = "/config-refresh"
targets = {targets:?}
policy = "first"
"#
    );
    Config::parse(&text).expect("the demo configuration is valid")
}

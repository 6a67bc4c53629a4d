//! `broadcast-router demo`: a router and a few echo pods on loopback
//! addresses (127.0.0.2, 127.0.0.3, …, all on one port, like pods behind a
//! headless Service), so a newcomer can try a broadcast with nothing else
//! installed.

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
            let app = axum::Router::new().fallback(move |request: Request| echo(addr, request));
            tokio::spawn(async move { axum::serve(listener, app).await });
        }
        return Ok(addrs);
    }
    Err(std::io::Error::other(
        "no port is free on all demo pod addresses",
    ))
}

async fn echo(pod: SocketAddr, request: Request) -> Json<serde_json::Value> {
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
    tracing::info!(%pod, path = %parts.uri, bytes = body.len(), "Demo pod received a broadcast.");
    Json(json!({
        "pod": pod.to_string(),
        "method": parts.method.as_str(),
        "path": parts.uri.to_string(),
        "broadcast_id": header(&parts.headers, "x-broadcast-id"),
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

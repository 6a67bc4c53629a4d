//! Shared pieces of the integration tests: a real DNS server ([`dns`]),
//! real pods ([`pods`]) and the real router on ephemeral ports
//! ([`TestRouter`]), driven by a real HTTP client.
#![allow(dead_code)]

pub mod caches;
pub mod dns;
pub mod kube_api;
pub mod plugins;
pub mod pods;
pub mod redis;

use std::net::SocketAddr;
use std::time::Duration;

use broadcast_router::config::Config;
use broadcast_router::server::{self, Running};
use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use serde_json::Value;

/// The `[server]` and `[dns]` tables of a test configuration: ephemeral
/// listeners on 127.0.0.1 and, when given, one test name server with short
/// TTLs and timeouts.
pub fn preamble(dns: Option<SocketAddr>) -> String {
    let mut text = String::from(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\nshutdown_grace = \"5s\"\n",
    );
    if let Some(dns) = dns {
        text.push_str(&format!(
            "\n[dns]\nnameservers = [\"{dns}\"]\nmin_ttl = \"1s\"\nmax_ttl = \"1s\"\nserve_stale_for = \"3s\"\ntimeout = \"300ms\"\nattempts = 1\n"
        ));
    }
    text
}

/// One answer from the router.
#[derive(Debug)]
pub struct Answer {
    /// The HTTP status.
    pub status: StatusCode,
    /// The headers.
    pub headers: HeaderMap,
    /// The body as JSON (`Value::Null` if it was not JSON).
    pub json: Value,
}

impl Answer {
    /// A header's value as text.
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .unwrap_or_else(|| panic!("answer lacks {name}"))
            .to_str()
            .unwrap()
    }

    /// The result entry of `target` (`ip:port`).
    pub fn result(&self, target: SocketAddr) -> &Value {
        self.json["results"]
            .as_array()
            .expect("results")
            .iter()
            .find(|result| result["target"] == target.to_string())
            .unwrap_or_else(|| panic!("no result for {target} in {}", self.json))
    }
}

/// The router under test, started from TOML text.
pub struct TestRouter {
    running: Option<Running>,
    /// Base URL of the broadcast listener.
    pub url: String,
    /// Base URL of the admin listener.
    pub admin: String,
    client: reqwest::Client,
}

impl TestRouter {
    /// Validates `config` and starts the router.
    pub async fn start(config: &str) -> TestRouter {
        let config = Config::parse(config).unwrap_or_else(|problems| panic!("{problems}"));
        let running = server::start(&config).await.expect("router starts");
        TestRouter {
            url: format!("http://{}", running.addr),
            admin: format!("http://{}", running.admin_addr),
            running: Some(running),
            client: reqwest::Client::builder().no_proxy().build().unwrap(),
        }
    }

    /// POSTs `body` to `path`.
    pub async fn post(&self, path: &str, body: impl Into<reqwest::Body>) -> Answer {
        self.send(self.client.post(format!("{}{path}", self.url)).body(body))
            .await
    }

    /// Sends a prepared request (build it with [`TestRouter::client`]).
    pub async fn send(&self, request: reqwest::RequestBuilder) -> Answer {
        let response = request
            .timeout(Duration::from_secs(30))
            .send()
            .await
            .expect("router answers");
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.bytes().await.expect("answer body");
        let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Answer {
            status,
            headers,
            json,
        }
    }

    /// The HTTP client used by the helpers.
    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    /// GETs an admin path; returns status and body.
    pub async fn admin_get(&self, path: &str) -> (StatusCode, String) {
        let response = self
            .client
            .get(format!("{}{path}", self.admin))
            .send()
            .await
            .expect("admin answers");
        (response.status(), response.text().await.unwrap())
    }

    /// Drains and stops the router; returns the ids it could not finish.
    pub async fn shutdown(&mut self) -> Vec<String> {
        self.running.take().expect("running").shutdown().await
    }

    /// Takes the running router, e.g. to shut it down concurrently.
    pub fn take(&mut self) -> Running {
        self.running.take().expect("running")
    }
}

/// Polls `check` every 50 ms until it returns `Some`, failing after 15 s.
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let give_up = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < give_up,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

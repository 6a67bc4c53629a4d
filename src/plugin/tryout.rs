//! `broadcast-router plugin test`: one plugin's hooks run on input given
//! as JSON, without a router or pods, each hook's result as JSON. Plugin
//! authors in any language test with it.
//!
//! The plugin runs exactly as on a route: loaded and checked against its
//! version of the contract (0.1.0 or 0.2.0), `init` run with the config,
//! then `select-targets`, `transform` over the selected pods (one call for
//! all of them, or one per pod for a 0.1.0 plugin) and `aggregate` on the
//! given outcomes, with the router's checks on everything it returns. What the
//! plugin writes to stdout and stderr goes to the log (stderr).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};

use super::Plugins;
use super::bindings::request_head;
use crate::config::Config;
use crate::vocabulary::delivery::{Delivery, DeliveryError, ErrorKind, PodBody, PodRequest};
use crate::vocabulary::target::Target;

/// What `plugin test` reads: the route's plugin config, the request, the
/// pods, and (optionally) how each selected pod answered.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Input {
    /// The route's `config` table for the plugin (`{}` when absent).
    #[serde(default = "empty_object")]
    pub config: Value,
    /// The broadcast request.
    #[serde(default)]
    pub request: RequestInput,
    /// The discovered pods, as `ip:port`.
    pub targets: Vec<String>,
    /// The selected pods' answers, in selection order; a missing entry is
    /// a 200 with an empty body.
    #[serde(default)]
    pub outcomes: Vec<OutcomeInput>,
}

fn empty_object() -> Value {
    json!({})
}

/// The broadcast request of [`Input`].
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RequestInput {
    /// The method (default `POST`).
    pub method: String,
    /// The path and query the pods receive (default `/`).
    pub path: String,
    /// Headers, name to value.
    pub headers: std::collections::BTreeMap<String, String>,
    /// The body, as text.
    pub body: String,
    /// The broadcast id (default `test-broadcast`).
    pub broadcast_id: String,
}

impl Default for RequestInput {
    fn default() -> Self {
        Self {
            method: "POST".into(),
            path: "/".into(),
            headers: Default::default(),
            body: String::new(),
            broadcast_id: "test-broadcast".into(),
        }
    }
}

/// One pod's answer in [`Input`].
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutcomeInput {
    /// The status it answered with (none: it did not answer).
    pub status: Option<u16>,
    /// The body, as text.
    #[serde(default)]
    pub body: String,
    /// Why the delivery failed: `connect`, `timeout`, `status`, `reset`,
    /// `deadline`, `protocol` (default: `status` for a non-2xx answer).
    pub error: Option<String>,
}

/// Why `plugin test` could not run the plugin at all.
#[derive(Debug, thiserror::Error)]
pub enum TryoutError {
    /// The input JSON is not what `plugin test` expects.
    #[error("the test input is invalid: {0}")]
    Input(String),
    /// The plugin could not be loaded (not a component, a missing file…).
    #[error("the plugin cannot be loaded: {0}")]
    Load(String),
}

/// The route every tryout runs on.
const ROUTE: &str = "plugin-test";

/// Runs the plugin at `path` with `memory` and `hook_timeout` on `input`.
/// Returns the results as JSON: `hooks`, then `init`, `select-targets`,
/// `transform` (one per selected pod) and `aggregate`, each `{"ok": …}`
/// or `{"error": "…"}`; a hook the plugin does not implement is absent. The
/// `bool` is whether every call succeeded.
pub fn run(
    path: &std::path::Path,
    memory: &str,
    hook_timeout: Duration,
    input: &Input,
) -> Result<(Value, bool), TryoutError> {
    let targets = input
        .targets
        .iter()
        .enumerate()
        .map(|(index, text)| {
            let addr: SocketAddr = text.parse().map_err(|_| {
                TryoutError::Input(format!("target {text:?} is not an ip:port address"))
            })?;
            Ok(Target {
                addr,
                service: None,
                index,
                pod: None,
            })
        })
        .collect::<Result<Vec<_>, TryoutError>>()?;
    let request = Arc::new(pod_request(&input.request)?);
    let config_toml = toml::Value::try_from(&input.config)
        .map_err(|error| TryoutError::Input(format!("config: {error}")))?;
    let text = format!(
        "[plugins.plugin]\npath = {}\nmemory = {}\nhook_timeout = \"{}ms\"\n\n\
         [[routes]]\nname = \"{ROUTE}\"\npath = \"/{ROUTE}\"\ntargets = [\"127.0.0.1:1\"]\n\
         plugins = [{{ use = \"plugin\", config = {config_toml} }}]\n",
        toml::Value::String(path.display().to_string()),
        toml::Value::String(memory.to_owned()),
        hook_timeout.as_millis().max(1),
    );
    let config =
        Config::parse(&text).map_err(|problems| TryoutError::Load(problems.to_string()))?;
    let plugins = match Plugins::load(&config) {
        Ok(plugins) => plugins,
        Err(problems) => {
            let message: Vec<String> = problems.0.into_iter().map(|p| p.message).collect();
            let message = message.join("; ");
            // The component loaded, but its init refused or trapped.
            if let Some(init) = message
                .strip_prefix(&format!("route \"{ROUTE}\": plugin \"plugin\" "))
                .filter(|_| !message.starts_with("plugin \"plugin\":"))
            {
                return Ok((json!({ "init": { "error": init } }), false));
            }
            return Err(TryoutError::Load(message));
        }
    };
    let chain = plugins.chain(ROUTE);
    let route: Arc<str> = ROUTE.into();
    let id = &input.request.broadcast_id;
    let mut results = serde_json::Map::new();
    results.insert("hooks".into(), json!(chain.hooks_of_first()));
    results.insert("init".into(), json!({ "ok": null }));
    let head = request_head(id, ROUTE, &request);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut session = chain.session(&route, id, deadline);
    let hooks = chain.hooks_of_first();
    let mut all_ok = true;
    let mut record = |name: &str, result: Result<Value, String>| {
        let entry = match result {
            Ok(value) => json!({ "ok": value }),
            Err(error) => {
                all_ok = false;
                json!({ "error": error })
            }
        };
        results.insert(name.into(), entry);
    };
    let selected = match session.select(&head, targets.clone()) {
        Ok(selected) => selected,
        Err(failure) => {
            record("select-targets", Err(failure.cause.to_string()));
            return Ok((Value::Object(results), false));
        }
    };
    if hooks.contains(&"select-targets") {
        let kept: Vec<String> = selected.iter().map(|t| t.addr.to_string()).collect();
        record("select-targets", Ok(json!(kept)));
    }
    if hooks.contains(&"transform") {
        let copies = session
            .transform(&head, &request, &selected)
            .map(|copies| {
                let described = selected.iter().zip(&copies);
                Value::Array(
                    described
                        .map(|(target, copy)| describe(target, copy))
                        .collect(),
                )
            })
            .map_err(|failure| failure.cause.to_string());
        record("transform", copies);
    }
    if hooks.contains(&"aggregate") {
        let outcomes = selected
            .iter()
            .enumerate()
            .map(|(position, _)| delivery(input.outcomes.get(position)).map(Some))
            .collect::<Result<Vec<_>, _>>()?;
        let verdict = session
            .aggregate(&head, &selected, &outcomes)
            .map_err(|failure| failure.cause.to_string())
            .map(|verdict| {
                verdict.map_or(Value::Null, |verdict| {
                    json!({
                        "ok": verdict.ok,
                        "status": verdict.status.as_u16(),
                        "content_type": verdict.content_type.to_str().unwrap_or_default(),
                        "body": String::from_utf8_lossy(&verdict.body),
                    })
                })
            });
        record("aggregate", verdict);
    }
    Ok((Value::Object(results), all_ok))
}

fn pod_request(input: &RequestInput) -> Result<PodRequest, TryoutError> {
    let method = Method::from_bytes(input.method.as_bytes())
        .map_err(|_| TryoutError::Input(format!("method {:?} is not valid", input.method)))?;
    let mut headers = HeaderMap::new();
    for (name, value) in &input.headers {
        let name = HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes())
            .map_err(|_| TryoutError::Input(format!("header name {name:?} is not valid")))?;
        let value = HeaderValue::from_str(value)
            .map_err(|_| TryoutError::Input(format!("the value of header {name} is not valid")))?;
        headers.insert(name, value);
    }
    Ok(PodRequest {
        method,
        path_and_query: input.path.clone(),
        headers,
        body: Bytes::from(input.body.clone()),
    })
}

/// One pod's copy after every transform.
fn describe(target: &Target, copy: &PodRequest) -> Value {
    let headers: serde_json::Map<String, Value> = copy
        .headers
        .iter()
        .map(|(name, value)| {
            let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
            (name.as_str().to_owned(), Value::String(value))
        })
        .collect();
    json!({
        "target": target.addr.to_string(),
        "path": copy.path_and_query,
        "headers": headers,
        "body": String::from_utf8_lossy(&copy.body),
    })
}

fn delivery(input: Option<&OutcomeInput>) -> Result<Delivery, TryoutError> {
    let default = OutcomeInput {
        status: Some(200),
        ..OutcomeInput::default()
    };
    let input = input.unwrap_or(&default);
    let status = input
        .status
        .map(|status| {
            StatusCode::from_u16(status)
                .map_err(|_| TryoutError::Input(format!("status {status} is not valid")))
        })
        .transpose()?;
    let kind = match input.error.as_deref() {
        None if status.is_some_and(|status| status.is_success()) => None,
        None if status.is_some() => Some(ErrorKind::Status),
        None => Some(ErrorKind::Connect),
        Some("connect") => Some(ErrorKind::Connect),
        Some("timeout") => Some(ErrorKind::Timeout),
        Some("status") => Some(ErrorKind::Status),
        Some("reset") => Some(ErrorKind::Reset),
        Some("deadline") => Some(ErrorKind::Deadline),
        Some("protocol") => Some(ErrorKind::Protocol),
        Some(other) => {
            return Err(TryoutError::Input(format!(
                "error {other:?} is not one of connect, timeout, status, reset, deadline, protocol"
            )));
        }
    };
    Ok(Delivery {
        status,
        attempts: 1,
        latency: Duration::from_millis(1),
        error: kind.map(|kind| DeliveryError {
            kind,
            detail: kind.as_str().to_owned(),
        }),
        body: Some(PodBody {
            bytes: Bytes::from(input.body.clone()),
            truncated: false,
        }),
        headers: HeaderMap::new(),
    })
}

//! The HTTP front: the broadcast listener (one axum route per configured
//! route), the admin listener (`/healthz`, `/readyz`, `/metrics`), and the
//! lifecycle that binds both and drains them on shutdown.
//!
//! A request's path through `handle`: check the client's broadcast id →
//! check a templated service against its allow-list (403, before any DNS
//! query) → read the body within `max_body_bytes` (413) → discover the pods
//! (503 when none) → broadcast → answer. HTTP routes answer with the report
//! (`mode = "sync"`) or 202 at once (`mode = "async"`); UDP routes check the
//! datagram size (413, nothing sent) and answer 202 once every copy is sent.

pub mod admin;
mod error;

pub use error::ApiError;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::extract::{ConnectInfo, RawPathParams, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodFilter, MethodRouter};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::aggregate::Accepted;
use crate::broadcast::{self, Broadcaster, BuildError};
use crate::config::{Config, Mode, Problems, Protocol};
use crate::fanout::PodRequest;
use crate::fanout::headers::{self, BROADCAST_ID, BROADCAST_SUCCEEDED, BROADCAST_TARGETS};
use crate::plugin::Plugins;
use crate::route::Route;
use crate::telemetry;

/// What every request handler shares.
pub struct AppState {
    routes: Vec<Arc<Route>>,
    broadcaster: Arc<Broadcaster>,
    max_body_bytes: usize,
    ready: AtomicBool,
}

impl AppState {
    /// Compiles the configuration's routes (with their plugin chains) and
    /// builds the broadcaster.
    pub fn new(config: &Config, plugins: &Plugins) -> Result<Self, BuildError> {
        Ok(Self {
            routes: config
                .routes
                .iter()
                .map(|route| {
                    let mut compiled = Route::from_config(route);
                    compiled.plugins = plugins.chain(&route.name);
                    Arc::new(compiled)
                })
                .collect(),
            broadcaster: Arc::new(Broadcaster::new(
                &config.dns,
                config.routes.iter().any(|route| route.service.is_some()),
            )?),
            max_body_bytes: usize::try_from(config.server.max_body_bytes.as_u64())
                .unwrap_or(usize::MAX),
            ready: AtomicBool::new(false),
        })
    }

    /// Whether the router accepts broadcasts (false before start and while
    /// draining).
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }
}

/// The broadcast routes as an axum router. Serve it with
/// `into_make_service_with_connect_info::<SocketAddr>()`.
pub fn app(state: Arc<AppState>) -> axum::Router {
    let mut by_path: BTreeMap<&str, MethodRouter<Arc<AppState>>> = BTreeMap::new();
    for route in &state.routes {
        let mut methods = by_path.remove(route.path.as_str()).unwrap_or_default();
        for method in &route.methods {
            let filter = MethodFilter::try_from(method.clone()).expect("validated method");
            let route = Arc::clone(route);
            methods = methods.on(
                filter,
                move |State(state): State<Arc<AppState>>,
                      ConnectInfo(peer): ConnectInfo<SocketAddr>,
                      params: RawPathParams,
                      request: Request| async move {
                    handle(state, route, peer, params, request).await
                },
            );
        }
        by_path.insert(route.path.as_str(), methods);
    }
    let mut router = axum::Router::new();
    for (path, methods) in by_path {
        router = router.route(path, methods);
    }
    router
        .fallback(|| async { ApiError::NoRoute })
        .with_state(state)
}

async fn handle(
    state: Arc<AppState>,
    route: Arc<Route>,
    peer: SocketAddr,
    params: RawPathParams,
    request: Request,
) -> Response {
    let (parts, body) = request.into_parts();
    let id = match parts.headers.get(BROADCAST_ID).map(HeaderValue::to_str) {
        None => uuid::Uuid::new_v4().to_string(),
        Some(Ok(id)) if headers::valid_broadcast_id(id) => id.to_owned(),
        Some(_) => return reject(&route, None, ApiError::BadBroadcastId),
    };
    let params: Vec<(String, String)> = params
        .iter()
        .map(|(name, value)| (name.to_owned(), value.to_owned()))
        .collect();
    let requested = params
        .iter()
        .find(|(name, _)| name == "service")
        .map(|(_, value)| value.as_str());
    let service = match route.service_name(requested) {
        Ok(service) => service,
        Err(refused) => return reject(&route, Some(&id), refused.into()),
    };
    let body = match read_body(body, &parts.headers, state.max_body_bytes).await {
        Ok(body) => body,
        Err(error) => return reject(&route, Some(&id), error),
    };
    let path_and_query = match route.upstream_path_and_query(&parts.uri, &params) {
        Ok(path) => path,
        Err(unsafe_path) => return reject(&route, Some(&id), unsafe_path.into()),
    };
    let request = PodRequest {
        path_and_query,
        headers: headers::forwarded(&parts.headers, peer.ip(), &id),
        method: parts.method,
        body,
    };
    let answer = match route.protocol {
        Protocol::Udp => udp_answer(&state, &route, service, &id, request).await,
        Protocol::Http => http_answer(&state, &route, service, &id, request).await,
    };
    match answer {
        Ok(Answered {
            status,
            mut response,
            targets,
            succeeded,
        }) => {
            *response.status_mut() = status;
            let headers = response.headers_mut();
            headers.insert(
                BROADCAST_ID,
                HeaderValue::from_str(&id).expect("validated id"),
            );
            headers.insert(BROADCAST_TARGETS, targets.into());
            if let Some(succeeded) = succeeded {
                headers.insert(BROADCAST_SUCCEEDED, succeeded.into());
            }
            response
        }
        Err(error) => reject(&route, Some(&id), error.into()),
    }
}

/// A broadcast's answer before the `X-Broadcast-*` headers are added.
struct Answered {
    status: StatusCode,
    response: Response,
    targets: usize,
    /// Pods that answered 2xx (HTTP routes answered after delivery).
    succeeded: Option<usize>,
}

/// UDP: 202 once every copy is sent, with what went to each pod.
async fn udp_answer(
    state: &AppState,
    route: &Arc<Route>,
    service: Option<String>,
    id: &str,
    request: PodRequest,
) -> Result<Answered, broadcast::StartError> {
    let report = state
        .broadcaster
        .send_udp(Arc::clone(route), service, id.to_owned(), request)
        .await?;
    Ok(Answered {
        status: StatusCode::ACCEPTED,
        targets: report.targets,
        succeeded: None,
        response: Json(report).into_response(),
    })
}

/// HTTP: 202 at once for `async` routes; otherwise the report judged by the
/// policy, the aggregate plugin's verdict, or 502 when that plugin failed.
async fn http_answer(
    state: &AppState,
    route: &Arc<Route>,
    service: Option<String>,
    id: &str,
    request: PodRequest,
) -> Result<Answered, broadcast::StartError> {
    let started = state
        .broadcaster
        .start(Arc::clone(route), service, id.to_owned(), request)
        .await?;
    if route.mode == Mode::Async {
        let targets = started.targets;
        let accepted = Accepted {
            id: id.to_owned(),
            route: route.name.to_string(),
            mode: "async",
            targets,
        };
        return Ok(Answered {
            status: StatusCode::ACCEPTED,
            response: Json(accepted).into_response(),
            targets,
            succeeded: None,
        });
    }
    let answer = started.answer().await;
    let (targets, succeeded) = (answer.report.targets, Some(answer.report.succeeded));
    let (status, response) = match (answer.verdict, answer.plugin_failure) {
        (_, Some(failure)) => {
            let mut body = serde_json::to_value(&answer.report).unwrap_or_default();
            body["error"] = failure.to_string().into();
            (StatusCode::BAD_GATEWAY, Json(body).into_response())
        }
        (Some(verdict), None) => {
            let headers = [(header::CONTENT_TYPE, verdict.content_type)];
            (verdict.status, (headers, verdict.body).into_response())
        }
        (None, None) => (
            answer.report.status(route.policy),
            Json(answer.report).into_response(),
        ),
    };
    Ok(Answered {
        status,
        response,
        targets,
        succeeded,
    })
}

fn reject(route: &Route, id: Option<&str>, error: ApiError) -> Response {
    telemetry::broadcast_rejected(&route.name, error.outcome());
    tracing::info!(route = %route.name, id, %error, "Broadcast refused.");
    error.into_answer(&route.name, id)
}

/// Reads the whole body once, refusing it (413) past `limit` bytes, before
/// reading anything when `Content-Length` already says so.
async fn read_body(
    body: Body,
    headers: &axum::http::HeaderMap,
    limit: usize,
) -> Result<bytes::Bytes, ApiError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    if declared.is_some_and(|length| length > limit as u64) {
        return Err(ApiError::TooLarge { limit });
    }
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error) if error.downcast_ref::<LengthLimitError>().is_some() => {
            Err(ApiError::TooLarge { limit })
        }
        Err(error) => Err(ApiError::BodyRead(error.to_string())),
    }
}

/// Why the router could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A listener address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address from the configuration.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// Discovery or the HTTP client could not be built.
    #[error(transparent)]
    Build(#[from] BuildError),
    /// A plugin could not be loaded or rejected its config.
    #[error("plugins: {0}")]
    Plugins(Problems),
}

/// A running router: both listeners bound and serving.
pub struct Running {
    /// The bound broadcast address (useful with port 0).
    pub addr: SocketAddr,
    /// The bound admin address.
    pub admin_addr: SocketAddr,
    state: Arc<AppState>,
    shutdown: CancellationToken,
    grace: Duration,
    serving: JoinHandle<()>,
    admin: JoinHandle<()>,
    admin_shutdown: CancellationToken,
}

/// Binds both listeners and starts serving `config`.
pub async fn start(config: &Config) -> Result<Running, StartError> {
    // Install the metrics recorder before anything can record.
    telemetry::metrics();
    let plugins = Plugins::load(config).map_err(StartError::Plugins)?;
    let state = Arc::new(AppState::new(config, &plugins)?);
    let bind = |addr: SocketAddr| async move {
        TcpListener::bind(addr)
            .await
            .map_err(|source| StartError::Bind { addr, source })
    };
    let listener = bind(config.server.listen).await?;
    let admin_listener = bind(config.server.admin_listen).await?;
    let addr = listener
        .local_addr()
        .expect("bound listener has an address");
    let admin_addr = admin_listener
        .local_addr()
        .expect("bound listener has an address");

    let shutdown = CancellationToken::new();
    let admin_shutdown = CancellationToken::new();
    let serving = tokio::spawn({
        let service = app(Arc::clone(&state)).into_make_service_with_connect_info::<SocketAddr>();
        let shutdown = shutdown.clone();
        async move {
            if let Err(error) = axum::serve(listener, service)
                .with_graceful_shutdown(shutdown.cancelled_owned())
                .await
            {
                tracing::error!(%error, "The broadcast listener failed.");
            }
        }
    });
    let admin = tokio::spawn({
        let service = admin::app(Arc::clone(&state));
        let shutdown = admin_shutdown.clone();
        async move {
            if let Err(error) = axum::serve(admin_listener, service)
                .with_graceful_shutdown(shutdown.cancelled_owned())
                .await
            {
                tracing::error!(%error, "The admin listener failed.");
            }
        }
    });
    tokio::spawn({
        let stop = admin_shutdown.clone();
        async move {
            let mut every = tokio::time::interval(Duration::from_secs(5));
            while stop.run_until_cancelled(every.tick()).await.is_some() {
                telemetry::upkeep();
            }
        }
    });
    state.ready.store(true, Ordering::Relaxed);
    tracing::info!(%addr, %admin_addr, routes = state.routes.len(), "Router listening.");
    Ok(Running {
        addr,
        admin_addr,
        state,
        shutdown,
        grace: config.server.shutdown_grace,
        serving,
        admin,
        admin_shutdown,
    })
}

impl Running {
    /// The shared state, e.g. to check readiness.
    pub fn state(&self) -> &Arc<AppState> {
        &self.state
    }

    /// Stops accepting, lets in-flight broadcasts finish within the
    /// configured `shutdown_grace`, then stops the admin listener. Returns
    /// the ids of broadcasts that could not finish in time.
    pub async fn shutdown(self) -> Vec<String> {
        let deadline = tokio::time::Instant::now() + self.grace;
        self.state.ready.store(false, Ordering::Relaxed);
        self.shutdown.cancel();
        tracing::info!(grace = ?self.grace, "Draining: no new connections, finishing broadcasts.");
        let mut serving = self.serving;
        if tokio::time::timeout_at(deadline, &mut serving)
            .await
            .is_err()
        {
            tracing::warn!("Client connections still open at the end of the grace period.");
            serving.abort();
        }
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        let unfinished = self.state.broadcaster.drain(remaining).await;
        self.admin_shutdown.cancel();
        let _ = self.admin.await;
        tracing::info!(unfinished = unfinished.len(), "Router stopped.");
        unfinished
    }
}

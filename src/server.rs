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
pub mod listener;

pub use error::ApiError;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

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
use tower::ServiceExt;

use crate::aggregate::Accepted;
use crate::auth::{Guard, Tokens};
use crate::broadcast::{self, Broadcaster, BuildError};
use crate::config::{Config, Mode, Problems, Protocol};
use crate::fanout::PodRequest;
use crate::fanout::headers::{self, BROADCAST_ID, BROADCAST_SUCCEEDED, BROADCAST_TARGETS};
use crate::limit::Admitted;
use crate::plugin::Plugins;
use crate::route::Route;
use crate::telemetry;
use crate::tls::TlsFiles;
use listener::ClientLimits;

/// What the listeners share: the active configuration generation, which a
/// reload replaces atomically, and readiness, which a reload never touches.
pub struct AppState {
    active: RwLock<Active>,
    ready: AtomicBool,
    next_version: AtomicU64,
    last_failure: Mutex<Option<ReloadFailure>>,
}

/// The configuration in service: its generation (what handlers use) and
/// the router over its routes.
#[derive(Clone)]
struct Active {
    generation: Arc<Generation>,
    router: axum::Router,
}

/// One loaded configuration: compiled routes with their plugin chains, the
/// broadcaster for its DNS settings, and its limits. A broadcast keeps the
/// generation it started with until it finishes, whatever is loaded since.
pub struct Generation {
    routes: Vec<Arc<Route>>,
    broadcaster: Arc<Broadcaster>,
    max_body_bytes: usize,
    client_timeout: Duration,
    shutdown_grace: Duration,
    listen: (SocketAddr, SocketAddr),
    admin_auth: Guard,
    /// The broadcast listener's TLS settings (`[server.tls]`).
    listener_tls: Option<Arc<rustls::ServerConfig>>,
    info: ConfigInfo,
}

/// What `/admin/config` tells about the active configuration.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ConfigInfo {
    /// 1 for the configuration the router started with, then one more per
    /// successful reload.
    pub version: u64,
    /// When it was loaded (RFC 3339, UTC).
    pub loaded_at: String,
    /// The file it was read from (absent for a configuration built in
    /// memory, as in tests and the demo).
    pub source: Option<PathBuf>,
    /// SHA-256 of the configuration file followed by every plugin and
    /// token file, in hex; absent for a configuration built in memory.
    pub sha256: Option<String>,
    /// The routes by name.
    pub routes: Vec<String>,
    /// The plugins by name, with the file each was loaded from.
    pub plugins: BTreeMap<String, PathBuf>,
}

/// Where a configuration came from, for [`ConfigInfo`].
#[derive(Debug, Clone, Default)]
pub struct Origin {
    /// The file it was read from.
    pub source: Option<PathBuf>,
    /// SHA-256 over the configuration and plugin files, in hex.
    pub sha256: Option<String>,
}

/// The last reload that was rejected, shown by `/admin/config` until a
/// later one succeeds.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReloadFailure {
    /// When it was rejected (RFC 3339, UTC).
    pub at: String,
    /// Why, with every problem's location.
    pub error: String,
}

impl Generation {
    /// Compiles the configuration's routes (with their plugin chains) and
    /// builds the broadcaster, reusing `previous`'s shared parts.
    fn build(
        config: &Config,
        plugins: &Plugins,
        tokens: &Tokens,
        tls: &TlsFiles,
        previous: Option<&Broadcaster>,
        version: u64,
        origin: Origin,
    ) -> Result<Self, BuildError> {
        let with_dns = config.routes.iter().any(|route| route.service.is_some());
        let broadcaster = match previous {
            Some(previous) => previous.reconfigured(&config.dns, with_dns)?,
            None => Broadcaster::new(
                &config.dns,
                with_dns,
                config.server.max_in_flight_deliveries,
            )?,
        };
        let routes: Vec<Arc<Route>> = config
            .routes
            .iter()
            .map(|route| {
                let mut compiled = Route::from_config(route);
                compiled.plugins = plugins.chain(&route.name);
                compiled.auth = tokens.guard(&route.auth);
                compiled.limits.tls = tls.routes.get(&route.name).cloned();
                Arc::new(compiled)
            })
            .collect();
        let info = ConfigInfo {
            version,
            loaded_at: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
            source: origin.source,
            sha256: origin.sha256,
            routes: routes.iter().map(|route| route.name.to_string()).collect(),
            plugins: config
                .plugins
                .iter()
                .map(|(name, plugin)| (name.clone(), plugin.path.clone()))
                .collect(),
        };
        Ok(Self {
            routes,
            broadcaster: Arc::new(broadcaster),
            max_body_bytes: usize::try_from(config.server.max_body_bytes.as_u64())
                .unwrap_or(usize::MAX),
            client_timeout: config.server.client_timeout,
            shutdown_grace: config.server.shutdown_grace,
            listen: (config.server.listen, config.server.admin_listen),
            admin_auth: tokens.guard(&config.server.admin_auth),
            listener_tls: tls.listener.clone(),
            info,
        })
    }
}

impl AppState {
    fn new(generation: Generation) -> Self {
        let generation = Arc::new(generation);
        Self {
            active: RwLock::new(Active {
                router: routes(&generation),
                generation,
            }),
            ready: AtomicBool::new(false),
            next_version: AtomicU64::new(2),
            last_failure: Mutex::new(None),
        }
    }

    /// Whether the router accepts broadcasts (false before start and while
    /// draining).
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    fn active(&self) -> Active {
        self.active.read().expect("active config lock").clone()
    }

    /// The active configuration's description.
    pub fn config_info(&self) -> ConfigInfo {
        self.active().generation.info.clone()
    }

    /// What `/metrics` and `/admin/*` require (the active configuration's
    /// `admin_auth`).
    pub fn admin_guard(&self) -> Guard {
        self.active().generation.admin_auth.clone()
    }

    /// The last rejected reload, unless a reload succeeded since.
    pub fn last_reload_failure(&self) -> Option<ReloadFailure> {
        self.last_failure
            .lock()
            .expect("reload status lock")
            .clone()
    }

    /// Builds `config` (routes, DNS settings, plugins compiled and
    /// initialised) off to the side and then swaps it in. Broadcasts
    /// already running finish on the configuration they started with; the
    /// next request uses the new one. On error the active configuration
    /// keeps serving and the error is kept for `/admin/config`.
    pub async fn reload(&self, config: Config, origin: Origin) -> Result<ConfigInfo, ReloadError> {
        let built = self.build_next(config, origin).await;
        let mut last_failure = self.last_failure.lock().expect("reload status lock");
        match built {
            Ok(generation) => {
                let info = generation.info.clone();
                let listen = generation.listen;
                let with_tls = generation.listener_tls.is_some();
                let generation = Arc::new(generation);
                let next = Active {
                    router: routes(&generation),
                    generation,
                };
                let previous =
                    std::mem::replace(&mut *self.active.write().expect("active config lock"), next);
                *last_failure = None;
                if previous.generation.listen != listen {
                    tracing::warn!(
                        "The listen addresses changed; they take effect at the next restart."
                    );
                }
                if previous.generation.listener_tls.is_some() != with_tls {
                    tracing::warn!(
                        "[server.tls] was added or removed; the listener keeps its protocol until the next restart."
                    );
                }
                telemetry::config_reloaded("ok", info.version);
                Ok(info)
            }
            Err(error) => {
                drop(last_failure);
                Err(self.reject(error))
            }
        }
    }

    /// Forgets the last rejected reload (the files match the active
    /// configuration again).
    pub fn clear_reload_failure(&self) {
        *self.last_failure.lock().expect("reload status lock") = None;
    }

    /// Records a reload that could not be used (for `/admin/config` and
    /// the metrics) and hands the error back.
    pub fn reject(&self, error: ReloadError) -> ReloadError {
        *self.last_failure.lock().expect("reload status lock") = Some(ReloadFailure {
            at: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
            error: error.to_string(),
        });
        telemetry::config_reloaded("error", self.config_info().version);
        error
    }

    async fn build_next(&self, config: Config, origin: Origin) -> Result<Generation, ReloadError> {
        // Compiling plugins is CPU work: keep it off the request workers.
        let (config, plugins, tokens, tls) = tokio::task::spawn_blocking(move || {
            let plugins = Plugins::load(&config);
            let tokens = Tokens::load(&config);
            let tls = TlsFiles::load(&config);
            (config, plugins, tokens, tls)
        })
        .await
        .map_err(|error| ReloadError::Panicked(error.to_string()))?;
        let plugins = plugins.map_err(ReloadError::Plugins)?;
        let tokens = tokens.map_err(ReloadError::Tokens)?;
        let tls = tls.map_err(ReloadError::Tls)?;
        let previous = self.active().generation;
        let version = self.next_version.fetch_add(1, Ordering::Relaxed);
        Ok(Generation::build(
            &config,
            &plugins,
            &tokens,
            &tls,
            Some(&previous.broadcaster),
            version,
            origin,
        )?)
    }
}

/// Why a new configuration was not swapped in (the active one keeps
/// serving).
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The file could not be read or is invalid.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// A plugin could not be loaded or rejected its config.
    #[error("plugins: {0}")]
    Plugins(Problems),
    /// A token set could not be read.
    #[error("tokens: {0}")]
    Tokens(Problems),
    /// A certificate, key or CA file could not be used.
    #[error("tls: {0}")]
    Tls(Problems),
    /// The DNS resolver or HTTP client could not be built.
    #[error(transparent)]
    Build(#[from] BuildError),
    /// Building the configuration panicked.
    #[error("building the configuration panicked: {0}")]
    Panicked(String),
}

/// The broadcast listener as an axum router: every request goes to the
/// routes of the configuration active when it arrives. Serve it with
/// `into_make_service_with_connect_info::<SocketAddr>()`.
pub fn app(state: Arc<AppState>) -> axum::Router {
    axum::Router::new()
        .fallback(
            |State(state): State<Arc<AppState>>, request: Request| async move {
                let router = state.active().router;
                match router.oneshot(request).await {
                    Ok(response) => response,
                    Err(never) => match never {},
                }
            },
        )
        .with_state(state)
}

/// One generation's routes as an axum router.
fn routes(generation: &Arc<Generation>) -> axum::Router {
    let mut by_path: BTreeMap<&str, MethodRouter<Arc<Generation>>> = BTreeMap::new();
    for route in &generation.routes {
        let mut methods = by_path.remove(route.path.as_str()).unwrap_or_default();
        for method in &route.methods {
            let filter = MethodFilter::try_from(method.clone()).expect("validated method");
            let route = Arc::clone(route);
            methods = methods.on(
                filter,
                move |State(generation): State<Arc<Generation>>,
                      ConnectInfo(peer): ConnectInfo<SocketAddr>,
                      params: RawPathParams,
                      request: Request| async move {
                    handle(generation, route, peer, params, request).await
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
        .with_state(Arc::clone(generation))
}

async fn handle(
    state: Arc<Generation>,
    route: Arc<Route>,
    peer: SocketAddr,
    params: RawPathParams,
    request: Request,
) -> Response {
    let (parts, body) = request.into_parts();
    if headers::has_looped(&parts.headers) {
        return reject(&route, None, ApiError::Loop);
    }
    if let Err(denied) = route.auth.check(&parts.headers) {
        return reject(&route, None, denied.into());
    }
    let id = match parts.headers.get(BROADCAST_ID).map(HeaderValue::to_str) {
        None => uuid::Uuid::new_v4().to_string(),
        Some(Ok(id)) if headers::valid_broadcast_id(id) => id.to_owned(),
        Some(_) => return reject(&route, None, ApiError::BadBroadcastId),
    };
    // Over a limit, the request is refused before its body is read.
    let admitted = match route.admission.admit() {
        Ok(admitted) => admitted,
        Err(refused) => return reject(&route, Some(&id), refused.into()),
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
    let reading = read_body(body, &parts.headers, state.max_body_bytes);
    let body = match tokio::time::timeout(state.client_timeout, reading).await {
        Ok(Ok(body)) => body,
        Ok(Err(error)) => return reject(&route, Some(&id), error),
        Err(_) => {
            return reject(
                &route,
                Some(&id),
                ApiError::ClientTimeout(state.client_timeout),
            );
        }
    };
    let path_and_query = match route.upstream_path_and_query(&parts.uri, &params) {
        Ok(path) => path,
        Err(unsafe_path) => return reject(&route, Some(&id), unsafe_path.into()),
    };
    let mut forwarded = headers::forwarded(&parts.headers, peer.ip(), &id);
    if route.auth.is_required() {
        // The token was for the router; pods never see it.
        forwarded.remove(header::AUTHORIZATION);
    }
    let request = PodRequest {
        path_and_query,
        headers: forwarded,
        method: parts.method,
        body,
    };
    let answer = match route.protocol {
        Protocol::Udp => udp_answer(&state, &route, service, &id, request, admitted).await,
        Protocol::Http => http_answer(&state, &route, service, &id, request, admitted).await,
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
    state: &Generation,
    route: &Arc<Route>,
    service: Option<String>,
    id: &str,
    request: PodRequest,
    admitted: Admitted,
) -> Result<Answered, broadcast::StartError> {
    let report = state
        .broadcaster
        .send_udp(Arc::clone(route), service, id.to_owned(), request, admitted)
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
    state: &Generation,
    route: &Arc<Route>,
    service: Option<String>,
    id: &str,
    request: PodRequest,
    admitted: Admitted,
) -> Result<Answered, broadcast::StartError> {
    let started = state
        .broadcaster
        .start(Arc::clone(route), service, id.to_owned(), request, admitted)
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
    /// A token set could not be read.
    #[error("tokens: {0}")]
    Tokens(Problems),
    /// A certificate, key or CA file could not be used.
    #[error("tls: {0}")]
    Tls(Problems),
}

/// A running router: both listeners bound and serving.
pub struct Running {
    /// The bound broadcast address (useful with port 0).
    pub addr: SocketAddr,
    /// The bound admin address.
    pub admin_addr: SocketAddr,
    state: Arc<AppState>,
    shutdown: CancellationToken,
    serving: JoinHandle<()>,
    admin: JoinHandle<()>,
    admin_shutdown: CancellationToken,
}

/// Binds both listeners and starts serving `config` (built in memory).
pub async fn start(config: &Config) -> Result<Running, StartError> {
    start_with(config, Origin::default()).await
}

/// Binds both listeners and starts serving `config`, read from `origin`.
pub async fn start_with(config: &Config, origin: Origin) -> Result<Running, StartError> {
    // Install the metrics recorder before anything can record.
    telemetry::metrics();
    let plugins = Plugins::load(config).map_err(StartError::Plugins)?;
    let tokens = Tokens::load(config).map_err(StartError::Tokens)?;
    let tls = TlsFiles::load(config).map_err(StartError::Tls)?;
    let generation = Generation::build(config, &plugins, &tokens, &tls, None, 1, origin)?;
    telemetry::config_reloaded("initial", 1);
    let state = Arc::new(AppState::new(generation));
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
    // Client limits belong to the sockets: a reload keeps the first ones.
    let limits = ClientLimits {
        max_headers: config.server.max_header_count,
        max_header_bytes: usize::try_from(config.server.max_header_bytes.as_u64())
            .unwrap_or(usize::MAX),
        header_read_timeout: config.server.client_timeout,
    };
    // Whether the listener speaks TLS is fixed here; its certificate is
    // the active configuration's, so a reload can rotate it.
    let current_tls = tls.listener.map(|initial| {
        let state = Arc::clone(&state);
        Arc::new(move || {
            state
                .active()
                .generation
                .listener_tls
                .clone()
                .unwrap_or_else(|| Arc::clone(&initial))
        }) as listener::CurrentTls
    });
    let serving = tokio::spawn(listener::serve(
        listener,
        app(Arc::clone(&state)),
        limits,
        current_tls,
        shutdown.clone(),
    ));
    // The admin listener stays plain HTTP: kubelet probes speak HTTP.
    let admin = tokio::spawn(listener::serve(
        admin_listener,
        admin::app(Arc::clone(&state)),
        limits,
        None,
        admin_shutdown.clone(),
    ));
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
    tracing::info!(%addr, %admin_addr, routes = state.config_info().routes.len(), "Router listening.");
    Ok(Running {
        addr,
        admin_addr,
        state,
        shutdown,
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
        let active = self.state.active().generation;
        let grace = active.shutdown_grace;
        let deadline = tokio::time::Instant::now() + grace;
        self.state.ready.store(false, Ordering::Relaxed);
        self.shutdown.cancel();
        tracing::info!(
            ?grace,
            "Draining: no new connections, finishing broadcasts."
        );
        let mut serving = self.serving;
        if tokio::time::timeout_at(deadline, &mut serving)
            .await
            .is_err()
        {
            tracing::warn!("Client connections still open at the end of the grace period.");
            serving.abort();
        }
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        // Every generation's broadcasts share one tracker: this waits for
        // those started before the last reload too.
        let unfinished = active.broadcaster.drain(remaining).await;
        self.admin_shutdown.cancel();
        let _ = self.admin.await;
        tracing::info!(unfinished = unfinished.len(), "Router stopped.");
        unfinished
    }
}

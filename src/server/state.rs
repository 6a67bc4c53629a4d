//! What the listeners share: the configuration generation in service,
//! which a reload builds off to the side and swaps in atomically, and
//! readiness, which a reload never touches.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use crate::auth::Guard;
use crate::broadcast::{Broadcaster, SetupError};
use crate::config::{Config, ConfigError, JobsConfig, Problems};
use crate::jobs::Jobs;
use crate::load::{Endpoint, Loaded};
use crate::telemetry;

/// What the listeners share: the active configuration generation, which a
/// reload replaces atomically, and readiness, which a reload never touches.
pub struct AppState {
    active: RwLock<Active>,
    pub(super) ready: AtomicBool,
    /// Whether the admin listener is bound to a loopback address only.
    pub(super) admin_on_loopback: AtomicBool,
    next_version: AtomicU64,
    last_failure: Mutex<Option<ReloadFailure>>,
}

/// The configuration in service: its generation (what handlers use) and
/// the router over its routes.
#[derive(Clone)]
pub(super) struct Active {
    pub(super) generation: Arc<Generation>,
    pub(super) router: axum::Router,
}

/// One loaded configuration: its endpoints, the broadcaster for its DNS
/// settings, and its limits. A broadcast keeps the generation it started
/// with until it finishes, whatever is loaded since.
pub struct Generation {
    pub(super) endpoints: Vec<Arc<Endpoint>>,
    pub(super) broadcaster: Arc<Broadcaster>,
    pub(super) max_body_bytes: usize,
    pub(super) client_timeout: Duration,
    pub(super) shutdown_grace: Duration,
    listen: (SocketAddr, SocketAddr),
    /// The `[jobs]` table; the store opened at start stays in use.
    jobs: Option<JobsConfig>,
    admin_auth: Guard,
    /// The broadcast listener's TLS settings (`[server.tls]`).
    pub(super) listener_tls: Option<Arc<rustls::ServerConfig>>,
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

/// Why a configuration could not become a generation, at start or on
/// reload.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// A plugin, token, certificate, key or CA file could not be used;
    /// every problem is listed with its location.
    #[error("{0}")]
    Load(Problems),
    /// The DNS resolver or HTTP client could not be set up.
    #[error(transparent)]
    Setup(#[from] SetupError),
}

/// Why a new configuration was not swapped in (the active one keeps
/// serving).
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The file could not be read or is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Its files or machinery could not be built.
    #[error(transparent)]
    Build(#[from] BuildError),
    /// Building the configuration panicked.
    #[error("building the configuration panicked: {0}")]
    Panicked(String),
}

impl Generation {
    /// Loads `config`'s files and builds its endpoints and broadcaster,
    /// reusing `previous`'s shared parts.
    pub(super) fn build(
        config: &Config,
        jobs: Arc<Jobs>,
        version: u64,
        origin: Origin,
    ) -> Result<Self, BuildError> {
        let loaded = Loaded::load(config).map_err(BuildError::Load)?;
        Self::from_loaded(loaded, None, Some(jobs), version, origin)
    }

    /// Builds the broadcaster for a loaded configuration.
    fn from_loaded(
        loaded: Loaded,
        previous: Option<&Broadcaster>,
        jobs: Option<Arc<Jobs>>,
        version: u64,
        origin: Origin,
    ) -> Result<Self, BuildError> {
        let config = &loaded.config;
        let with_dns = loaded.uses_dns();
        let broadcaster = match previous {
            Some(previous) => previous.reconfigured(
                &config.dns,
                with_dns,
                &config.kubernetes,
                config.server.pod_idle_timeout,
            )?,
            None => Broadcaster::new(
                &config.dns,
                with_dns,
                &config.kubernetes,
                config.server.max_in_flight_deliveries,
                config.server.pod_idle_timeout,
                jobs.unwrap_or_else(Jobs::in_memory),
            )?,
        };
        broadcaster.watch(loaded.kubernetes_services());
        let info = ConfigInfo {
            version,
            loaded_at: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
            source: origin.source,
            sha256: origin.sha256,
            routes: loaded
                .endpoints
                .iter()
                .map(|endpoint| endpoint.route.name.to_string())
                .collect(),
            plugins: loaded.plugin_files(),
        };
        Ok(Self {
            broadcaster: Arc::new(broadcaster),
            max_body_bytes: usize::try_from(config.server.max_body_bytes.as_u64())
                .unwrap_or(usize::MAX),
            client_timeout: config.server.client_timeout,
            shutdown_grace: config.server.shutdown_grace,
            listen: (config.server.listen, config.server.admin_listen),
            jobs: config.jobs.clone(),
            endpoints: loaded.endpoints,
            admin_auth: loaded.admin_auth,
            listener_tls: loaded.listener_tls,
            info,
        })
    }
}

impl AppState {
    pub(super) fn new(generation: Generation) -> Self {
        let generation = Arc::new(generation);
        Self {
            active: RwLock::new(Active {
                router: super::handler::routes(&generation),
                generation,
            }),
            ready: AtomicBool::new(false),
            admin_on_loopback: AtomicBool::new(false),
            next_version: AtomicU64::new(2),
            last_failure: Mutex::new(None),
        }
    }

    /// Whether the router accepts broadcasts (false before start and while
    /// draining).
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    pub(super) fn active(&self) -> Active {
        self.active.read().expect("active config lock").clone()
    }

    /// The job store every broadcast is recorded in.
    pub fn jobs(&self) -> Arc<Jobs> {
        Arc::clone(self.active().generation.broadcaster.jobs())
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

    /// Whether `/admin/config` may be served to a request without a token:
    /// only when the admin listener is reachable from this host alone.
    /// Elsewhere it needs `admin_auth`: it shows file paths, route names
    /// and reload errors.
    pub fn admin_config_is_open(&self) -> bool {
        self.admin_on_loopback.load(Ordering::Relaxed)
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
                let jobs = generation.jobs.clone();
                let with_tls = generation.listener_tls.is_some();
                let generation = Arc::new(generation);
                let next = Active {
                    router: super::handler::routes(&generation),
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
                if previous.generation.jobs != jobs {
                    tracing::warn!(
                        "The [jobs] table changed; the job store opened at start stays in use until the next restart."
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
        let loaded = tokio::task::spawn_blocking(move || Loaded::load(&config))
            .await
            .map_err(|error| ReloadError::Panicked(error.to_string()))?
            .map_err(BuildError::Load)?;
        let previous = self.active().generation;
        let version = self.next_version.fetch_add(1, Ordering::Relaxed);
        Ok(Generation::from_loaded(
            loaded,
            Some(&previous.broadcaster),
            None,
            version,
            origin,
        )?)
    }
}

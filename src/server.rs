//! The HTTP front: the broadcast listener (one axum route per configured
//! route), the admin listener (`/healthz`, `/readyz`, `/metrics`,
//! `/admin/config`), and the lifecycle that binds both and drains them on
//! shutdown.
//!
//! `state` holds the configuration generation in service and the reload
//! swap, `handler` the checks before a broadcast, `answer` how a
//! broadcast becomes the response, `error` the refusals, `status` the
//! job status API (`GET /broadcasts/{id}`), [`listener`] the accept loop
//! with its client limits, [`admin`] the admin endpoints; this module
//! starts and stops them, and keeps the job store's lease, sweeping and
//! resuming unfinished jobs going.

pub mod admin;
mod answer;
mod coalesce;
mod error;
mod handler;
pub mod listener;
mod state;
mod status;

pub use error::ApiError;
pub use handler::app;
pub use state::{AppState, BuildError, ConfigInfo, Generation, Origin, ReloadError, ReloadFailure};

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, Mode};
use crate::jobs::{Jobs, StoreError};
use crate::telemetry;
use listener::ClientLimits;

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
    /// The configuration's files or machinery could not be built.
    #[error(transparent)]
    Build(#[from] BuildError),
    /// The `[jobs]` store could not be opened.
    #[error("cannot open the job store: {0}")]
    Jobs(#[from] StoreError),
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
    jobs_upkeep: JoinHandle<()>,
}

/// Binds both listeners and starts serving `config` (built in memory).
pub async fn start(config: &Config) -> Result<Running, StartError> {
    start_with(config, Origin::default()).await
}

/// Binds both listeners and starts serving `config`, read from `origin`.
pub async fn start_with(config: &Config, origin: Origin) -> Result<Running, StartError> {
    // Install the metrics recorder before anything can record.
    telemetry::metrics();
    let jobs = Arc::new(Jobs::open(config.jobs.as_ref()).await?);
    if !jobs.is_durable()
        && config
            .routes
            .iter()
            .any(|route| route.table.mode == Mode::Async)
    {
        tracing::warn!(
            "Broadcast jobs are kept in memory (no [jobs] table): an async broadcast still running when the router stops is lost. Configure [jobs] path or redis to resume them after a restart."
        );
    }
    let generation = Generation::build(config, Arc::clone(&jobs), 1, origin)?;
    let listener_tls = generation.listener_tls.clone();
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
    let current_tls = listener_tls.map(|initial| {
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
    let jobs_upkeep = tokio::spawn(keep_jobs(
        Arc::clone(&state),
        jobs,
        shutdown.clone(),
        admin_shutdown.clone(),
    ));
    state
        .admin_on_loopback
        .store(admin_addr.ip().is_loopback(), Ordering::Relaxed);
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
        jobs_upkeep,
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
        // No lease renewal may follow giving it up.
        let _ = self.jobs_upkeep.await;
        if !unfinished.is_empty() {
            // Other routers sharing the store finish them now.
            active.broadcaster.jobs().release().await;
        }
        let _ = self.admin.await;
        tracing::info!(unfinished = unfinished.len(), "Router stopped.");
        unfinished
    }
}

/// Every second (or third of the lease) until the router stops: renews the job
/// store lease, forgets expired jobs, checks the store's size and resumes
/// the unfinished jobs this router takes over (not once it is draining).
async fn keep_jobs(
    state: Arc<AppState>,
    jobs: Arc<Jobs>,
    draining: CancellationToken,
    stopped: CancellationToken,
) {
    let mut every = tokio::time::interval(jobs.tick_interval());
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while stopped.run_until_cancelled(every.tick()).await.is_some() {
        match jobs.tick(!draining.is_cancelled()).await {
            Ok(claimed) => {
                let generation = state.active().generation;
                for job in claimed {
                    let endpoint = generation
                        .endpoints
                        .iter()
                        .find(|endpoint| *endpoint.route.name == *job.route)
                        .cloned();
                    generation.broadcaster.resume(endpoint, job);
                }
            }
            Err(error) => tracing::warn!(
                store = jobs.kind(),
                %error,
                "The job store could not be kept up (lease, sweep or takeover); retrying."
            ),
        }
    }
}

//! Kubernetes-native discovery: the EndpointSlices of a Service
//! (`discovery.k8s.io/v1`, label `kubernetes.io/service-name`), watched
//! through the API with kube-rs's watcher and reflector.
//!
//! - One watch per Service (namespace and name), shared by every route
//!   and broadcast that names it, and kept across configuration reloads
//!   while `[kubernetes]` is unchanged. Routes that name their Service
//!   outright start its watch when the configuration is loaded; templated
//!   routes start one on first use, and at most `max_watches` run: the
//!   least recently used one no route names outright makes room, and one
//!   unused for [`IDLE_WATCH`] is stopped.
//! - Changes apply as the watch delivers them: a broadcast always uses
//!   the slices as last delivered, with no TTL.
//! - Until the first list arrives, a broadcast waits for it up to
//!   [`FIRST_LIST_WAIT`]; if the API cannot be reached, it is refused
//!   (503) with the reason, and the watch retries with backoff.
//! - A watch that fails later keeps its last known slices (serve stale),
//!   logs the failure, counts it and retries; `410 Gone` makes the
//!   watcher list again.
//! - Credentials: `[kubernetes] kubeconfig` when set; otherwise the pod's
//!   service account in a cluster, else the kubeconfig (`KUBECONFIG`, then
//!   `~/.kube/config`).

pub mod slices;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::utils::Backoff;
use kube::runtime::watcher::Event;
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Api, Client};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::config::KubernetesConfig;
use crate::telemetry;
use crate::vocabulary::target::{Endpoints, PortRef};
use slices::{Selection, Slice};

/// How long a broadcast waits for a new watch's first list before it is
/// refused.
pub const FIRST_LIST_WAIT: Duration = Duration::from_secs(5);

/// A watch no broadcast used for this long is stopped (unless a route
/// names its Service outright).
pub const IDLE_WATCH: Duration = Duration::from_secs(600);

/// The label EndpointSlices carry with their Service's name.
const SERVICE_LABEL: &str = "kubernetes.io/service-name";

/// Why a Service's endpoints are not known.
#[derive(Debug, Clone, thiserror::Error)]
pub enum WatchError {
    /// No credentials could be loaded, or no client built from them.
    #[error("{0}")]
    Credentials(Arc<str>),
    /// The API failed to list or watch the EndpointSlices.
    #[error("watching EndpointSlices failed: {0}")]
    Api(Arc<str>),
    /// The API did not answer the first list in time.
    #[error("the Kubernetes API did not list its EndpointSlices within {0:?}")]
    Slow(Duration),
}

/// A Service to watch.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct WatchKey {
    /// Its namespace; `None`: the client's default (the router's own).
    pub namespace: Option<String>,
    /// Its name.
    pub service: String,
}

impl std::fmt::Display for WatchKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let namespace = self.namespace.as_deref().unwrap_or("(own namespace)");
        write!(f, "{namespace}/{}", self.service)
    }
}

/// The EndpointSlice watches of every Service the routes use.
pub struct Watches {
    config: KubernetesConfig,
    client: Arc<ClientCell>,
    running: Mutex<Running>,
}

#[derive(Default)]
struct Running {
    watches: HashMap<WatchKey, Arc<Watch>>,
    /// Services routes name outright: never stopped for being idle.
    pinned: HashSet<WatchKey>,
}

/// One Service's watch: its task and what it last delivered.
struct Watch {
    state: watch::Receiver<State>,
    last_used: Mutex<Instant>,
    task: tokio::task::AbortHandle,
    /// Slices already warned about for lacking a route's named port.
    warned: Mutex<HashSet<(Arc<str>, PortRef)>>,
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What a watch knows.
#[derive(Clone, Default)]
struct State {
    /// The namespace watched, once the client is known.
    namespace: Option<Arc<str>>,
    /// The slices as last delivered; `None` until the first list.
    slices: Option<Arc<[Slice]>>,
    /// The last failure, until the watch delivers again.
    error: Option<WatchError>,
}

/// The API client, built on first use and shared by every watch.
struct ClientCell {
    config: KubernetesConfig,
    client: tokio::sync::Mutex<Option<Client>>,
}

impl Watches {
    /// No watches yet; none starts, and no credentials are read, until a
    /// route needs one.
    pub fn new(config: &KubernetesConfig) -> Self {
        Self {
            config: config.clone(),
            client: Arc::new(ClientCell {
                config: config.clone(),
                client: tokio::sync::Mutex::new(None),
            }),
            running: Mutex::default(),
        }
    }

    /// The `[kubernetes]` settings these watches were built with.
    pub fn config(&self) -> &KubernetesConfig {
        &self.config
    }

    /// Starts the watches of the Services routes name outright, and makes
    /// them the ones never stopped for being idle. Needs a Tokio runtime.
    pub fn pin(&self, keys: impl IntoIterator<Item = WatchKey>) {
        let pinned: HashSet<WatchKey> = keys.into_iter().collect();
        for key in &pinned {
            drop(self.watch(key));
        }
        self.running.lock().expect("watches lock").pinned = pinned;
    }

    /// The targets of `key` for a route with `port` and `endpoints`.
    pub async fn select(
        &self,
        key: &WatchKey,
        port: &PortRef,
        endpoints: Endpoints,
    ) -> Result<(Arc<str>, Selection), (String, WatchError)> {
        let watch = self.watch(key);
        let mut state = watch.state.clone();
        let known = |state: &State| state.slices.is_some() || state.error.is_some();
        if !known(&state.borrow()) {
            let _ = tokio::time::timeout(FIRST_LIST_WAIT, state.wait_for(known)).await;
        }
        let state = state.borrow().clone();
        let namespace = state.namespace.clone();
        let name = match &namespace {
            Some(namespace) => format!("{namespace}/{}", key.service),
            None => key.to_string(),
        };
        let Some(slices) = state.slices else {
            let reason = state.error.unwrap_or(WatchError::Slow(FIRST_LIST_WAIT));
            return Err((name, reason));
        };
        if let Some(error) = &state.error {
            telemetry::kubernetes_stale_answer();
            tracing::debug!(service = %name, %error, "Using the last known EndpointSlices while the watch fails.");
        }
        let service: Arc<str> = Arc::from(key.service.as_str());
        let selection = slices::select(&slices, port, endpoints, &service);
        for slice in &selection.without_port {
            let first = watch
                .warned
                .lock()
                .expect("warned lock")
                .insert((Arc::clone(slice), port.clone()));
            if first {
                tracing::warn!(
                    service = %name,
                    slice = %slice,
                    port = %port,
                    "EndpointSlice has no port of this name; its endpoints are skipped."
                );
            }
        }
        Ok((Arc::from(name), selection))
    }

    /// The running watch of `key`, started if needed.
    fn watch(&self, key: &WatchKey) -> Arc<Watch> {
        let now = Instant::now();
        let mut running = self.running.lock().expect("watches lock");
        if let Some(watch) = running.watches.get(key) {
            *watch.last_used.lock().expect("last used lock") = now;
            return Arc::clone(watch);
        }
        let Running { watches, pinned } = &mut *running;
        let idle = |watch: &Watch| *watch.last_used.lock().expect("last used lock");
        watches.retain(|key, watch| pinned.contains(key) || now < idle(watch) + IDLE_WATCH);
        if watches.len() >= self.config.max_watches
            && let Some(victim) = watches
                .iter()
                .filter(|(key, _)| !pinned.contains(*key))
                .min_by_key(|(_, watch)| idle(watch))
                .map(|(key, _)| key.clone())
        {
            tracing::info!(service = %victim, "Stopping the least recently used EndpointSlice watch to stay within max_watches.");
            watches.remove(&victim);
        }
        let (sender, state) = watch::channel(State::default());
        let task = tokio::spawn(run(Arc::clone(&self.client), key.clone(), sender));
        let watch = Arc::new(Watch {
            state,
            last_used: Mutex::new(now),
            task: task.abort_handle(),
            warned: Mutex::default(),
        });
        watches.insert(key.clone(), Arc::clone(&watch));
        telemetry::kubernetes_watches(watches.len());
        watch
    }
}

impl ClientCell {
    /// The client, built now if it is not yet.
    async fn get(&self) -> Result<Client, WatchError> {
        let mut client = self.client.lock().await;
        if let Some(client) = &*client {
            return Ok(client.clone());
        }
        let built = build_client(&self.config).await?;
        *client = Some(built.clone());
        Ok(built)
    }
}

/// A client with the configured credentials: `[kubernetes] kubeconfig`,
/// else the in-cluster service account, else the default kubeconfig.
async fn build_client(config: &KubernetesConfig) -> Result<Client, WatchError> {
    use kube::config::{Config, KubeConfigOptions, Kubeconfig};
    let fail = |message: String| WatchError::Credentials(message.into());
    let options = KubeConfigOptions::default();
    let config = match &config.kubeconfig {
        Some(path) => {
            let file = Kubeconfig::read_from(path).map_err(|error| {
                fail(format!("cannot read the kubeconfig {}: {error}", path.display()))
            })?;
            Config::from_custom_kubeconfig(file, &options)
                .await
                .map_err(|error| fail(format!("the kubeconfig {} is unusable: {error}", path.display())))?
        }
        None => match Config::incluster() {
            Ok(config) => config,
            Err(in_cluster) => Config::from_kubeconfig(&options).await.map_err(|error| {
                fail(format!(
                    "no Kubernetes credentials: not in a cluster ({in_cluster}), and no usable kubeconfig ({error})"
                ))
            })?,
        },
    };
    Client::try_from(config)
        .map_err(|error| fail(format!("cannot build the Kubernetes client: {error}")))
}

/// The watch of one Service, for as long as it is wanted: builds the
/// client (retrying with backoff), then follows the watcher's events.
async fn run(client: Arc<ClientCell>, key: WatchKey, state: watch::Sender<State>) {
    let mut backoff = RetryBackoff::default();
    let client = loop {
        match client.get().await {
            Ok(client) => break client,
            Err(error) => {
                telemetry::kubernetes_watch_event("error");
                tracing::error!(service = %key, %error, "Cannot watch EndpointSlices; retrying.");
                state.send_modify(|state| state.error = Some(error));
                tokio::time::sleep(backoff.next().unwrap_or(MAX_BACKOFF)).await;
            }
        }
    };
    let namespace: Arc<str> = Arc::from(
        key.namespace
            .as_deref()
            .unwrap_or_else(|| client.default_namespace()),
    );
    state.send_modify(|state| state.namespace = Some(Arc::clone(&namespace)));
    let service = format!("{namespace}/{}", key.service);
    let api: Api<EndpointSlice> = Api::namespaced(client, &namespace);
    let selector = format!("{SERVICE_LABEL}={}", key.service);
    let (store, writer) = reflector::store();
    let mut events = reflector(
        writer,
        watcher(api, watcher::Config::default().labels(&selector)),
    )
    .backoff(RetryBackoff::default())
    .boxed();
    while let Some(event) = events.next().await {
        let outcome = match event {
            Ok(Event::InitDone) => "listed",
            Ok(Event::Apply(_) | Event::Delete(_)) => "changed",
            Ok(Event::Init | Event::InitApply(_)) => continue,
            Err(error) => {
                telemetry::kubernetes_watch_event("error");
                let error = WatchError::Api(error.to_string().into());
                let listed = state.borrow().slices.is_some();
                if listed {
                    tracing::warn!(service = %service, %error, "EndpointSlice watch failed; serving the last known endpoints while it retries.");
                } else {
                    tracing::error!(service = %service, %error, "Cannot list EndpointSlices; retrying.");
                }
                state.send_modify(|state| state.error = Some(error));
                continue;
            }
        };
        telemetry::kubernetes_watch_event(outcome);
        let slices: Arc<[Slice]> = store
            .state()
            .iter()
            .map(|slice| Slice::from_api(slice, &namespace))
            .collect();
        let endpoints: usize = slices.iter().map(|slice| slice.endpoints.len()).sum();
        tracing::debug!(service = %service, slices = slices.len(), endpoints, outcome, "EndpointSlices updated.");
        let recovered = state.borrow().error.is_some();
        if recovered {
            tracing::info!(service = %service, "EndpointSlice watch delivers again.");
        }
        state.send_modify(|state| {
            state.slices = Some(slices);
            state.error = None;
        });
    }
}

/// The longest pause between attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Exponential backoff with jitter between watch attempts: 250 ms,
/// doubling, at most [`MAX_BACKOFF`]; the watcher resets it after a
/// success.
#[derive(Default)]
struct RetryBackoff {
    attempts: u32,
}

impl Iterator for RetryBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let base = Duration::from_millis(250).saturating_mul(1 << self.attempts.min(8));
        self.attempts = self.attempts.saturating_add(1);
        let base = base.min(MAX_BACKOFF);
        // Up to a quarter of jitter, so many routers do not retry in step.
        Some(base + base.mul_f64(fastrand::f64() / 4.0))
    }
}

impl Backoff for RetryBackoff {
    fn reset(&mut self) {
        self.attempts = 0;
    }
}

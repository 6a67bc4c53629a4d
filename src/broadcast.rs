//! One broadcast from discovered targets to its report.
//!
//! A broadcast is a future tracked for shutdown, run by the handler that
//! waits for its answer ([`Started::verdict`]) until the answer is ready.
//! It never depends on the client staying connected: what is left when
//! the answer is ready (the log line and the job's last write, deliveries
//! after an early answer such as policy `first`'s) or when the client goes
//! away goes on in a task of its own, so every delivery still finishes
//! and the outcome is still logged and counted. With `mode = "async"`
//! nobody waits for the answer at all.
//!
//! When a route has `report_to`, the final report is POSTed to that
//! collector by the broadcast itself ([`report_to`]), so shutdown waits
//! for it like for the deliveries. UDP broadcasts are sent by `udp`.
//!
//! Every HTTP broadcast is a job ([`crate::jobs`]): stored before it
//! starts (so before an async route's 202), with each pod's outcome and
//! the report's delivery recorded as they happen ([`job`]); a job left
//! unfinished by a crash is resumed with [`Broadcaster::resume`].

mod in_flight;
mod job;
pub mod report_to;
mod started;
mod udp;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;
use tokio_util::task::TaskTracker;

use crate::aggregate::{Report, Verdict};
use crate::config::{DnsConfig, KubernetesConfig, Mode};
use crate::discovery::kubernetes::{WatchKey, Watches};
use crate::discovery::{Discovery, DiscoveryError, dns::LookupError};
use crate::fanout::udp::UdpSender;
use crate::fanout::{Delivery, Fanout, PodRequest};
use crate::jobs::{Job, Jobs, StoreError};
use crate::limit::{Admitted, DeliveryBudget, Refused, Reserved};
use crate::load::Endpoint;
use crate::plugin::bindings::{self, RequestHead};
use crate::plugin::{PluginFailure, Session, run_plugins};
use crate::vocabulary::blame::Blame;
use crate::vocabulary::target::Target;
use in_flight::InFlight;
pub use started::Started;

/// Runs broadcasts: discovery, fan-out and aggregation, with the state they
/// share (DNS cache, HTTP client pool, running tasks).
pub struct Broadcaster {
    discovery: Arc<Discovery>,
    /// The settings `discovery` was built from, so a reload with the same
    /// settings keeps its cache.
    dns: DnsConfig,
    with_dns: bool,
    shared: Arc<Shared>,
}

/// What outlives a configuration reload: the HTTP client pool, the UDP
/// socket, the running broadcasts of every configuration generation (so
/// shutdown drains them all) and the UDP sequence numbers.
struct Shared {
    fanout: Fanout,
    tasks: TaskTracker,
    in_flight: Mutex<HashMap<u64, (String, Arc<str>)>>,
    next_key: AtomicU64,
    udp: UdpSender,
    sequence: AtomicU64,
    deliveries: DeliveryBudget,
    jobs: Arc<Jobs>,
}

/// Why a broadcast did not start: nothing was sent to any pod.
#[derive(Debug, thiserror::Error)]
pub enum NotStarted {
    /// No pods could be discovered.
    #[error(transparent)]
    Discovery(#[from] DiscoveryError),
    /// A plugin failed closed before anything was sent.
    #[error(transparent)]
    Plugin(#[from] PluginFailure),
    /// A UDP datagram (after transforms) would exceed the route's limit.
    #[error(
        "the datagram would be {size} bytes (header included), above the route's limit of {limit}; nothing was sent"
    )]
    DatagramTooLarge {
        /// Header plus the largest payload.
        size: usize,
        /// The route's `udp.max_datagram_bytes`.
        limit: usize,
    },
    /// Discovery found more pods than the route's `max_targets`.
    #[error(
        "route \"{route}\": discovery found {found} pods, more than the route's max_targets of {limit}; nothing was sent"
    )]
    TooManyTargets {
        /// The route.
        route: Arc<str>,
        /// How many pods discovery found.
        found: usize,
        /// The route's `max_targets`.
        limit: usize,
    },
    /// The router-wide delivery budget is used up.
    #[error(transparent)]
    Refused(#[from] Refused),
    /// The job could not be stored: the store is unreachable or full.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The plugins selected no pod at all.
    #[error("route \"{route}\": the plugins selected none of the {discovered} discovered pods")]
    NoneSelected {
        /// The route.
        route: Arc<str>,
        /// How many pods discovery found.
        discovered: usize,
    },
}

impl NotStarted {
    /// Who is to blame.
    pub fn blame(&self) -> Blame {
        match self {
            NotStarted::Discovery(error) => error.blame(),
            NotStarted::Plugin(failure) => failure.blame(),
            NotStarted::NoneSelected { .. } => Blame::Plugin,
            NotStarted::DatagramTooLarge { .. } => Blame::Client,
            NotStarted::TooManyTargets { .. } => Blame::Config,
            NotStarted::Refused(Refused::Overloaded { .. }) => Blame::Router,
            NotStarted::Refused(_) => Blame::Client,
            NotStarted::Store(_) => Blame::Router,
        }
    }
}

/// Targets after plugin selection, with each one's request.
struct Prepared {
    targets: Vec<Target>,
    requests: Vec<Arc<PodRequest>>,
    plugins: Option<(Session, RequestHead)>,
    /// The broadcast's share of the router-wide delivery budget.
    reserved: Reserved,
}

/// Why the broadcaster could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// The DNS resolver could not be set up.
    #[error(transparent)]
    Dns(#[from] LookupError),
    /// The HTTP client could not be set up.
    #[error("cannot build the HTTP client: {0}")]
    Client(#[from] reqwest::Error),
}

impl Broadcaster {
    /// Builds the shared discovery and delivery machinery; the DNS
    /// resolver only `with_dns` (some route names a `service`); no
    /// EndpointSlice watch starts before [`Broadcaster::watch`]. At most
    /// `max_deliveries` pod deliveries are in flight at once; idle pod
    /// connections are kept for `pod_idle_timeout`. Every HTTP broadcast
    /// is a job in `jobs`.
    pub fn new(
        dns: &DnsConfig,
        with_dns: bool,
        kubernetes: &KubernetesConfig,
        max_deliveries: usize,
        pod_idle_timeout: Duration,
        jobs: Arc<Jobs>,
    ) -> Result<Self, SetupError> {
        let watches = Arc::new(Watches::new(kubernetes));
        Ok(Self {
            discovery: Arc::new(Discovery::new(dns, with_dns, watches)?),
            dns: dns.clone(),
            with_dns,
            shared: Arc::new(Shared {
                fanout: Fanout::new(pod_idle_timeout)?,
                tasks: TaskTracker::new(),
                in_flight: Mutex::default(),
                next_key: AtomicU64::new(0),
                udp: UdpSender::default(),
                deliveries: DeliveryBudget::new(max_deliveries),
                jobs,
                // Sequence numbers start at the process start time in
                // microseconds, so they keep growing across restarts.
                sequence: AtomicU64::new(
                    std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(1, |since| since.as_micros() as u64),
                ),
            }),
        })
    }

    /// The broadcaster of a reloaded configuration. It shares this one's
    /// HTTP client pool, UDP sequence and running broadcasts (draining
    /// either waits for both generations' broadcasts); its DNS cache is
    /// this one's when the `[dns]` settings did not change, and so are its
    /// EndpointSlice watches when `[kubernetes]` did not. Idle pod
    /// connections are kept for `pod_idle_timeout` from now on.
    pub fn reconfigured(
        &self,
        dns: &DnsConfig,
        with_dns: bool,
        kubernetes: &KubernetesConfig,
        pod_idle_timeout: Duration,
    ) -> Result<Self, SetupError> {
        self.shared.fanout.pods().set_idle_timeout(pod_idle_timeout);
        let watches = self.discovery.kubernetes();
        let watches = if watches.config() == kubernetes {
            Arc::clone(watches)
        } else {
            Arc::new(Watches::new(kubernetes))
        };
        let keep_cache = *dns == self.dns && (self.with_dns || !with_dns);
        let (discovery, with_dns) =
            if keep_cache && Arc::ptr_eq(&watches, self.discovery.kubernetes()) {
                (Arc::clone(&self.discovery), self.with_dns)
            } else {
                (Arc::new(Discovery::new(dns, with_dns, watches)?), with_dns)
            };
        Ok(Self {
            discovery,
            dns: dns.clone(),
            with_dns,
            shared: Arc::clone(&self.shared),
        })
    }

    /// The job store every broadcast is recorded in.
    pub fn jobs(&self) -> &Arc<Jobs> {
        &self.shared.jobs
    }

    /// Starts the EndpointSlice watches of the Services routes name
    /// outright, so their first broadcast finds them listed; only those
    /// are exempt from being stopped when idle.
    pub fn watch(&self, services: Vec<WatchKey>) {
        self.discovery.kubernetes().pin(services);
    }

    /// Discovers the route's pods, runs the route's plugins (selection and
    /// transforms), stores the broadcast's job and starts broadcasting
    /// `request` to them over HTTP. `admitted` is held until the last
    /// delivery finished.
    pub async fn start(
        self: &Arc<Self>,
        endpoint: Arc<Endpoint>,
        service: Option<String>,
        id: String,
        request: PodRequest,
        admitted: Admitted,
    ) -> Result<Started, NotStarted> {
        let started = Instant::now();
        let prepared = self
            .discover_and_prepare(&endpoint, service, &id, request, started)
            .await?;
        let count = prepared.targets.len();
        let route = &endpoint.route;
        let mut job = Job::new(
            &id,
            &route.name,
            &route.policy.to_string(),
            &prepared.targets,
            &prepared.requests,
        );
        self.shared.jobs.create(&mut job).await?;
        endpoint.metrics.jobs.accepted();
        let (verdict, judged) = oneshot::channel();
        let span = tracing::info_span!("broadcast", route = %endpoint.route.name, id = %id);
        let this = Arc::clone(self);
        let run = async move {
            this.run(endpoint, job, prepared, started, verdict).await;
            drop(admitted);
        };
        Ok(Started::new(span, count, judged, run, &self.shared.tasks))
    }

    /// Finds the route's pods and runs its plugins over them.
    async fn discover_and_prepare(
        &self,
        endpoint: &Endpoint,
        service: Option<String>,
        id: &str,
        request: PodRequest,
        started: Instant,
    ) -> Result<Prepared, NotStarted> {
        let route = &endpoint.route;
        let discovered = self
            .discovery
            .targets(&route.source, service.as_deref())
            .await?;
        if discovered.len() > route.max_targets {
            return Err(NotStarted::TooManyTargets {
                route: route.name.clone(),
                found: discovered.len(),
                limit: route.max_targets,
            });
        }
        let request = Arc::new(request);
        let mut prepared = if endpoint.plugins.is_empty() {
            // No plugin code runs: no need to leave the async worker.
            prepare(endpoint, id, discovered, request, started)?
        } else {
            run_plugins(|| prepare(endpoint, id, discovered, request, started))?
        };
        prepared.reserved = self.shared.deliveries.reserve(prepared.targets.len())?;
        // Last, so a broadcast refused for another reason takes nothing
        // from the pods' rates.
        endpoint.admission.pace(&prepared.targets)?;
        Ok(prepared)
    }

    async fn run(
        self: Arc<Self>,
        endpoint: Arc<Endpoint>,
        job: Job,
        prepared: Prepared,
        started: Instant,
        answer: oneshot::Sender<Verdict>,
    ) {
        let route = &endpoint.route;
        let Prepared {
            targets,
            requests,
            plugins,
            reserved,
        } = prepared;
        let id = job.id.clone();
        let key = self.shared.next_key.fetch_add(1, Ordering::Relaxed);
        let _registered = InFlight::register(&self.shared.in_flight, key, &id, &route.name);
        endpoint.metrics.broadcast_started(targets.len());
        let recorder = job::Tracked::new(
            Arc::clone(&self.shared.jobs),
            job,
            endpoint.metrics.jobs.clone(),
            false,
        )
        .start()
        .await;

        let mut outcomes: Vec<Option<Delivery>> = vec![None; targets.len()];
        let mut answer = Some(answer);
        let early = route.policy.answers_early() && !endpoint.plugins.aggregates();
        let required = route.policy.required(targets.len());
        let mut succeeded = 0;
        let mut deliveries = self.shared.fanout.deliver_all(
            &requests,
            &targets,
            &route.limits,
            endpoint.tls.as_ref(),
            started,
        );
        while let Some((index, delivery)) = recorder.next(&mut deliveries).await {
            endpoint.metrics.delivery_finished(
                delivery.outcome(),
                delivery.attempts,
                delivery.latency,
            );
            match &delivery.error {
                None => succeeded += 1,
                Some(error) => tracing::warn!(
                    target = %targets[index],
                    pod = targets[index].pod_name().unwrap_or("-"),
                    attempts = delivery.attempts,
                    error = %error,
                    "Delivery failed."
                ),
            }
            recorder.pod(index, &targets[index], &delivery);
            outcomes[index] = Some(delivery);
            if recorder.is_lost() {
                // Another router owns the job now: it delivers the rest.
                break;
            }
            if early
                && succeeded >= required
                && let Some(sender) = answer.take()
            {
                let report = Report::new(&id, &route.name, route.policy, &targets, &outcomes);
                tracing::debug!(pending = report.pending, "Policy met; answering early.");
                let early = Verdict::by_policy(report, route.policy);
                // Taken, the deliveries go on in a task of their own.
                if !started::answer(sender, early).await && route.mode == Mode::Sync {
                    tracing::info!("The client left before the answer.");
                }
            }
        }
        drop(deliveries);
        // Every delivery has its outcome: give back their share of the budget.
        drop(reserved);

        let report = Report::new(&id, &route.name, route.policy, &targets, &outcomes);
        let verdict = match plugins {
            Some((mut session, head)) => {
                let judged = run_plugins(|| session.aggregate(&head, &targets, &outcomes));
                Verdict::by_plugin(report, route.policy, judged)
            }
            None => Verdict::by_policy(report, route.policy),
        };
        let elapsed = started.elapsed();
        let report = verdict.report.clone();
        let answered_early = answer.is_none();
        // Counted before the answer (what a client sees is counted), the
        // log line written after it.
        endpoint.metrics.broadcast_finished(report.ok, elapsed);
        // Taken, the rest (the log line, the job's last write) runs in a
        // task of its own once the answer is written.
        if let Some(sender) = answer
            && !started::answer(sender, verdict).await
            && route.mode == Mode::Sync
        {
            tracing::info!("The client left before the answer; the broadcast completed anyway.");
        }
        tracing::info!(
            ok = report.ok,
            targets = report.targets,
            succeeded = report.succeeded,
            failed = report.failed,
            elapsed_ms = elapsed.as_secs_f64() * 1e3,
            answered_early,
            "Broadcast finished."
        );
        let tracked = recorder.written().await;
        tracked
            .finish(
                route.report_to.as_ref(),
                self.shared.fanout.client(),
                report,
            )
            .await;
    }

    /// Stops accepting broadcasts and waits up to `grace` for running ones.
    /// Returns the ids of broadcasts that did not finish in time (each is
    /// also logged), so none disappear silently.
    pub async fn drain(&self, grace: Duration) -> Vec<String> {
        self.shared.tasks.close();
        if tokio::time::timeout(grace, self.shared.tasks.wait())
            .await
            .is_ok()
        {
            return Vec::new();
        }
        let unfinished: Vec<(String, Arc<str>)> = self
            .shared
            .in_flight
            .lock()
            .expect("in-flight lock")
            .values()
            .cloned()
            .collect();
        for (id, route) in &unfinished {
            tracing::error!(
                %id,
                %route,
                "Broadcast did not finish within the shutdown grace period; its remaining deliveries are abandoned."
            );
        }
        unfinished.into_iter().map(|(id, _)| id).collect()
    }
}

/// Runs the route's plugins over the discovered pods: selection (in chain
/// order), then the transforms of every selected pod's copy (pods whose
/// copies no plugin told apart keep sharing one). Without plugins, every
/// pod shares the one request.
fn prepare(
    endpoint: &Endpoint,
    id: &str,
    discovered: Vec<Target>,
    request: Arc<PodRequest>,
    started: Instant,
) -> Result<Prepared, NotStarted> {
    let route = &endpoint.route;
    if endpoint.plugins.is_empty() {
        let requests = vec![request; discovered.len()];
        return Ok(Prepared {
            targets: discovered,
            requests,
            plugins: None,
            reserved: Reserved::default(),
        });
    }
    let mut session = endpoint
        .plugins
        .session(&route.name, id, started + route.limits.deadline);
    let head = bindings::request_head(id, &route.name, &request);
    let count = discovered.len();
    let targets = session.select(&head, discovered)?;
    if targets.is_empty() {
        return Err(NotStarted::NoneSelected {
            route: route.name.clone(),
            discovered: count,
        });
    }
    let requests = if endpoint.plugins.transforms() {
        session.transform(&head, &request, &targets)?
    } else {
        vec![request; targets.len()]
    };
    Ok(Prepared {
        targets,
        requests,
        plugins: Some((session, head)),
        reserved: Reserved::default(),
    })
}

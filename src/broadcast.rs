//! One broadcast from discovered targets to its report.
//!
//! Each broadcast runs in its own task, tracked for shutdown, so it never
//! depends on the client staying connected: if the client goes away, the
//! deliveries still finish and the outcome is still logged and counted.
//! The handler waits for the answer on a channel. With an early-answering
//! policy (`first`), the answer is sent as soon as the policy is met, and
//! the task keeps running until every delivery has its outcome.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::oneshot;
use tokio::time::Instant;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::aggregate::Report;
use crate::config::DnsConfig;
use crate::discovery::{Discovery, DiscoveryError, Target, dns::LookupError};
use crate::fanout::{Delivery, Fanout, PodRequest};
use crate::route::Route;
use crate::telemetry;

/// Runs broadcasts: discovery, fan-out and aggregation, with the state they
/// share (DNS cache, HTTP client pool, running tasks).
pub struct Broadcaster {
    discovery: Discovery,
    fanout: Fanout,
    tasks: TaskTracker,
    in_flight: Mutex<HashMap<u64, (String, Arc<str>)>>,
    next_key: AtomicU64,
}

/// Why the broadcaster could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The DNS resolver could not be set up.
    #[error(transparent)]
    Dns(#[from] LookupError),
    /// The HTTP client could not be set up.
    #[error("cannot build the HTTP client: {0}")]
    Client(#[from] reqwest::Error),
}

impl Broadcaster {
    /// Builds the shared discovery and delivery machinery.
    pub fn new(dns: &DnsConfig) -> Result<Self, BuildError> {
        Ok(Self {
            discovery: Discovery::new(dns)?,
            fanout: Fanout::new()?,
            tasks: TaskTracker::new(),
            in_flight: Mutex::default(),
            next_key: AtomicU64::new(0),
        })
    }

    /// The discovery used for `broadcast-router resolve`.
    pub fn discovery(&self) -> &Discovery {
        &self.discovery
    }

    /// Discovers the route's pods and broadcasts `request` to them,
    /// returning the report once the route's policy allows an answer.
    pub async fn broadcast(
        self: &Arc<Self>,
        route: Arc<Route>,
        service: Option<String>,
        id: String,
        request: PodRequest,
    ) -> Result<Report, DiscoveryError> {
        let targets = self
            .discovery
            .targets(&route.source, service.as_deref())
            .await?;
        let (answer, answered) = oneshot::channel();
        let span = tracing::info_span!("broadcast", route = %route.name, id = %id);
        let this = Arc::clone(self);
        self.tasks.spawn(
            async move { this.run(route, id, targets, request, answer).await }.instrument(span),
        );
        Ok(answered
            .await
            .expect("a broadcast task always sends its report"))
    }

    async fn run(
        self: Arc<Self>,
        route: Arc<Route>,
        id: String,
        targets: Vec<Target>,
        request: PodRequest,
        answer: oneshot::Sender<Report>,
    ) {
        let started = Instant::now();
        let key = self.next_key.fetch_add(1, Ordering::Relaxed);
        let _registered = InFlight::register(&self.in_flight, key, &id, &route.name);
        telemetry::broadcast_started(&route.name, targets.len());

        let mut outcomes: Vec<Option<Delivery>> = vec![None; targets.len()];
        let mut answer = Some(answer);
        let required = route.policy.required(targets.len());
        let mut succeeded = 0;
        let mut deliveries = self
            .fanout
            .deliver_all(&request, &targets, &route.limits, started);
        while let Some((index, delivery)) = deliveries.next().await {
            telemetry::delivery_finished(
                &route.name,
                delivery.outcome(),
                delivery.attempts,
                delivery.latency,
            );
            match &delivery.error {
                None => succeeded += 1,
                Some(error) => tracing::warn!(
                    target = %targets[index],
                    attempts = delivery.attempts,
                    error = %error,
                    "Delivery failed."
                ),
            }
            outcomes[index] = Some(delivery);
            if route.policy.answers_early()
                && succeeded >= required
                && let Some(early) = answer.take()
            {
                let report = Report::new(&id, &route.name, route.policy, &targets, &outcomes);
                tracing::debug!(pending = report.pending, "Policy met; answering early.");
                if early.send(report).is_err() {
                    tracing::info!("The client left before the answer.");
                }
            }
        }
        drop(deliveries);

        let report = Report::new(&id, &route.name, route.policy, &targets, &outcomes);
        let elapsed = started.elapsed();
        telemetry::broadcast_finished(&route.name, report.ok, elapsed);
        tracing::info!(
            ok = report.ok,
            targets = report.targets,
            succeeded = report.succeeded,
            failed = report.failed,
            elapsed_ms = elapsed.as_secs_f64() * 1e3,
            answered_early = answer.is_none(),
            "Broadcast finished."
        );
        if let Some(answer) = answer
            && answer.send(report).is_err()
        {
            tracing::info!("The client left before the answer; the broadcast completed anyway.");
        }
    }

    /// Stops accepting broadcasts and waits up to `grace` for running ones.
    /// Returns the ids of broadcasts that did not finish in time (each is
    /// also logged), so none disappear silently.
    pub async fn drain(&self, grace: Duration) -> Vec<String> {
        self.tasks.close();
        if tokio::time::timeout(grace, self.tasks.wait()).await.is_ok() {
            return Vec::new();
        }
        let unfinished: Vec<(String, Arc<str>)> = self
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

/// Keeps a broadcast listed as running until dropped.
struct InFlight<'a> {
    registry: &'a Mutex<HashMap<u64, (String, Arc<str>)>>,
    key: u64,
}

impl<'a> InFlight<'a> {
    fn register(
        registry: &'a Mutex<HashMap<u64, (String, Arc<str>)>>,
        key: u64,
        id: &str,
        route: &Arc<str>,
    ) -> Self {
        registry
            .lock()
            .expect("in-flight lock")
            .insert(key, (id.to_owned(), route.clone()));
        Self { registry, key }
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if let Ok(mut registry) = self.registry.lock() {
            registry.remove(&self.key);
        }
    }
}

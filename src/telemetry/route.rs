//! A route's broadcast and delivery metrics, with their handles resolved
//! once per configuration: recording then costs an atomic operation, not
//! a registry lookup and a copied route name per broadcast and per pod.

use std::time::Duration;

use metrics::{Counter, Gauge, Histogram, counter, gauge, histogram};

use super::{
    BROADCAST_DURATION, BROADCAST_TARGETS, BROADCASTS, BROADCASTS_IN_FLIGHT, DELIVERIES,
    DELIVERY_ATTEMPTS, DELIVERY_DURATION, JOBS, JOBS_RUNNING,
};

/// One route's metric handles. Handles made before the recorder is
/// installed record nothing: make them after [`super::metrics`] ran (the
/// server installs it before loading anything).
#[derive(Debug, Clone)]
pub struct RouteMetrics {
    route: String,
    /// The route's job events.
    pub jobs: JobMetrics,
    in_flight: Gauge,
    targets: Histogram,
    succeeded: Counter,
    failed: Counter,
    duration: Histogram,
    delivered: Counter,
    attempts: Counter,
    delivery_duration: Histogram,
}

impl RouteMetrics {
    /// The handles of route `route`.
    pub fn new(route: &str) -> Self {
        let label = || route.to_owned();
        Self {
            route: route.to_owned(),
            jobs: JobMetrics::new(route),
            in_flight: gauge!(BROADCASTS_IN_FLIGHT),
            targets: histogram!(BROADCAST_TARGETS, "route" => label()),
            succeeded: counter!(BROADCASTS, "route" => label(), "outcome" => "ok"),
            failed: counter!(BROADCASTS, "route" => label(), "outcome" => "failed"),
            duration: histogram!(BROADCAST_DURATION, "route" => label()),
            delivered: counter!(DELIVERIES, "route" => label(), "outcome" => "success"),
            attempts: counter!(DELIVERY_ATTEMPTS, "route" => label()),
            delivery_duration: histogram!(DELIVERY_DURATION, "route" => label()),
        }
    }

    /// A broadcast started fanning out to `targets` pods.
    pub fn broadcast_started(&self, targets: usize) {
        self.in_flight.increment(1.0);
        self.targets.record(targets as f64);
    }

    /// A broadcast's last delivery finished.
    pub fn broadcast_finished(&self, ok: bool, elapsed: Duration) {
        self.in_flight.decrement(1.0);
        if ok {
            self.succeeded.increment(1);
        } else {
            self.failed.increment(1);
        }
        self.duration.record(elapsed.as_secs_f64());
    }

    /// One pod's delivery finished with `outcome` after `attempts` attempts.
    pub fn delivery_finished(&self, outcome: &'static str, attempts: u32, elapsed: Duration) {
        if outcome == "success" {
            self.delivered.increment(1);
        } else {
            counter!(DELIVERIES, "route" => self.route.clone(), "outcome" => outcome).increment(1);
        }
        self.attempts.increment(u64::from(attempts));
        self.delivery_duration.record(elapsed.as_secs_f64());
    }
}

/// A route's job events, with their handles resolved once.
#[derive(Debug, Clone)]
pub struct JobMetrics {
    running: Gauge,
    accepted: Counter,
    resumed: Counter,
    done: Counter,
}

impl JobMetrics {
    /// The handles of route `route`'s jobs.
    pub fn new(route: &str) -> Self {
        let event =
            |event: &'static str| counter!(JOBS, "route" => route.to_owned(), "event" => event);
        Self {
            running: gauge!(JOBS_RUNNING),
            accepted: event("accepted"),
            resumed: event("resumed"),
            done: event("done"),
        }
    }

    /// A job was stored before its broadcast was answered.
    pub fn accepted(&self) {
        self.accepted.increment(1);
    }

    /// This router started (`resumed`: took over) working on a job.
    pub fn running(&self, resumed: bool) {
        self.running.increment(1.0);
        if resumed {
            self.resumed.increment(1);
        }
    }

    /// This router stopped working on a job (`done`: it is finished).
    pub fn stopped(&self, done: bool) {
        self.running.decrement(1.0);
        if done {
            self.done.increment(1);
        }
    }
}

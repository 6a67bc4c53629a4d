//! Telemetry in one place: log setup, and every metric the router emits.
//!
//! Metrics follow Prometheus conventions (`*_total` counters, `*_seconds`
//! histograms) and only carry bounded labels: route names come from the
//! configuration and outcomes from fixed sets; pod addresses, service names
//! from requests and error texts never become labels.

mod refusals;
mod route;
mod writer;

pub use refusals::{SUMMARY_INTERVAL, refused};
pub use route::{JobMetrics, RouteMetrics};
pub use writer::LogGuard;

use std::sync::OnceLock;
use std::time::Duration;

use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable, one line per event.
    #[default]
    Pretty,
    /// One JSON object per line, for log collectors.
    Json,
}

/// Installs the global log subscriber, writing to stderr from its own
/// thread (a slow reader never blocks a request); keep the returned guard
/// until the process ends, so queued lines are written. The filter comes
/// from `RUST_LOG` (targets syntax, e.g. `info,broadcast_router=debug`),
/// default `info`.
pub fn init_logging(format: LogFormat) -> LogGuard {
    let (writer, guard) = writer::NonBlocking::stderr();
    use tracing_subscriber::filter::Targets;
    use tracing_subscriber::prelude::*;

    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|spec| spec.parse::<Targets>().ok())
        .unwrap_or_else(|| Targets::new().with_default(tracing::Level::INFO));
    let registry = tracing_subscriber::registry().with(filter);
    let result = match format {
        LogFormat::Pretty => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(writer)
                    // Colours for a terminal only, never into a log file.
                    .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())),
            )
            .try_init(),
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_current_span(true)
                    // Events carry their span (the broadcast's route and
                    // id) once, not again in a list of every open span.
                    .with_span_list(false)
                    .with_writer(writer),
            )
            .try_init(),
    };
    // A subscriber already installed (tests, embedding) is fine.
    drop(result);
    guard
}

/// The process-wide metrics recorder, installed on first use.
pub fn metrics() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let seconds = [
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ];
        let widths = [1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0];
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &seconds)
            .and_then(|builder| {
                builder.set_buckets_for_metric(Matcher::Full(BROADCAST_TARGETS.into()), &widths)
            })
            .expect("bucket lists are not empty")
            .build_recorder();
        let handle = recorder.handle();
        if let Err(error) = metrics::set_global_recorder(recorder) {
            tracing::warn!(%error, "Another metrics recorder is installed; /metrics will be empty.");
        }
        describe();
        handle
    })
}

const BROADCASTS: &str = "broadcast_router_broadcasts_total";
const BROADCASTS_IN_FLIGHT: &str = "broadcast_router_broadcasts_in_flight";
const BROADCAST_TARGETS: &str = "broadcast_router_broadcast_targets";
const BROADCAST_DURATION: &str = "broadcast_router_broadcast_duration_seconds";
const COALESCED: &str = "broadcast_router_coalesced_requests_total";
const DELIVERIES: &str = "broadcast_router_deliveries_total";
const DELIVERY_ATTEMPTS: &str = "broadcast_router_delivery_attempts_total";
const DELIVERY_DURATION: &str = "broadcast_router_delivery_duration_seconds";
const DNS_LOOKUPS: &str = "broadcast_router_dns_lookups_total";
const DNS_STALE: &str = "broadcast_router_dns_stale_answers_total";
const KUBE_EVENTS: &str = "broadcast_router_kubernetes_watch_events_total";
const KUBE_STALE: &str = "broadcast_router_kubernetes_stale_answers_total";
const KUBE_WATCHES: &str = "broadcast_router_kubernetes_watches";
const REPORTS: &str = "broadcast_router_reports_total";
const REPORT_RETRIES: &str = "broadcast_router_report_retries_total";
const PLUGIN_FAILURES: &str = "broadcast_router_plugin_failures_total";
const DATAGRAMS: &str = "broadcast_router_udp_datagrams_total";
const CONFIG_RELOADS: &str = "broadcast_router_config_reloads_total";
const CONFIG_VERSION: &str = "broadcast_router_config_version";
const POD_RESENDS: &str = "broadcast_router_pod_request_resends_total";
const JOBS: &str = "broadcast_router_jobs_total";
const JOBS_RUNNING: &str = "broadcast_router_jobs_running";
const JOB_STORE_ERRORS: &str = "broadcast_router_job_store_errors_total";
const JOB_STORE_DURATION: &str = "broadcast_router_job_store_duration_seconds";

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        BROADCASTS,
        "Broadcasts by route and outcome (ok, failed, or why it was refused: no_targets, dns_error, kubernetes_error, refused, too_large, bad_request, unauthorized, forbidden, rate_limited, busy, overloaded, too_many_targets, loop, client_timeout, headers_too_large, plugin_error, none_selected)."
    );
    describe_gauge!(BROADCASTS_IN_FLIGHT, "Broadcasts currently running.");
    describe_histogram!(BROADCAST_TARGETS, "Pods per broadcast (fan-out width).");
    describe_histogram!(
        BROADCAST_DURATION,
        "Time from receiving a broadcast to its last delivery."
    );
    describe_counter!(
        DELIVERIES,
        "Pod deliveries by route and outcome (success or an error kind)."
    );
    describe_counter!(
        DELIVERY_ATTEMPTS,
        "HTTP attempts made to pods, retries included."
    );
    describe_histogram!(DELIVERY_DURATION, "Time until each pod's outcome.");
    describe_counter!(
        COALESCED,
        "Requests that joined an identical broadcast waiting to start (route `coalesce`)."
    );
    describe_counter!(
        DNS_LOOKUPS,
        "DNS lookups by outcome (ok, empty, no_records, error)."
    );
    describe_counter!(
        REPORTS,
        "Reports POSTed to report_to collectors, by route and outcome (delivered, failed)."
    );
    describe_counter!(
        REPORT_RETRIES,
        "Report POSTs that failed and were retried, by route."
    );
    describe_counter!(
        PLUGIN_FAILURES,
        "Plugin hook failures by route, plugin and cause (timeout, memory, trap, error, invalid_output)."
    );
    describe_counter!(
        DATAGRAMS,
        "UDP datagrams by route and outcome (sent, error), repeats included."
    );
    describe_counter!(
        CONFIG_RELOADS,
        "Configuration loads by outcome (initial, ok, error); after an error the previous configuration keeps serving."
    );
    describe_gauge!(
        CONFIG_VERSION,
        "Version of the active configuration: 1 at start, one more per successful reload."
    );
    describe_counter!(
        POD_RESENDS,
        "Pod requests sent again on a new connection because the pod had closed the reused idle one before answering (not counted as retries)."
    );
    describe_counter!(
        JOBS,
        "Broadcast jobs by route and event: accepted (stored before the answer), done, resumed (taken over after a restart or from a dead router)."
    );
    describe_gauge!(
        JOBS_RUNNING,
        "Jobs this router is working on (deliveries or the report under way)."
    );
    describe_counter!(
        JOB_STORE_ERRORS,
        "Job store operations that failed, by store (memory, file, redis), operation and error (too_many_pending, full, superseded, lost, unavailable, corrupt)."
    );
    describe_histogram!(
        JOB_STORE_DURATION,
        "Time of one job store operation (a durable write for create and update), by store and operation."
    );
    describe_counter!(
        KUBE_EVENTS,
        "Kubernetes EndpointSlice watch events by outcome (listed, changed, error)."
    );
    describe_counter!(
        KUBE_STALE,
        "Broadcasts that used the last known EndpointSlices while their watch was failing."
    );
    describe_gauge!(
        KUBE_WATCHES,
        "EndpointSlice watches running (one per Service)."
    );
    describe_counter!(
        DNS_STALE,
        "Broadcasts that used a stale DNS answer because DNS was failing."
    );
}

/// Keeps histogram windows bounded; call every few seconds.
pub fn upkeep() {
    metrics().run_upkeep();
}

/// A broadcast was refused or could not start (`outcome` from a fixed set).
pub fn broadcast_rejected(route: &str, outcome: &'static str) {
    counter!(BROADCASTS, "route" => route.to_owned(), "outcome" => outcome).increment(1);
}

/// A request joined an identical broadcast of `route` waiting to start.
pub fn broadcast_coalesced(route: &str) {
    counter!(COALESCED, "route" => route.to_owned()).increment(1);
}

/// A DNS lookup finished with `outcome`.
pub fn dns_lookup(outcome: &'static str) {
    counter!(DNS_LOOKUPS, "outcome" => outcome).increment(1);
}

/// A stale DNS answer was used because DNS was failing.
pub fn dns_stale_answer() {
    counter!(DNS_STALE).increment(1);
}

/// An EndpointSlice watch delivered something: `listed` (a full list),
/// `changed` (one slice added, changed or removed) or `error`.
pub fn kubernetes_watch_event(outcome: &'static str) {
    counter!(KUBE_EVENTS, "outcome" => outcome).increment(1);
}

/// A broadcast used the last known EndpointSlices of a failing watch.
pub fn kubernetes_stale_answer() {
    counter!(KUBE_STALE).increment(1);
}

/// How many EndpointSlice watches run.
pub fn kubernetes_watches(count: usize) {
    gauge!(KUBE_WATCHES).set(count as f64);
}

/// A report was delivered to (or given up on by) a route's collector.
pub fn report_sent(route: &str, outcome: &'static str) {
    counter!(REPORTS, "route" => route.to_owned(), "outcome" => outcome).increment(1);
}

/// A report POST failed and will be retried.
pub fn report_retry(route: &str) {
    counter!(REPORT_RETRIES, "route" => route.to_owned()).increment(1);
}

/// A pod request was sent again on a new connection: the pod had closed
/// the idle connection it was first sent on.
pub fn pod_request_resent() {
    counter!(POD_RESENDS).increment(1);
}

/// Datagrams of a UDP broadcast were sent (`outcome`: sent or error).
pub fn datagrams(route: &str, outcome: &'static str, count: u64) {
    counter!(DATAGRAMS, "route" => route.to_owned(), "outcome" => outcome).increment(count);
}

/// A plugin call failed (`cause`: timeout, memory, trap, error, invalid_output).
pub fn plugin_failure(route: &str, plugin: &str, cause: &'static str) {
    counter!(
        PLUGIN_FAILURES,
        "route" => route.to_owned(),
        "plugin" => plugin.to_owned(),
        "cause" => cause
    )
    .increment(1);
}

/// A configuration load finished with `outcome` (initial, ok, error);
/// `version` is the one now active.
pub fn config_reloaded(outcome: &'static str, version: u64) {
    counter!(CONFIG_RELOADS, "outcome" => outcome).increment(1);
    gauge!(CONFIG_VERSION).set(version as f64);
}

/// The job store's operation timings, with their handles resolved once
/// (the memory store's writes take about a microsecond; a registry lookup
/// per write would be a good part of it).
#[derive(Debug)]
pub struct StoreMetrics {
    store: &'static str,
    durations: Vec<(&'static str, metrics::Histogram)>,
}

impl StoreMetrics {
    /// The handles of store `store` (`memory`, `file`, `redis`) for
    /// `operations`; other operations are looked up when they happen.
    pub fn new(store: &'static str, operations: &[&'static str]) -> Self {
        let durations = operations
            .iter()
            .map(|&operation| {
                let histogram =
                    histogram!(JOB_STORE_DURATION, "store" => store, "operation" => operation);
                (operation, histogram)
            })
            .collect();
        Self { store, durations }
    }

    /// One operation took `elapsed`; `error` is its failure's label.
    pub fn record(&self, operation: &'static str, error: Option<&'static str>, elapsed: Duration) {
        let store = self.store;
        match self.durations.iter().find(|(known, _)| *known == operation) {
            Some((_, histogram)) => histogram.record(elapsed.as_secs_f64()),
            None => histogram!(JOB_STORE_DURATION, "store" => store, "operation" => operation)
                .record(elapsed.as_secs_f64()),
        }
        if let Some(error) = error {
            counter!(JOB_STORE_ERRORS, "store" => store, "operation" => operation, "error" => error)
                .increment(1);
        }
    }
}

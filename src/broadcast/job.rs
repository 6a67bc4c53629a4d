//! A broadcast's job in the store: each pod's outcome recorded as it
//! happens (by a writer beside the deliveries, so a slow store never
//! holds them up; the memory store's writes are map inserts, made where
//! they happen), the report's delivery to `report_to` recorded before
//! and after it is sent, and [`Broadcaster::resume`]: finishing a job
//! another router process left unfinished.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use futures_util::{FutureExt, StreamExt};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::Instrument;

use super::{Broadcaster, InFlight, report_to};
use crate::aggregate::{DeliveryReport, Report};
use crate::jobs::{Job, JobState, Jobs, StoreError, now_ms};
use crate::jobs::{ReportDelivery, ReportState};
use crate::load::Endpoint;
use crate::route::{ReportTo, Route};
use crate::telemetry::{self, JobMetrics};
use crate::vocabulary::delivery::{Delivery, ErrorKind, PodRequest};
use crate::vocabulary::policy::Policy;
use crate::vocabulary::target::Target;

/// A job this router is working on.
pub(super) struct Tracked {
    jobs: Arc<Jobs>,
    job: Job,
    /// Another router took the job over: stop delivering, writing and
    /// reporting.
    lost: Arc<AtomicBool>,
    metrics: JobMetrics,
    /// A later broadcast with the same id replaced the job: this run goes
    /// on (deliveries, report) but is no longer recorded.
    superseded: bool,
}

impl Tracked {
    pub(super) fn new(jobs: Arc<Jobs>, job: Job, metrics: JobMetrics, resumed: bool) -> Self {
        metrics.running(resumed);
        Self {
            jobs,
            job,
            lost: Arc::default(),
            metrics,
            superseded: false,
        }
    }

    /// Writes the job; after a [`StoreError::Lost`], never again.
    async fn save(&mut self) {
        if self.is_lost() || self.superseded {
            return;
        }
        match self.jobs.update(&mut self.job).await {
            Err(StoreError::Lost(_)) => {
                tracing::warn!(
                    "Another router took this job over; this router stops working on it."
                );
                self.lost.store(true, Ordering::Relaxed);
            }
            Err(StoreError::Superseded(_)) => {
                tracing::info!(
                    "A later broadcast with the same id replaced this job; this run goes on unrecorded."
                );
                self.superseded = true;
            }
            _ => {}
        }
    }

    fn is_lost(&self) -> bool {
        self.lost.load(Ordering::Relaxed)
    }

    /// Marks the job running and starts the writer of pod outcomes.
    pub(super) async fn start(mut self) -> Recorder {
        self.job.state = JobState::Running;
        let lost = Arc::clone(&self.lost);
        if self.jobs.writes_at_once() {
            // Written with the first outcomes: until then the job reads
            // `accepted`, while its copies are on their way.
            return Recorder {
                sink: Sink::AtOnce {
                    tracked: Box::new(std::sync::Mutex::new((self, true))),
                    write_from: progress_deadline(Instant::now()),
                },
                lost,
            };
        }
        self.save().await;
        let (outcomes, mut received) = mpsc::unbounded_channel::<(usize, DeliveryReport)>();
        let writer = tokio::spawn(
            async move {
                while let Some((index, result)) = received.recv().await {
                    self.job.pods[index].result = Some(result);
                    // Whatever else finished meanwhile goes in the same write.
                    while let Ok((index, result)) = received.try_recv() {
                        self.job.pods[index].result = Some(result);
                    }
                    self.save().await;
                }
                self
            }
            .in_current_span(),
        );
        Recorder {
            sink: Sink::Writer { outcomes, writer },
            lost,
        }
    }

    /// Records the final report and delivers it to the route's collector
    /// (unless it was delivered or given up before), then marks the job
    /// done.
    pub(super) async fn finish(
        mut self,
        report_to: Option<&ReportTo>,
        client: &reqwest::Client,
        report: Report,
    ) {
        if self.is_lost() {
            self.metrics.stopped(false);
            return;
        }
        // Encoded only for a collector.
        let json = report_to.map(|_| serde_json::to_vec(&report).map(bytes::Bytes::from));
        self.job.report = Some(report);
        let pending = self
            .job
            .report_to
            .as_ref()
            .is_none_or(|delivery| delivery.state == ReportState::Pending);
        if let (Some(to), Some(Ok(json)), true) = (report_to, json, pending) {
            let give_up_ms = self.job.report_to.as_ref().map_or_else(
                || now_ms() + to.retry_for.as_millis() as u64,
                |delivery| delivery.give_up_ms,
            );
            self.job.report_to = Some(ReportDelivery {
                state: ReportState::Pending,
                give_up_ms,
            });
            self.save().await;
            if self.is_lost() {
                self.metrics.stopped(false);
                return;
            }
            let left = Duration::from_millis(give_up_ms.saturating_sub(now_ms()));
            let delivered = if left.is_zero() {
                // `report_retry_for` ran out while no router was running.
                telemetry::report_sent(&self.job.route, "failed");
                tracing::error!(collector = %to.url, "The report's report_retry_for ran out before the job was resumed; it is only in the job.");
                false
            } else {
                let give_up = Instant::now() + left;
                report_to::send(client, to, &self.job.route, &self.job.id, json, give_up).await
            };
            self.job.report_to = Some(ReportDelivery {
                state: if delivered {
                    ReportState::Delivered
                } else {
                    ReportState::Failed
                },
                give_up_ms,
            });
        }
        self.job.state = JobState::Done;
        self.job.finished_ms = Some(now_ms());
        let metrics = self.metrics.clone();
        let done = self.save_last().await;
        metrics.stopped(done);
    }

    /// The job's last write, handing it to the store; whether this router
    /// still owned it.
    async fn save_last(self) -> bool {
        if self.is_lost() {
            return false;
        }
        if self.superseded {
            return true;
        }
        match self.jobs.update_last(self.job).await {
            Err(StoreError::Lost(_)) => {
                tracing::warn!(
                    "Another router took this job over; this router stops working on it."
                );
                false
            }
            Err(StoreError::Superseded(_)) => {
                tracing::info!(
                    "A later broadcast with the same id replaced this job; this run goes on unrecorded."
                );
                true
            }
            _ => true,
        }
    }
}

/// Hands pod outcomes to the job's writer, or keeps them with the job
/// until they are written (the memory store).
pub(super) struct Recorder {
    sink: Sink,
    lost: Arc<AtomicBool>,
}

/// How far into a broadcast the memory store's first progress write
/// waits at least (see [`Recorder::next`]).
const PROGRESS_DELAY: Duration = Duration::from_millis(5);

/// The grid progress deadlines are rounded up to.
const PROGRESS_GRID: Duration = Duration::from_millis(8);

/// When a broadcast started at `now` may write its first progress:
/// [`PROGRESS_DELAY`] later, rounded up to the next [`PROGRESS_GRID`]
/// step since the process started. Broadcasts a few milliseconds apart
/// share a deadline, so arming the timer seldom moves the runtime's next
/// wake-up earlier: that would wake the thread waiting for I/O, once per
/// broadcast.
fn progress_deadline(now: Instant) -> Instant {
    static ORIGIN: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let origin = *ORIGIN.get_or_init(|| now);
    let grid = PROGRESS_GRID.as_nanos();
    let due = (now + PROGRESS_DELAY).duration_since(origin).as_nanos();
    let steps = due.div_ceil(grid);
    origin + Duration::from_nanos(u64::try_from(steps * grid).unwrap_or(u64::MAX))
}

/// Where a [`Recorder`] writes outcomes.
enum Sink {
    /// The memory store: kept with the job, then written by
    /// [`Recorder::flush`] (a map insert), with whether some are unwritten.
    AtOnce {
        tracked: Box<std::sync::Mutex<(Tracked, bool)>>,
        /// No progress is written before this ([`progress_deadline`]).
        write_from: Instant,
    },
    /// A store with round trips: by a writer task beside the deliveries.
    Writer {
        outcomes: mpsc::UnboundedSender<(usize, DeliveryReport)>,
        writer: JoinHandle<Tracked>,
    },
}

impl Recorder {
    /// Whether another router took the job over: deliveries not yet made
    /// are left to it.
    pub(super) fn is_lost(&self) -> bool {
        self.lost.load(Ordering::Relaxed)
    }

    /// Records pod `index`'s outcome (written as soon as the store allows).
    pub(super) fn pod(&self, index: usize, target: &Target, delivery: &Delivery) {
        self.record(index, DeliveryReport::from_delivery(target, delivery));
    }

    /// Records pod `target` as failed without a delivery.
    fn failed(&self, target: &Target, detail: &str) {
        let mut result = DeliveryReport::pending(target);
        result.pending = false;
        result.error = Some(ErrorKind::Protocol);
        result.detail = Some(detail.to_owned());
        self.record(target.index, result);
    }

    /// Keeps or hands on one pod's result.
    fn record(&self, index: usize, result: DeliveryReport) {
        match &self.sink {
            Sink::AtOnce { tracked, .. } => {
                let mut tracked = tracked.lock().unwrap_or_else(PoisonError::into_inner);
                tracked.0.job.pods[index].result = Some(result);
                tracked.1 = true;
            }
            Sink::Writer { outcomes, .. } => {
                let _ = outcomes.send((index, result));
            }
        }
    }

    /// Writes the outcomes recorded since the last write, when the store
    /// writes at once; [`Self::next`] calls it whenever no other outcome
    /// is ready, so that outcomes arriving together make one write (the
    /// writer task of the other stores batches the same way).
    fn flush(&self) {
        if let Sink::AtOnce { tracked, .. } = &self.sink {
            let mut tracked = tracked.lock().unwrap_or_else(PoisonError::into_inner);
            let (tracked, unwritten) = &mut *tracked;
            if std::mem::take(unwritten) {
                // The store writes before the call returns: the future is
                // ready when first polled.
                let saved = tracked.save().now_or_never();
                debug_assert!(saved.is_some(), "the store writes at once");
            }
        }
    }

    /// The next item of `outcomes`; when none is ready, what was recorded
    /// so far is [flushed](Self::flush) before waiting.
    /// With the memory store, progress is written no earlier than
    /// [`progress_deadline`] (5 to 13 ms into the broadcast): one that
    /// finishes sooner is written twice (accepted, done), not once per
    /// outcome as well.
    pub(super) async fn next<S>(&self, outcomes: &mut S) -> Option<S::Item>
    where
        S: futures_util::Stream + Unpin,
    {
        if let Some(ready) = outcomes.next().now_or_never() {
            return ready;
        }
        let write_at = match &self.sink {
            Sink::AtOnce { write_from, .. } => *write_from,
            Sink::Writer { .. } => return outcomes.next().await,
        };
        if write_at > Instant::now() {
            tokio::select! {
                biased;
                next = outcomes.next() => return next,
                () = tokio::time::sleep_until(write_at) => {}
            }
        }
        self.flush();
        outcomes.next().await
    }

    /// Waits until every recorded outcome is written, or (the memory
    /// store) hands the job back with what is not written yet, for the
    /// job's next write.
    pub(super) async fn written(self) -> Tracked {
        match self.sink {
            Sink::AtOnce { tracked, .. } => {
                let (tracked, _) = tracked.into_inner().unwrap_or_else(PoisonError::into_inner);
                tracked
            }
            Sink::Writer { outcomes, writer } => {
                drop(outcomes);
                writer
                    .await
                    .expect("the job writer never panics: it only writes")
            }
        }
    }
}

impl Broadcaster {
    /// Finishes a job another router process left unfinished (this one
    /// before a restart, or a dead replica sharing the Redis store): the
    /// pods without a recorded outcome get their copy again (same
    /// `X-Broadcast-Id`), then the report goes to `report_to` unless it was
    /// delivered before. `endpoint` is the job's route in the active
    /// configuration; without it the job is closed with the pods it has.
    pub fn resume(self: &Arc<Self>, endpoint: Option<Arc<Endpoint>>, mut job: Job) {
        job.resumed += 1;
        let span = tracing::info_span!("broadcast", route = %job.route, id = %job.id, resumed = job.resumed);
        let this = Arc::clone(self);
        self.shared.tasks.spawn(
            async move {
                // Listed as running, so a shutdown that cannot wait for it names it.
                let key = this.shared.next_key.fetch_add(1, Ordering::Relaxed);
                let route: Arc<str> = job.route.as_str().into();
                let _registered = InFlight::register(&this.shared.in_flight, key, &job.id, &route);
                let pending = job.pods.iter().filter(|pod| pod.result.is_none()).count();
                tracing::info!(pending, targets = job.pods.len(), "Resuming an unfinished broadcast.");
                let metrics = endpoint.as_ref().map_or_else(
                    || JobMetrics::new(&job.route),
                    |endpoint| endpoint.metrics.jobs.clone(),
                );
                let tracked = Tracked::new(Arc::clone(&this.shared.jobs), job, metrics, true);
                let Some(endpoint) = endpoint else {
                    tracing::error!("The broadcast's route is no longer configured; closing its job with the pods it reached.");
                    let report = report_of(&tracked.job, None);
                    tracked.finish(None, this.shared.fanout.client(), report).await;
                    return;
                };
                this.resume_deliveries(endpoint, tracked).await;
            }
            .instrument(span),
        );
    }

    async fn resume_deliveries(&self, endpoint: Arc<Endpoint>, tracked: Tracked) {
        let route = &endpoint.route;
        let job = &tracked.job;
        let targets = job.targets();
        let decoded: Vec<Option<Arc<PodRequest>>> = job
            .requests
            .iter()
            .map(|stored| stored.request().map(Arc::new))
            .collect();
        let mut waiting = Vec::new();
        let mut pending_requests = Vec::new();
        let mut unreadable = Vec::new();
        for (index, pod) in job.pods.iter().enumerate() {
            if job.report.is_some() || pod.result.is_some() {
                continue;
            }
            match &decoded[pod.request] {
                Some(request) => {
                    waiting.push(targets[index].clone());
                    pending_requests.push(Arc::clone(request));
                }
                None => unreadable.push(targets[index].clone()),
            }
        }
        let started = Instant::now();
        let recorder = tracked.start().await;
        for target in &unreadable {
            tracing::error!(%target, "The stored request is unreadable; the pod is reported as failed.");
            recorder.failed(
                target,
                "the stored request could not be read back after a restart",
            );
        }
        let mut deliveries = self.shared.fanout.deliver_all(
            &pending_requests,
            &waiting,
            &route.limits,
            endpoint.tls.as_ref(),
            started,
        );
        while let Some((position, delivery)) = recorder.next(&mut deliveries).await {
            let target = &waiting[position];
            endpoint.metrics.delivery_finished(
                delivery.outcome(),
                delivery.attempts,
                delivery.latency,
            );
            recorder.pod(target.index, target, &delivery);
            if recorder.is_lost() {
                break;
            }
        }
        drop(deliveries);
        let tracked = recorder.written().await;
        let report = report_of(&tracked.job, Some(route));
        tracing::info!(
            ok = report.ok,
            targets = report.targets,
            succeeded = report.succeeded,
            failed = report.failed,
            "Resumed broadcast finished."
        );
        tracked
            .finish(
                route.report_to.as_ref(),
                self.shared.fanout.client(),
                report,
            )
            .await;
    }
}

/// The job's report: the one judged before, or one judged now by the
/// route's policy from the recorded outcomes.
fn report_of(job: &Job, route: Option<&Route>) -> Report {
    if let Some(report) = &job.report {
        return report.clone();
    }
    let policy = route.map_or_else(Policy::default, |route| route.policy);
    Report::from_results(&job.id, &job.route, policy, job.results())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_deadlines_are_late_enough_and_shared() {
        let now = Instant::now();
        let due = progress_deadline(now);
        assert!(due >= now + PROGRESS_DELAY);
        assert!(due < now + PROGRESS_DELAY + PROGRESS_GRID);
        // A broadcast started a little earlier, within the same step,
        // shares the deadline.
        let earlier = due - PROGRESS_DELAY - Duration::from_micros(1);
        assert_eq!(progress_deadline(earlier), due);
        assert!(progress_deadline(due) > due);
    }
}

//! Broadcast jobs: every HTTP broadcast is a [`Job`] under its broadcast
//! id, kept in a [`JobStore`] so its progress can be read
//! (`GET /broadcasts/{id}`) and an unfinished one can be resumed after a
//! crash.
//!
//! A job is written before an async broadcast is answered, and again as
//! each pod's outcome and the report's delivery to `report_to` happen.
//! Three stores implement the one trait: [`memory`] (no `[jobs]` table:
//! nothing survives a restart), [`file`] (redb, one file) and [`redis`]
//! (shared by several routers, each holding a lease on its unfinished
//! jobs). [`Jobs`] wraps the store with the bounds (`max_pending`,
//! `max_bytes`), retention and metrics. What is at-least-once and where
//! is written down in `docs/jobs.md`.

pub mod file;
mod job;
pub mod memory;
pub mod redis;

pub use job::{
    Job, JobState, JobView, PodJob, Progress, ReportDelivery, ReportState, StoredRequest,
};

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures_util::future::{BoxFuture, FutureExt};

use crate::config::JobsConfig;
use crate::telemetry;

/// Which jobs `GET /broadcasts` lists.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Only this route's jobs.
    pub route: Option<String>,
    /// Only jobs in this state.
    pub state: Option<JobState>,
    /// At most this many, newest first.
    pub limit: usize,
}

/// Why the store could not do what was asked. Each variant says who
/// failed; the status API and the handler turn them into 429 and 503.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// `max_pending` unfinished jobs are in the store already.
    #[error("the job store holds {limit} unfinished broadcasts ([jobs] max_pending); retry later")]
    TooManyPending {
        /// `max_pending`.
        limit: usize,
    },
    /// The store is larger than `max_bytes`.
    #[error(
        "the job store is full ({size} bytes, [jobs] max_bytes is {limit}); retry when finished jobs have expired"
    )]
    Full {
        /// The store's size.
        size: u64,
        /// `max_bytes`.
        limit: u64,
    },
    /// A later broadcast with the same id replaced this run's job: this run
    /// goes on unrecorded.
    #[error("job \"{0}\" was replaced by a later broadcast with the same id")]
    Superseded(String),
    /// Another router took the job over (this router's lease expired).
    #[error("job \"{0}\" was taken over by another router (this router's lease expired)")]
    Lost(String),
    /// The embedded store's file could not be read or written.
    #[error("job store file {path}: {detail}")]
    File {
        /// The file.
        path: String,
        /// What redb or the file system said.
        detail: String,
    },
    /// Redis could not be reached or refused the command.
    #[error("job store redis at {url}: {detail}")]
    Redis {
        /// The server, without credentials.
        url: String,
        /// What the client said.
        detail: String,
    },
    /// A stored job could not be read back.
    #[error("job store: job \"{id}\" is unreadable: {detail}")]
    Corrupt {
        /// The job.
        id: String,
        /// The decoding error.
        detail: String,
    },
}

impl StoreError {
    /// Whether the refusal is a bound (429) rather than a failing store (503).
    pub fn is_bound(&self) -> bool {
        matches!(
            self,
            StoreError::TooManyPending { .. } | StoreError::Full { .. }
        )
    }
}

/// A place to keep jobs. Every method is one round trip to the store;
/// `claim` and `heartbeat` are called by [`Jobs::tick`].
pub trait JobStore: Send + Sync {
    /// Writes a new job, refusing it when `max_pending` unfinished jobs
    /// are stored already. A job with the same id is replaced (its run's
    /// later writes get [`StoreError::Superseded`]).
    fn create<'a>(
        &'a self,
        job: &'a Job,
        max_pending: usize,
    ) -> BoxFuture<'a, Result<(), StoreError>>;
    /// Replaces a job this router owns; a finished one is kept for
    /// `retention` from now. [`StoreError::Lost`] when another router owns
    /// it now, [`StoreError::Superseded`] when a later broadcast with the
    /// same id replaced it.
    fn update<'a>(
        &'a self,
        job: &'a Job,
        retention: Duration,
    ) -> BoxFuture<'a, Result<(), StoreError>>;
    /// [`JobStore::update`] for a job's last write, handing the job over
    /// (a store that keeps jobs in memory keeps this one, uncopied).
    fn update_last<'a>(
        &'a self,
        job: Job,
        retention: Duration,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        async move { self.update(&job, retention).await }.boxed()
    }
    /// One job, unless unknown or expired.
    fn get<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<Job>, StoreError>>;
    /// Recent jobs, newest first.
    fn list<'a>(&'a self, filter: &'a Filter) -> BoxFuture<'a, Result<Vec<Job>, StoreError>>;
    /// Renews `owner`'s lease for another `lease` (Redis; a no-op for the
    /// stores one process holds).
    fn heartbeat<'a>(
        &'a self,
        _owner: &'a str,
        _lease: Duration,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        futures_util::future::ready(Ok(())).boxed()
    }
    /// Gives `owner`'s lease up at once (Redis), so the others take its
    /// unfinished jobs over without waiting for it to expire.
    fn release<'a>(&'a self, _owner: &'a str) -> BoxFuture<'a, Result<(), StoreError>> {
        futures_util::future::ready(Ok(())).boxed()
    }
    /// Takes over the unfinished jobs whose owner holds no lease: after a
    /// restart, every unfinished job of the embedded and memory stores;
    /// with Redis, the jobs of routers that stopped renewing theirs. The
    /// claimed jobs name `owner`.
    fn claim<'a>(&'a self, owner: &'a str) -> BoxFuture<'a, Result<Vec<Job>, StoreError>>;
    /// Forgets finished jobs older than `retention`; returns the store's
    /// size in bytes.
    fn sweep(&self, retention: Duration) -> BoxFuture<'_, Result<u64, StoreError>>;
    /// `memory`, `file` or `redis`, for logs and metrics.
    fn kind(&self) -> &'static str;
    /// Whether every write is done by the time its call returns (the
    /// memory store): progress can then be written where it happens,
    /// without a writer of its own.
    fn writes_at_once(&self) -> bool {
        false
    }
}

/// The store with its bounds and metrics: what the router uses.
pub struct Jobs {
    store: Box<dyn JobStore>,
    /// The store's operation timings.
    metrics: telemetry::StoreMetrics,
    /// This process's name as a job owner (a fresh UUID at every start).
    owner: String,
    max_pending: usize,
    max_bytes: u64,
    retention: Duration,
    lease: Duration,
    /// The size found by the last sweep, when above `max_bytes`.
    full: std::sync::Mutex<Option<u64>>,
    /// Whether the store survives this process.
    durable: bool,
}

impl Jobs {
    /// Opens the store `config` names; in memory without `[jobs]`.
    pub async fn open(config: Option<&JobsConfig>) -> Result<Self, StoreError> {
        let defaults = JobsConfig::default();
        let settings = config.unwrap_or(&defaults);
        let (store, durable): (Box<dyn JobStore>, bool) = match config {
            Some(JobsConfig {
                path: Some(path), ..
            }) => (Box::new(file::FileStore::open(path)?), true),
            Some(JobsConfig {
                redis: Some(url), ..
            }) => (Box::new(redis::RedisStore::connect(url).await?), true),
            Some(settings) => (
                Box::new(memory::MemoryStore::with_limit(settings.max_bytes.as_u64())),
                false,
            ),
            // No `[jobs]`: the status API's memory stays small.
            None => (Box::new(memory::MemoryStore::default()), false),
        };
        Ok(Self::with_store(store, settings, durable))
    }

    /// Wraps an open store with `settings`' bounds.
    pub fn with_store(store: Box<dyn JobStore>, settings: &JobsConfig, durable: bool) -> Self {
        Self {
            metrics: telemetry::StoreMetrics::new(
                store.kind(),
                &["create", "update", "get", "list"],
            ),
            store,
            owner: uuid::Uuid::new_v4().to_string(),
            max_pending: settings.max_pending,
            max_bytes: settings.max_bytes.as_u64(),
            retention: settings.retention,
            lease: settings.lease,
            full: std::sync::Mutex::new(None),
            durable,
        }
    }

    /// An in-memory store with default bounds (tests, the demo).
    pub fn in_memory() -> Arc<Self> {
        Arc::new(Self::with_store(
            Box::new(memory::MemoryStore::default()),
            &JobsConfig::default(),
            false,
        ))
    }

    /// `memory`, `file` or `redis`.
    pub fn kind(&self) -> &'static str {
        self.store.kind()
    }

    /// Whether every write is done by the time its call returns.
    pub fn writes_at_once(&self) -> bool {
        self.store.writes_at_once()
    }

    /// Whether jobs survive a restart of this process.
    pub fn is_durable(&self) -> bool {
        self.durable
    }

    /// This process's owner name in the store.
    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// How often [`Jobs::tick`] should run: every second, or every third
    /// of the lease when that is shorter (so it is renewed in time).
    pub fn tick_interval(&self) -> Duration {
        (self.lease / 3).min(Duration::from_secs(1))
    }

    /// Writes a new job (owned by this router) before it is answered.
    pub async fn create(&self, job: &mut Job) -> Result<(), StoreError> {
        if let Some(size) = *self.full.lock().expect("jobs size lock") {
            return Err(StoreError::Full {
                size,
                limit: self.max_bytes,
            });
        }
        job.owner = self.owner.clone();
        self.timed("create", self.store.create(job, self.max_pending))
            .await
    }

    /// Records a job's progress; errors are logged and counted here
    /// (the broadcast goes on: its client has its answer already), and
    /// returned so a job another router took over can be given up.
    pub async fn update(&self, job: &mut Job) -> Result<(), StoreError> {
        job.updated_ms = now_ms();
        let result = self
            .timed("update", self.store.update(job, self.retention))
            .await;
        if let Err(error) = &result {
            tracing::error!(id = %job.id, %error, "Job progress could not be recorded.");
        }
        result
    }

    /// Records a job's last write (done), handing the job over; errors
    /// as with [`Jobs::update`].
    pub async fn update_last(&self, mut job: Job) -> Result<(), StoreError> {
        job.updated_ms = now_ms();
        let id = job.id.clone();
        let result = self
            .timed("update", self.store.update_last(job, self.retention))
            .await;
        if let Err(error) = &result {
            tracing::error!(%id, %error, "Job progress could not be recorded.");
        }
        result
    }

    /// One job, unless unknown or expired.
    pub async fn get(&self, id: &str) -> Result<Option<Job>, StoreError> {
        self.timed("get", self.store.get(id)).await
    }

    /// Recent jobs, newest first.
    pub async fn list(&self, filter: &Filter) -> Result<Vec<Job>, StoreError> {
        self.timed("list", self.store.list(filter)).await
    }

    /// Renews this router's lease, forgets expired jobs, checks the store's
    /// size and, with `take_over`, returns the unfinished jobs this router
    /// takes over (none while it drains).
    pub async fn tick(&self, take_over: bool) -> Result<Vec<Job>, StoreError> {
        self.timed("heartbeat", self.store.heartbeat(&self.owner, self.lease))
            .await?;
        let claimed = if take_over {
            self.timed("claim", self.store.claim(&self.owner)).await?
        } else {
            Vec::new()
        };
        // Sweeping is cheap in memory and a scan elsewhere: every tick for
        // the size, which also bounds how late expired jobs go.
        let size = self
            .timed("sweep", self.store.sweep(self.retention))
            .await?;
        let over = (size > self.max_bytes).then_some(size);
        let mut full = self.full.lock().expect("jobs size lock");
        if over.is_some() && full.is_none() {
            tracing::warn!(
                size,
                limit = self.max_bytes,
                "The job store is over [jobs] max_bytes; new broadcasts get 429."
            );
        }
        *full = over;
        Ok(claimed)
    }

    /// Gives this router's lease up (at the end of a graceful stop): its
    /// unfinished jobs go to the other routers sharing the store at once.
    pub async fn release(&self) {
        if let Err(error) = self.timed("release", self.store.release(&self.owner)).await {
            tracing::warn!(%error, "The job store lease could not be given up; it expires by itself.");
        }
    }

    async fn timed<T>(
        &self,
        operation: &'static str,
        work: BoxFuture<'_, Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let started = std::time::Instant::now();
        let result = work.await;
        self.metrics.record(
            operation,
            result.as_ref().err().map(store_error_label),
            started.elapsed(),
        );
        result
    }
}

/// A bounded label for a store error.
fn store_error_label(error: &StoreError) -> &'static str {
    match error {
        StoreError::TooManyPending { .. } => "too_many_pending",
        StoreError::Full { .. } => "full",
        StoreError::Superseded(_) => "superseded",
        StoreError::Lost(_) => "lost",
        StoreError::File { .. } | StoreError::Redis { .. } => "unavailable",
        StoreError::Corrupt { .. } => "corrupt",
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as u64)
}

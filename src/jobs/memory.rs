//! The in-memory store, used without a `[jobs]` table: the status API
//! works, nothing survives a restart.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use futures_util::future::{BoxFuture, FutureExt};

use super::{Filter, Job, JobState, JobStore, StoreError, now_ms};

/// Jobs in a map, with their encoded sizes (what `max_bytes` bounds).
#[derive(Default)]
pub struct MemoryStore {
    jobs: Mutex<HashMap<String, (Job, u64)>>,
}

impl MemoryStore {
    fn size_of(job: &Job) -> u64 {
        serde_json::to_vec(job).map_or(0, |json| json.len() as u64)
    }

    fn expired(job: &Job, retention: Duration, now: u64) -> bool {
        job.finished_ms
            .is_some_and(|finished| finished + retention.as_millis() as u64 <= now)
    }
}

impl JobStore for MemoryStore {
    fn create<'a>(
        &'a self,
        job: &'a Job,
        max_pending: usize,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        let mut jobs = self.jobs.lock().expect("job map lock");
        let result = if jobs
            .get(&job.id)
            .is_some_and(|(stored, _)| stored.state != JobState::Done)
        {
            Err(StoreError::Duplicate(job.id.clone()))
        } else if jobs
            .values()
            .filter(|(stored, _)| stored.state != JobState::Done)
            .count()
            >= max_pending
        {
            Err(StoreError::TooManyPending { limit: max_pending })
        } else {
            jobs.insert(job.id.clone(), (job.clone(), Self::size_of(job)));
            Ok(())
        };
        futures_util::future::ready(result).boxed()
    }

    fn update<'a>(
        &'a self,
        job: &'a Job,
        _retention: Duration,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        let mut jobs = self.jobs.lock().expect("job map lock");
        let result = match jobs.get(&job.id) {
            Some((stored, _)) if stored.owner != job.owner => Err(StoreError::Lost(job.id.clone())),
            _ => {
                jobs.insert(job.id.clone(), (job.clone(), Self::size_of(job)));
                Ok(())
            }
        };
        futures_util::future::ready(result).boxed()
    }

    fn get<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<Job>, StoreError>> {
        let jobs = self.jobs.lock().expect("job map lock");
        let job = jobs.get(id).map(|(job, _)| job.clone());
        futures_util::future::ready(Ok(job)).boxed()
    }

    fn list<'a>(&'a self, filter: &'a Filter) -> BoxFuture<'a, Result<Vec<Job>, StoreError>> {
        let jobs = self.jobs.lock().expect("job map lock");
        let mut found: Vec<Job> = jobs
            .values()
            .map(|(job, _)| job)
            .filter(|job| filter.matches(job))
            .cloned()
            .collect();
        drop(jobs);
        found.sort_by(|a, b| b.created_ms.cmp(&a.created_ms).then(b.id.cmp(&a.id)));
        found.truncate(filter.limit);
        futures_util::future::ready(Ok(found)).boxed()
    }

    fn heartbeat<'a>(
        &'a self,
        _owner: &'a str,
        _lease: Duration,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        futures_util::future::ready(Ok(())).boxed()
    }

    fn claim<'a>(&'a self, owner: &'a str) -> BoxFuture<'a, Result<Vec<Job>, StoreError>> {
        let mut jobs = self.jobs.lock().expect("job map lock");
        let claimed = jobs
            .values_mut()
            .filter(|(job, _)| job.state != JobState::Done && job.owner != owner)
            .map(|(job, _)| {
                job.owner = owner.to_owned();
                job.clone()
            })
            .collect();
        futures_util::future::ready(Ok(claimed)).boxed()
    }

    fn sweep(&self, retention: Duration) -> BoxFuture<'_, Result<u64, StoreError>> {
        let now = now_ms();
        let mut jobs = self.jobs.lock().expect("job map lock");
        jobs.retain(|_, (job, _)| !Self::expired(job, retention, now));
        let size = jobs.values().map(|(_, size)| size).sum();
        futures_util::future::ready(Ok(size)).boxed()
    }

    fn kind(&self) -> &'static str {
        "memory"
    }
}

impl Filter {
    /// Whether `job` is one the filter asks for.
    pub fn matches(&self, job: &Job) -> bool {
        self.route.as_ref().is_none_or(|route| *route == job.route)
            && self.state.is_none_or(|state| state == job.state)
    }
}

//! The in-memory store, used without a `[jobs]` table: the status API
//! works, nothing survives a restart. Beyond its size limit it forgets
//! the oldest finished jobs first, so a router without `[jobs]` never
//! refuses broadcasts for the status API's sake.

use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use futures_util::future::{BoxFuture, FutureExt};

use super::{Filter, Job, JobState, JobStore, StoreError, now_ms};

/// Jobs in a map, with their sizes (what `max_bytes` bounds).
pub struct MemoryStore {
    jobs: Mutex<Map>,
    /// Finished jobs beyond this many bytes are forgotten, oldest first.
    limit: u64,
}

/// The jobs, the ids of the unfinished ones, their total size, and the
/// finished ones in the order they expire and are forgotten in.
///
/// Both indexes keep the periodic passes short: a store at its limit holds
/// about 100,000 jobs of a small broadcast, and the claim of every second
/// walked all of them under the lock every broadcast writes through; it
/// now walks the unfinished ones. Jobs are boxed for the same lock's sake:
/// each time the map doubles while the store fills, it moves every entry,
/// and with jobs inline that was tens of megabytes, stalling every
/// broadcast for milliseconds (the p99 of a freshly started router).
#[derive(Default)]
struct Map {
    jobs: HashMap<String, (Box<Job>, u64)>,
    unfinished: HashSet<String>,
    size: u64,
    finished: BTreeSet<(u64, String)>,
}

impl Map {
    /// Stores `job`, keeping the indexes and the size, and, when `job` is
    /// finished, forgets the oldest finished jobs while the store is over
    /// `limit`: a few per write, rather than a second's worth at once in
    /// [`MemoryStore::sweep`] (which would hold the lock for milliseconds
    /// under load). Only a finished job's write forgets: that is a
    /// broadcast's last write, made after its client was answered, while
    /// the first is made before any pod receives its copy. The store is
    /// over its limit by the unfinished jobs at most (`max_pending` bounds
    /// how many there are); finished jobs written before that many
    /// unfinished ones are forgotten by the next finished write or sweep.
    fn put(&mut self, job: Job, limit: u64) {
        // An estimate: no write of a broadcast encodes the whole job.
        let size = job.estimated_size();
        let finished = finished_at(&job);
        let id = job.id.clone();
        if let Some((old, old_size)) = self.jobs.insert(id.clone(), (Box::new(job), size)) {
            if let Some(old_finished) = finished_at(&old) {
                self.finished.remove(&(old_finished, id.clone()));
            }
            self.forget(&old, old_size);
        }
        self.size += size;
        if let Some(finished) = finished {
            self.finished.insert((finished, id));
            while self.size > limit && !self.finished.is_empty() {
                self.remove_oldest();
            }
        } else {
            self.unfinished.insert(id);
        }
    }

    /// Takes `job`, just replaced or removed (and out of `finished`),
    /// out of the size and the unfinished ids.
    fn forget(&mut self, job: &Job, size: u64) {
        self.size -= size;
        if finished_at(job).is_none() {
            self.unfinished.remove(&job.id);
        }
    }

    /// Removes the finished job that expires first.
    fn remove_oldest(&mut self) {
        if let Some((_, id)) = self.finished.pop_first()
            && let Some((job, size)) = self.jobs.remove(&id)
        {
            self.forget(&job, size);
        }
    }
}

/// When `job` finished (its key in [`Map::finished`]); `None` while it is
/// unfinished.
fn finished_at(job: &Job) -> Option<u64> {
    (job.state == JobState::Done).then(|| job.finished_ms.unwrap_or(0))
}

/// The memory store's size without a `[jobs]` table: a router that was not
/// asked to keep jobs keeps recent ones for the status API, in bounded
/// memory, whatever its traffic.
pub const DEFAULT_LIMIT: u64 = 64 << 20;

impl Default for MemoryStore {
    /// A store within [`DEFAULT_LIMIT`].
    fn default() -> Self {
        Self::with_limit(DEFAULT_LIMIT)
    }
}

impl MemoryStore {
    /// A store that keeps finished jobs within `limit` bytes.
    pub fn with_limit(limit: u64) -> Self {
        Self {
            jobs: Mutex::default(),
            limit,
        }
    }

    /// Replaces a stored job with `job` unless a later run or another
    /// owner has it now; a borrowed `job` is copied only to be stored.
    fn replace(&self, job: Cow<'_, Job>) -> Result<(), StoreError> {
        let mut map = self.jobs.lock().expect("job map lock");
        match map.jobs.get(&job.id) {
            Some((stored, _)) if stored.run != job.run => {
                Err(StoreError::Superseded(job.id.clone()))
            }
            Some((stored, _)) if stored.owner != job.owner => Err(StoreError::Lost(job.id.clone())),
            _ => {
                map.put(job.into_owned(), self.limit);
                Ok(())
            }
        }
    }
}

impl JobStore for MemoryStore {
    fn create<'a>(
        &'a self,
        job: &'a Job,
        max_pending: usize,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        let mut map = self.jobs.lock().expect("job map lock");
        let replaces_pending = map.unfinished.contains(&job.id);
        let result = if !replaces_pending && map.unfinished.len() >= max_pending {
            Err(StoreError::TooManyPending { limit: max_pending })
        } else {
            map.put(job.clone(), self.limit);
            Ok(())
        };
        futures_util::future::ready(result).boxed()
    }

    fn update<'a>(
        &'a self,
        job: &'a Job,
        _retention: Duration,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        let result = self.replace(Cow::Borrowed(job));
        futures_util::future::ready(result).boxed()
    }

    fn update_last<'a>(
        &'a self,
        job: Job,
        _retention: Duration,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        let result = self.replace(Cow::Owned(job));
        futures_util::future::ready(result).boxed()
    }

    fn get<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<Job>, StoreError>> {
        let map = self.jobs.lock().expect("job map lock");
        let job = map.jobs.get(id).map(|(job, _)| Job::clone(job));
        futures_util::future::ready(Ok(job)).boxed()
    }

    fn list<'a>(&'a self, filter: &'a Filter) -> BoxFuture<'a, Result<Vec<Job>, StoreError>> {
        let map = self.jobs.lock().expect("job map lock");
        let mut found: Vec<&Job> = map
            .jobs
            .values()
            .map(|(job, _)| &**job)
            .filter(|job| filter.matches(job))
            .collect();
        // Only the jobs listed are copied: a full store holds far more.
        let newest_first =
            |a: &&Job, b: &&Job| b.created_ms.cmp(&a.created_ms).then(b.id.cmp(&a.id));
        if found.len() > filter.limit {
            found.select_nth_unstable_by(filter.limit, newest_first);
            found.truncate(filter.limit);
        }
        found.sort_unstable_by(newest_first);
        let found: Vec<Job> = found.into_iter().cloned().collect();
        futures_util::future::ready(Ok(found)).boxed()
    }

    fn claim<'a>(&'a self, owner: &'a str) -> BoxFuture<'a, Result<Vec<Job>, StoreError>> {
        let mut guard = self.jobs.lock().expect("job map lock");
        let map = &mut *guard;
        let claimed = map
            .unfinished
            .iter()
            .filter_map(|id| {
                let (job, _) = map.jobs.get_mut(id)?;
                (job.owner != owner).then(|| {
                    job.owner = owner.to_owned();
                    Job::clone(job)
                })
            })
            .collect();
        futures_util::future::ready(Ok(claimed)).boxed()
    }

    fn sweep(&self, retention: Duration) -> BoxFuture<'_, Result<u64, StoreError>> {
        let now = now_ms();
        let retention = u64::try_from(retention.as_millis()).unwrap_or(u64::MAX);
        let mut map = self.jobs.lock().expect("job map lock");
        while let Some((finished, _)) = map.finished.first() {
            let expired = finished.saturating_add(retention) <= now;
            if !expired && map.size <= self.limit {
                break;
            }
            map.remove_oldest();
        }
        futures_util::future::ready(Ok(map.size)).boxed()
    }

    fn kind(&self) -> &'static str {
        "memory"
    }

    fn writes_at_once(&self) -> bool {
        true
    }
}

impl Filter {
    /// Whether `job` is one the filter asks for.
    pub fn matches(&self, job: &Job) -> bool {
        self.route.as_ref().is_none_or(|route| *route == job.route)
            && self.state.is_none_or(|state| state == job.state)
    }
}

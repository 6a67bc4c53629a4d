//! The embedded store: one redb file. Every write is one transaction
//! committed durably (fsync) before it returns, so a job that was
//! answered 202 is on disk, and each recorded pod outcome survives
//! `kill -9`. One router process opens the file at a time.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::{BoxFuture, FutureExt};
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};

use super::{Filter, Job, JobState, JobStore, StoreError, now_ms};

/// Job id → the job as JSON.
const JOBS: TableDefinition<&str, &[u8]> = TableDefinition::new("jobs");
/// Unfinished job ids → when they were accepted.
const PENDING: TableDefinition<&str, u64> = TableDefinition::new("pending");
/// (accepted at, id) of every job: the listing order and the sweep's index.
const RECENT: TableDefinition<(u64, &str), ()> = TableDefinition::new("recent");

/// Most jobs one listing reads before it stops looking for matches.
const LIST_SCAN: usize = 10_000;

/// The redb file.
pub struct FileStore {
    db: Arc<Database>,
    path: Arc<str>,
}

impl FileStore {
    /// Opens (or creates) the store at `path`, creating its directory.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let name: Arc<str> = path.display().to_string().into();
        let fail = |detail: String| StoreError::File {
            path: name.to_string(),
            detail,
        };
        if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|error| fail(error.to_string()))?;
        }
        let db = Database::create(path).map_err(|error| fail(error.to_string()))?;
        let store = Self {
            db: Arc::new(db),
            path: name,
        };
        // Create the tables, so readers never meet a missing one.
        store.write(|txn| {
            txn.open_table(JOBS)?;
            txn.open_table(PENDING)?;
            txn.open_table(RECENT)?;
            Ok(())
        })?;
        Ok(store)
    }

    /// Runs `work` in one committed write transaction.
    fn write<T>(
        &self,
        work: impl FnOnce(&redb::WriteTransaction) -> Result<T, Failure>,
    ) -> Result<T, StoreError> {
        let run = || -> Result<T, Failure> {
            let txn = self.db.begin_write().map_err(redb::Error::from)?;
            let value = work(&txn)?;
            txn.commit().map_err(redb::Error::from)?;
            Ok(value)
        };
        run().map_err(|failure| self.error(failure))
    }

    fn error(&self, failure: Failure) -> StoreError {
        match failure {
            Failure::Store(error) => error,
            Failure::Redb(error) => StoreError::File {
                path: self.path.to_string(),
                detail: error.to_string(),
            },
        }
    }

    /// Runs blocking store work off the async workers.
    fn blocking<'a, T: Send + 'static>(
        &'a self,
        work: impl FnOnce(&FileStore) -> Result<T, StoreError> + Send + 'static,
    ) -> BoxFuture<'a, Result<T, StoreError>> {
        let store = Self {
            db: Arc::clone(&self.db),
            path: Arc::clone(&self.path),
        };
        async move {
            tokio::task::spawn_blocking(move || work(&store))
                .await
                .unwrap_or_else(|panic| {
                    Err(StoreError::File {
                        path: "(job store)".into(),
                        detail: format!("the store task panicked: {panic}"),
                    })
                })
        }
        .boxed()
    }
}

/// A failure inside a transaction: the store's own refusal, or redb's.
enum Failure {
    Store(StoreError),
    Redb(redb::Error),
}

impl<E: Into<redb::Error>> From<E> for Failure {
    fn from(error: E) -> Self {
        Failure::Redb(error.into())
    }
}

fn decode(id: &str, json: &[u8]) -> Result<Job, Failure> {
    serde_json::from_slice(json).map_err(|error| {
        Failure::Store(StoreError::Corrupt {
            id: id.to_owned(),
            detail: error.to_string(),
        })
    })
}

fn encode(job: &Job) -> Vec<u8> {
    serde_json::to_vec(job).expect("a job always serializes")
}

impl JobStore for FileStore {
    fn create<'a>(
        &'a self,
        job: &'a Job,
        max_pending: usize,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        let job = job.clone();
        self.blocking(move |store| {
            store.write(|txn| {
                let mut jobs = txn.open_table(JOBS)?;
                let mut pending = txn.open_table(PENDING)?;
                let mut recent = txn.open_table(RECENT)?;
                let replaces_pending = pending.get(job.id.as_str())?.is_some();
                if !replaces_pending && pending.len()? >= max_pending as u64 {
                    return Err(Failure::Store(StoreError::TooManyPending {
                        limit: max_pending,
                    }));
                }
                let replaced = match jobs.get(job.id.as_str())? {
                    Some(old) => Some(decode(&job.id, old.value())?.created_ms),
                    None => None,
                };
                if let Some(created) = replaced {
                    recent.remove((created, job.id.as_str()))?;
                }
                jobs.insert(job.id.as_str(), encode(&job).as_slice())?;
                pending.insert(job.id.as_str(), job.created_ms)?;
                recent.insert((job.created_ms, job.id.as_str()), ())?;
                Ok(())
            })
        })
    }

    fn update<'a>(
        &'a self,
        job: &'a Job,
        _retention: Duration,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        let job = job.clone();
        self.blocking(move |store| {
            store.write(|txn| {
                let mut jobs = txn.open_table(JOBS)?;
                let stored = match jobs.get(job.id.as_str())? {
                    Some(old) => Some(decode(&job.id, old.value())?),
                    None => None,
                };
                if let Some(stored) = stored {
                    if stored.run != job.run {
                        return Err(Failure::Store(StoreError::Superseded(job.id.clone())));
                    }
                    if stored.owner != job.owner {
                        return Err(Failure::Store(StoreError::Lost(job.id.clone())));
                    }
                }
                jobs.insert(job.id.as_str(), encode(&job).as_slice())?;
                if job.state == JobState::Done {
                    txn.open_table(PENDING)?.remove(job.id.as_str())?;
                }
                Ok(())
            })
        })
    }

    fn get<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<Job>, StoreError>> {
        let id = id.to_owned();
        self.blocking(move |store| {
            let read = || -> Result<Option<Job>, Failure> {
                let txn = store.db.begin_read().map_err(redb::Error::from)?;
                let jobs = txn.open_table(JOBS)?;
                match jobs.get(id.as_str())? {
                    Some(json) => Ok(Some(decode(&id, json.value())?)),
                    None => Ok(None),
                }
            };
            read().map_err(|failure| store.error(failure))
        })
    }

    fn list<'a>(&'a self, filter: &'a Filter) -> BoxFuture<'a, Result<Vec<Job>, StoreError>> {
        let filter = filter.clone();
        self.blocking(move |store| {
            let read = || -> Result<Vec<Job>, Failure> {
                let txn = store.db.begin_read().map_err(redb::Error::from)?;
                let jobs = txn.open_table(JOBS)?;
                let recent = txn.open_table(RECENT)?;
                let mut found = Vec::new();
                for entry in recent.iter()?.rev().take(LIST_SCAN) {
                    let (key, _) = entry?;
                    let (_, id) = key.value();
                    if let Some(json) = jobs.get(id)? {
                        let job = decode(id, json.value())?;
                        if filter.matches(&job) {
                            found.push(job);
                            if found.len() >= filter.limit {
                                break;
                            }
                        }
                    }
                }
                Ok(found)
            };
            read().map_err(|failure| store.error(failure))
        })
    }

    fn claim<'a>(&'a self, owner: &'a str) -> BoxFuture<'a, Result<Vec<Job>, StoreError>> {
        let owner = owner.to_owned();
        self.blocking(move |store| {
            store.write(|txn| {
                let pending = txn.open_table(PENDING)?;
                let mut jobs = txn.open_table(JOBS)?;
                let mut ids = Vec::new();
                for entry in pending.iter()? {
                    ids.push(entry?.0.value().to_owned());
                }
                let mut claimed = Vec::new();
                for id in ids {
                    let Some(json) = jobs.get(id.as_str())?.map(|json| json.value().to_vec())
                    else {
                        continue;
                    };
                    let mut job = decode(&id, &json)?;
                    if job.owner != owner {
                        job.owner = owner.clone();
                        jobs.insert(id.as_str(), encode(&job).as_slice())?;
                        claimed.push(job);
                    }
                }
                Ok(claimed)
            })
        })
    }

    fn sweep(&self, retention: Duration) -> BoxFuture<'_, Result<u64, StoreError>> {
        self.blocking(move |store| {
            let now = now_ms();
            let horizon = now.saturating_sub(retention.as_millis() as u64);
            let run = || -> Result<u64, Failure> {
                let txn = store.db.begin_write().map_err(redb::Error::from)?;
                let swept = {
                    let mut jobs = txn.open_table(JOBS)?;
                    let mut recent = txn.open_table(RECENT)?;
                    let mut expired = Vec::new();
                    for entry in recent.range(..(horizon, ""))? {
                        let (key, _) = entry?;
                        let (created, id) = key.value();
                        let expired_job = match jobs.get(id)? {
                            Some(json) => {
                                let job = decode(id, json.value())?;
                                job.state == JobState::Done
                                    && job.finished_ms.is_none_or(|finished| finished <= horizon)
                            }
                            None => true,
                        };
                        if expired_job {
                            expired.push((created, id.to_owned()));
                        }
                    }
                    for (created, id) in &expired {
                        jobs.remove(id.as_str())?;
                        recent.remove((*created, id.as_str()))?;
                    }
                    !expired.is_empty()
                };
                let stats = txn.stats()?;
                // Nothing expired: no commit, so no fsync every tick.
                if swept {
                    txn.commit()?;
                } else {
                    txn.abort()?;
                }
                Ok(stats.allocated_pages() * stats.page_size() as u64)
            };
            run().map_err(|failure| store.error(failure))
        })
    }

    fn kind(&self) -> &'static str {
        "file"
    }
}

//! The shared store: Redis, for several router replicas. Any replica
//! reads any job; each unfinished job has an owner, the router working on
//! it, which holds a lease (`alive:{owner}`, `[jobs] lease` long, renewed
//! every second) and gives it up at the end of a graceful stop. A router
//! whose lease expired or was given up is dead to the others:
//! the first to notice takes its unfinished jobs over, atomically (a Lua
//! script), and the dead router's later writes to them are refused, so it
//! stops working on them if it was only paused.
//!
//! Keys, all under `broadcast-router:`: `job:{id}` (the job as JSON, with
//! an expiry of `retention` once done), `owner:{id}`, `run:{id}` (the run
//! whose writes count, until done), `pending` (sorted
//! set of unfinished ids: what `max_pending` counts), `recent` (sorted set
//! of every id by acceptance time: the listing order) and `alive:{owner}`.

use std::time::Duration;

use futures_util::future::{BoxFuture, FutureExt};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncCommands, Script};

use super::{Filter, Job, JobState, JobStore, StoreError, now_ms};

const PREFIX: &str = "broadcast-router:";
/// Ids one listing step reads.
const LIST_PAGE: isize = 100;
/// Most ids one listing reads before it stops looking for matches.
const LIST_SCAN: isize = 10_000;

const CREATE: &str = r"
if not redis.call('ZSCORE', KEYS[3], ARGV[5])
  and redis.call('ZCARD', KEYS[3]) >= tonumber(ARGV[3]) then return 0 end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('SET', KEYS[2], ARGV[2])
redis.call('SET', KEYS[5], ARGV[6])
redis.call('ZADD', KEYS[3], ARGV[4], ARGV[5])
redis.call('ZADD', KEYS[4], ARGV[4], ARGV[5])
return 1";

const UPDATE: &str = r"
if redis.call('GET', KEYS[4]) ~= ARGV[6] then return -1 end
if redis.call('GET', KEYS[2]) ~= ARGV[2] then return 0 end
if ARGV[3] == '1' then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[4])
  redis.call('DEL', KEYS[2])
  redis.call('DEL', KEYS[4])
  redis.call('ZREM', KEYS[3], ARGV[5])
else
  redis.call('SET', KEYS[1], ARGV[1])
end
return 1";

const CLAIM: &str = r"
local owner = redis.call('GET', KEYS[1])
if owner == ARGV[1] then return false end
if owner and redis.call('EXISTS', ARGV[2] .. owner) == 1 then return false end
local job = redis.call('GET', KEYS[2])
if not job then return false end
redis.call('SET', KEYS[1], ARGV[1])
return job";

/// A connection (re-established as needed) to one Redis server.
pub struct RedisStore {
    connection: ConnectionManager,
    /// The server, without credentials, for error messages.
    url: String,
    create: Script,
    update: Script,
    claim: Script,
}

fn key(kind: &str, id: &str) -> String {
    format!("{PREFIX}{kind}:{id}")
}

impl RedisStore {
    /// Sets up the connection to `url`. The connection is made on first
    /// use, so a router starts while Redis is down (and answers 503 until
    /// it is back); a failed first `PING` is logged.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let shown = url.rsplit('@').next().unwrap_or(url);
        let shown = if shown.len() == url.len() {
            url.to_owned()
        } else {
            format!("redis://…@{shown}")
        };
        let fail = |error: redis::RedisError| StoreError::Redis {
            url: shown.clone(),
            detail: error.to_string(),
        };
        let client = redis::Client::open(url).map_err(fail)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(2)))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_secs(1));
        let connection = client.get_connection_manager_lazy(config).map_err(fail)?;
        let store = Self {
            connection,
            url: shown.clone(),
            create: Script::new(CREATE),
            update: Script::new(UPDATE),
            claim: Script::new(CLAIM),
        };
        let mut connection = store.connection.clone();
        if let Err(error) = redis::cmd("PING").query_async::<()>(&mut connection).await {
            tracing::warn!(redis = %shown, %error, "Redis does not answer yet; broadcasts get 503 until it does.");
        }
        Ok(store)
    }

    fn fail(&self, error: redis::RedisError) -> StoreError {
        StoreError::Redis {
            url: self.url.clone(),
            detail: error.to_string(),
        }
    }

    fn decode(id: &str, json: &str) -> Result<Job, StoreError> {
        serde_json::from_str(json).map_err(|error| StoreError::Corrupt {
            id: id.to_owned(),
            detail: error.to_string(),
        })
    }
}

impl JobStore for RedisStore {
    fn create<'a>(
        &'a self,
        job: &'a Job,
        max_pending: usize,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        async move {
            let json = serde_json::to_string(job).expect("a job always serializes");
            let mut connection = self.connection.clone();
            let created: i64 = self
                .create
                .key(key("job", &job.id))
                .key(key("owner", &job.id))
                .key(format!("{PREFIX}pending"))
                .key(format!("{PREFIX}recent"))
                .key(key("run", &job.id))
                .arg(json)
                .arg(&job.owner)
                .arg(max_pending)
                .arg(job.created_ms)
                .arg(&job.id)
                .arg(&job.run)
                .invoke_async(&mut connection)
                .await
                .map_err(|error| self.fail(error))?;
            if created == 1 {
                Ok(())
            } else {
                Err(StoreError::TooManyPending { limit: max_pending })
            }
        }
        .boxed()
    }

    fn update<'a>(
        &'a self,
        job: &'a Job,
        retention: Duration,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        async move {
            let json = serde_json::to_string(job).expect("a job always serializes");
            let mut connection = self.connection.clone();
            let done = job.state == JobState::Done;
            let updated: i64 = self
                .update
                .key(key("job", &job.id))
                .key(key("owner", &job.id))
                .key(format!("{PREFIX}pending"))
                .key(key("run", &job.id))
                .arg(json)
                .arg(&job.owner)
                .arg(if done { "1" } else { "0" })
                .arg(retention.as_millis().max(1) as u64)
                .arg(&job.id)
                .arg(&job.run)
                .invoke_async(&mut connection)
                .await
                .map_err(|error| self.fail(error))?;
            match updated {
                1 => Ok(()),
                0 => Err(StoreError::Lost(job.id.clone())),
                _ => Err(StoreError::Superseded(job.id.clone())),
            }
        }
        .boxed()
    }

    fn get<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<Job>, StoreError>> {
        async move {
            let mut connection = self.connection.clone();
            let json: Option<String> = connection
                .get(key("job", id))
                .await
                .map_err(|error| self.fail(error))?;
            json.map(|json| Self::decode(id, &json)).transpose()
        }
        .boxed()
    }

    fn list<'a>(&'a self, filter: &'a Filter) -> BoxFuture<'a, Result<Vec<Job>, StoreError>> {
        async move {
            let mut connection = self.connection.clone();
            let recent = format!("{PREFIX}recent");
            let mut found = Vec::new();
            let mut start = 0;
            while start < LIST_SCAN && found.len() < filter.limit {
                let ids: Vec<String> = connection
                    .zrevrange(&recent, start, start + LIST_PAGE - 1)
                    .await
                    .map_err(|error| self.fail(error))?;
                if ids.is_empty() {
                    break;
                }
                let keys: Vec<String> = ids.iter().map(|id| key("job", id)).collect();
                let jobs: Vec<Option<String>> = redis::cmd("MGET")
                    .arg(&keys)
                    .query_async(&mut connection)
                    .await
                    .map_err(|error| self.fail(error))?;
                let mut gone = Vec::new();
                for (id, json) in ids.iter().zip(jobs) {
                    match json {
                        Some(json) => {
                            let job = Self::decode(id, &json)?;
                            if filter.matches(&job) && found.len() < filter.limit {
                                found.push(job);
                            }
                        }
                        None => gone.push(id.clone()),
                    }
                }
                if !gone.is_empty() {
                    let _: Result<(), _> = connection.zrem(&recent, &gone).await;
                }
                start += LIST_PAGE;
            }
            Ok(found)
        }
        .boxed()
    }

    fn heartbeat<'a>(
        &'a self,
        owner: &'a str,
        lease: Duration,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        async move {
            let mut connection = self.connection.clone();
            connection
                .pset_ex(
                    format!("{PREFIX}alive:{owner}"),
                    1,
                    lease.as_millis().max(1) as u64,
                )
                .await
                .map_err(|error| self.fail(error))
        }
        .boxed()
    }

    fn release<'a>(&'a self, owner: &'a str) -> BoxFuture<'a, Result<(), StoreError>> {
        async move {
            let mut connection = self.connection.clone();
            connection
                .del(format!("{PREFIX}alive:{owner}"))
                .await
                .map_err(|error| self.fail(error))
        }
        .boxed()
    }

    fn claim<'a>(&'a self, owner: &'a str) -> BoxFuture<'a, Result<Vec<Job>, StoreError>> {
        async move {
            let mut connection = self.connection.clone();
            let fail = |error| self.fail(error);
            let alive = format!("{PREFIX}alive:");
            let pending = format!("{PREFIX}pending");
            let ids: Vec<String> = connection.zrange(&pending, 0, -1).await.map_err(fail)?;
            if ids.is_empty() {
                return Ok(Vec::new());
            }
            let owner_keys: Vec<String> = ids.iter().map(|id| key("owner", id)).collect();
            let owners: Vec<Option<String>> = redis::cmd("MGET")
                .arg(&owner_keys)
                .query_async(&mut connection)
                .await
                .map_err(fail)?;
            let mut living = std::collections::HashMap::new();
            let mut claimed = Vec::new();
            for (id, holder) in ids.iter().zip(owners) {
                if let Some(holder) = &holder {
                    if holder == owner {
                        continue;
                    }
                    if !living.contains_key(holder) {
                        let exists: bool = connection
                            .exists(format!("{alive}{holder}"))
                            .await
                            .map_err(fail)?;
                        living.insert(holder.clone(), exists);
                    }
                    if living[holder] {
                        continue;
                    }
                }
                let json: Option<String> = self
                    .claim
                    .key(key("owner", id))
                    .key(key("job", id))
                    .arg(owner)
                    .arg(&alive)
                    .invoke_async(&mut connection)
                    .await
                    .map_err(fail)?;
                match json {
                    Some(json) => {
                        let mut job = Self::decode(id, &json)?;
                        job.owner = owner.to_owned();
                        claimed.push(job);
                    }
                    None if holder.is_none() => {
                        // Listed as pending, but the job is gone (expired
                        // or deleted by hand): stop counting it.
                        let exists: bool = connection.exists(key("job", id)).await.map_err(fail)?;
                        if !exists {
                            let _: () = connection.zrem(&pending, id).await.map_err(fail)?;
                        }
                    }
                    None => {}
                }
            }
            Ok(claimed)
        }
        .boxed()
    }

    fn sweep(&self, retention: Duration) -> BoxFuture<'_, Result<u64, StoreError>> {
        async move {
            let mut connection = self.connection.clone();
            let fail = |error| self.fail(error);
            // Finished jobs expire by themselves; their ids in `recent`
            // are dropped once older than the retention and gone.
            let recent = format!("{PREFIX}recent");
            let horizon = now_ms().saturating_sub(retention.as_millis() as u64);
            let old: Vec<String> = connection
                .zrangebyscore_limit(&recent, 0, horizon, 0, 1000)
                .await
                .map_err(fail)?;
            if !old.is_empty() {
                let keys: Vec<String> = old.iter().map(|id| key("job", id)).collect();
                let jobs: Vec<Option<String>> = redis::cmd("MGET")
                    .arg(&keys)
                    .query_async(&mut connection)
                    .await
                    .map_err(fail)?;
                let gone: Vec<&String> = old
                    .iter()
                    .zip(jobs)
                    .filter(|(_, job)| job.is_none())
                    .map(|(id, _)| id)
                    .collect();
                if !gone.is_empty() {
                    let _: () = connection.zrem(&recent, gone).await.map_err(fail)?;
                }
            }
            let info: String = redis::cmd("INFO")
                .arg("memory")
                .query_async(&mut connection)
                .await
                .map_err(fail)?;
            Ok(info
                .lines()
                .find_map(|line| line.strip_prefix("used_memory:"))
                .and_then(|bytes| bytes.trim().parse().ok())
                .unwrap_or(0))
        }
        .boxed()
    }

    fn kind(&self) -> &'static str {
        "redis"
    }
}

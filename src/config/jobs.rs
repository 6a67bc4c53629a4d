//! The `[jobs]` table: where broadcast jobs are kept (see `docs/jobs.md`).

use std::path::PathBuf;
use std::time::Duration;

use bytesize::ByteSize;
use serde::Deserialize;

/// The `[jobs]` table. Without it, jobs are kept in memory: the status
/// API works, nothing survives a restart.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JobsConfig {
    /// The embedded store: one file (redb), written before an async
    /// broadcast is answered. Exclusive with `redis`. Relative paths start
    /// at the configuration file's directory.
    pub path: Option<PathBuf>,
    /// The shared store, `redis://host:port/db` (or `rediss://`), for
    /// several router replicas. Exclusive with `path`.
    pub redis: Option<String>,
    /// How long finished jobs are kept for `GET /broadcasts/{id}`.
    #[serde(with = "humantime_serde")]
    pub retention: Duration,
    /// Most accepted but unfinished jobs in the store (every router
    /// sharing it counted); a broadcast beyond it gets 429.
    pub max_pending: usize,
    /// Largest size of the store (the file, or Redis' used memory); beyond
    /// it new broadcasts get 429 until finished jobs expire. (Without
    /// `[jobs]`, jobs are kept in memory within 64 MiB.)
    pub max_bytes: ByteSize,
    /// Redis only: how long a router's claim on its unfinished jobs lasts
    /// without renewal. A surviving router takes over a dead one's jobs
    /// once it has expired; it is renewed every second (every third of it
    /// when that is shorter).
    #[serde(with = "humantime_serde")]
    pub lease: Duration,
}

impl Default for JobsConfig {
    fn default() -> Self {
        Self {
            path: None,
            redis: None,
            retention: Duration::from_secs(3600),
            max_pending: 10_000,
            max_bytes: ByteSize::gib(1),
            lease: Duration::from_secs(10),
        }
    }
}

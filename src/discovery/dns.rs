//! DNS discovery of headless Services, with a cache shaped for broadcasts.
//!
//! Each Service name has one cache entry:
//! - while its answer is younger than three quarters of its TTL (clamped
//!   to `[min_ttl, max_ttl]`), broadcasts use it without asking DNS;
//! - in the last quarter, broadcasts still use it and one background
//!   refresh runs, so a busy route never waits on DNS;
//! - once expired, the next broadcast waits for a fresh answer (concurrent
//!   broadcasts share that one query), but at most [`FRESH_ANSWER_WAIT`]
//!   while the expired answer may still be served stale: then it uses that
//!   one and the lookup finishes in the background (stale while
//!   revalidate), so a DNS outage never makes a broadcast wait for the
//!   lookup timeout;
//! - if DNS fails, the last good answer keeps being served until
//!   `serve_stale_for` after it expired; each failure is logged and counted,
//!   and while failing, DNS is asked again at most once per `min_ttl`.
//!
//! NXDOMAIN and empty answers are authoritative and mean "this Service has
//! no pods" (503), never "serve stale". NXDOMAIN is cached for `min_ttl`,
//! an empty answer for its clamped TTL like any other.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{
    ConnectionConfig, LookupIpStrategy, NameServerConfig, ResolveHosts, ResolverConfig,
    ResolverOpts,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use tokio::time::Instant;

use crate::config::DnsConfig;
use crate::telemetry;

/// Why a DNS lookup failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LookupError {
    /// `/etc/resolv.conf` (or the platform's equivalent) is unusable.
    #[error("cannot read the system resolver configuration: {0}")]
    SystemConfig(String),
    /// The resolver was configured but could not build.
    #[error("cannot build the DNS resolver: {0}")]
    Build(String),
    /// The name servers did not answer usefully.
    #[error("DNS lookup failed: {0}")]
    Failed(String),
}

/// How long a broadcast waits for a fresh answer once its Service's answer
/// expired, before it uses the expired one (the lookup carries on in the
/// background). DNS in a cluster answers well within it.
pub const FRESH_ANSWER_WAIT: Duration = Duration::from_millis(100);

/// Names kept before unusable entries are pruned.
const MAX_ENTRIES: usize = 4096;

/// A TTL-honouring, stale-serving cache of Service addresses.
pub struct DnsCache {
    resolver: TokioResolver,
    min_ttl: Duration,
    max_ttl: Duration,
    serve_stale_for: Duration,
    entries: Mutex<HashMap<String, Arc<Entry>>>,
}

/// The cache entry of one Service name.
#[derive(Default)]
struct Entry {
    state: Mutex<State>,
    /// Held while a lookup for this name is running, so lookups coalesce.
    refreshing: tokio::sync::Mutex<()>,
}

#[derive(Default, Clone)]
struct State {
    answer: Option<Answer>,
    /// When and how the most recent lookup failed, if it did.
    failure: Option<(Instant, LookupError)>,
}

impl State {
    /// What to answer while DNS is failing: the last good answer within
    /// `serve_stale_for`, otherwise the failure itself.
    fn fallback(&self, cache: &DnsCache, now: Instant) -> Result<Arc<[IpAddr]>, LookupError> {
        match (&self.answer, &self.failure) {
            (Some(answer), _) if cache.servable_stale(answer, now) => {
                telemetry::dns_stale_answer();
                Ok(answer.ips.clone())
            }
            (_, Some((_, error))) => Err(error.clone()),
            (_, None) => Err(LookupError::Failed("no answer yet".to_owned())),
        }
    }
}

#[derive(Clone)]
struct Answer {
    ips: Arc<[IpAddr]>,
    fetched: Instant,
    refresh_at: Instant,
    expires: Instant,
    /// Authoritative "no such name / no records": never served stale.
    negative: bool,
}

impl DnsCache {
    /// Builds a cache over a resolver for `config` (explicit name servers,
    /// or the system configuration when none are given).
    pub fn new(config: &DnsConfig) -> Result<Self, LookupError> {
        let (resolver_config, mut options) = if config.nameservers.is_empty() {
            hickory_resolver::system_conf::read_system_conf()
                .map_err(|error| LookupError::SystemConfig(error.to_string()))?
        } else {
            let servers = config
                .nameservers
                .iter()
                .map(|server| {
                    let connection = |mut connection: ConnectionConfig| {
                        connection.port = server.0.port();
                        connection
                    };
                    NameServerConfig::new(
                        server.0.ip(),
                        true,
                        vec![
                            connection(ConnectionConfig::udp()),
                            connection(ConnectionConfig::tcp()),
                        ],
                    )
                })
                .collect();
            (
                ResolverConfig::from_name_servers(servers),
                ResolverOpts::default(),
            )
        };
        options.timeout = config.timeout;
        // hickory counts retries after the first query.
        options.attempts = config.attempts.saturating_sub(1);
        options.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
        options.use_hosts_file = ResolveHosts::Never;
        // This cache owns TTL handling; the resolver's own would hide it.
        options.cache_size = 0;
        let resolver =
            TokioResolver::builder_with_config(resolver_config, TokioRuntimeProvider::default())
                .with_options(options)
                .build()
                .map_err(|error| LookupError::Build(error.to_string()))?;
        Ok(Self {
            resolver,
            min_ttl: config.min_ttl,
            max_ttl: config.max_ttl,
            serve_stale_for: config.serve_stale_for,
            entries: Mutex::default(),
        })
    }

    /// The current addresses of `service`, sorted and de-duplicated. An
    /// empty list means DNS said the Service has no pods.
    pub async fn lookup(self: &Arc<Self>, service: &str) -> Result<Arc<[IpAddr]>, LookupError> {
        let entry = self.entry(service);
        let now = Instant::now();
        let state = entry.state.lock().expect("dns cache lock").clone();
        if let Some(answer) = &state.answer {
            if now < answer.refresh_at {
                return Ok(answer.ips.clone());
            }
            if now < answer.expires {
                self.refresh_in_background(service, &entry);
                return Ok(answer.ips.clone());
            }
        }
        // Expired or never resolved. While DNS is failing, don't make every
        // broadcast wait for it: ask again at most once per min_ttl.
        if let Some((failed, _)) = &state.failure
            && now < *failed + self.min_ttl
        {
            return state.fallback(self, now);
        }
        match &state.answer {
            // Stale while revalidating: the lookup runs in its own task;
            // its answer is used if it comes quickly, and the stale one if
            // not, so no broadcast waits for a DNS timeout while a stale
            // answer can still be served.
            Some(answer) if self.servable_stale(answer, now) => {
                if entry.refreshing.try_lock().is_err() {
                    // Another broadcast's lookup is running: only that one
                    // waits (briefly) for it.
                    telemetry::dns_stale_answer();
                    return Ok(answer.ips.clone());
                }
                let cache = Arc::clone(self);
                let (entry, name) = (Arc::clone(&entry), service.to_owned());
                let refresh = tokio::spawn(async move { cache.refresh(&name, &entry, now).await });
                match tokio::time::timeout(FRESH_ANSWER_WAIT, refresh).await {
                    Ok(Ok(result)) => result,
                    Ok(Err(_)) | Err(_) => {
                        telemetry::dns_stale_answer();
                        tracing::debug!(
                            service,
                            "DNS is slow to answer; using the last good answer while it does."
                        );
                        Ok(answer.ips.clone())
                    }
                }
            }
            _ => self.refresh(service, &entry, now).await,
        }
    }

    fn entry(&self, service: &str) -> Arc<Entry> {
        let mut entries = self.entries.lock().expect("dns cache lock");
        if entries.len() >= MAX_ENTRIES && !entries.contains_key(service) {
            // Templated routes can ask for many names; forget those whose
            // answers can no longer be served, so the cache stays bounded.
            // Entries still being resolved for the first time are kept.
            let now = Instant::now();
            entries.retain(|_, entry| {
                let state = entry.state.lock().expect("dns cache lock");
                state
                    .answer
                    .as_ref()
                    .is_none_or(|answer| now < answer.expires || self.servable_stale(answer, now))
            });
            // Still full of usable answers: drop one, the bound is firm.
            if entries.len() >= MAX_ENTRIES
                && let Some(victim) = entries.keys().next().cloned()
            {
                entries.remove(&victim);
            }
        }
        entries.entry(service.to_owned()).or_default().clone()
    }

    fn servable_stale(&self, answer: &Answer, now: Instant) -> bool {
        !answer.negative && now < answer.expires + self.serve_stale_for
    }

    fn refresh_in_background(self: &Arc<Self>, service: &str, entry: &Arc<Entry>) {
        let Ok(_guard) = entry.refreshing.try_lock() else {
            return; // a refresh is already running
        };
        let cache = Arc::clone(self);
        let entry = Arc::clone(entry);
        let service = service.to_owned();
        tokio::spawn(async move {
            let _ = cache.refresh(&service, &entry, Instant::now()).await;
        });
    }

    /// Looks `service` up (or waits for the lookup already running) and
    /// updates its entry. `asked` is when the caller found the entry stale:
    /// an answer fetched after it is fresh enough to share.
    async fn refresh(
        &self,
        service: &str,
        entry: &Entry,
        asked: Instant,
    ) -> Result<Arc<[IpAddr]>, LookupError> {
        let _running = entry.refreshing.lock().await;
        {
            // Whatever the lookup we waited for found is news enough.
            let state = entry.state.lock().expect("dns cache lock");
            if let Some(answer) = &state.answer
                && answer.fetched >= asked
            {
                return Ok(answer.ips.clone());
            }
            if let Some((failed, _)) = &state.failure
                && *failed >= asked
            {
                return state.fallback(self, Instant::now());
            }
        }

        let started = Instant::now();
        let result = self.resolver.lookup_ip(service).await;
        let now = Instant::now();
        let mut state = entry.state.lock().expect("dns cache lock");
        match result {
            Ok(lookup) => {
                let mut ips: Vec<IpAddr> = lookup.iter().collect();
                ips.sort_unstable();
                ips.dedup();
                let ttl = lookup
                    .valid_until()
                    .saturating_duration_since(started.into_std())
                    .clamp(self.min_ttl, self.max_ttl);
                telemetry::dns_lookup(if ips.is_empty() { "empty" } else { "ok" });
                tracing::debug!(service, pods = ips.len(), ttl = ?ttl, "Resolved service.");
                let ips: Arc<[IpAddr]> = ips.into();
                state.answer = Some(Answer::new(ips.clone(), now, ttl, false));
                state.failure = None;
                Ok(ips)
            }
            Err(error) if error.is_no_records_found() || error.is_nx_domain() => {
                telemetry::dns_lookup("no_records");
                tracing::info!(service, %error, "Service has no DNS records.");
                let ips: Arc<[IpAddr]> = Arc::from([]);
                state.answer = Some(Answer::new(ips.clone(), now, self.min_ttl, true));
                state.failure = None;
                Ok(ips)
            }
            Err(error) => {
                telemetry::dns_lookup("error");
                state.failure = Some((now, LookupError::Failed(error.to_string())));
                let result = state.fallback(self, now);
                match (&result, &state.answer) {
                    (Ok(_), Some(answer)) => tracing::warn!(
                        service,
                        %error,
                        stale_for = ?now.saturating_duration_since(answer.expires),
                        "DNS lookup failed; serving the last good answer."
                    ),
                    _ => tracing::error!(
                        service,
                        %error,
                        "DNS lookup failed and no usable answer is cached."
                    ),
                }
                result
            }
        }
    }
}

impl Answer {
    fn new(ips: Arc<[IpAddr]>, fetched: Instant, ttl: Duration, negative: bool) -> Self {
        Self {
            ips,
            fetched,
            refresh_at: fetched + ttl.mul_f64(0.75),
            expires: fetched + ttl,
            negative,
        }
    }
}

//! Admission limits: how many broadcasts a route may start per second and
//! run at once, how many deliveries per second one pod may receive from a
//! route (`pod_rate_limit`), and how many pod deliveries the whole router
//! may have in flight. A broadcast over a limit is refused with 429 and
//! `Retry-After` before anything is sent; nothing is queued, so a burst
//! never turns into a backlog that reaches the pods later.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::{RateLimitConfig, RouteConfig};
use crate::vocabulary::target::Target;

/// Why a broadcast was not admitted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// The route's rate limit is used up.
    #[error(
        "route \"{route}\" allows {per_second} broadcasts per second (burst {burst}); try again later"
    )]
    RateLimited {
        /// The route.
        route: Arc<str>,
        /// The configured rate, as written.
        per_second: String,
        /// The configured burst.
        burst: u32,
        /// When the next broadcast would be admitted.
        retry_after: Duration,
    },
    /// A pod the broadcast would reach has no delivery left in the route's
    /// `pod_rate_limit`.
    #[error(
        "route \"{route}\" allows {per_second} deliveries per second to each pod (burst {burst}) and pod {pod} has none left; nothing was sent, try again later"
    )]
    PodRateLimited {
        /// The route.
        route: Arc<str>,
        /// The first pod found without a delivery left.
        pod: SocketAddr,
        /// The configured rate, as written.
        per_second: String,
        /// The configured burst.
        burst: u32,
        /// When every pod of the broadcast would have a delivery left.
        retry_after: Duration,
    },
    /// The route already runs `max_concurrent` broadcasts.
    #[error(
        "route \"{route}\" is already running its maximum of {limit} broadcasts; try again later"
    )]
    Busy {
        /// The route.
        route: Arc<str>,
        /// The route's `max_concurrent`.
        limit: usize,
    },
    /// The router already has `max_in_flight_deliveries` deliveries in
    /// flight (or the broadcast alone needs more).
    #[error(
        "the router has too many pod deliveries in flight to add {needed} more (limit {limit}); try again later"
    )]
    Overloaded {
        /// Deliveries the broadcast needs.
        needed: usize,
        /// `[server] max_in_flight_deliveries`.
        limit: usize,
    },
}

impl Refused {
    /// How long the client should wait before trying again.
    pub fn retry_after(&self) -> Duration {
        match self {
            Refused::RateLimited { retry_after, .. }
            | Refused::PodRateLimited { retry_after, .. } => *retry_after,
            Refused::Busy { .. } | Refused::Overloaded { .. } => Duration::from_secs(1),
        }
    }
}

/// A route's per-second and at-once limits.
#[derive(Debug)]
pub struct Admission {
    route: Arc<str>,
    rate: Option<RateLimiter>,
    running: Option<(Arc<Semaphore>, usize)>,
    pods: Option<PodRates>,
}

/// Proof that a broadcast was admitted; dropping it frees its place
/// among the route's running broadcasts. Keep it until the broadcast's
/// last delivery finished.
#[derive(Debug)]
pub struct Admitted {
    _running: Option<OwnedSemaphorePermit>,
}

impl Admitted {
    /// Admission without limits (for callers that check nothing).
    pub fn unlimited() -> Self {
        Self { _running: None }
    }
}

impl Admission {
    /// The limits of a validated route.
    pub fn from_config(config: &RouteConfig) -> Self {
        let table = &config.table;
        Self {
            route: table.name.as_str().into(),
            rate: table.rate_limit.map(RateLimiter::new),
            running: table
                .max_concurrent
                .map(|limit| (Arc::new(Semaphore::new(limit)), limit)),
            pods: table.pod_rate_limit.map(PodRates::new),
        }
    }

    /// Takes one delivery from every target's `pod_rate_limit`, all or
    /// none: a broadcast that would exceed the limit for any pod is refused
    /// and takes nothing. Retries of a delivery are not counted.
    pub fn pace(&self, targets: &[Target]) -> Result<(), Refused> {
        let Some(pods) = &self.pods else {
            return Ok(());
        };
        pods.take(targets)
            .map_err(|(pod, retry_after)| Refused::PodRateLimited {
                route: self.route.clone(),
                pod,
                per_second: pods.config.per_second.to_string(),
                burst: pods.config.burst,
                retry_after,
            })
    }

    /// Admits one broadcast, or says which limit it hit. The rate limit is
    /// checked first: a broadcast refused for being one too many at once
    /// still used up its token.
    pub fn admit(&self) -> Result<Admitted, Refused> {
        if let Some(rate) = &self.rate {
            rate.take().map_err(|retry_after| Refused::RateLimited {
                route: self.route.clone(),
                per_second: rate.config.per_second.to_string(),
                burst: rate.config.burst,
                retry_after,
            })?;
        }
        match &self.running {
            None => Ok(Admitted::unlimited()),
            Some((running, limit)) => match Arc::clone(running).try_acquire_owned() {
                Ok(permit) => Ok(Admitted {
                    _running: Some(permit),
                }),
                Err(_) => Err(Refused::Busy {
                    route: self.route.clone(),
                    limit: *limit,
                }),
            },
        }
    }
}

/// A token bucket: `burst` tokens, refilled at `per_second`.
#[derive(Debug)]
struct RateLimiter {
    config: RateLimitConfig,
    bucket: Mutex<Bucket>,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    refilled: Instant,
}

impl Bucket {
    /// A full bucket.
    fn full(config: RateLimitConfig, now: Instant) -> Self {
        Self {
            tokens: f64::from(config.burst),
            refilled: now,
        }
    }

    /// The tokens the bucket holds at `now`.
    fn tokens_at(&self, config: RateLimitConfig, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        (self.tokens + elapsed * config.per_second).min(f64::from(config.burst))
    }
}

/// One token bucket per pod, for a route's `pod_rate_limit`.
#[derive(Debug)]
struct PodRates {
    config: RateLimitConfig,
    buckets: Mutex<HashMap<SocketAddr, Bucket>>,
}

impl PodRates {
    /// Buckets kept before full ones (pods idle long enough) are dropped.
    const PRUNE_ABOVE: usize = 1024;

    fn new(config: RateLimitConfig) -> Self {
        Self {
            config,
            buckets: Mutex::default(),
        }
    }

    /// Takes a token from every target's bucket, or none and says which pod
    /// had none left and how long until all of them have one.
    fn take(&self, targets: &[Target]) -> Result<(), (SocketAddr, Duration)> {
        let config = self.config;
        let now = Instant::now();
        let mut buckets = self.buckets.lock().expect("pod rate lock");
        let mut empty: Option<(SocketAddr, f64)> = None;
        for target in targets {
            let tokens = buckets
                .get(&target.addr)
                .map_or(f64::from(config.burst), |bucket| {
                    bucket.tokens_at(config, now)
                });
            if tokens < 1.0 {
                let missing = 1.0 - tokens;
                match &mut empty {
                    Some((_, most)) => *most = most.max(missing),
                    None => empty = Some((target.addr, missing)),
                }
            }
        }
        if let Some((pod, missing)) = empty {
            return Err((pod, Duration::from_secs_f64(missing / config.per_second)));
        }
        for target in targets {
            let bucket = buckets
                .entry(target.addr)
                .or_insert_with(|| Bucket::full(config, now));
            bucket.tokens = bucket.tokens_at(config, now) - 1.0;
            bucket.refilled = now;
        }
        if buckets.len() > Self::PRUNE_ABOVE {
            let burst = f64::from(config.burst);
            buckets.retain(|_, bucket| bucket.tokens_at(config, now) < burst);
        }
        Ok(())
    }
}

impl RateLimiter {
    fn new(config: RateLimitConfig) -> Self {
        Self {
            config,
            bucket: Mutex::new(Bucket {
                tokens: f64::from(config.burst),
                refilled: Instant::now(),
            }),
        }
    }

    /// Takes a token, or says how long until one is available.
    fn take(&self) -> Result<(), Duration> {
        let mut bucket = self.bucket.lock().expect("rate limiter lock");
        let now = Instant::now();
        let elapsed = now.saturating_duration_since(bucket.refilled).as_secs_f64();
        bucket.tokens =
            (bucket.tokens + elapsed * self.config.per_second).min(f64::from(self.config.burst));
        bucket.refilled = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64(
                (1.0 - bucket.tokens) / self.config.per_second,
            ))
        }
    }
}

/// The router-wide cap on pod deliveries in flight.
#[derive(Debug)]
pub struct DeliveryBudget {
    permits: Arc<Semaphore>,
    limit: usize,
}

/// Deliveries reserved for one broadcast; returned when dropped. The
/// default reserves nothing.
#[derive(Debug, Default)]
pub struct Reserved {
    _deliveries: Option<OwnedSemaphorePermit>,
}

impl DeliveryBudget {
    /// A budget of `limit` deliveries in flight.
    pub fn new(limit: usize) -> Self {
        let limit = limit.clamp(1, Semaphore::MAX_PERMITS);
        Self {
            permits: Arc::new(Semaphore::new(limit)),
            limit,
        }
    }

    /// Reserves `needed` deliveries for one broadcast, all or none.
    pub fn reserve(&self, needed: usize) -> Result<Reserved, Refused> {
        if needed == 0 {
            return Ok(Reserved { _deliveries: None });
        }
        u32::try_from(needed)
            .ok()
            .and_then(|count| Arc::clone(&self.permits).try_acquire_many_owned(count).ok())
            .map(|permit| Reserved {
                _deliveries: Some(permit),
            })
            .ok_or(Refused::Overloaded {
                needed,
                limit: self.limit,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_allows_its_burst_then_refuses_with_the_wait() {
        let limiter = RateLimiter::new(RateLimitConfig {
            per_second: 2.0,
            burst: 3,
        });
        for _ in 0..3 {
            limiter.take().expect("within the burst");
        }
        let wait = limiter.take().expect_err("the fourth is over the burst");
        assert!(wait <= Duration::from_millis(500), "{wait:?}");
        assert!(wait > Duration::ZERO);
    }

    #[test]
    fn pod_rates_take_from_every_pod_or_from_none() {
        let rates = PodRates::new(RateLimitConfig {
            per_second: 1.0,
            burst: 2,
        });
        let pod = |last: u8| Target {
            addr: SocketAddr::from(([10, 0, 0, last], 80)),
            service: None,
            index: 0,
            pod: None,
        };
        let (a, b) = (pod(1), pod(2));
        rates.take(std::slice::from_ref(&a)).expect("a: 2 left");
        rates.take(std::slice::from_ref(&a)).expect("a: 1 left");
        let both = [a.clone(), b.clone()];
        let (refused, wait) = rates.take(&both).expect_err("a has none left");
        assert_eq!(refused, a.addr);
        assert!(wait > Duration::ZERO && wait <= Duration::from_secs(1));
        // b gave nothing to the refused broadcast: its burst is intact.
        rates.take(std::slice::from_ref(&b)).expect("b: 2 left");
        rates.take(std::slice::from_ref(&b)).expect("b: 1 left");
        assert!(rates.take(std::slice::from_ref(&b)).is_err());
    }

    #[test]
    fn the_delivery_budget_is_all_or_nothing() {
        let budget = DeliveryBudget::new(10);
        let first = budget.reserve(6).expect("6 of 10");
        assert!(budget.reserve(5).is_err(), "6 + 5 > 10");
        let second = budget.reserve(4).expect("6 + 4 = 10");
        drop(first);
        budget.reserve(6).expect("freed");
        drop(second);
        assert!(budget.reserve(11).is_err(), "never more than the limit");
    }
}

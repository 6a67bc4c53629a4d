//! Discovery: turning a route's [`TargetSource`] into the list of pods to
//! deliver to right now.
//!
//! Headless Services are resolved through DNS ([`dns::DnsCache`]: A and
//! AAAA, cached by TTL, refreshed in the background, served stale while DNS
//! fails). Static `targets` skip DNS but yield the same [`Target`] records,
//! so everything after discovery treats both alike. Targets are
//! de-duplicated and sorted, so a broadcast's order is deterministic.

pub mod dns;

use std::net::SocketAddr;
use std::sync::Arc;

use crate::config::DnsConfig;
use crate::vocabulary::blame::Blame;
pub use crate::vocabulary::target::{Target, TargetSource};

/// Why a route's pods could not be found. Both mean "answer 503".
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    /// DNS answered authoritatively that the Service has no pods.
    #[error("service `{service}` has no pods: DNS returned no A/AAAA records")]
    NoPods {
        /// The Service name.
        service: String,
    },
    /// DNS could not be asked, and no recent answer is left to fall back on.
    #[error("service `{service}` cannot be resolved: {source}")]
    Dns {
        /// The Service name.
        service: String,
        /// What the resolver reported.
        source: dns::LookupError,
    },
}

impl DiscoveryError {
    /// Who is to blame: DNS, whether it failed or said there are no pods.
    pub fn blame(&self) -> Blame {
        Blame::Dns
    }
}

/// Finds the pods of every route.
pub struct Discovery {
    /// Built only when some route names a `service`, so configurations of
    /// static targets never depend on the system resolver configuration.
    dns: Option<Arc<dns::DnsCache>>,
}

impl Discovery {
    /// Builds the DNS resolver from the `[dns]` settings when `with_dns`.
    pub fn new(config: &DnsConfig, with_dns: bool) -> Result<Self, dns::LookupError> {
        let dns = if with_dns {
            Some(Arc::new(dns::DnsCache::new(config)?))
        } else {
            None
        };
        Ok(Self { dns })
    }

    /// The pods to broadcast to. `service` is the resolved Service name of
    /// a templated route (see `Route::service_name`); `None` uses the
    /// source's own name.
    pub async fn targets(
        &self,
        source: &TargetSource,
        service: Option<&str>,
    ) -> Result<Vec<Target>, DiscoveryError> {
        match (source, service) {
            (TargetSource::Fixed(addrs), _) => Ok(targets(addrs.iter().copied(), None)),
            (TargetSource::Service { name, port }, resolved) => {
                let service = resolved.unwrap_or(name);
                let dns_error = |source| DiscoveryError::Dns {
                    service: service.to_owned(),
                    source,
                };
                let dns = self.dns.as_ref().ok_or_else(|| {
                    dns_error(dns::LookupError::Build(
                        "no resolver: the configuration had no service routes".to_owned(),
                    ))
                })?;
                let ips = dns.lookup(service).await.map_err(dns_error)?;
                if ips.is_empty() {
                    return Err(DiscoveryError::NoPods {
                        service: service.to_owned(),
                    });
                }
                let addrs = ips.iter().map(|ip| SocketAddr::new(*ip, *port));
                Ok(targets(addrs, Some(service.into())))
            }
        }
    }
}

/// Sorts, de-duplicates and numbers addresses.
fn targets(addrs: impl Iterator<Item = SocketAddr>, service: Option<Arc<str>>) -> Vec<Target> {
    let mut addrs: Vec<SocketAddr> = addrs.collect();
    addrs.sort_unstable();
    addrs.dedup();
    addrs
        .into_iter()
        .enumerate()
        .map(|(index, addr)| Target {
            addr,
            service: service.clone(),
            index,
        })
        .collect()
}

//! Discovery: turning a route's [`TargetSource`] into the list of pods to
//! deliver to right now.
//!
//! Headless Services are resolved through DNS ([`dns::DnsCache`]: A and
//! AAAA, cached by TTL, refreshed in the background, served stale while DNS
//! fails). `kubernetes` routes watch their Service's EndpointSlices through
//! the API ([`kubernetes::Watches`]), which also name each pod, its node,
//! zone and readiness. Static `targets` skip both but yield the same
//! [`Target`] records, so everything after discovery treats all alike.
//! Targets are de-duplicated and sorted, so a broadcast's order is
//! deterministic.

pub mod dns;
pub mod kubernetes;

use std::net::SocketAddr;
use std::sync::Arc;

use crate::config::DnsConfig;
use crate::vocabulary::blame::Blame;
use crate::vocabulary::target::Endpoints;
pub use crate::vocabulary::target::{Target, TargetSource};
use kubernetes::{WatchError, WatchKey, Watches};

/// Why a route's pods could not be found. All mean "answer 503".
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
    /// The Kubernetes API has not (yet) listed the Service's
    /// EndpointSlices.
    #[error("service `{service}` cannot be watched through the Kubernetes API: {source}")]
    Kubernetes {
        /// The Service, as `namespace/name`.
        service: String,
        /// Why its EndpointSlices are not known.
        source: WatchError,
    },
    /// The Service's EndpointSlices list no endpoint the route admits.
    #[error("service `{service}` has no pods: {detail}")]
    NoEndpoints {
        /// The Service, as `namespace/name`.
        service: String,
        /// What the slices hold instead, e.g. "none of its 2 endpoints is
        /// serving".
        detail: String,
    },
}

impl DiscoveryError {
    /// Who is to blame: DNS or the Kubernetes API, whether it failed or
    /// said there are no pods.
    pub fn blame(&self) -> Blame {
        match self {
            DiscoveryError::NoPods { .. } | DiscoveryError::Dns { .. } => Blame::Dns,
            DiscoveryError::Kubernetes { .. } | DiscoveryError::NoEndpoints { .. } => {
                Blame::Kubernetes
            }
        }
    }

    /// Whether the Service is known to have no pods (rather than not
    /// known at all).
    pub fn no_pods(&self) -> bool {
        matches!(
            self,
            DiscoveryError::NoPods { .. } | DiscoveryError::NoEndpoints { .. }
        )
    }
}

/// Finds the pods of every route.
pub struct Discovery {
    /// Built only when some route names a `service`, so configurations of
    /// static targets never depend on the system resolver configuration.
    dns: Option<Arc<dns::DnsCache>>,
    /// The EndpointSlice watches, which outlive a `Discovery` on reload.
    kubernetes: Arc<Watches>,
}

impl Discovery {
    /// Builds the DNS resolver from the `[dns]` settings when `with_dns`;
    /// `kubernetes` routes use the watches of `kubernetes`.
    pub fn new(
        config: &DnsConfig,
        with_dns: bool,
        kubernetes: Arc<Watches>,
    ) -> Result<Self, dns::LookupError> {
        let dns = if with_dns {
            Some(Arc::new(dns::DnsCache::new(config)?))
        } else {
            None
        };
        Ok(Self { dns, kubernetes })
    }

    /// The EndpointSlice watches `kubernetes` routes use.
    pub fn kubernetes(&self) -> &Arc<Watches> {
        &self.kubernetes
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
            (TargetSource::Kubernetes(source), resolved) => {
                let key = WatchKey {
                    namespace: source.namespace.clone(),
                    service: resolved.unwrap_or(&source.service).to_owned(),
                };
                let (service, selection) = self
                    .kubernetes
                    .select(&key, &source.port, source.endpoints)
                    .await
                    .map_err(|(service, source)| DiscoveryError::Kubernetes { service, source })?;
                if selection.targets.is_empty() {
                    return Err(DiscoveryError::NoEndpoints {
                        service: service.to_string(),
                        detail: no_endpoints(&selection, source),
                    });
                }
                Ok(selection.targets)
            }
        }
    }
}

/// Why a Service's slices yield no target, in words.
fn no_endpoints(
    selection: &kubernetes::slices::Selection,
    source: &crate::vocabulary::target::KubernetesService,
) -> String {
    let skipped = selection.without_port.len();
    let port = if skipped > 0 {
        format!(
            " ({skipped} EndpointSlice(s) without a port named `{}` skipped)",
            source.port
        )
    } else {
        String::new()
    };
    let state = match source.endpoints {
        Endpoints::Ready => "ready",
        Endpoints::Serving => "serving",
        Endpoints::All => "listed",
    };
    match selection.seen {
        0 => format!("its EndpointSlices list no endpoints{port}"),
        seen => format!(
            "none of its {seen} endpoints is {state} (endpoints = \"{}\"){port}",
            source.endpoints
        ),
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
            pod: None,
        })
        .collect()
}

//! Targets: the pods one broadcast goes to, and where a route finds them.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

/// One pod a broadcast is delivered to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The pod's address and port.
    pub addr: SocketAddr,
    /// The Service name it was discovered under (`None` for static targets).
    pub service: Option<Arc<str>>,
    /// Position in the broadcast's target list.
    pub index: usize,
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `SocketAddr` already writes IPv6 as `[addr]:port`, as URLs need.
        self.addr.fmt(f)
    }
}

/// Where a route's pods come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetSource {
    /// A fixed list of addresses from `targets`.
    Fixed(Arc<[SocketAddr]>),
    /// A headless Service resolved through DNS.
    Service {
        /// The DNS name (possibly with `{service}` to fill in).
        name: String,
        /// The pods' port.
        port: u16,
    },
}

impl fmt::Display for TargetSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TargetSource::Fixed(addrs) => write!(f, "{} static targets", addrs.len()),
            TargetSource::Service { name, port } => write!(f, "{name}:{port}"),
        }
    }
}

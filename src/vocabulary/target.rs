//! Targets: the pods one broadcast goes to, and where a route finds them.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
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
    /// What the Kubernetes API says about the pod behind the address
    /// (`None` for static targets and DNS discovery).
    pub pod: Option<Arc<Pod>>,
}

impl Target {
    /// The pod's [`authority`].
    pub fn authority(&self) -> String {
        authority(self.addr)
    }

    /// The pod's name, when the Kubernetes API gave one.
    pub fn pod_name(&self) -> Option<&str> {
        self.pod.as_ref()?.name.as_deref()
    }

    /// The facts plugins receive as `target.labels`: `pod`, `namespace`,
    /// `node`, `zone`, `ready`, `serving` and `terminating`, those known.
    pub fn labels(&self) -> Vec<(&str, &str)> {
        let Some(pod) = &self.pod else {
            return Vec::new();
        };
        let flag = |set: bool| if set { "true" } else { "false" };
        let mut labels = Vec::with_capacity(7);
        for (key, value) in [
            ("pod", pod.name.as_deref()),
            ("namespace", Some(&*pod.namespace)),
            ("node", pod.node.as_deref()),
            ("zone", pod.zone.as_deref()),
        ] {
            if let Some(value) = value {
                labels.push((key, value));
            }
        }
        labels.push(("ready", flag(pod.conditions.ready)));
        labels.push(("serving", flag(pod.conditions.serving)));
        labels.push(("terminating", flag(pod.conditions.terminating)));
        labels
    }
}

/// `addr` as `ip:port` (IPv6 as `[ip]:port`), as
/// [`Display`](fmt::Display) writes it, but several times faster for
/// IPv4: every broadcast's report writes one for each pod.
pub fn authority(addr: SocketAddr) -> String {
    match addr {
        SocketAddr::V4(v4) => {
            let mut text = ip_text(IpAddr::V4(*v4.ip()));
            text.push(':');
            push_decimal(&mut text, v4.port());
            text
        }
        SocketAddr::V6(_) => addr.to_string(),
    }
}

/// `ip` as text, e.g. `10.42.0.12` or `fd00::5`. IPv4 addresses are
/// written by hand: this runs for every pod of every broadcast, and
/// `to_string` costs several times more.
pub fn ip_text(ip: IpAddr) -> String {
    let IpAddr::V4(ip) = ip else {
        return ip.to_string();
    };
    let mut text = String::with_capacity(21);
    for (position, octet) in ip.octets().into_iter().enumerate() {
        if position > 0 {
            text.push('.');
        }
        push_decimal(&mut text, u16::from(octet));
    }
    text
}

/// Appends `number` in decimal.
fn push_decimal(text: &mut String, number: u16) {
    let mut divisor = 10_000;
    while divisor > 1 && number < divisor {
        divisor /= 10;
    }
    while divisor > 0 {
        text.push(char::from(b'0' + (number / divisor % 10) as u8));
        divisor /= 10;
    }
}

/// A pod as an EndpointSlice describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pod {
    /// The pod's name (`targetRef.name`; `None` when the endpoint is not a
    /// pod).
    pub name: Option<Arc<str>>,
    /// The namespace of the Service (and so of the pod).
    pub namespace: Arc<str>,
    /// The node it runs on (`nodeName`).
    pub node: Option<Arc<str>>,
    /// The node's zone (`zone`).
    pub zone: Option<Arc<str>>,
    /// Its readiness, as the endpoint's `conditions` say.
    pub conditions: Conditions,
}

/// An endpoint's `conditions`, with the API's defaults for absent ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Conditions {
    /// The pod passes its readiness probe and is not terminating.
    pub ready: bool,
    /// The pod passes its readiness probe, terminating or not.
    pub serving: bool,
    /// The pod is shutting down.
    pub terminating: bool,
}

/// Which endpoints of a Service a `kubernetes` route broadcasts to
/// (`endpoints`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Endpoints {
    /// Ready pods only: what DNS and a ClusterIP Service see.
    Ready,
    /// Pods passing their readiness probe, terminating ones included (the
    /// default): a pod that still serves from its cache is still told.
    #[default]
    Serving,
    /// Every endpoint, starting and failing pods included.
    All,
}

impl Endpoints {
    /// Whether an endpoint with `conditions` is one to broadcast to.
    pub fn admits(self, conditions: Conditions) -> bool {
        match self {
            Endpoints::Ready => conditions.ready,
            Endpoints::Serving => conditions.serving,
            Endpoints::All => true,
        }
    }
}

impl fmt::Display for Endpoints {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Endpoints::Ready => "ready",
            Endpoints::Serving => "serving",
            Endpoints::All => "all",
        })
    }
}

/// The port of a `kubernetes` route: a name looked up in each
/// EndpointSlice's ports, or a number used as is.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PortRef {
    /// A named port, e.g. `http`.
    Name(String),
    /// A port number.
    Number(u16),
}

impl fmt::Display for PortRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PortRef::Name(name) => f.write_str(name),
            PortRef::Number(number) => number.fmt(f),
        }
    }
}

/// A Service whose EndpointSlices are watched through the Kubernetes API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubernetesService {
    /// The Service name (possibly with `{service}` to fill in).
    pub service: String,
    /// Its namespace; `None`: the router's own (the client's default).
    pub namespace: Option<String>,
    /// The pods' port.
    pub port: PortRef,
    /// Which endpoints receive broadcasts.
    pub endpoints: Endpoints,
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
    /// A Service's EndpointSlices, watched through the Kubernetes API.
    Kubernetes(KubernetesService),
}

impl fmt::Display for TargetSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TargetSource::Fixed(addrs) => write!(f, "{} static targets", addrs.len()),
            TargetSource::Service { name, port } => write!(f, "{name}:{port}"),
            TargetSource::Kubernetes(kubernetes) => write!(
                f,
                "kubernetes {}/{}:{} ({} endpoints)",
                kubernetes.namespace.as_deref().unwrap_or("(own namespace)"),
                kubernetes.service,
                kubernetes.port,
                kubernetes.endpoints
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    #[test]
    fn addresses_and_authorities_read_as_std_writes_them() {
        let target = |addr: SocketAddr| Target {
            addr,
            service: None,
            index: 0,
            pod: None,
        };
        for octet in 0..=255u8 {
            let ip = IpAddr::V4(Ipv4Addr::new(octet, 255 - octet, octet / 7, 10));
            assert_eq!(ip_text(ip), ip.to_string());
            for port in [0, 1, 9, 10, 99, 100, 999, 1000, 8080, 9999, 10000, 65535] {
                let addr = SocketAddr::new(ip, port);
                assert_eq!(target(addr).authority(), addr.to_string());
            }
        }
        let v6 = IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 5));
        assert_eq!(ip_text(v6), "fd00::5");
        assert_eq!(target(SocketAddr::new(v6, 80)).authority(), "[fd00::5]:80");
    }

    #[test]
    fn labels_carry_what_the_api_said_about_the_pod() {
        let mut target = Target {
            addr: "10.0.0.1:8080".parse().unwrap(),
            service: Some("web".into()),
            index: 0,
            pod: None,
        };
        assert!(
            target.labels().is_empty(),
            "DNS and static targets have none"
        );
        target.pod = Some(Arc::new(Pod {
            name: Some("web-0".into()),
            namespace: "shop".into(),
            node: None,
            zone: Some("zone-a".into()),
            conditions: Conditions {
                ready: false,
                serving: true,
                terminating: true,
            },
        }));
        assert_eq!(
            target.labels(),
            [
                ("pod", "web-0"),
                ("namespace", "shop"),
                ("zone", "zone-a"),
                ("ready", "false"),
                ("serving", "true"),
                ("terminating", "true"),
            ]
        );
    }
}

//! EndpointSlices as discovery keeps them, and the targets a route takes
//! from them: its port (by name or number) and the endpoints its
//! `endpoints` setting admits. Pure functions, so the rules are unit
//! tested without an API server.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use k8s_openapi::api::discovery::v1::EndpointSlice;

use crate::vocabulary::target::{Conditions, Endpoints, Pod, PortRef, Target};

/// One EndpointSlice, reduced to what broadcasts need.
#[derive(Debug, Clone)]
pub struct Slice {
    /// The slice's name, for warnings.
    pub name: Arc<str>,
    /// Its ports: name (`""` for a Service's only, unnamed port) and number.
    pub ports: Vec<(String, u16)>,
    /// Its endpoints.
    pub endpoints: Vec<Endpoint>,
}

/// One endpoint of a slice: a pod and its addresses.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// Its IP addresses (usually one).
    pub addresses: Vec<IpAddr>,
    /// The pod behind them.
    pub pod: Arc<Pod>,
}

impl Slice {
    /// The slice as the API returned it, in `namespace`. Addresses that are
    /// not IP addresses (`addressType: FQDN`) are left out.
    pub fn from_api(slice: &EndpointSlice, namespace: &Arc<str>) -> Self {
        let ports = slice
            .ports
            .iter()
            .flatten()
            .filter_map(|port| {
                let number = u16::try_from(port.port?).ok()?;
                Some((port.name.clone().unwrap_or_default(), number))
            })
            .collect();
        let endpoints = slice
            .endpoints
            .iter()
            .map(|endpoint| {
                let conditions = endpoint.conditions.as_ref();
                // The API's rules for absent conditions: unknown readiness
                // counts as ready, and `serving` follows `ready` when the
                // API server is too old to set it.
                let ready = conditions.and_then(|c| c.ready).unwrap_or(true);
                let conditions = Conditions {
                    ready,
                    serving: conditions.and_then(|c| c.serving).unwrap_or(ready),
                    terminating: conditions.and_then(|c| c.terminating).unwrap_or(false),
                };
                let name = endpoint
                    .target_ref
                    .as_ref()
                    .filter(|target| target.kind.as_deref().is_none_or(|kind| kind == "Pod"))
                    .and_then(|target| target.name.as_deref())
                    .map(Arc::from);
                Endpoint {
                    addresses: endpoint
                        .addresses
                        .iter()
                        .filter_map(|address| address.parse().ok())
                        .collect(),
                    pod: Arc::new(Pod {
                        name,
                        namespace: Arc::clone(namespace),
                        node: endpoint.node_name.as_deref().map(Arc::from),
                        zone: endpoint.zone.as_deref().map(Arc::from),
                        conditions,
                    }),
                }
            })
            .collect();
        Self {
            name: slice.metadata.name.as_deref().unwrap_or_default().into(),
            ports,
            endpoints,
        }
    }

    /// The port number of `port` on this slice (`None`: a named port the
    /// slice does not have).
    fn port(&self, port: &PortRef) -> Option<u16> {
        match port {
            PortRef::Number(number) => Some(*number),
            PortRef::Name(name) => self
                .ports
                .iter()
                .find(|(written, _)| written == name)
                .map(|(_, number)| *number),
        }
    }
}

/// The targets a route takes from a Service's slices.
#[derive(Debug, Default)]
pub struct Selection {
    /// The admitted endpoints' addresses, sorted, de-duplicated, numbered.
    pub targets: Vec<Target>,
    /// Endpoints seen in slices that have the port, admitted or not.
    pub seen: usize,
    /// Slices left out because they lack the named port.
    pub without_port: Vec<Arc<str>>,
}

/// The targets of `slices` for a route with `port` and `endpoints`,
/// labelled with the Service's name.
pub fn select(
    slices: &[Slice],
    port: &PortRef,
    endpoints: Endpoints,
    service: &Arc<str>,
) -> Selection {
    let mut selection = Selection::default();
    let mut found: Vec<(SocketAddr, Arc<Pod>)> = Vec::new();
    for slice in slices {
        let Some(number) = slice.port(port) else {
            selection.without_port.push(Arc::clone(&slice.name));
            continue;
        };
        for endpoint in &slice.endpoints {
            selection.seen += 1;
            if !endpoints.admits(endpoint.pod.conditions) {
                continue;
            }
            for ip in &endpoint.addresses {
                found.push((SocketAddr::new(*ip, number), Arc::clone(&endpoint.pod)));
            }
        }
    }
    // During an update a pod can be in two slices: its address counts once.
    found.sort_by_key(|(addr, _)| *addr);
    found.dedup_by_key(|(addr, _)| *addr);
    selection.targets = found
        .into_iter()
        .enumerate()
        .map(|(index, (addr, pod))| Target {
            addr,
            service: Some(Arc::clone(service)),
            index,
            pod: Some(pod),
        })
        .collect();
    selection
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slice(json: serde_json::Value) -> Slice {
        let slice: EndpointSlice = serde_json::from_value(json).expect("an EndpointSlice");
        Slice::from_api(&slice, &Arc::from("default"))
    }

    fn endpoint(
        ip: &str,
        pod: &str,
        ready: bool,
        serving: bool,
        terminating: bool,
    ) -> serde_json::Value {
        serde_json::json!({
            "addresses": [ip],
            "conditions": { "ready": ready, "serving": serving, "terminating": terminating },
            "nodeName": "node-a",
            "zone": "zone-1",
            "targetRef": { "kind": "Pod", "name": pod, "namespace": "default" }
        })
    }

    fn web() -> Vec<Slice> {
        vec![slice(serde_json::json!({
            "metadata": { "name": "web-abc" },
            "addressType": "IPv4",
            "ports": [{ "name": "http", "port": 8080 }, { "name": "metrics", "port": 9100 }],
            "endpoints": [
                endpoint("10.0.0.3", "web-3", false, true, true),
                endpoint("10.0.0.1", "web-1", true, true, false),
                endpoint("10.0.0.2", "web-2", false, false, false),
            ]
        }))]
    }

    fn pods(selection: &Selection) -> Vec<&str> {
        selection
            .targets
            .iter()
            .map(|target| target.pod.as_ref().unwrap().name.as_deref().unwrap())
            .collect()
    }

    #[test]
    fn endpoints_setting_decides_which_pods_are_told() {
        let service: Arc<str> = Arc::from("web");
        let http = PortRef::Name("http".into());
        let ready = select(&web(), &http, Endpoints::Ready, &service);
        assert_eq!(pods(&ready), ["web-1"]);
        let serving = select(&web(), &http, Endpoints::Serving, &service);
        assert_eq!(pods(&serving), ["web-1", "web-3"]);
        let all = select(&web(), &http, Endpoints::All, &service);
        assert_eq!(pods(&all), ["web-1", "web-2", "web-3"]);
        assert_eq!(all.seen, 3);
        assert_eq!(all.targets[0].addr, "10.0.0.1:8080".parse().unwrap());
        let pod = all.targets[2].pod.as_ref().unwrap();
        assert_eq!(pod.zone.as_deref(), Some("zone-1"));
        assert!(pod.conditions.terminating && pod.conditions.serving);
    }

    #[test]
    fn ports_are_found_by_name_or_taken_as_numbers() {
        let service: Arc<str> = Arc::from("web");
        let metrics = select(
            &web(),
            &PortRef::Name("metrics".into()),
            Endpoints::Ready,
            &service,
        );
        assert_eq!(metrics.targets[0].addr.port(), 9100);
        let number = select(&web(), &PortRef::Number(7000), Endpoints::Ready, &service);
        assert_eq!(number.targets[0].addr.port(), 7000);
        let missing = select(
            &web(),
            &PortRef::Name("grpc".into()),
            Endpoints::All,
            &service,
        );
        assert!(missing.targets.is_empty());
        assert_eq!(&*missing.without_port[0], "web-abc");
    }

    #[test]
    fn absent_conditions_follow_the_api_defaults() {
        let bare = slice(serde_json::json!({
            "metadata": { "name": "bare" },
            "addressType": "IPv4",
            "endpoints": [
                { "addresses": ["10.0.0.9"] },
                { "addresses": ["10.0.0.8"], "conditions": { "ready": false } },
                { "addresses": ["10.0.0.9"] }
            ]
        }));
        let selection = select(
            &[bare],
            &PortRef::Number(80),
            Endpoints::Serving,
            &Arc::from("x"),
        );
        assert_eq!(
            selection.targets.len(),
            1,
            "not ready and not serving; a duplicate"
        );
        let pod = selection.targets[0].pod.as_ref().unwrap();
        assert!(pod.conditions.ready && !pod.conditions.terminating);
        assert_eq!(pod.name, None);
    }
}

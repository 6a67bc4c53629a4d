//! The checks of a route's `kubernetes` table (the Service watched through
//! the API) and of `endpoints`, parsed into a
//! [`TargetSource::Kubernetes`].

use super::super::super::route::{KubernetesTable, PortValue, SERVICE_PLACEHOLDER};
use super::RouteCheck;
use crate::vocabulary::target::{KubernetesService, PortRef, TargetSource};

impl RouteCheck<'_, '_, '_> {
    /// The route's `kubernetes` source, parsed (`None` after a problem).
    pub(in super::super) fn kubernetes(&mut self, table: &KubernetesTable) -> Option<TargetSource> {
        let mut valid = true;
        if self.route.port.is_some() {
            self.problem(
                "port",
                "with `kubernetes`, the port goes inside the table: kubernetes = { service = \"web\", port = \"http\" }",
            );
            valid = false;
        }
        let service = &table.service;
        let templated = service.contains(SERVICE_PLACEHOLDER);
        if !dns_label(&service.replace(SERVICE_PLACEHOLDER, "sample"), true) {
            self.problem(
                "kubernetes",
                format!(
                    "`kubernetes.service` `{service}` is not a Service name (a lowercase DNS label: letters, digits and `-`, starting with a letter, at most 63 characters)"
                ),
            );
            valid = false;
        }
        if templated {
            self.templated("kubernetes");
        }
        if let Some(namespace) = &table.namespace
            && !dns_label(namespace, false)
        {
            self.problem(
                "kubernetes",
                format!(
                    "`kubernetes.namespace` `{namespace}` is not a namespace name (a lowercase DNS label of at most 63 characters)"
                ),
            );
            valid = false;
        }
        let port = match &table.port {
            PortValue::Number(number) => match u16::try_from(*number) {
                Ok(port) if port > 0 => Some(PortRef::Number(port)),
                _ => {
                    self.problem(
                        "kubernetes",
                        format!("`kubernetes.port` {number} is not a port number (1 to 65535)"),
                    );
                    None
                }
            },
            PortValue::Name(name) if port_name(name) => Some(PortRef::Name(name.clone())),
            PortValue::Name(name) => {
                self.problem(
                    "kubernetes",
                    format!(
                        "`kubernetes.port` `{name}` is not a port name (1 to 15 lowercase letters, digits and `-`, with at least one letter), nor a number"
                    ),
                );
                None
            }
        };
        let port = port?;
        valid.then(|| {
            TargetSource::Kubernetes(KubernetesService {
                service: service.clone(),
                namespace: table.namespace.clone(),
                port,
                endpoints: self.route.endpoints.unwrap_or_default(),
            })
        })
    }
}

/// Whether `name` is an RFC 1123 DNS label (`letter_first`: RFC 1035, as
/// Service names are).
fn dns_label(name: &str, letter_first: bool) -> bool {
    (1..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
        && (!letter_first || name.starts_with(|c: char| c.is_ascii_lowercase()))
}

/// Whether `name` is a Kubernetes port name (an IANA service name).
fn port_name(name: &str) -> bool {
    dns_label(name, false)
        && name.len() <= 15
        && !name.contains("--")
        && name.bytes().any(|b| b.is_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_names_follow_the_api_rules() {
        assert!(port_name("http"));
        assert!(port_name("http-2"));
        assert!(!port_name("8080"));
        assert!(!port_name("a--b"));
        assert!(!port_name("much-too-long-name"));
        assert!(!port_name("HTTP"));
        assert!(dns_label("web", true));
        assert!(!dns_label("2web", true));
        assert!(dns_label("2web", false));
    }
}

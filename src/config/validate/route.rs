//! The checks of one `[[routes]]` table, each of which also parses the
//! value it checks, so the typed [`RouteConfig`] comes out of validation.
//! What pods receive and how often (`methods`, `host`, `coalesce`,
//! `pod_rate_limit`) is checked in [`request`].

mod kubernetes;
mod request;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use http::Method;

use super::super::load::{Sink, Spans};
use super::super::route::{
    Methods, RouteTable, SERVICE_PLACEHOLDER, parse_static_target, valid_service_name,
};
use super::super::{Config, Mode, PluginConfig, Protocol, Scheme};
use super::unknown_token_set;
use crate::vocabulary::policy::{Policy, Quorum};
use crate::vocabulary::target::TargetSource;

#[cfg(doc)]
use super::super::route::RouteConfig;

/// Largest datagram that crosses a 1500-byte MTU unfragmented (IPv4).
const SAFE_DATAGRAM: u64 = 1472;
/// Largest UDP payload at all.
const MAX_UDP_PAYLOAD: u64 = 65507;
/// Smallest useful datagram limit (header plus a long id).
const MIN_DATAGRAM: u64 = 256;

/// Paths registered so far, with the routes (by index) and methods each
/// serves.
#[derive(Default)]
pub(super) struct PathTable {
    matcher: matchit::Router<usize>,
    methods: HashMap<String, Vec<(usize, Methods)>>,
}

/// The methods two routes on one path would both serve, as written in a
/// problem (`None`: they share none).
fn overlap(a: &Methods, b: &Methods) -> Option<String> {
    match (a, b) {
        (Methods::Any, _) | (_, Methods::Any) => Some("any method (\"*\")".to_owned()),
        (Methods::Listed(a), Methods::Listed(b)) => {
            let both: HashSet<&Method> = a.iter().collect();
            let shared: Vec<&str> = b
                .iter()
                .filter(|method| both.contains(method))
                .map(Method::as_str)
                .collect();
            (!shared.is_empty()).then(|| shared.join(", "))
        }
    }
}

/// The checks of route table `index`, recording problems in `sink`.
pub(super) struct RouteCheck<'a, 's, 't> {
    pub(super) index: usize,
    pub(super) route: &'a RouteTable,
    pub(super) spans: &'a Spans<'s>,
    pub(super) sink: &'a mut Sink<'t>,
}

impl RouteCheck<'_, '_, '_> {
    fn problem(&mut self, key: &str, message: impl std::fmt::Display) {
        let span = self.spans.route(self.index, key);
        self.sink
            .push(span, format!("route \"{}\": {message}", self.route.name));
    }

    pub(super) fn name(&mut self, seen: &mut HashMap<String, usize>) {
        let name = &self.route.name;
        let well_formed = !name.is_empty()
            && name.len() <= 64
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !well_formed {
            self.problem(
                "name",
                "`name` must be 1 to 64 characters of letters, digits, `-` and `_`",
            );
        }
        if let Some(first) = seen.insert(name.clone(), self.index) {
            self.problem(
                "name",
                format!(
                    "the name is already used by route #{}; names must be unique",
                    self.spans.route_number(first)
                ),
            );
        }
    }

    pub(super) fn path(&mut self, table: &mut PathTable, methods: Option<&Methods>) {
        let methods = methods
            .cloned()
            .unwrap_or_else(|| Methods::Listed(Vec::new()));
        let path = &self.route.path;
        if !path.starts_with('/') {
            self.problem("path", format!("`path` must start with `/`, got `{path}`"));
            return;
        }
        if path == "/broadcasts" || path.starts_with("/broadcasts/") {
            self.problem(
                "path",
                format!("`path` `{path}` is the router's status API (`GET /broadcasts/{{id}}`); choose another path"),
            );
            return;
        }
        if let Some(segment) = path
            .split('/')
            .find(|segment| segment.starts_with(':') || segment.starts_with('*'))
        {
            self.problem(
                "path",
                format!("`{segment}` is the old capture syntax; write `{{name}}` or `{{*rest}}`"),
            );
            return;
        }
        match table.methods.get_mut(path) {
            Some(existing) => {
                let clash = existing
                    .iter()
                    .find_map(|(first, other)| overlap(other, &methods).map(|both| (*first, both)));
                existing.push((self.index, methods));
                if let Some((first, both)) = clash {
                    self.problem(
                        "path",
                        format!(
                            "`{path}` with {both} is already served by route #{}",
                            self.spans.route_number(first)
                        ),
                    );
                }
            }
            None => match table.matcher.insert(path.clone(), self.index) {
                Ok(()) => {
                    table
                        .methods
                        .insert(path.clone(), vec![(self.index, methods)]);
                }
                Err(error) => self.problem("path", format!("`path` `{path}` is unusable: {error}")),
            },
        }
    }

    /// Where the route's pods come from, parsed (`None` after a problem).
    pub(super) fn targets(&mut self) -> Option<TargetSource> {
        let route = self.route;
        let written: Vec<&str> = [
            ("service", route.service.is_some()),
            ("kubernetes", route.kubernetes.is_some()),
            ("targets", route.targets.is_some()),
        ]
        .into_iter()
        .filter_map(|(key, set)| set.then_some(key))
        .collect();
        if written.len() > 1 {
            let last = written[written.len() - 1];
            self.problem(
                last,
                format!(
                    "`{}` are exclusive; use one of them",
                    written.join("` and `")
                ),
            );
        }
        let source = match (&route.service, &route.kubernetes, &route.targets) {
            _ if written.len() > 1 => None,
            (Some(service), _, _) => self.service(service),
            (_, Some(kubernetes), _) => self.kubernetes(kubernetes),
            (_, _, Some(targets)) => self.static_targets(targets),
            (None, None, None) => {
                self.problem(
                    "name",
                    "the route has no pods: set `service` (a headless Service), `kubernetes` (a Service watched through the API) or `targets` (a static list)",
                );
                None
            }
        };
        if route.kubernetes.is_none() && route.endpoints.is_some() {
            self.problem(
                "endpoints",
                "`endpoints` applies to `kubernetes` routes: DNS and static targets know nothing of readiness",
            );
        }
        let templated = route
            .service
            .as_deref()
            .or(route
                .kubernetes
                .as_ref()
                .map(|table| table.service.as_str()))
            .is_some_and(|service| service.contains(SERVICE_PLACEHOLDER));
        if !templated && !route.allow_services.is_empty() {
            self.problem(
                "allow_services",
                "`allow_services` only applies to a templated `service` (or `kubernetes.service`) containing `{service}`",
            );
        }
        source
    }

    pub(super) fn service(&mut self, service: &str) -> Option<TargetSource> {
        let route = self.route;
        let mut valid = true;
        if route.port.is_none() {
            self.problem(
                "service",
                "a `service` route needs `port`, the port the pods listen on",
            );
            valid = false;
        }
        let templated = service.contains(SERVICE_PLACEHOLDER);
        let sample = service.replace(SERVICE_PLACEHOLDER, "sample");
        if !valid_service_name(&sample) {
            self.problem(
                "service",
                format!(
                    "`{service}` is not a DNS name (lowercase labels of letters, digits and `-`, separated by dots)"
                ),
            );
            valid = false;
        }
        if templated {
            self.templated("service");
        }
        let port = route.port?;
        valid.then(|| TargetSource::Service {
            name: service.to_owned(),
            port,
        })
    }

    /// The checks of a templated `key` (`service` or `kubernetes`): the
    /// path must capture `{service}` and `allow_services` must guard it.
    fn templated(&mut self, key: &str) {
        if !self.route.path.contains(SERVICE_PLACEHOLDER) {
            self.problem(
                key,
                format!(
                    "a templated `{key}` needs a `{{service}}` capture in `path`, e.g. path = \"/{{service}}/{{*rest}}\""
                ),
            );
        }
        if self.route.allow_services.is_empty() {
            self.problem(
                key,
                format!(
                    "a templated `{key}` needs `allow_services`; without it the router is an open proxy into the cluster"
                ),
            );
        }
    }

    /// A templated service's allow-list, compiled (`None` after a problem).
    pub(super) fn allow_services(&mut self) -> Option<Vec<glob::Pattern>> {
        let route = self.route;
        let mut patterns = Vec::with_capacity(route.allow_services.len());
        let mut valid = true;
        for (item, pattern) in route.allow_services.iter().enumerate() {
            match glob::Pattern::new(pattern) {
                Ok(compiled) => patterns.push(compiled),
                Err(error) => {
                    valid = false;
                    let span = self.spans.route_item(self.index, "allow_services", item);
                    self.sink.push(
                        span,
                        format!(
                            "route \"{}\": `{pattern}` is not a valid glob: {error}",
                            route.name
                        ),
                    );
                }
            }
        }
        valid.then_some(patterns)
    }

    pub(super) fn static_targets(&mut self, targets: &[String]) -> Option<TargetSource> {
        let mut valid = true;
        if targets.is_empty() {
            self.problem("targets", "`targets` must list at least one pod");
            valid = false;
        }
        let mut seen = HashSet::new();
        let mut addrs = Vec::with_capacity(targets.len());
        for (item, target) in targets.iter().enumerate() {
            let problem = match parse_static_target(target, self.route.port) {
                Ok(addr) if !seen.insert(addr) => Some(format!("`{target}` is listed twice")),
                Ok(addr) => {
                    addrs.push(addr);
                    None
                }
                Err(message) => Some(message),
            };
            if let Some(message) = problem {
                valid = false;
                let span = self.spans.route_item(self.index, "targets", item);
                self.sink
                    .push(span, format!("route \"{}\": {message}", self.route.name));
            }
        }
        if let Policy::Quorum(Quorum::Count(count)) = self.route.policy
            && !targets.is_empty()
            && count > targets.len()
        {
            self.problem(
                "policy",
                format!(
                    "a quorum of {count} can never be met by {} static targets",
                    targets.len()
                ),
            );
        }
        valid.then(|| TargetSource::Fixed(addrs.into()))
    }

    pub(super) fn upstream_path(&mut self) {
        let Some(upstream) = &self.route.upstream_path else {
            return;
        };
        if !upstream.starts_with('/') {
            self.problem(
                "upstream_path",
                format!("`upstream_path` must start with `/`, got `{upstream}`"),
            );
        }
        let mut rest = upstream.as_str();
        while let Some(open) = rest.find('{') {
            let after = &rest[open + 1..];
            let Some(close) = after.find('}') else {
                self.problem("upstream_path", "`upstream_path` has an unclosed `{`");
                return;
            };
            let name = &after[..close];
            let captured = self.route.path.contains(&format!("{{{name}}}"))
                || self.route.path.contains(&format!("{{*{name}}}"));
            if !captured {
                self.problem(
                    "upstream_path",
                    format!("`{{{name}}}` in `upstream_path` is not captured by `path`"),
                );
            }
            rest = &after[close + 1..];
        }
    }

    /// Protocol settings; returns `report_to`, parsed (`None` after a
    /// problem with it).
    pub(super) fn delivery(&mut self) -> Option<Option<reqwest::Url>> {
        let route = self.route;
        match route.protocol {
            Protocol::Http => {
                if route.udp.is_some() {
                    self.problem("udp", "the `udp` table needs `protocol = \"udp\"`");
                }
            }
            Protocol::Udp => {
                if route.mode == Mode::Async {
                    self.problem(
                        "mode",
                        "`mode = \"async\"` applies to HTTP routes; UDP routes already answer once the datagrams are sent",
                    );
                }
                for key in [
                    "upstream_path",
                    "policy",
                    "timeout",
                    "retries",
                    "retry_backoff",
                    "concurrency",
                    "deadline",
                    "max_pod_body_bytes",
                ] {
                    if self.spans.route_sets(self.index, key) {
                        self.problem(
                            key,
                            format!(
                                "`{key}` does not apply to UDP routes: datagrams are not answered"
                            ),
                        );
                    }
                }
                let udp = route.udp.clone().unwrap_or_default();
                if !(1..=20).contains(&udp.repeat) {
                    self.problem("udp", "`udp.repeat` must be between 1 and 20");
                }
                if udp.interval > Duration::from_secs(1) {
                    self.problem("udp", "`udp.interval` above 1s is not allowed");
                }
                let max = udp.max_datagram_bytes.as_u64();
                let ceiling = if udp.large_datagrams {
                    MAX_UDP_PAYLOAD
                } else {
                    SAFE_DATAGRAM
                };
                if max < MIN_DATAGRAM || max > ceiling {
                    let hint = if udp.large_datagrams || max < MIN_DATAGRAM {
                        String::new()
                    } else {
                        format!(
                            "; datagrams above {SAFE_DATAGRAM} bytes get fragmented, set `large_datagrams = true` to allow them anyway"
                        )
                    };
                    self.problem(
                        "udp",
                        format!(
                            "`udp.max_datagram_bytes` must be between {MIN_DATAGRAM} and {ceiling} bytes, got {max}{hint}"
                        ),
                    );
                }
            }
        }
        let Some(url) = &route.report_to else {
            return Some(None);
        };
        match reqwest::Url::parse(url) {
            Ok(parsed) if parsed.scheme() == "http" && parsed.host().is_some() => {
                Some(Some(parsed))
            }
            Ok(_) => {
                self.problem(
                    "report_to",
                    format!("`report_to` must be an http:// URL with a host, got `{url}`"),
                );
                None
            }
            Err(error) => {
                self.problem(
                    "report_to",
                    format!("`report_to` `{url}` is not a URL: {error}"),
                );
                None
            }
        }
    }

    pub(super) fn plugins(&mut self, defined: &std::collections::BTreeMap<String, PluginConfig>) {
        for (item, entry) in self.route.plugins.iter().enumerate() {
            if !defined.contains_key(&entry.plugin) {
                let known: Vec<&str> = defined.keys().map(String::as_str).collect();
                let span = self.spans.route_item(self.index, "plugins", item);
                self.sink.push(
                    span,
                    format!(
                        "route \"{}\": no plugin named `{}`; define it in a [plugins.{}] table (defined: {})",
                        self.route.name,
                        entry.plugin,
                        entry.plugin,
                        if known.is_empty() { "none".to_owned() } else { known.join(", ") }
                    ),
                );
            }
        }
    }

    /// Authentication and the limits on how much a client may ask for.
    pub(super) fn admission(&mut self, config: &Config, source: Option<&TargetSource>) {
        let route = self.route;
        for name in &route.auth {
            if !config.tokens.contains_key(name) {
                self.problem("auth", unknown_token_set(name, config));
            }
        }
        if let Some(limit) = route.rate_limit
            && !request::valid_rate(limit)
        {
            self.problem(
                "rate_limit",
                "`rate_limit` needs `per_second` above 0 and `burst` of at least 1",
            );
        }
        if route.max_concurrent == Some(0) {
            self.problem("max_concurrent", "`max_concurrent` must be at least 1");
        }
        if route.max_targets == 0 {
            self.problem("max_targets", "`max_targets` must be at least 1");
        }
        if let Some(TargetSource::Fixed(targets)) = source
            && targets.len() > route.max_targets
        {
            self.problem(
                "targets",
                format!(
                    "{} static targets are more than `max_targets` ({})",
                    targets.len(),
                    route.max_targets
                ),
            );
        }
    }

    /// `scheme`, `ca_file` and `server_name` (the files are read later).
    pub(super) fn scheme(&mut self) {
        let route = self.route;
        if route.scheme == Scheme::Https {
            if route.protocol == Protocol::Udp {
                self.problem(
                    "scheme",
                    "`scheme = \"https\"` applies to HTTP routes; datagrams are not encrypted",
                );
            }
        } else {
            for (key, set) in [
                ("ca_file", route.ca_file.is_some()),
                ("server_name", route.server_name.is_some()),
            ] {
                if set {
                    self.problem(
                        key,
                        format!(
                            "`{key}` applies to pods reached over TLS; set `scheme = \"https\"`"
                        ),
                    );
                }
            }
        }
        if let Some(name) = &route.server_name
            && rustls_pki_types::ServerName::try_from(name.as_str()).is_err()
        {
            self.problem(
                "server_name",
                format!("`server_name` `{name}` is not a DNS name or IP address"),
            );
        }
        if route
            .ca_file
            .as_ref()
            .is_some_and(|file| file.as_os_str().is_empty())
        {
            self.problem("ca_file", "`ca_file` must name a PEM file");
        }
    }

    pub(super) fn limits(&mut self) {
        let route = self.route;
        if route.timeout.is_zero() {
            self.problem("timeout", "`timeout` must be larger than 0");
        }
        if route.deadline.is_zero() {
            self.problem("deadline", "`deadline` must be larger than 0");
        }
        if route.concurrency == 0 {
            self.problem("concurrency", "`concurrency` must be at least 1");
        }
        if route.retries > 10 {
            self.problem("retries", "`retries` above 10 is not allowed");
        }
        if route.retry_backoff > Duration::from_secs(10) {
            self.problem("retry_backoff", "`retry_backoff` above 10s is not allowed");
        }
    }
}

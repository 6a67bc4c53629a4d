//! The checks of what a route's pods receive and how often: `methods`
//! (any RFC 9110 method token, or `"*"`), `host` (`"pod"`, `"client"` or a
//! fixed `host[:port]`), and the pacing keys `coalesce` and
//! `pod_rate_limit`. Each check parses the value it checks.

use std::time::Duration;

use http::{HeaderValue, Method};

use super::super::super::route::{Methods, PodHost};
use super::super::super::{Protocol, RateLimitConfig};
use super::RouteCheck;
use crate::vocabulary::headers::valid_host;

/// The methods that may be written only in upper case: RFC 9110's own,
/// whose lower-case spelling is far more likely a slip than a new method.
const STANDARD: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
];

/// The longest coalescing window: clients wait this long at most before
/// their broadcast starts.
const MAX_COALESCE: Duration = Duration::from_secs(1);

impl RouteCheck<'_, '_, '_> {
    /// The route's methods, parsed (`None` after a problem).
    pub(in super::super) fn methods(&mut self) -> Option<Methods> {
        let written = &self.route.methods;
        if written.is_empty() {
            self.problem("methods", "`methods` must name at least one HTTP method");
            return None;
        }
        if written.iter().any(|name| name == "*") {
            if written.len() > 1 {
                self.problem(
                    "methods",
                    "`\"*\"` accepts every method and cannot be combined with others",
                );
                return None;
            }
            return Some(Methods::Any);
        }
        let mut methods = Vec::new();
        let mut valid = true;
        for (item, name) in written.iter().enumerate() {
            match parse_method(name) {
                Ok(method) => {
                    if !methods.contains(&method) {
                        methods.push(method);
                    }
                }
                Err(message) => {
                    valid = false;
                    let span = self.spans.route_item(self.index, "methods", item);
                    self.sink
                        .push(span, format!("route \"{}\": {message}", self.route.name));
                }
            }
        }
        valid.then_some(Methods::Listed(methods))
    }

    /// The route's `host`, parsed (`None` after a problem).
    pub(in super::super) fn host(&mut self) -> Option<PodHost> {
        let Some(host) = &self.route.host else {
            return Some(PodHost::Pod);
        };
        if self.route.protocol == Protocol::Udp {
            self.problem(
                "host",
                "`host` applies to HTTP routes; datagrams have no Host header",
            );
            return None;
        }
        match host.as_str() {
            "pod" => Some(PodHost::Pod),
            "client" => Some(PodHost::Client),
            fixed => match HeaderValue::from_str(fixed) {
                Ok(value) if valid_host(fixed) => Some(PodHost::Fixed(value)),
                _ => {
                    self.problem(
                        "host",
                        format!(
                            "`host` must be \"pod\", \"client\" or a host[:port] such as \"www.example.com\", got `{fixed}`"
                        ),
                    );
                    None
                }
            },
        }
    }

    /// `coalesce` and `pod_rate_limit`.
    pub(in super::super) fn pacing(&mut self) {
        let route = self.route;
        if let Some(window) = route.coalesce {
            if route.protocol == Protocol::Udp {
                self.problem(
                    "coalesce",
                    "`coalesce` applies to HTTP routes; UDP routes answer once the datagrams are sent",
                );
            }
            if window.is_zero() || window > MAX_COALESCE {
                self.problem(
                    "coalesce",
                    format!(
                        "`coalesce` must be larger than 0 and at most {}, got {}",
                        humantime::format_duration(MAX_COALESCE),
                        humantime::format_duration(window)
                    ),
                );
            }
        }
        if let Some(limit) = route.pod_rate_limit
            && !valid_rate(limit)
        {
            self.problem(
                "pod_rate_limit",
                "`pod_rate_limit` needs `per_second` above 0 and `burst` of at least 1",
            );
        }
    }
}

/// Whether a token bucket's settings can admit anything at all.
pub(in super::super) fn valid_rate(limit: RateLimitConfig) -> bool {
    limit.per_second.is_finite() && limit.per_second > 0.0 && limit.burst > 0
}

/// One `methods` entry as a method, or why it is not one.
fn parse_method(name: &str) -> Result<Method, String> {
    let upper = name.to_ascii_uppercase();
    if STANDARD.contains(&upper.as_str()) && name != upper {
        return Err(format!(
            "`{name}` must be written `{upper}`: methods are case-sensitive"
        ));
    }
    if name == "CONNECT" {
        return Err(
            "`CONNECT` cannot be broadcast: its target is a host and port, not a path".to_owned(),
        );
    }
    let token = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    match Method::from_bytes(name.as_bytes()) {
        Ok(method) if token => Ok(method),
        _ => Err(format!(
            "{name:?} is not an HTTP method: a method is a token of letters, digits and !#$%&'*+-.^_`|~ (e.g. \"POST\", \"PURGE\", \"BAN\"), or \"*\" for any"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_method_token_is_accepted_verbatim() {
        for name in [
            "GET", "PURGE", "BAN", "REFRESH", "FULLBAN", "M-SEARCH", "xkey",
        ] {
            assert_eq!(parse_method(name).unwrap().as_str(), name);
        }
        for name in [
            "",
            "PUR GE",
            "PURGE\n",
            "BA\u{0}N",
            "caf\u{e9}",
            "get",
            "Post",
            "CONNECT",
            "(x)",
        ] {
            assert!(parse_method(name).is_err(), "{name:?} must be refused");
        }
    }
}

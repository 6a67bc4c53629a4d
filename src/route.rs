//! Routes compiled from validated configuration: for one matched request,
//! which pods to ask (a static list, a headless Service, or a service name
//! taken from the path and checked against the route's allow-list), which
//! path they receive, and the limits of the broadcast.
//!
//! A [`Route`] is plain data, complete when built: building one copies the
//! values validation already parsed and cannot fail. What is loaded for a
//! route from files (its plugin chain, token guard, pod TLS client) is
//! attached next to it by [`crate::load`].

use std::sync::Arc;
use std::time::Duration;

use http::Uri;
use http::header::{self, HeaderMap, HeaderValue};
use percent_encoding::{AsciiSet, CONTROLS, utf8_percent_encode};

pub use crate::config::route::SERVICE_PLACEHOLDER;
use crate::config::route::{is_lowercase_label, valid_service_name};
use crate::config::{Methods, Mode, PodHost, Protocol, RouteConfig};
use crate::vocabulary::headers::valid_host;
use crate::vocabulary::policy::Policy;
use crate::vocabulary::target::TargetSource;

/// A configured route's settings, typed.
#[derive(Debug)]
pub struct Route {
    /// The route's unique name.
    pub name: Arc<str>,
    /// The axum path pattern.
    pub path: String,
    /// The methods the route accepts.
    pub methods: Methods,
    /// The `Host` its pods receive.
    pub host: PodHost,
    /// How long a broadcast waits for identical ones to share it; `None`:
    /// no coalescing.
    pub coalesce: Option<Duration>,
    /// Where the route's pods come from.
    pub source: TargetSource,
    /// The verdict policy.
    pub policy: Policy,
    /// Timeouts, retries and concurrency of each broadcast.
    pub limits: Limits,
    /// How pods receive the broadcast.
    pub protocol: Protocol,
    /// Datagram settings of UDP routes.
    pub udp: UdpSettings,
    /// When the client gets its answer.
    pub mode: Mode,
    /// Where finished reports are POSTed, and for how long that is retried.
    pub report_to: Option<ReportTo>,
    /// Most pods one broadcast may go to; more are refused, not cut.
    pub max_targets: usize,
    upstream_path: Option<String>,
    allow_services: Vec<glob::Pattern>,
}

/// A route's collector for finished reports.
#[derive(Debug, Clone)]
pub struct ReportTo {
    /// The collector's URL.
    pub url: reqwest::Url,
    /// How long delivery of one report is retried.
    pub retry_for: std::time::Duration,
}

/// Per-broadcast delivery limits of an HTTP route.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Timeout of one attempt to one pod (connect to end of body).
    pub timeout: Duration,
    /// Retries per pod after a retryable failure.
    pub retries: u32,
    /// Base delay of the exponential backoff.
    pub retry_backoff: Duration,
    /// Most attempts in flight at once.
    pub concurrency: usize,
    /// Budget of the whole broadcast.
    pub deadline: Duration,
    /// How much of each pod's body is kept for the answer.
    pub max_pod_body_bytes: usize,
}

/// A UDP route's datagram settings.
#[derive(Debug, Clone)]
pub struct UdpSettings {
    /// Copies per pod.
    pub repeat: u8,
    /// Pause between copies.
    pub interval: Duration,
    /// Largest datagram, header included.
    pub max_datagram_bytes: usize,
}

/// Why a request's service name was refused (always a client problem).
#[derive(Debug, thiserror::Error)]
pub enum ServiceRefused {
    /// The captured name is not a single lowercase DNS label.
    #[error("`{0}` is not a service name: use one lowercase DNS label (a-z, 0-9, '-')")]
    Malformed(String),
    /// The name is well formed but not on the route's allow-list.
    #[error("service `{0}` is not allowed on this route")]
    NotAllowed(String),
    /// The allowed name makes the route's DNS name longer than 253
    /// characters.
    #[error("service `{0}` makes the DNS name longer than 253 characters")]
    TooLong(String),
}

impl Route {
    /// The route of a validated configuration entry.
    pub fn from_config(config: &RouteConfig) -> Self {
        let table = &config.table;
        let udp = table.udp.clone().unwrap_or_default();
        Self {
            name: table.name.as_str().into(),
            path: table.path.clone(),
            methods: config.methods.clone(),
            host: config.host.clone(),
            coalesce: table.coalesce,
            source: config.source.clone(),
            policy: table.policy,
            limits: Limits {
                timeout: table.timeout,
                retries: table.retries,
                retry_backoff: table.retry_backoff,
                concurrency: table.concurrency,
                deadline: table.deadline,
                max_pod_body_bytes: saturating_usize(table.max_pod_body_bytes.as_u64()),
            },
            protocol: table.protocol,
            udp: UdpSettings {
                repeat: udp.repeat,
                interval: udp.interval,
                max_datagram_bytes: saturating_usize(udp.max_datagram_bytes.as_u64()),
            },
            mode: table.mode,
            report_to: config.report_to.clone().map(|url| ReportTo {
                url,
                retry_for: table.report_retry_for,
            }),
            max_targets: table.max_targets,
            upstream_path: table.upstream_path.clone(),
            allow_services: config.allow_services.clone(),
        }
    }

    /// The DNS name to resolve (or, for a `kubernetes` route, the Service
    /// to watch) for a request whose `{service}` capture is `requested`,
    /// after checking it against the allow-list. Refusals happen before
    /// any DNS query or watch.
    pub fn service_name(&self, requested: Option<&str>) -> Result<Option<String>, ServiceRefused> {
        let name = match &self.source {
            TargetSource::Service { name, .. } => name,
            TargetSource::Kubernetes(kubernetes) => &kubernetes.service,
            TargetSource::Fixed(_) => return Ok(None),
        };
        if !name.contains(SERVICE_PLACEHOLDER) {
            return Ok(Some(name.clone()));
        }
        let requested = requested.unwrap_or_default();
        if !is_service_label(requested) {
            return Err(ServiceRefused::Malformed(requested.to_owned()));
        }
        let options = glob::MatchOptions {
            case_sensitive: true,
            require_literal_separator: false,
            require_literal_leading_dot: true,
        };
        if !self
            .allow_services
            .iter()
            .any(|pattern| pattern.matches_with(requested, options))
        {
            return Err(ServiceRefused::NotAllowed(requested.to_owned()));
        }
        let resolved = name.replace(SERVICE_PLACEHOLDER, requested);
        if !valid_service_name(&resolved) {
            return Err(ServiceRefused::TooLong(requested.to_owned()));
        }
        Ok(Some(resolved))
    }

    /// The `Host` header pods receive for a request with the `incoming`
    /// headers: `None` leaves it to each pod's address (`host = "pod"`).
    pub fn pod_host(&self, incoming: &HeaderMap) -> Result<Option<HeaderValue>, ClientHost> {
        match &self.host {
            PodHost::Pod => Ok(None),
            PodHost::Fixed(host) => Ok(Some(host.clone())),
            PodHost::Client => {
                let host = incoming.get(header::HOST).ok_or(ClientHost::Missing)?;
                match host.to_str() {
                    Ok(text) if valid_host(text) => Ok(Some(host.clone())),
                    _ => Err(ClientHost::Invalid(
                        String::from_utf8_lossy(host.as_bytes()).into_owned(),
                    )),
                }
            }
        }
    }

    /// The path and query the pods receive. Captured values are
    /// re-encoded before they fill `upstream_path`, so a client cannot add
    /// a query, a fragment or `..` segments to the pods' path.
    pub fn upstream_path_and_query(
        &self,
        uri: &Uri,
        params: &[(String, String)],
    ) -> Result<String, UnsafePath> {
        let Some(template) = &self.upstream_path else {
            if uri.path().split('/').any(is_dot_segment) {
                return Err(UnsafePath);
            }
            return Ok(uri
                .path_and_query()
                .map_or_else(|| uri.path().to_owned(), |pq| pq.as_str().to_owned()));
        };
        let mut path = template.clone();
        for (name, value) in params {
            let wildcard = self.path.contains(&format!("{{*{name}}}"));
            let encoded = if wildcard {
                let segments: Result<Vec<String>, UnsafePath> =
                    value.split('/').map(encode_segment).collect();
                segments?.join("/")
            } else {
                encode_segment(value)?
            };
            path = path.replace(&format!("{{{name}}}"), &encoded);
        }
        Ok(match uri.query() {
            Some(query) if !template.contains('?') => format!("{path}?{query}"),
            _ => path,
        })
    }
}

/// A `host = "client"` route's request has no usable `Host` header.
#[derive(Debug, thiserror::Error)]
pub enum ClientHost {
    /// The request has no `Host` header.
    #[error("the route forwards the client's Host header to its pods, and the request has none")]
    Missing,
    /// The request's `Host` is not a `host[:port]`.
    #[error(
        "the route forwards the client's Host header to its pods, and {0:?} is not a valid host[:port]"
    )]
    Invalid(String),
}

/// A path (or captured value) that could climb out of `upstream_path`
/// or the route's own path on a pod's server.
#[derive(Debug, thiserror::Error)]
#[error(
    "the path contains a `.` or `..` segment (also as `..;`) or a backslash, which cannot be forwarded"
)]
pub struct UnsafePath;

/// Characters escaped in a forwarded path segment: controls, space, `%`,
/// `/`, `?`, `#` and those RFC 3986 does not allow in a path.
const SEGMENT: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'/')
    .add(b'<')
    .add(b'>')
    .add(b'?')
    .add(b'[')
    .add(b'\\')
    .add(b']')
    .add(b'^')
    .add(b'`')
    .add(b'{')
    .add(b'|')
    .add(b'}');

/// Whether a path segment could climb out of its place on some server:
/// it is, or percent-decodes to, `.` or `..`, also with path parameters
/// (`..;jsessionid=1`, which Tomcat and others read as `..`), or it holds
/// a backslash (`%5c`), which some servers read as `/`.
fn is_dot_segment(segment: &str) -> bool {
    let decoded = percent_encoding::percent_decode_str(segment).decode_utf8_lossy();
    let before_parameters = decoded.split(';').next().unwrap_or_default();
    before_parameters == "." || before_parameters == ".." || decoded.contains('\\')
}

fn encode_segment(segment: &str) -> Result<String, UnsafePath> {
    if is_dot_segment(segment) {
        return Err(UnsafePath);
    }
    Ok(utf8_percent_encode(segment, SEGMENT).to_string())
}

/// Whether `label` is one lowercase DNS label that cannot escape its
/// template: no dots, no uppercase (DNS ignores case, so `WEB` would alias
/// `web`), no punycode, not a number an address parser would read as an
/// IPv4 address (`2130706433`, `0x7f000001`), and not `localhost`, which
/// resolvers answer with loopback addresses without asking DNS.
fn is_service_label(label: &str) -> bool {
    is_lowercase_label(label)
        && !label.starts_with("xn--")
        && !label.bytes().all(|b| b.is_ascii_digit())
        && !label
            .strip_prefix("0x")
            .is_some_and(|hex| hex.bytes().all(|b| b.is_ascii_hexdigit()))
        && label != "localhost"
}

/// A byte size as `usize`, saturating on 32-bit targets.
fn saturating_usize(bytes: u64) -> usize {
    usize::try_from(bytes).unwrap_or(usize::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_labels_cannot_escape_the_template() {
        assert!(is_service_label("web"));
        assert!(is_service_label("web-2"));
        assert!(is_service_label("0xcafe-api"));
        assert!(is_service_label("2fa"));
        assert!(is_service_label("localhost-proxy"));
        for hostile in [
            "",
            "web.evil",
            "Web",
            "web.",
            "-web",
            "web-",
            "xn--80ak6aa92e",
            "10",
            "a/b",
            "127.0.0.1",
            "web%2e",
            "0x7f000001",
            "0x",
            "2130706433",
            "localhost",
        ] {
            assert!(!is_service_label(hostile), "{hostile:?} must be refused");
        }
    }

    #[test]
    fn captured_values_cannot_rewrite_the_upstream_path() {
        let route = compiled(
            "name = \"r\"\npath = \"/{service}/{*rest}\"\nupstream_path = \"/api/{rest}\"\ntargets = [\"127.0.0.2:80\"]",
        );
        let forward = |rest: &str, uri: &str| {
            let params = [("rest".to_owned(), rest.to_owned())];
            route.upstream_path_and_query(&uri.parse().unwrap(), &params)
        };
        assert_eq!(forward("a/b c", "/web/x?q=1").unwrap(), "/api/a/b%20c?q=1");
        assert_eq!(
            forward("a?evil=1", "/web/x?q=1").unwrap(),
            "/api/a%3Fevil=1?q=1"
        );
        assert_eq!(forward("a#b", "/web/x").unwrap(), "/api/a%23b");
        assert_eq!(
            forward("a\r\nX-Evil: 1", "/web/x").unwrap(),
            "/api/a%0D%0AX-Evil:%201"
        );
        assert_eq!(forward("100%", "/web/x").unwrap(), "/api/100%25");
        assert!(forward("../admin", "/web/x").is_err());
        assert!(forward("a/./b", "/web/x").is_err());

        let plain = compiled("name = \"p\"\npath = \"/x/{*rest}\"\ntargets = [\"127.0.0.2:80\"]");
        let raw = |uri: &str| plain.upstream_path_and_query(&uri.parse().unwrap(), &[]);
        assert_eq!(raw("/x/a/b?q=1").unwrap(), "/x/a/b?q=1");
        assert!(raw("/x/../admin").is_err());
        assert!(raw("/x/%2e%2E/admin").is_err());
        assert!(raw("/x/..;/admin").is_err(), "Tomcat reads `..;` as `..`");
        assert!(raw("/x/..;jsessionid=1/admin").is_err());
        assert!(raw("/x/%2e%2e%3b/admin").is_err());
        assert!(
            raw("/x/a%5c..%5cadmin").is_err(),
            "a backslash is `/` to some servers"
        );
        assert!(raw("/x/a%5Cb").is_err());
        assert_eq!(raw("/x/a;b=1/c").unwrap(), "/x/a;b=1/c");
        assert_eq!(raw("/x/...").unwrap(), "/x/...");
        assert!(forward("..;/admin", "/web/x").is_err());
        assert!(forward("a\\..\\admin", "/web/x").is_err());
    }

    /// The route of one validated `[[routes]]` table.
    fn compiled(table: &str) -> Route {
        let config = crate::config::Config::parse(&format!("[[routes]]\n{table}\n"))
            .unwrap_or_else(|problems| panic!("{problems}"));
        Route::from_config(&config.routes[0])
    }
}

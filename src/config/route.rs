//! The `[[routes]]` table: as written ([`RouteTable`]), and as validated
//! ([`RouteConfig`]: the table plus the values validation parsed from it,
//! so nothing after validation parses a route's text again).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use bytesize::ByteSize;
use http::{HeaderValue, Method};
use serde::Deserialize;

use super::plugin::PluginUse;
use crate::vocabulary::policy::Policy;
use crate::vocabulary::problem::Location;
use crate::vocabulary::target::{Endpoints, TargetSource};

/// The placeholder a templated `service` (and `upstream_path`) uses for the
/// service name captured from the request path.
pub const SERVICE_PLACEHOLDER: &str = "{service}";

/// A validated `[[routes]]` entry: the table as written, and the values
/// validation parsed from it. Everything built from a route starts here.
#[derive(Debug, Clone)]
pub struct RouteConfig {
    /// The table as written.
    pub table: RouteTable,
    /// `methods`, parsed.
    pub methods: Methods,
    /// `host`, parsed.
    pub host: PodHost,
    /// `service` with `port`, `kubernetes` with `endpoints`, or `targets`,
    /// parsed.
    pub source: TargetSource,
    /// `allow_services`, compiled.
    pub allow_services: Vec<glob::Pattern>,
    /// `report_to`, parsed.
    pub report_to: Option<reqwest::Url>,
}

impl RouteConfig {
    /// The route's unique name.
    pub fn name(&self) -> &str {
        &self.table.name
    }
}

/// One `[[routes]]` entry as written: a path that broadcasts to a set of
/// pods.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteTable {
    /// Unique name, used in logs, metrics and the answer document.
    pub name: String,
    /// Path in axum syntax; `{name}` captures a segment, `{*rest}` the rest.
    pub path: String,
    /// HTTP methods the route accepts: any RFC 9110 method token, forwarded
    /// verbatim (`GET`, `POST`, `PURGE`, `BAN`, …), or `"*"` for any
    /// method.
    #[serde(default = "default_methods")]
    pub methods: Vec<String>,
    /// The `Host` every pod receives: `"pod"` (its own `ip:port`, the
    /// default), `"client"` (the client's `Host`; a request without one is
    /// refused) or a fixed `host[:port]` such as `"www.example.com"`.
    /// Caches key objects on it.
    pub host: Option<String>,
    /// Identical broadcasts arriving while one waits this long to start
    /// share it (and its answer). Absent: every request is broadcast.
    #[serde(default, with = "humantime_serde")]
    pub coalesce: Option<Duration>,
    /// Headless Service name to resolve, e.g. `web.default.svc.cluster.local`.
    /// May contain `{service}`, filled from the path's `{service}` capture.
    pub service: Option<String>,
    /// Static targets (`"ip:port"`, or `"ip"` with `port`), instead of `service`.
    pub targets: Option<Vec<String>>,
    /// Port the pods listen on; required with `service`.
    pub port: Option<u16>,
    /// A Service whose pods are found by watching its EndpointSlices
    /// through the Kubernetes API, instead of `service` or `targets`:
    /// `{ service = "web", namespace = "default", port = "http" }`.
    /// `service` may contain `{service}`, as a templated `service` does.
    pub kubernetes: Option<KubernetesTable>,
    /// With `kubernetes`: which endpoints receive broadcasts, `"ready"`,
    /// `"serving"` (ready or terminating but still serving; the default)
    /// or `"all"`.
    pub endpoints: Option<Endpoints>,
    /// Path (and query) sent to pods; may use `{rest}` and `{service}`.
    /// Default: the received path and query.
    pub upstream_path: Option<String>,
    /// For templated services: the service names (exact or glob) that may be
    /// addressed. Anything else is refused with 403 before any DNS query.
    #[serde(default)]
    pub allow_services: Vec<String>,
    /// Timeout of one attempt to one pod.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Retries per pod after a connect error, timeout, or 502/503/504.
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// Base delay of the exponential backoff between retries (with jitter).
    #[serde(default = "default_retry_backoff", with = "humantime_serde")]
    pub retry_backoff: Duration,
    /// Most pod requests in flight at once for one broadcast.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// Time budget of the whole broadcast, retries included.
    #[serde(default = "default_deadline", with = "humantime_serde")]
    pub deadline: Duration,
    /// How the pods' outcomes become the answer's verdict.
    #[serde(default)]
    pub policy: Policy,
    /// How much of each pod's response body the answer includes.
    #[serde(default = "default_max_pod_body_bytes")]
    pub max_pod_body_bytes: ByteSize,
    /// How pods receive the broadcast: HTTP requests, or UDP datagrams.
    #[serde(default)]
    pub protocol: Protocol,
    /// UDP settings (only with `protocol = "udp"`).
    pub udp: Option<UdpConfig>,
    /// `sync` answers with the report; `async` answers 202 at once and
    /// completes the broadcast in the background (HTTP routes only).
    #[serde(default)]
    pub mode: Mode,
    /// Where each finished broadcast's report is POSTed (an `http://` URL),
    /// so one collector service is the single writer of outcomes.
    pub report_to: Option<String>,
    /// How long a report keeps being retried while the collector fails.
    #[serde(default = "default_report_retry_for", with = "humantime_serde")]
    pub report_retry_for: Duration,
    /// The plugin chain, in order: `[{ use = "NAME", config = { … } }]`.
    #[serde(default)]
    pub plugins: Vec<PluginUse>,
    /// Token sets (`[tokens.NAME]`) accepted in `Authorization: Bearer`;
    /// empty: the route needs no token.
    #[serde(default)]
    pub auth: Vec<String>,
    /// Most broadcasts per second, as a token bucket; more get 429 with
    /// `Retry-After`. Absent: no rate limit.
    pub rate_limit: Option<RateLimitConfig>,
    /// Most deliveries per second to any one pod, as a token bucket per
    /// pod; a broadcast that would exceed it for some pod is refused with
    /// 429 and `Retry-After` before anything is sent. Absent: no limit.
    pub pod_rate_limit: Option<RateLimitConfig>,
    /// Most broadcasts of this route running at once (background
    /// deliveries included); more get 429. Absent: no limit.
    pub max_concurrent: Option<usize>,
    /// Most pods one broadcast may go to. When discovery finds more, the
    /// broadcast is refused (503) rather than cut short.
    #[serde(default = "default_max_targets")]
    pub max_targets: usize,
    /// `http` or `https`: how HTTP routes reach their pods.
    #[serde(default)]
    pub scheme: Scheme,
    /// PEM bundle of the CAs pod certificates must be signed by (with
    /// `scheme = "https"`); default the system bundle
    /// `/etc/ssl/certs/ca-certificates.crt`. Relative paths start at the
    /// configuration file's directory; read at start and at every reload.
    pub ca_file: Option<PathBuf>,
    /// The name pod certificates are verified against (and sent as SNI),
    /// with `scheme = "https"`. Default: the route's `service` (pods are
    /// reached by IP, but a Service's replicas usually share a certificate
    /// naming it); for static targets and templated services, each pod's
    /// IP address.
    pub server_name: Option<String>,
    /// Where the route's `ca_file` (or else the route) is in the file, for
    /// problems found reading it (set while loading).
    #[serde(skip)]
    pub location: Location,
}

/// A route's `kubernetes` table: the Service whose EndpointSlices are
/// watched.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KubernetesTable {
    /// The Service's name (`metadata.name`), e.g. `web`.
    pub service: String,
    /// The Service's namespace. Default: the router's own namespace in a
    /// cluster (its service account's), else the kubeconfig context's,
    /// else `default`.
    pub namespace: Option<String>,
    /// The pods' port: a port name of the Service (`"http"`), looked up
    /// in each EndpointSlice, or a number.
    pub port: PortValue,
}

/// A `kubernetes.port` as written: a name or a number.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged, expecting = "a port name such as \"http\" or a port number")]
pub enum PortValue {
    /// A number (checked to be a port by validation).
    Number(i64),
    /// A port name.
    Name(String),
}

/// The methods a route accepts, parsed from `methods`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Methods {
    /// `"*"`: any method.
    Any,
    /// These methods, each once, in the order written.
    Listed(Vec<Method>),
}

impl Methods {
    /// Whether a request with `method` is the route's.
    pub fn accepts(&self, method: &Method) -> bool {
        match self {
            Methods::Any => true,
            Methods::Listed(methods) => methods.contains(method),
        }
    }
}

impl std::fmt::Display for Methods {
    /// `*`, or the methods joined by `|`, e.g. `PURGE|BAN`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Methods::Any => f.write_str("*"),
            Methods::Listed(methods) => {
                let names: Vec<&str> = methods.iter().map(Method::as_str).collect();
                f.write_str(&names.join("|"))
            }
        }
    }
}

/// The `Host` a route's pods receive, parsed from `host`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum PodHost {
    /// `"pod"`: each pod's own `ip:port` (the default).
    #[default]
    Pod,
    /// `"client"`: the client's `Host` header.
    Client,
    /// A fixed `host[:port]`.
    Fixed(HeaderValue),
}

/// How an HTTP route's pods are reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scheme {
    /// Plain HTTP.
    #[default]
    Http,
    /// HTTPS, verifying each pod's certificate.
    Https,
}

/// How a route delivers to its pods.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// One HTTP request per pod, with retries and a verdict.
    #[default]
    Http,
    /// Datagrams sent `repeat` times per pod; no acknowledgement.
    Udp,
}

/// When the client gets its answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Answer with the report once the policy allows.
    #[default]
    Sync,
    /// Answer 202 with the broadcast id at once; finish in the background.
    Async,
}

/// The `udp` table of a UDP route.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UdpConfig {
    /// How many times each pod gets the datagram (1 to 20).
    pub repeat: u8,
    /// Pause between repeats.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Largest datagram sent (header included); larger payloads get 413.
    pub max_datagram_bytes: ByteSize,
    /// Allows `max_datagram_bytes` above 1472 (IP fragmentation; only for
    /// networks known to carry it).
    pub large_datagrams: bool,
}

impl Default for UdpConfig {
    fn default() -> Self {
        Self {
            repeat: 3,
            interval: Duration::from_millis(20),
            max_datagram_bytes: ByteSize::b(1200),
            large_datagrams: false,
        }
    }
}

/// A route's `rate_limit`: a token bucket refilled at `per_second` that
/// holds at most `burst` broadcasts.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Sustained broadcasts per second (may be fractional, e.g. 0.5).
    pub per_second: f64,
    /// Broadcasts allowed at once after a quiet period (at least 1).
    #[serde(default = "default_burst")]
    pub burst: u32,
}

fn default_burst() -> u32 {
    1
}
fn default_max_targets() -> usize {
    1000
}
fn default_methods() -> Vec<String> {
    vec!["POST".to_owned()]
}
fn default_timeout() -> Duration {
    Duration::from_secs(2)
}
fn default_retries() -> u32 {
    2
}
fn default_retry_backoff() -> Duration {
    Duration::from_millis(50)
}
fn default_concurrency() -> usize {
    64
}
fn default_deadline() -> Duration {
    Duration::from_secs(5)
}
fn default_max_pod_body_bytes() -> ByteSize {
    ByteSize::kib(4)
}
fn default_report_retry_for() -> Duration {
    Duration::from_secs(60)
}

/// Whether `name` is a usable DNS name: lowercase labels separated by
/// dots, optionally ending in a dot (which skips the search list).
pub fn valid_service_name(name: &str) -> bool {
    let name = name.strip_suffix('.').unwrap_or(name);
    !name.is_empty() && name.len() <= 253 && name.split('.').all(is_lowercase_label)
}

/// Whether `label` is one lowercase DNS label: 1 to 63 letters, digits and
/// `-`, neither first nor last a `-`.
pub fn is_lowercase_label(label: &str) -> bool {
    (1..=63).contains(&label.len())
        && label
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !label.starts_with('-')
        && !label.ends_with('-')
}

/// Parses one `targets` entry: `"ip:port"`, `"[v6]:port"`, or a bare IP
/// that takes the route's `port`.
pub fn parse_static_target(text: &str, port: Option<u16>) -> Result<SocketAddr, String> {
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    match (text.parse::<IpAddr>(), port) {
        (Ok(ip), Some(port)) => Ok(SocketAddr::new(ip, port)),
        (Ok(_), None) => Err(format!(
            "target `{text}` has no port: write `{text}:PORT` or set the route's `port`"
        )),
        (Err(_), _) => Err(format!(
            "target `{text}` is not an IP address with a port, such as \"10.0.0.7:8080\""
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn static_targets_take_the_route_port() {
        assert_eq!(
            parse_static_target("127.0.0.2", Some(8080)),
            Ok("127.0.0.2:8080".parse().unwrap())
        );
        assert_eq!(
            parse_static_target("[::1]:9000", None),
            Ok("[::1]:9000".parse().unwrap())
        );
        assert!(parse_static_target("127.0.0.2", None).is_err());
        assert!(parse_static_target("web:80", None).is_err());
    }
}

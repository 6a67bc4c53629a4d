//! The router's configuration: the TOML schema users write, and loading it.
//!
//! Loading happens in three steps, each of which collects every problem it
//! finds instead of stopping at the first:
//!
//! 1. `load::parse` reads the TOML syntax (recovering after errors);
//! 2. each section and each `[[routes]]` entry is deserialized on its own, so
//!    an unknown key in one route does not hide a bad value in the next;
//! 3. `validate` checks what types cannot: unique names, conflicting paths,
//!    `service` xor `targets`, templated services with an `allow_services`
//!    guard, and so on.
//!
//! Every problem carries the line and column it refers to (see [`Problem`]).

mod load;
mod validate;

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytesize::ByteSize;
use serde::Deserialize;

use crate::aggregate::Policy;

/// A whole router configuration file, after successful validation.
#[derive(Debug, Clone, Default)]
pub struct Config {
    /// The `[server]` table: listeners and request limits.
    pub server: ServerConfig,
    /// The `[dns]` table: how headless Services are resolved.
    pub dns: DnsConfig,
    /// The `[[routes]]` array: one entry per broadcast endpoint.
    pub routes: Vec<RouteConfig>,
    /// The `[plugins.NAME]` tables: Wasm plugins routes can use.
    pub plugins: BTreeMap<String, PluginConfig>,
    /// The `[tokens.NAME]` tables: bearer token sets routes and the admin
    /// endpoints can require.
    pub tokens: BTreeMap<String, TokenSetConfig>,
}

/// One `[tokens.NAME]` table: where a set of bearer tokens is read from.
/// Tokens never appear in the configuration file itself, so it can live in
/// a ConfigMap while the tokens come from a Secret.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenSetConfig {
    /// A file with one token per line (blank lines and lines starting
    /// with `#` are skipped), e.g. a key of a mounted Kubernetes Secret.
    /// Relative paths start at the configuration file's directory.
    pub file: Option<PathBuf>,
    /// An environment variable holding the tokens, separated by commas or
    /// whitespace.
    pub env: Option<String>,
    /// Where the table is in the file (set while loading).
    #[serde(skip)]
    pub location: Location,
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

/// One `[plugins.NAME]` table: a Wasm component and its limits.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginConfig {
    /// The `.wasm` component. Relative paths start at the configuration
    /// file's directory (with [`Config::load`]; [`Config::parse`] keeps them
    /// relative to the working directory).
    pub path: PathBuf,
    /// What a failing plugin means for the broadcast.
    #[serde(default)]
    pub on_error: OnError,
    /// Most linear memory one instance may use.
    #[serde(default = "default_plugin_memory")]
    pub memory: ByteSize,
    /// Most CPU time one hook call may take.
    #[serde(default = "default_hook_timeout", with = "humantime_serde")]
    pub hook_timeout: Duration,
    /// Where the table is in the file (set while loading).
    #[serde(skip)]
    pub location: Location,
}

/// A plugin's failure policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnError {
    /// Answer 502 with the plugin's error; nothing is sent to pods.
    #[default]
    FailClosed,
    /// Carry on as if the plugin were absent.
    FailOpen,
}

/// One entry of a route's `plugins` chain.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginUse {
    /// The name of a `[plugins.NAME]` table.
    #[serde(rename = "use")]
    pub plugin: String,
    /// The plugin's config table, handed to its `init` as JSON.
    #[serde(default)]
    pub config: toml::Table,
    /// Where the entry is in the file (set while loading).
    #[serde(skip)]
    pub location: Location,
}

/// A line and column in the configuration file (1-based; 0 when unknown).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Location {
    /// The line.
    pub line: usize,
    /// The column, in characters.
    pub column: usize,
}

impl Location {
    /// A problem at this location.
    pub fn problem(self, message: impl Into<String>) -> Problem {
        Problem {
            line: self.line,
            column: self.column,
            message: message.into(),
        }
    }
}

/// The `[server]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address the broadcast routes are served on.
    pub listen: SocketAddr,
    /// Address of the admin endpoints (`/healthz`, `/readyz`, `/metrics`);
    /// never shared with broadcast routes.
    pub admin_listen: SocketAddr,
    /// Largest request body accepted; larger bodies get 413.
    pub max_body_bytes: ByteSize,
    /// How long in-flight broadcasts may run after SIGTERM before exit.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// Most header fields in one request; more get 431.
    pub max_header_count: usize,
    /// Most bytes of request line and headers together; more get 431
    /// (8 KiB is always allowed).
    pub max_header_bytes: ByteSize,
    /// How long a client may take to send a request's headers (then the
    /// connection is closed) and, separately, its body (then 408).
    #[serde(with = "humantime_serde")]
    pub client_timeout: Duration,
    /// Most pod deliveries in flight across all broadcasts; a broadcast
    /// that would go above it is refused with 429 before anything is sent.
    /// Read at start; a reload keeps the first value.
    pub max_in_flight_deliveries: usize,
    /// Token sets (`[tokens.NAME]`) whose tokens may read `/metrics` and
    /// `/admin/*`; empty leaves them open. `/healthz` and `/readyz` are
    /// always open.
    pub admin_auth: Vec<String>,
    /// Where compiled plugins are cached between restarts; default a
    /// `broadcast-router` folder in the system's temporary directory.
    /// Relative paths start at the configuration file's directory, as for
    /// plugins.
    pub plugin_cache_dir: Option<PathBuf>,
    /// `[server.tls]`: serve the broadcast listener over TLS (the admin
    /// listener stays plain HTTP, for kubelet probes). Absent: plain HTTP.
    pub tls: Option<ServerTlsConfig>,
}

/// The `[server.tls]` table: the broadcast listener's certificate and,
/// optionally, the CA its clients' certificates must be signed by (mTLS).
/// The files are read at start and at every reload (so a renewed
/// certificate is used for new connections); relative paths start at the
/// configuration file's directory. Turning TLS on or off needs a restart.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerTlsConfig {
    /// PEM file with the certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM file with the certificate's private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// PEM bundle of CA certificates. When set, a client must present a
    /// certificate signed by one of them, or the handshake is refused.
    pub client_ca: Option<PathBuf>,
    /// Where the table is in the file (set while loading).
    #[serde(skip)]
    pub location: Location,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
            admin_listen: SocketAddr::from(([0, 0, 0, 0], 9090)),
            max_body_bytes: ByteSize::mib(1),
            shutdown_grace: Duration::from_secs(20),
            max_header_count: 64,
            max_header_bytes: ByteSize::kib(16),
            client_timeout: Duration::from_secs(10),
            max_in_flight_deliveries: 10_000,
            admin_auth: Vec::new(),
            plugin_cache_dir: None,
            tls: None,
        }
    }
}

/// The `[dns]` table.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DnsConfig {
    /// Name servers to query (`"ip"` or `"ip:port"`); empty means the
    /// system resolver configuration (`/etc/resolv.conf`, as in a pod).
    pub nameservers: Vec<NameServer>,
    /// Lower clamp of record TTLs used for caching answers.
    #[serde(with = "humantime_serde")]
    pub min_ttl: Duration,
    /// Upper clamp of record TTLs used for caching answers.
    #[serde(with = "humantime_serde")]
    pub max_ttl: Duration,
    /// How long the last good answer keeps being used while DNS fails.
    #[serde(with = "humantime_serde")]
    pub serve_stale_for: Duration,
    /// Timeout of one DNS query.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// How many times one lookup is attempted before it counts as failed.
    pub attempts: usize,
}

impl Default for DnsConfig {
    fn default() -> Self {
        Self {
            nameservers: Vec::new(),
            min_ttl: Duration::from_secs(1),
            max_ttl: Duration::from_secs(30),
            serve_stale_for: Duration::from_secs(300),
            timeout: Duration::from_secs(2),
            attempts: 2,
        }
    }
}

/// One name server address from `[dns] nameservers`; the port defaults to 53.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct NameServer(pub SocketAddr);

impl TryFrom<String> for NameServer {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        if let Ok(addr) = text.parse::<SocketAddr>() {
            return Ok(Self(addr));
        }
        text.parse::<IpAddr>()
            .map(|ip| Self(SocketAddr::new(ip, 53)))
            .map_err(|_| format!("`{text}` is not a name server address (\"ip\" or \"ip:port\")"))
    }
}

/// One `[[routes]]` entry: a path that broadcasts to a set of pods.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Unique name, used in logs, metrics and the answer document.
    pub name: String,
    /// Path in axum syntax; `{name}` captures a segment, `{*rest}` the rest.
    pub path: String,
    /// HTTP methods the route accepts.
    #[serde(default = "default_methods")]
    pub methods: Vec<String>,
    /// Headless Service name to resolve, e.g. `web.default.svc.cluster.local`.
    /// May contain `{service}`, filled from the path's `{service}` capture.
    pub service: Option<String>,
    /// Static targets (`"ip:port"`, or `"ip"` with `port`), instead of `service`.
    pub targets: Option<Vec<String>>,
    /// Port the pods listen on; required with `service`.
    pub port: Option<u16>,
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
fn default_plugin_memory() -> ByteSize {
    ByteSize::mib(16)
}
fn default_hook_timeout() -> Duration {
    Duration::from_millis(10)
}

impl Config {
    /// Reads, parses and validates the configuration file at `path`.
    ///
    /// Relative paths in the file (each plugin's `path` and `[server]
    /// plugin_cache_dir`) are resolved against the directory `path` names,
    /// so a file and its plugins can move together: `plugins/x.wasm` in
    /// `/etc/broadcast-router/router.toml` is
    /// `/etc/broadcast-router/plugins/x.wasm`, whatever the working
    /// directory. The directory is taken as written, without following
    /// symbolic links (a Kubernetes ConfigMap volume links each file into a
    /// hidden subdirectory).
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let mut config = Self::parse(&text).map_err(|problems| ConfigError::Invalid {
            path: path.display().to_string(),
            problems,
        })?;
        if let Some(dir) = path.parent() {
            config.resolve_relative_paths(dir);
        }
        Ok(config)
    }

    /// Parses and validates configuration text, reporting every problem.
    /// Relative paths are kept as written (so they start at the working
    /// directory); [`Config::load`] resolves them against the file's
    /// directory.
    pub fn parse(text: &str) -> Result<Self, Problems> {
        load::parse(text)
    }

    /// Prefixes every relative path of the configuration with `dir`.
    fn resolve_relative_paths(&mut self, dir: &Path) {
        let resolve = |path: &mut PathBuf| {
            if path.is_relative() {
                *path = dir.join(&*path);
            }
        };
        for plugin in self.plugins.values_mut() {
            resolve(&mut plugin.path);
        }
        for file in self.tokens.values_mut().filter_map(|set| set.file.as_mut()) {
            resolve(file);
        }
        if let Some(cache_dir) = self.server.plugin_cache_dir.as_mut() {
            resolve(cache_dir);
        }
        if let Some(tls) = self.server.tls.as_mut() {
            resolve(&mut tls.cert);
            resolve(&mut tls.key);
            if let Some(client_ca) = tls.client_ca.as_mut() {
                resolve(client_ca);
            }
        }
        for ca_file in self
            .routes
            .iter_mut()
            .filter_map(|route| route.ca_file.as_mut())
        {
            resolve(ca_file);
        }
    }

    /// Looks a route up by name.
    pub fn route(&self, name: &str) -> Option<&RouteConfig> {
        self.routes.iter().find(|route| route.name == name)
    }
}

/// Why a configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("config {path}: cannot read the file: {source}")]
    Read {
        /// The file's path.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file was read but has problems; all of them are listed.
    #[error("config {path}: {problems}")]
    Invalid {
        /// The file's path.
        path: String,
        /// Every problem found.
        problems: Problems,
    },
}

/// One problem in a configuration file, with where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// 1-based line of the offending key or value.
    pub line: usize,
    /// 1-based column (in characters) of the offending key or value.
    pub column: usize,
    /// What is wrong and, where possible, what to do instead.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.line, self.column, self.message)
    }
}

/// Every problem found in one configuration, in file order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problems(pub Vec<Problem>);

impl fmt::Display for Problems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let count = self.0.len();
        write!(f, "{count} problem{}", if count == 1 { "" } else { "s" })?;
        for problem in &self.0 {
            write!(f, "\n  {problem}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Problems {}

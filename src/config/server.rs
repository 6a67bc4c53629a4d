//! The router-wide tables: `[server]` (listeners and client limits),
//! `[server.tls]`, `[dns]`, `[kubernetes]` and `[tokens.NAME]`.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use bytesize::ByteSize;
use serde::Deserialize;

use crate::vocabulary::problem::Location;

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
    /// How long an idle keep-alive connection to a pod is kept for the
    /// next request; `0s` opens a new connection for every request. Keep
    /// it below the pods' own keep-alive timeout (Node.js: 5s, nginx: 75s)
    /// so the router, not the pod, closes idle connections.
    #[serde(with = "humantime_serde")]
    pub pod_idle_timeout: Duration,
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
            pod_idle_timeout: Duration::from_secs(4),
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

/// The `[kubernetes]` table: how `kubernetes` routes reach the API.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KubernetesConfig {
    /// A kubeconfig file to use instead of the default credentials (the
    /// pod's service account in a cluster, else `KUBECONFIG`, else
    /// `~/.kube/config`). Relative paths start at the configuration
    /// file's directory.
    pub kubeconfig: Option<PathBuf>,
    /// Most Services watched at once. Templated `kubernetes` routes start a
    /// watch per requested Service; beyond this, the least recently used
    /// one no route names outright is stopped.
    pub max_watches: usize,
}

impl Default for KubernetesConfig {
    fn default() -> Self {
        Self {
            kubeconfig: None,
            max_watches: 64,
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

//! TLS with rustls (the `ring` provider): the broadcast listener's
//! certificate and optional client CA (mTLS), and HTTPS to pods.
//!
//! Certificate, key and CA files are read when a configuration is loaded
//! (at start and at every reload), so a rotated certificate (e.g. renewed
//! by cert-manager into a mounted Secret) is used for new connections after
//! the reload its change triggers. Whether the listener speaks TLS at all
//! is fixed at start, like its address.
//!
//! Pods are addressed by IP. A route's pod certificates are verified
//! against its `server_name`, by default the route's Service name (every
//! replica of a Service usually presents a certificate for it) or, for
//! static targets and templated services, the pod's IP address.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::config::route::SERVICE_PLACEHOLDER;
use crate::config::{Config, Problems, RouteTable, Scheme, ServerTlsConfig};

/// The trust roots of `scheme = "https"` routes without a `ca_file`.
pub const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// The one crypto provider the router uses (ring).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Everything TLS of one configuration, read from its files.
#[derive(Debug, Default, Clone)]
pub struct TlsFiles {
    /// The broadcast listener's settings, when `[server.tls]` is set.
    pub listener: Option<Arc<ServerConfig>>,
    /// The HTTPS client of each `scheme = "https"` route, by route name.
    /// Routes with the same trust roots and server name share one client
    /// (and its connection pool).
    pub routes: HashMap<String, PodTls>,
}

impl TlsFiles {
    /// Reads every certificate, key and CA file the configuration names,
    /// reporting each one that cannot be used.
    pub fn load(config: &Config) -> Result<Self, Problems> {
        let mut problems = Vec::new();
        let listener = match &config.server.tls {
            Some(tls) => match server_config(tls) {
                Ok(server) => Some(Arc::new(server)),
                Err(message) => {
                    problems.push(tls.location.problem(format!("[server.tls] {message}")));
                    None
                }
            },
            None => None,
        };
        let mut clients: HashMap<(PathBuf, Option<String>), PodTls> = HashMap::new();
        let mut routes = HashMap::new();
        for route in config.routes.iter().map(|route| &route.table) {
            if route.scheme != Scheme::Https {
                continue;
            }
            let ca_file = route
                .ca_file
                .clone()
                .unwrap_or_else(|| PathBuf::from(SYSTEM_CA_BUNDLE));
            let name = server_name(route);
            let key = (ca_file.clone(), name.clone());
            if let Some(client) = clients.get(&key) {
                routes.insert(route.name.clone(), client.clone());
                continue;
            }
            match PodTls::new(&ca_file, name) {
                Ok(client) => {
                    clients.insert(key, client.clone());
                    routes.insert(route.name.clone(), client);
                }
                Err(message) => {
                    let hint = if route.ca_file.is_none() {
                        " (the default trust roots; set `ca_file`)"
                    } else {
                        ""
                    };
                    problems.push(route.location.problem(format!(
                        "route \"{}\": `ca_file` {message}{hint}",
                        route.name
                    )));
                }
            }
        }
        if problems.is_empty() {
            Ok(Self { listener, routes })
        } else {
            Err(Problems(problems))
        }
    }
}

/// The files of `config` whose change calls for a reload: each with the
/// name of the table that uses it.
pub fn files(config: &Config) -> Vec<(String, PathBuf)> {
    let mut files = Vec::new();
    if let Some(tls) = &config.server.tls {
        files.push(("server.tls.cert".to_owned(), tls.cert.clone()));
        files.push(("server.tls.key".to_owned(), tls.key.clone()));
        if let Some(client_ca) = &tls.client_ca {
            files.push(("server.tls.client_ca".to_owned(), client_ca.clone()));
        }
    }
    for route in config.routes.iter().map(|route| &route.table) {
        if let Some(ca_file) = &route.ca_file {
            files.push((format!("routes.{}.ca_file", route.name), ca_file.clone()));
        }
    }
    files
}

/// The name pod certificates of `route` are verified against: its
/// `server_name`, else its (untemplated) Service name; `None` means each
/// pod's IP address.
fn server_name(route: &RouteTable) -> Option<String> {
    route.server_name.clone().or_else(|| {
        route
            .service
            .clone()
            .filter(|service| !service.contains(SERVICE_PLACEHOLDER))
    })
}

/// The listener's rustls settings: its certificate chain and key, and
/// with `client_ca` the demand for a client certificate signed by it.
fn server_config(tls: &ServerTlsConfig) -> Result<ServerConfig, String> {
    let chain = read_certificates(&tls.cert).map_err(|error| format!("`cert` {error}"))?;
    let key = read_file(&tls.key).and_then(|pem| {
        PrivateKeyDer::from_pem_slice(&pem)
            .map_err(|error| format!("{}: no usable private key: {error}", tls.key.display()))
    });
    let key = key.map_err(|error| format!("`key` {error}"))?;
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|error| error.to_string())?;
    let builder = match &tls.client_ca {
        Some(client_ca) => {
            let roots = read_roots(client_ca).map_err(|error| format!("`client_ca` {error}"))?;
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                .build()
                .map_err(|error| {
                    format!("`client_ca` {}: unusable: {error}", client_ca.display())
                })?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(chain, key).map_err(|error| {
        format!(
            "`cert` {} and `key` {} do not make a usable pair: {error}",
            tls.cert.display(),
            tls.key.display()
        )
    })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

fn read_file(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|error| format!("{}: cannot read: {error}", path.display()))
}

/// Every certificate of a PEM file (at least one).
fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = read_file(path)?;
    let certificates = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| format!("{}: not a PEM file: {error}", path.display()))?;
    if certificates.is_empty() {
        return Err(format!(
            "{}: holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
            path.display()
        ));
    }
    Ok(certificates)
}

/// A PEM bundle as trust roots (at least one usable certificate).
fn read_roots(path: &Path) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(read_certificates(path)?);
    if added == 0 {
        return Err(format!(
            "{}: none of its certificates is a usable CA",
            path.display()
        ));
    }
    Ok(roots)
}

/// The TLS side of `scheme = "https"` routes sharing one CA bundle and
/// server name: connects to a pod and verifies its certificate. Fan-out
/// pools the connections it makes.
#[derive(Clone)]
pub struct PodTls {
    connector: tokio_rustls::TlsConnector,
    /// The name pods are verified as (`None`: their IP).
    server_name: Option<ServerName<'static>>,
    /// The CA bundle, for logs.
    ca_file: Arc<Path>,
    /// Tells this client's connections apart from another's in a pool.
    identity: Arc<()>,
}

impl std::fmt::Debug for PodTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PodTls")
            .field("ca_file", &self.ca_file)
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl PodTls {
    /// A client trusting the certificates of `ca_file` and verifying pods
    /// as `server_name` (`None`: each pod's IP address).
    fn new(ca_file: &Path, server_name: Option<String>) -> Result<Self, String> {
        let roots = read_roots(ca_file)?;
        let server_name = server_name
            .map(|name| {
                ServerName::try_from(name.clone())
                    .map_err(|_| format!("`server_name` `{name}` is not a DNS name or IP"))
            })
            .transpose()?;
        let mut config = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|error| error.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self {
            connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
            server_name,
            ca_file: ca_file.into(),
            identity: Arc::new(()),
        })
    }

    /// An id that differs between clients (connections made by one must
    /// not be reused by another, which may trust other CAs).
    pub fn identity(&self) -> usize {
        Arc::as_ptr(&self.identity) as usize
    }

    /// Connects to the pod at `addr` and does the TLS handshake, verifying
    /// its certificate.
    pub async fn connect(&self, addr: SocketAddr) -> Result<TlsStream<TcpStream>, ConnectError> {
        let tcp = TcpStream::connect(addr).await.map_err(ConnectError::Tcp)?;
        let _ = tcp.set_nodelay(true);
        let name = self
            .server_name
            .clone()
            .unwrap_or(ServerName::IpAddress(addr.ip().into()));
        self.connector
            .connect(name.clone(), tcp)
            .await
            .map_err(|error| ConnectError::Handshake {
                name: name.to_str().into_owned(),
                error,
            })
    }
}

/// Why no TLS connection to a pod was made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The TCP connection failed.
    #[error("{0}")]
    Tcp(io::Error),
    /// The TLS handshake failed (e.g. an untrusted certificate).
    #[error("TLS handshake failed (verifying the pod as {name}): {error}")]
    Handshake {
        /// The name the certificate was checked against.
        name: String,
        /// What rustls reported.
        error: io::Error,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_service_name_is_the_default_server_name() {
        let text = "[[routes]]\nname = \"a\"\npath = \"/a\"\nservice = \"web.default.svc.cluster.local\"\nport = 8443\nscheme = \"https\"\n\n[[routes]]\nname = \"b\"\npath = \"/b\"\ntargets = [\"127.0.0.1:1\"]\nscheme = \"https\"\n\n[[routes]]\nname = \"c\"\npath = \"/c\"\ntargets = [\"127.0.0.1:1\"]\nscheme = \"https\"\nserver_name = \"pods.example\"\n";
        let config = Config::parse(text).unwrap();
        let names: Vec<_> = config
            .routes
            .iter()
            .map(|route| server_name(&route.table))
            .collect();
        assert_eq!(
            names,
            [
                Some("web.default.svc.cluster.local".to_owned()),
                None,
                Some("pods.example".to_owned())
            ]
        );
    }
}

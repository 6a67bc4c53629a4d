//! TLS through the real router: the broadcast listener over TLS and mTLS
//! (accepted and refused clients), HTTPS to pods (trusted and untrusted
//! certificates), certificate rotation by reload, and configuration
//! problems. Certificates come from `tests/fixtures/tls` (see its README).

mod support;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use broadcast_router::config::Config;
use broadcast_router::reload::{Outcome, Reloader, Snapshot, Trigger};
use broadcast_router::server::{self, BuildError, StartError};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use reqwest::StatusCode;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::Value;
use support::pods::{Behaviour, Pods};
use support::{TestRouter, preamble};
use tokio::net::{TcpListener, TcpStream};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/tls")
        .join(name)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certificates(name: &str) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_file_iter(fixture(name))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

fn key(name: &str) -> PrivateKeyDer<'static> {
    PrivateKeyDer::from_pem_file(fixture(name)).unwrap()
}

/// A client trusting the test CA, presenting `identity` (`client` or
/// `rogue-client`) when given.
fn client_config(identity: Option<&str>) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add_parsable_certificates(certificates("ca.pem"));
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let config = match identity {
        Some(name) => builder
            .with_client_auth_cert(
                certificates(&format!("{name}.pem")),
                key(&format!("{name}.key")),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    Arc::new(config)
}

/// POSTs `{}` to `path` over TLS; the status and JSON answer, or why the
/// exchange failed (handshake refused, connection closed, …).
async fn https_post(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    path: &str,
) -> Result<(StatusCode, Value), String> {
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let name = ServerName::IpAddress(addr.ip().into());
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
            .await
            .map_err(|e| format!("http: {e}"))?;
    tokio::spawn(connection);
    let request = hyper::Request::post(path)
        .header("host", addr.to_string())
        .body(Full::new(Bytes::from_static(b"{}")))
        .unwrap();
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("request: {e}"))?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("body: {e}"))?
        .to_bytes();
    let status = StatusCode::from_u16(status.as_u16()).unwrap();
    Ok((status, serde_json::from_slice(&body).unwrap_or(Value::Null)))
}

fn router_addr(router: &TestRouter) -> SocketAddr {
    router.url.trim_start_matches("http://").parse().unwrap()
}

/// `[server.tls]` with the test server certificate, and `client_ca` when
/// given.
fn listener_tls(client_ca: Option<&str>) -> String {
    let mut text = format!(
        "\n[server.tls]\ncert = \"{}\"\nkey = \"{}\"\n",
        fixture("server.pem").display(),
        fixture("server.key").display()
    );
    if let Some(client_ca) = client_ca {
        text.push_str(&format!(
            "client_ca = \"{}\"\n",
            fixture(client_ca).display()
        ));
    }
    text
}

fn route(targets: &str, extra: &str) -> String {
    format!(
        "\n[[routes]]\nname = \"invalidate\"\npath = \"/cache/invalidate\"\ntargets = {targets}\nretries = 0\n{extra}\n"
    )
}

#[tokio::test]
async fn a_tls_listener_serves_clients_that_trust_its_ca() {
    let pods = Pods::start(50, &[Behaviour::Ok, Behaviour::Ok]).await;
    let config = format!(
        "{}{}{}",
        preamble(None),
        listener_tls(None),
        route(&pods.targets_toml(), "")
    );
    let router = TestRouter::start(&config).await;
    let addr = router_addr(&router);

    let (status, json) = https_post(addr, client_config(None), "/cache/invalidate")
        .await
        .expect("a client trusting the CA is served");
    assert_eq!(status, StatusCode::OK, "{json}");
    assert_eq!(json["succeeded"], 2, "{json}");
    assert!(pods.pods.iter().all(|pod| pod.count() == 1));

    // Plain HTTP to the TLS port gets no answer, and reaches no pod.
    let plain = router
        .client()
        .post(format!("http://{addr}/cache/invalidate"))
        .body("{}")
        .send()
        .await;
    assert!(plain.is_err(), "plain HTTP was answered: {plain:?}");
    assert_eq!(pods.total(), 2);

    // The admin port stays plain HTTP, for kubelet probes.
    let (status, _) = router.admin_get("/healthz").await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn mtls_admits_clients_signed_by_the_client_ca_and_refuses_others() {
    let pods = Pods::start(50, &[Behaviour::Ok, Behaviour::Ok]).await;
    let config = format!(
        "{}{}{}",
        preamble(None),
        listener_tls(Some("ca.pem")),
        route(&pods.targets_toml(), "")
    );
    let router = TestRouter::start(&config).await;
    let addr = router_addr(&router);

    let (status, json) = https_post(addr, client_config(Some("client")), "/cache/invalidate")
        .await
        .expect("a client with a certificate from the client CA is served");
    assert_eq!(status, StatusCode::OK, "{json}");
    assert_eq!(json["succeeded"], 2, "{json}");
    assert!(pods.pods.iter().all(|pod| pod.count() == 1));

    let anonymous = https_post(addr, client_config(None), "/cache/invalidate").await;
    assert!(
        anonymous.is_err(),
        "a client without a certificate was served: {anonymous:?}"
    );
    let rogue = https_post(
        addr,
        client_config(Some("rogue-client")),
        "/cache/invalidate",
    )
    .await;
    assert!(
        rogue.is_err(),
        "a client with a rogue certificate was served: {rogue:?}"
    );
    let plain = router
        .client()
        .post(format!("http://{addr}/cache/invalidate"))
        .body("{}")
        .send()
        .await;
    assert!(plain.is_err(), "plain HTTP was answered: {plain:?}");
    assert_eq!(pods.total(), 2, "a refused client reached the pods");
}

/// HTTPS pods on 127.0.0.`first`…: each answers 200 and counts requests.
struct HttpsPods {
    port: u16,
    counts: Vec<Arc<AtomicUsize>>,
}

impl HttpsPods {
    async fn start(first: u8, count: u8) -> HttpsPods {
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certificates("pods.pem"), key("pods.key"))
            .unwrap();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let ip = |i: u8| IpAddr::V4(Ipv4Addr::new(127, 0, 0, first + i));
        'port: for _ in 0..50 {
            let first_listener = TcpListener::bind((ip(0), 0)).await.unwrap();
            let port = first_listener.local_addr().unwrap().port();
            let mut listeners = vec![first_listener];
            for i in 1..count {
                match TcpListener::bind((ip(i), port)).await {
                    Ok(listener) => listeners.push(listener),
                    Err(_) => continue 'port,
                }
            }
            let mut counts = Vec::new();
            for listener in listeners {
                let received = Arc::new(AtomicUsize::new(0));
                counts.push(Arc::clone(&received));
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    while let Ok((stream, _)) = listener.accept().await {
                        let (acceptor, received) = (acceptor.clone(), Arc::clone(&received));
                        tokio::spawn(async move {
                            let Ok(stream) = acceptor.accept(stream).await else {
                                return;
                            };
                            let service = hyper::service::service_fn(move |_request| {
                                received.fetch_add(1, Ordering::SeqCst);
                                async {
                                    Ok::<_, std::convert::Infallible>(hyper::Response::new(
                                        Full::new(Bytes::from_static(b"{\"tls\":true}")),
                                    ))
                                }
                            });
                            let _ = hyper::server::conn::http1::Builder::new()
                                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                                .await;
                        });
                    }
                });
            }
            return HttpsPods { port, counts };
        }
        panic!("no port free on all HTTPS pods");
    }

    fn targets_toml(&self, first: u8) -> String {
        let items: Vec<String> = (0..self.counts.len())
            .map(|i| format!("\"127.0.0.{}:{}\"", first as usize + i, self.port))
            .collect();
        format!("[{}]", items.join(", "))
    }

    fn counts(&self) -> Vec<usize> {
        self.counts
            .iter()
            .map(|count| count.load(Ordering::SeqCst))
            .collect()
    }
}

#[tokio::test]
async fn https_pods_trusted_by_ca_file_each_get_one_copy() {
    let pods = HttpsPods::start(52, 3).await;
    let ca = fixture("ca.pem");
    let config = format!(
        "{}{}{}",
        preamble(None),
        route(
            &pods.targets_toml(52),
            &format!("scheme = \"https\"\nca_file = \"{}\"", ca.display())
        ),
        // Verified against the Service name instead of each pod's IP.
        route(
            &pods.targets_toml(52),
            &format!(
                "scheme = \"https\"\nca_file = \"{}\"\nserver_name = \"web.default.svc.cluster.local\"",
                ca.display()
            )
        )
        .replace("\"invalidate\"", "\"by-name\"")
        .replace("/cache/invalidate", "/by-name"),
    );
    let router = TestRouter::start(&config).await;

    let answer = router.post("/cache/invalidate", "{}").await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.json);
    assert_eq!(answer.json["succeeded"], 3, "{}", answer.json);
    assert_eq!(pods.counts(), [1, 1, 1]);

    let answer = router.post("/by-name", "{}").await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.json);
    assert_eq!(pods.counts(), [2, 2, 2]);
}

#[tokio::test]
async fn https_pods_with_an_untrusted_certificate_are_not_sent_anything() {
    let pods = HttpsPods::start(55, 2).await;
    let config = format!(
        "{}{}",
        preamble(None),
        route(
            &pods.targets_toml(55),
            &format!(
                "scheme = \"https\"\nca_file = \"{}\"",
                fixture("rogue-ca.pem").display()
            )
        ),
    );
    let router = TestRouter::start(&config).await;

    let answer = router.post("/cache/invalidate", "{}").await;
    assert_eq!(answer.status, StatusCode::BAD_GATEWAY, "{}", answer.json);
    for result in answer.json["results"].as_array().unwrap() {
        assert_eq!(result["error"], "connect", "{result}");
        let detail = result["detail"].as_str().unwrap();
        assert!(
            detail.contains("TLS handshake failed") && detail.contains("certificate"),
            "{detail}"
        );
    }
    assert_eq!(pods.counts(), [0, 0]);
}

#[tokio::test]
async fn a_renewed_listener_certificate_is_used_after_a_reload() {
    let pods = Pods::start(57, &[Behaviour::Ok]).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(fixture("server.pem"), dir.path().join("tls.crt")).unwrap();
    std::fs::copy(fixture("server.key"), dir.path().join("tls.key")).unwrap();
    let path = dir.path().join("router.toml");
    // Relative paths start at the configuration file's directory.
    let text = format!(
        "{}\n[server.tls]\ncert = \"tls.crt\"\nkey = \"tls.key\"\n{}",
        preamble(None),
        route(&pods.targets_toml(), "")
    );
    std::fs::write(&path, text).unwrap();
    let snapshot = Snapshot::read(&path).unwrap();
    let running = server::start_with(&snapshot.config, snapshot.origin.clone())
        .await
        .unwrap();
    let reloader = Reloader::new(Arc::clone(running.state()), path.clone(), &snapshot);
    let (status, _) = https_post(running.addr, client_config(None), "/cache/invalidate")
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK);

    // The renewed certificate (here: the pods', which does not name
    // 127.0.0.1) replaces the old one for new connections.
    std::fs::copy(fixture("pods.pem"), dir.path().join("tls.crt")).unwrap();
    std::fs::copy(fixture("pods.key"), dir.path().join("tls.key")).unwrap();
    let outcome = reloader.reload(Trigger::Watch).await.unwrap();
    assert!(matches!(outcome, Outcome::Reloaded(_)), "{outcome:?}");
    let refused = https_post(running.addr, client_config(None), "/cache/invalidate").await;
    let error = refused.expect_err("the renewed certificate is in use");
    assert!(error.contains("certificate"), "{error}");
    assert_eq!(pods.total(), 1);
    running.shutdown().await;
}

#[tokio::test]
async fn tls_problems_are_reported_with_their_location() {
    // Problems the configuration alone shows, all at once.
    let text = format!(
        "{}\n[server.tls]\ncert = \"server.pem\"\n{}",
        preamble(None),
        route(
            "[\"127.0.0.58:443\"]",
            "ca_file = \"ca.pem\"\nserver_name = \"not a name\""
        )
    );
    let problems = Config::parse(&text).unwrap_err().to_string();
    assert!(problems.contains("missing field `key`"), "{problems}");
    assert!(
        problems.contains("`ca_file` applies to pods reached over TLS"),
        "{problems}"
    );
    assert!(
        problems.contains("`server_name` `not a name` is not a DNS name"),
        "{problems}"
    );
    let lines: Vec<&str> = text.lines().collect();
    let tls_line = lines.iter().position(|l| *l == "[server.tls]").unwrap() + 1;
    let ca_line = lines.iter().position(|l| l.starts_with("ca_file")).unwrap() + 1;
    assert!(problems.contains(&format!("\n  {tls_line}:")), "{problems}");
    assert!(problems.contains(&format!("\n  {ca_line}:")), "{problems}");

    // Problems found reading the files: named with their table and file.
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not a certificate\n").unwrap();
    let missing_key = dir.path().join("missing.key");
    let text = format!(
        "{}\n[server.tls]\ncert = \"{}\"\nkey = \"{}\"\n{}",
        preamble(None),
        fixture("server.pem").display(),
        missing_key.display(),
        route(
            "[\"127.0.0.58:443\"]",
            &format!("scheme = \"https\"\nca_file = \"{}\"", garbage.display())
        )
    );
    let config = Config::parse(&text).unwrap();
    let Err(StartError::Build(BuildError::Load(problems))) = server::start(&config).await else {
        panic!("the router started with unusable TLS files");
    };
    let problems = problems.to_string();
    assert!(
        problems.contains(&format!("[server.tls] `key` {}", missing_key.display())),
        "{problems}"
    );
    assert!(
        problems.contains(&format!(
            "route \"invalidate\": `ca_file` {}",
            garbage.display()
        )),
        "{problems}"
    );
    let lines: Vec<&str> = text.lines().collect();
    let ca_line = lines.iter().position(|l| l.starts_with("ca_file")).unwrap() + 1;
    assert!(problems.contains(&format!("\n  {ca_line}:")), "{problems}");
}

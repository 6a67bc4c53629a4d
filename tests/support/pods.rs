//! Fake pods for integration tests: real HTTP servers on 127.0.0.2,
//! 127.0.0.3, … all on one port, as pods behind a headless Service share a
//! port on different IPs. Each pod records every request it receives and
//! behaves as its [`Behaviour`] says (answer, refuse, hang, reset, fail
//! first, wait for a gate).
#![allow(dead_code)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::Request;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// How one fake pod treats requests.
#[derive(Clone)]
pub enum Behaviour {
    /// Answers 200 with `{"pod":"<addr>"}`.
    Ok,
    /// Answers with this status.
    Status(u16),
    /// Nothing listens: connections are refused.
    Refuse,
    /// Accepts the request and never answers.
    Hang,
    /// Reads the request, then closes the connection without answering.
    Reset,
    /// Answers `status` to the first `times` requests, then 200.
    FailFirst {
        /// The failing status.
        status: u16,
        /// How many requests fail.
        times: usize,
    },
    /// Waits until the gate is opened (see [`Gate`]), then answers 200.
    Gated(Gate),
    /// Waits this long, then answers 200.
    Delay(Duration),
    /// Answers 200 to the first request of each connection (keeping it
    /// open), and closes the connection without reading or answering when
    /// a second request arrives on it: what a pod that closes an idle
    /// connection at the moment it is reused looks like to the router.
    /// Requests closed on are not recorded: the pod never handled them.
    OneRequestPerConnection,
    /// Answers 200, and closes a keep-alive connection that stays idle
    /// for this long (as Node.js does after 5 s, or many Python servers at
    /// once).
    CloseIdleAfter(Duration),
}

/// A gate pods wait on until the test opens it.
#[derive(Clone)]
pub struct Gate(Arc<Semaphore>);

impl Gate {
    /// A closed gate.
    pub fn new() -> Self {
        Self(Arc::new(Semaphore::new(0)))
    }

    /// Lets every waiting and future request through.
    pub fn open(&self) {
        self.0.add_permits(Semaphore::MAX_PERMITS / 2);
    }

    async fn wait(&self) {
        self.0.acquire().await.expect("gate never closes").forget();
    }
}

/// One request as a pod received it.
#[derive(Debug, Clone)]
pub struct Received {
    /// The method.
    pub method: String,
    /// Path and query.
    pub path: String,
    /// All headers.
    pub headers: HeaderMap,
    /// The body.
    pub body: Bytes,
}

impl Received {
    /// A header's value as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|value| value.to_str().ok())
    }
}

/// One fake pod.
#[derive(Clone)]
pub struct Pod {
    /// Its address.
    pub addr: SocketAddr,
    received: Arc<Mutex<Vec<Received>>>,
    unanswered: Arc<AtomicUsize>,
}

impl Pod {
    /// Every request received so far, in arrival order.
    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// Requests a [`Behaviour::OneRequestPerConnection`] pod closed the
    /// connection on, unread and unanswered.
    pub fn unanswered(&self) -> usize {
        self.unanswered.load(Ordering::SeqCst)
    }

    /// How many requests arrived.
    pub fn count(&self) -> usize {
        self.received.lock().unwrap().len()
    }

    /// The pod's IP.
    pub fn ip(&self) -> IpAddr {
        self.addr.ip()
    }
}

/// A set of fake pods sharing one port.
pub struct Pods {
    /// The shared port.
    pub port: u16,
    /// The pods, in address order.
    pub pods: Vec<Pod>,
    in_flight: Arc<AtomicUsize>,
    peak: Arc<AtomicUsize>,
}

impl Pods {
    /// Starts one pod per behaviour on consecutive loopback addresses from
    /// 127.0.0.`first_host`, picking a port free on all of them.
    pub async fn start(first_host: u8, behaviours: &[Behaviour]) -> Pods {
        let ips: Vec<IpAddr> = (0..behaviours.len())
            .map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, 0, first_host + i as u8)))
            .collect();
        'port: for _ in 0..50 {
            let first = TcpListener::bind((ips[0], 0)).await.expect("bind a pod");
            let port = first.local_addr().unwrap().port();
            let mut listeners = vec![first];
            for ip in &ips[1..] {
                match TcpListener::bind((*ip, port)).await {
                    Ok(listener) => listeners.push(listener),
                    Err(_) => continue 'port,
                }
            }
            let in_flight = Arc::new(AtomicUsize::new(0));
            let peak = Arc::new(AtomicUsize::new(0));
            let mut pods = Vec::new();
            for (listener, behaviour) in listeners.into_iter().zip(behaviours) {
                let addr = listener.local_addr().unwrap();
                let pod = Pod {
                    addr,
                    received: Arc::default(),
                    unanswered: Arc::default(),
                };
                let counters = (in_flight.clone(), peak.clone());
                serve(listener, pod.clone(), behaviour.clone(), counters);
                pods.push(pod);
            }
            return Pods {
                port,
                pods,
                in_flight,
                peak,
            };
        }
        panic!("no port free on all of {ips:?}");
    }

    /// The pods' addresses as TOML array items: `"127.0.0.2:1234", …`.
    pub fn targets_toml(&self) -> String {
        let items: Vec<String> = self
            .pods
            .iter()
            .map(|pod| format!("\"{}\"", pod.addr))
            .collect();
        format!("[{}]", items.join(", "))
    }

    /// The pods' IPs.
    pub fn ips(&self) -> Vec<IpAddr> {
        self.pods.iter().map(Pod::ip).collect()
    }

    /// The most requests the pods were handling at the same moment.
    pub fn peak_in_flight(&self) -> usize {
        self.peak.load(Ordering::SeqCst)
    }

    /// Requests received by all pods together.
    pub fn total(&self) -> usize {
        self.pods.iter().map(Pod::count).sum()
    }
}

fn serve(
    listener: TcpListener,
    pod: Pod,
    behaviour: Behaviour,
    (in_flight, peak): (Arc<AtomicUsize>, Arc<AtomicUsize>),
) {
    match behaviour {
        Behaviour::Refuse => drop(listener),
        Behaviour::Reset => {
            tokio::spawn(async move {
                while let Ok((mut stream, _)) = listener.accept().await {
                    let pod = pod.clone();
                    tokio::spawn(async move {
                        let mut buffer = vec![0; 64 * 1024];
                        if let Ok(read) = stream.read(&mut buffer).await {
                            pod.received.lock().unwrap().push(Received {
                                method: String::new(),
                                path: String::new(),
                                headers: HeaderMap::new(),
                                body: Bytes::copy_from_slice(&buffer[..read]),
                            });
                        }
                        drop(stream);
                    });
                }
            });
        }
        Behaviour::OneRequestPerConnection => {
            tokio::spawn(serve_per_connection(listener, pod, None));
        }
        Behaviour::CloseIdleAfter(idle) => {
            tokio::spawn(serve_per_connection(listener, pod, Some(idle)));
        }
        behaviour => {
            let failures = Arc::new(AtomicUsize::new(0));
            let app = axum::Router::new().fallback(move |request: Request| {
                let pod = pod.clone();
                let behaviour = behaviour.clone();
                let failures = failures.clone();
                let (in_flight, peak) = (in_flight.clone(), peak.clone());
                async move {
                    let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                    peak.fetch_max(now, Ordering::SeqCst);
                    let response = answer(&pod, &behaviour, &failures, request).await;
                    in_flight.fetch_sub(1, Ordering::SeqCst);
                    response
                }
            });
            tokio::spawn(async move { axum::serve(listener, app).await });
        }
    }
}

async fn answer(
    pod: &Pod,
    behaviour: &Behaviour,
    failures: &AtomicUsize,
    request: Request,
) -> Response {
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, usize::MAX)
        .await
        .unwrap_or_default();
    pod.received.lock().unwrap().push(Received {
        method: parts.method.to_string(),
        path: parts.uri.to_string(),
        headers: parts.headers,
        body,
    });
    let ok = || (StatusCode::OK, format!("{{\"pod\":\"{}\"}}", pod.addr)).into_response();
    match behaviour {
        Behaviour::Ok => ok(),
        Behaviour::Status(status) => StatusCode::from_u16(*status).unwrap().into_response(),
        Behaviour::Hang => std::future::pending().await,
        Behaviour::FailFirst { status, times } => {
            if failures.fetch_add(1, Ordering::SeqCst) < *times {
                StatusCode::from_u16(*status).unwrap().into_response()
            } else {
                ok()
            }
        }
        Behaviour::Gated(gate) => {
            gate.wait().await;
            ok()
        }
        Behaviour::Delay(delay) => {
            tokio::time::sleep(*delay).await;
            ok()
        }
        Behaviour::Refuse
        | Behaviour::Reset
        | Behaviour::OneRequestPerConnection
        | Behaviour::CloseIdleAfter(_) => unreachable!("served by its own loop"),
    }
}

/// Serves each connection with hyper: with `idle`, answering every
/// request and closing the connection after `idle` without a new one;
/// without, answering only the first request and closing the connection
/// when a second one arrives.
async fn serve_per_connection(listener: TcpListener, pod: Pod, idle: Option<Duration>) {
    use hyper_util::rt::{TokioIo, TokioTimer};

    while let Ok((stream, _)) = listener.accept().await {
        let pod = pod.clone();
        let served = Arc::new(AtomicUsize::new(0));
        let service =
            hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                let pod = pod.clone();
                let served = served.clone();
                async move {
                    if idle.is_none() && served.fetch_add(1, Ordering::SeqCst) > 0 {
                        pod.unanswered.fetch_add(1, Ordering::SeqCst);
                        // Close instead of answering: an error ends the
                        // connection without a response.
                        return Err(std::io::Error::other("closing the reused connection"));
                    }
                    let response = answer(
                        &pod,
                        &Behaviour::Ok,
                        &AtomicUsize::new(0),
                        request.map(axum::body::Body::new),
                    )
                    .await;
                    Ok(response)
                }
            });
        let mut http = hyper::server::conn::http1::Builder::new();
        http.timer(TokioTimer::new()).keep_alive(true);
        if let Some(idle) = idle {
            // hyper's header read timeout also runs while a keep-alive
            // connection waits for its next request.
            http.header_read_timeout(idle);
        }
        tokio::spawn(async move {
            let _ = http.serve_connection(TokioIo::new(stream), service).await;
        });
    }
}

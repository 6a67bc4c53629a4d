//! The load generator: a fixed number of closed-loop clients, each sending
//! one broadcast at a time for a fixed time, either
//!
//! - through the router ([`Target::Router`]): one keep-alive HTTP/1.1
//!   connection per client (hyper's low-level client, the cheapest there
//!   is), one `POST` per broadcast, the answer read whole; or
//! - directly ([`Target::Direct`], the baseline): the client itself sends
//!   the broadcast's copy to every pod, with the same per-broadcast
//!   concurrency cap and the same pooled HTTP client (reqwest) the router
//!   uses, and for the `first` policy moves on at the first success while
//!   the other copies finish in the background, as the router does.
//!
//! Every broadcast carries `X-Broadcast-Id: bN` with a number `N` unique in
//! the run, so the pods can show they received each one exactly once
//! ([`Tally`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{CONTENT_TYPE, HOST};
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use tokio::net::TcpStream;
use tokio::task::JoinSet;

/// How long one broadcast may take before the client counts an error.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// The shard key every request carries (the shard-filter plugin hashes it).
pub const SHARD_KEY: &str = "user:42";

/// Count, sum and sum of squares (both wrapping) of broadcast numbers: two
/// sets of distinct numbers with equal tallies are, for all practical
/// purposes, the same set.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tally {
    /// How many numbers.
    pub count: u64,
    /// Their sum.
    pub sum: u64,
    /// The sum of their squares.
    pub squares: u64,
}

impl Tally {
    fn add(&mut self, number: u64) {
        self.count += 1;
        self.sum = self.sum.wrapping_add(number);
        self.squares = self.squares.wrapping_add(number.wrapping_mul(number));
    }

    fn remove(&mut self, number: u64) {
        self.count -= 1;
        self.sum = self.sum.wrapping_sub(number);
        self.squares = self.squares.wrapping_sub(number.wrapping_mul(number));
    }

    fn merge(&mut self, other: Tally) {
        self.count += other.count;
        self.sum = self.sum.wrapping_add(other.sum);
        self.squares = self.squares.wrapping_add(other.squares);
    }

    /// What was added since `earlier`.
    pub fn since(self, earlier: Tally) -> Tally {
        Tally {
            count: self.count - earlier.count,
            sum: self.sum.wrapping_sub(earlier.sum),
            squares: self.squares.wrapping_sub(earlier.squares),
        }
    }
}

/// Where the clients send their broadcasts.
#[derive(Clone)]
pub enum Target {
    /// Through the router: one request per broadcast.
    Router {
        /// The router's broadcast listener.
        addr: SocketAddr,
        /// The route's path.
        path: String,
    },
    /// The baseline: every pod's copy sent by the client itself.
    Direct {
        /// Every pod's URL.
        urls: Arc<[String]>,
        /// Most copies of one broadcast in flight at once.
        concurrency: usize,
        /// Answer at the first success, as the `first` policy does.
        first: bool,
    },
}

/// How much load, and what each broadcast carries.
#[derive(Clone)]
pub struct Load {
    /// Concurrent closed-loop clients.
    pub clients: usize,
    /// How long clients start new broadcasts.
    pub duration: Duration,
    /// The request body.
    pub body: Bytes,
}

/// What one load run measured.
#[derive(Debug, Default)]
pub struct Measured {
    /// From the start until every client's last broadcast was answered.
    pub elapsed: Duration,
    /// Broadcasts answered with success.
    pub ok: u64,
    /// Broadcasts that failed (status, transport error, timeout), plus
    /// background copies that failed after a `first` answer (baseline).
    pub errors: u64,
    /// Broadcasts the router refused with 429 (its cap on deliveries in
    /// flight): nothing was sent to the pods.
    pub refused: u64,
    /// The latency of every successful broadcast, sorted.
    pub latencies: Vec<Duration>,
    /// The broadcast numbers sent.
    pub issued: Tally,
    /// The first error, in words.
    pub first_error: Option<String>,
}

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Percentiles {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// The slowest.
    pub max: f64,
}

impl Percentiles {
    /// Percentiles of sorted latencies (zeros when there are none).
    pub fn of(sorted: &[Duration]) -> Percentiles {
        let at = |q: f64| -> f64 {
            if sorted.is_empty() {
                return 0.0;
            }
            let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
            sorted[rank - 1].as_secs_f64() * 1e6
        };
        Percentiles {
            p50: at(0.50),
            p90: at(0.90),
            p99: at(0.99),
            max: at(1.0),
        }
    }
}

/// One client's share of a run.
#[derive(Default)]
struct ClientRun {
    ok: u64,
    errors: u64,
    refused: u64,
    latencies: Vec<Duration>,
    issued: Tally,
    first_error: Option<String>,
    background: JoinSet<(u64, Option<String>)>,
}

impl ClientRun {
    fn failed(&mut self, error: impl FnOnce() -> String) {
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(error());
        }
    }
}

/// Runs `load` against `target`; `ids` numbers the broadcasts.
pub async fn run(target: &Target, load: &Load, ids: &Arc<AtomicU64>) -> Measured {
    let started = Instant::now();
    let stop_at = started + load.duration;
    let direct_client = match target {
        Target::Direct { .. } => Some(
            reqwest::Client::builder()
                .no_proxy()
                .redirect(reqwest::redirect::Policy::none())
                .tcp_nodelay(true)
                .pool_idle_timeout(Duration::from_secs(30))
                // The harness holds both ends of every baseline connection:
                // keep no more idle ones per pod than there are clients, or
                // `first` at 1,000 pods runs out of file descriptors.
                .pool_max_idle_per_host(load.clients.max(1))
                .build()
                .expect("the baseline HTTP client builds"),
        ),
        Target::Router { .. } => None,
    };
    let mut clients = JoinSet::new();
    for _ in 0..load.clients.max(1) {
        let (target, load, ids) = (target.clone(), load.clone(), Arc::clone(ids));
        let direct_client = direct_client.clone();
        clients.spawn(async move {
            let mut run = ClientRun::default();
            match target {
                Target::Router { addr, path } => {
                    router_client(&mut run, addr, &path, &load, &ids, stop_at).await;
                }
                Target::Direct {
                    urls,
                    concurrency,
                    first,
                } => {
                    let http = direct_client.expect("built for direct targets");
                    let fanout = Fanout {
                        http,
                        urls,
                        concurrency,
                        first,
                    };
                    while Instant::now() < stop_at {
                        fanout.broadcast(&mut run, &load, &ids).await;
                    }
                }
            }
            run
        });
    }
    let mut measured = Measured::default();
    let mut background = Vec::new();
    while let Some(joined) = clients.join_next().await {
        let run = joined.expect("a load client does not panic");
        measured.ok += run.ok;
        measured.errors += run.errors;
        measured.refused += run.refused;
        measured.latencies.extend(run.latencies);
        measured.issued.merge(run.issued);
        measured.first_error = measured.first_error.or(run.first_error);
        background.push(run.background);
    }
    measured.elapsed = started.elapsed();
    for mut set in background {
        while let Some(joined) = set.join_next().await {
            let (errors, first_error) = joined.expect("a background fan-out does not panic");
            measured.errors += errors;
            measured.first_error = measured.first_error.or(first_error);
        }
    }
    measured.latencies.sort_unstable();
    measured
}

async fn router_client(
    run: &mut ClientRun,
    addr: SocketAddr,
    path: &str,
    load: &Load,
    ids: &AtomicU64,
    stop_at: Instant,
) {
    let mut connection: Option<SendRequest<Full<Bytes>>> = None;
    while Instant::now() < stop_at {
        let sender = match &mut connection {
            Some(sender) => sender,
            None => match connect(addr).await {
                Ok(sender) => connection.insert(sender),
                Err(error) => {
                    run.failed(|| format!("cannot connect to the router: {error}"));
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let number = ids.fetch_add(1, Ordering::Relaxed);
        run.issued.add(number);
        let request = hyper::Request::post(path)
            .header(HOST, addr.to_string())
            .header(CONTENT_TYPE, "application/json")
            .header("x-broadcast-id", format!("b{number}"))
            .header("x-shard-key", SHARD_KEY)
            .body(Full::new(load.body.clone()))
            .expect("a valid request");
        let sent = Instant::now();
        let exchange = async {
            sender.ready().await?;
            let response = sender.send_request(request).await?;
            let status = response.status();
            let body = response.into_body().collect().await?.to_bytes();
            Ok::<_, hyper::Error>((status, body))
        };
        match tokio::time::timeout(REQUEST_TIMEOUT, exchange).await {
            Ok(Ok((status, _))) if status == hyper::StatusCode::OK => {
                run.ok += 1;
                run.latencies.push(sent.elapsed());
            }
            Ok(Ok((status, _))) if status == hyper::StatusCode::TOO_MANY_REQUESTS => {
                // Admission control: nothing reached the pods.
                run.refused += 1;
                run.issued.remove(number);
            }
            Ok(Ok((status, body))) => run.failed(|| {
                let start = &body[..body.len().min(300)];
                format!(
                    "the router answered {status}: {}",
                    String::from_utf8_lossy(start)
                )
            }),
            Ok(Err(error)) => {
                run.failed(|| format!("request to the router failed: {error}"));
                connection = None;
            }
            Err(_) => {
                run.failed(|| format!("no answer from the router within {REQUEST_TIMEOUT:?}"));
                connection = None;
            }
        }
    }
}

async fn connect(addr: SocketAddr) -> anyhow::Result<SendRequest<Full<Bytes>>> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    Ok(sender)
}

/// The baseline's fan-out: what the router does, minus the router.
struct Fanout {
    http: reqwest::Client,
    urls: Arc<[String]>,
    concurrency: usize,
    first: bool,
}

impl Fanout {
    async fn broadcast(&self, run: &mut ClientRun, load: &Load, ids: &AtomicU64) {
        // With `first`, the copies after the answer go on in the
        // background; a client keeps at most one such tail running while
        // it sends its next broadcast, so the baseline's work in flight
        // stays bounded (the router bounds its own with a 429).
        while run.background.len() > 1 {
            if let Some(joined) = run.background.join_next().await {
                let (errors, first_error) = joined.expect("a background fan-out does not panic");
                run.errors += errors;
                run.first_error = run.first_error.take().or(first_error);
            }
        }
        let number = ids.fetch_add(1, Ordering::Relaxed);
        run.issued.add(number);
        let id = format!("b{number}");
        let (http, urls, body) = (self.http.clone(), Arc::clone(&self.urls), load.body.clone());
        let sent = Instant::now();
        let mut copies = futures_util::stream::iter(0..urls.len())
            .map(move |index| deliver(http.clone(), urls[index].clone(), body.clone(), id.clone()))
            .buffer_unordered(self.concurrency.max(1));
        let mut failed: Option<String> = None;
        let mut answered = false;
        while let Some(copy) = copies.next().await {
            match copy {
                Ok(()) if self.first => {
                    answered = true;
                    break;
                }
                Ok(()) => {}
                Err(error) => {
                    failed.get_or_insert(error);
                }
            }
        }
        let elapsed = sent.elapsed();
        if answered {
            run.background.spawn(async move {
                let mut errors = 0;
                let mut first_error = None;
                while let Some(copy) = copies.next().await {
                    if let Err(error) = copy {
                        errors += 1;
                        first_error.get_or_insert(error);
                    }
                }
                (errors, first_error)
            });
        }
        let success = if self.first {
            answered
        } else {
            failed.is_none()
        };
        if success {
            run.ok += 1;
            run.latencies.push(elapsed);
        }
        // A failed copy is an error even when `first` answered anyway.
        if let Some(error) = failed {
            run.failed(|| error);
        }
    }
}

/// Sends one pod its copy and reads the whole answer.
async fn deliver(
    http: reqwest::Client,
    url: String,
    body: Bytes,
    id: String,
) -> Result<(), String> {
    let exchange = async {
        let response = http
            .post(&url)
            .header(CONTENT_TYPE, "application/json")
            .header("x-broadcast-id", &id)
            .header("x-shard-key", SHARD_KEY)
            .body(body)
            .send()
            .await
            .map_err(|error| format!("{url}: {error}"))?;
        let status = response.status();
        response
            .bytes()
            .await
            .map_err(|error| format!("{url}: {error}"))?;
        if status.is_success() {
            Ok(())
        } else {
            Err(format!("{url} answered {status}"))
        }
    };
    match tokio::time::timeout(REQUEST_TIMEOUT, exchange).await {
        Ok(result) => result,
        Err(_) => Err(format!("{url}: no answer within {REQUEST_TIMEOUT:?}")),
    }
}

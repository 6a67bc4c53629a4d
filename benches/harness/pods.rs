//! Benchmark pods: minimal hyper HTTP/1.1 servers on consecutive loopback
//! addresses sharing one port, as the pods behind a headless Service do.
//!
//! Each pod reads the whole request, answers 200 with a small JSON body,
//! and keeps a [`Tally`] of what it received: how many requests, and the
//! sum and sum of squares of their broadcast numbers (the `N` of an
//! `X-Broadcast-Id: bN` header). Comparing a pod's tally with the tally of
//! the ids the load generator sent shows that it received every broadcast
//! exactly once, without storing a single id.

use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::load::Tally;

/// The answer every pod gives.
const ANSWER: &[u8] = br#"{"ok":true}"#;

/// What one pod has received so far.
#[derive(Default)]
struct Counter {
    count: AtomicU64,
    sum: AtomicU64,
    squares: AtomicU64,
}

impl Counter {
    fn record(&self, number: u64) {
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum.fetch_add(number, Ordering::Relaxed);
        self.squares
            .fetch_add(number.wrapping_mul(number), Ordering::Relaxed);
    }

    fn tally(&self) -> Tally {
        Tally {
            count: self.count.load(Ordering::Relaxed),
            sum: self.sum.load(Ordering::Relaxed),
            squares: self.squares.load(Ordering::Relaxed),
        }
    }
}

/// A set of pods sharing one port; stopped when dropped.
pub struct Pods {
    /// The shared port.
    pub port: u16,
    /// Every pod's address, in order.
    pub addrs: Vec<SocketAddr>,
    counters: Arc<[Counter]>,
    stop: CancellationToken,
}

/// The address of pod `index` in the block starting at `127.0.<block>.1`:
/// 250 pods per /24 (`.1` to `.250`), then the next /24.
pub fn pod_ip(block: u8, index: usize) -> IpAddr {
    let third = usize::from(block) + index / 250;
    let third = u8::try_from(third).expect("the pod block fits in 127.0.0.0/8");
    IpAddr::V4(Ipv4Addr::new(127, 0, third, 1 + (index % 250) as u8))
}

impl Pods {
    /// Starts `count` pods on `127.0.<block>.1` onwards, on one port that is
    /// free on all of their addresses.
    pub async fn start(block: u8, count: usize) -> anyhow::Result<Pods> {
        anyhow::ensure!(count > 0, "at least one pod");
        let ips: Vec<IpAddr> = (0..count).map(|index| pod_ip(block, index)).collect();
        'port: for _ in 0..50 {
            let first = TcpListener::bind((ips[0], 0)).await?;
            let port = first.local_addr()?.port();
            let mut listeners = vec![first];
            for ip in &ips[1..] {
                match TcpListener::bind((*ip, port)).await {
                    Ok(listener) => listeners.push(listener),
                    Err(_) => continue 'port,
                }
            }
            let counters: Arc<[Counter]> = (0..count).map(|_| Counter::default()).collect();
            let stop = CancellationToken::new();
            for (index, listener) in listeners.into_iter().enumerate() {
                tokio::spawn(serve(listener, Arc::clone(&counters), index, stop.clone()));
            }
            let addrs = ips.iter().map(|ip| SocketAddr::new(*ip, port)).collect();
            return Ok(Pods {
                port,
                addrs,
                counters,
                stop,
            });
        }
        anyhow::bail!("no port is free on all of {} pod addresses", ips.len())
    }

    /// The pods' IPs.
    pub fn ips(&self) -> Vec<IpAddr> {
        self.addrs.iter().map(SocketAddr::ip).collect()
    }

    /// Every pod's tally, in pod order.
    pub fn tallies(&self) -> Vec<Tally> {
        self.counters.iter().map(Counter::tally).collect()
    }

    /// Requests received by all pods together.
    pub fn total(&self) -> u64 {
        self.counters
            .iter()
            .map(|counter| counter.count.load(Ordering::Relaxed))
            .sum()
    }

    /// Waits until the pods together have received `total` requests (the
    /// background deliveries of a `first` broadcast arrive after its
    /// answer), for at most `patience`. Returns whether they did.
    pub async fn settle(&self, total: u64, patience: Duration) -> bool {
        let give_up = tokio::time::Instant::now() + patience;
        loop {
            let now = self.total();
            if now >= total {
                // Anything beyond `total` would be a duplicate; give it a
                // moment to show up, so the check after us sees it.
                tokio::time::sleep(Duration::from_millis(20)).await;
                return self.total() == total;
            }
            if tokio::time::Instant::now() >= give_up {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for Pods {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Accepts connections for one pod until stopped.
async fn serve(
    listener: TcpListener,
    counters: Arc<[Counter]>,
    index: usize,
    stop: CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = stop.cancelled() => return,
        };
        let Ok((stream, _)) = accepted else {
            // Out of file descriptors, most likely: back off a little.
            tokio::time::sleep(Duration::from_millis(5)).await;
            continue;
        };
        let _ = stream.set_nodelay(true);
        let counters = Arc::clone(&counters);
        let stop = stop.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request: Request<Incoming>| {
                let counters = Arc::clone(&counters);
                async move {
                    let number = broadcast_number(&request);
                    // Read the whole body, as a real pod would.
                    let _ = request.into_body().collect().await;
                    counters[index].record(number);
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(ANSWER))))
                }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                _ = connection => {}
                () = stop.cancelled() => {}
            }
        });
    }
}

/// The `N` of an `X-Broadcast-Id: bN` header (0 without one).
fn broadcast_number(request: &Request<Incoming>) -> u64 {
    request
        .headers()
        .get("x-broadcast-id")
        .and_then(|value| value.to_str().ok())
        .and_then(|id| id.strip_prefix('b'))
        .and_then(|number| number.parse().ok())
        .unwrap_or(0)
}

//! Fan-out: delivering one request to every target, concurrently.
//!
//! One pooled HTTP client (keep-alive) serves every broadcast. Each target
//! gets a [`Delivery`]: up to `1 + retries` attempts, each bounded by the
//! route's `timeout`, retried after a connect error, a timeout or a
//! 502/503/504 with exponential backoff and jitter. At most `concurrency`
//! attempts of one broadcast are in flight at once (backoff sleeps do not
//! hold a slot), and nothing outlives the broadcast's `deadline`: a target
//! still waiting or mid-attempt then gets the `deadline` error. Every target
//! always gets exactly one outcome.
//!
//! The request body is shared by all pods (`Bytes` is reference-counted),
//! never copied per pod, and so is its parsed path: pods that share one
//! request share one parse. Each exchange goes through [`PodClient`], over
//! pooled keep-alive connections.

mod client;
pub mod headers;
pub mod udp;

pub use client::PodClient;

use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::FuturesUnordered;
use http::{HeaderMap, StatusCode, Uri};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tracing::Instrument;

use crate::route::Limits;
use crate::tls::PodTls;
pub use crate::vocabulary::delivery::{Delivery, DeliveryError, ErrorKind, PodBody, PodRequest};
use crate::vocabulary::target::Target;

/// The shared delivery machinery.
#[derive(Clone)]
pub struct Fanout {
    /// Pod requests, over pooled connections.
    pods: Arc<PodClient>,
    /// Reports to collectors (`report_to`).
    client: reqwest::Client,
}

impl Fanout {
    /// Builds the pod client, keeping idle pod connections for
    /// `pod_idle_timeout`, and the collectors' HTTP client.
    pub fn new(pod_idle_timeout: Duration) -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .tcp_nodelay(true)
            .pool_idle_timeout(pod_idle_timeout)
            .build()?;
        Ok(Self {
            pods: Arc::new(PodClient::new(pod_idle_timeout)),
            client,
        })
    }

    /// The HTTP client reports are sent to collectors with.
    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    /// The pod client (to change its idle timeout on reload).
    pub fn pods(&self) -> &PodClient {
        &self.pods
    }

    /// Delivers `requests[i]` to `targets[i]` for every target, over
    /// `tls` when the route reaches its pods by HTTPS; yields `(position,
    /// outcome)` as deliveries finish. Exactly one outcome per target, all
    /// of them by the deadline.
    pub fn deliver_all<'a>(
        &'a self,
        requests: &'a [Arc<PodRequest>],
        targets: &'a [Target],
        limits: &'a Limits,
        tls: Option<&'a PodTls>,
        started: Instant,
    ) -> impl futures_util::Stream<Item = (usize, Delivery)> + 'a {
        let schedule = Arc::new(Schedule {
            slots: Semaphore::new(limits.concurrency.max(1)),
            started,
            deadline: started + limits.deadline,
        });
        let mut uris = PodUris::default();
        targets
            .iter()
            .zip(requests)
            .enumerate()
            .map(move |(position, (target, request))| {
                let schedule = Arc::clone(&schedule);
                let uri = uris.uri(request);
                let span = tracing::debug_span!("delivery", target = %target);
                async move {
                    let delivery = self
                        .deliver(target, request, uri, limits, tls, &schedule)
                        .await;
                    tracing::debug!(
                        outcome = delivery.outcome(),
                        attempts = delivery.attempts,
                        "Delivery finished."
                    );
                    (position, delivery)
                }
                .instrument(span)
            })
            .collect::<FuturesUnordered<_>>()
    }

    async fn deliver(
        &self,
        target: &Target,
        request: &PodRequest,
        uri: Result<Uri, String>,
        limits: &Limits,
        tls: Option<&PodTls>,
        schedule: &Schedule,
    ) -> Delivery {
        let Schedule {
            slots,
            started,
            deadline,
        } = schedule;
        let (started, deadline) = (*started, *deadline);
        let mut attempts = 0;
        let mut last: Option<Attempt> = None;
        loop {
            let outcome = tokio::time::timeout_at(deadline, async {
                let _slot = slots.acquire().await.expect("semaphore never closes");
                attempts += 1;
                self.attempt(target, request, &uri, limits, tls).await
            })
            .await;
            let result = match outcome {
                Ok(result) => result,
                Err(_) => {
                    let detail = format!(
                        "the broadcast deadline ({}) passed after {attempts} attempt(s)",
                        humantime::format_duration(limits.deadline)
                    );
                    let (status, body, headers) = match last {
                        Some(attempt) => (attempt.status, attempt.body, attempt.headers),
                        None => (None, None, HeaderMap::new()),
                    };
                    return Delivery {
                        status,
                        attempts,
                        latency: started.elapsed(),
                        error: Some(DeliveryError {
                            kind: ErrorKind::Deadline,
                            detail,
                        }),
                        body,
                        headers,
                    };
                }
            };
            let retryable = result.retryable();
            last = Some(result);
            if !retryable || attempts > limits.retries {
                break;
            }
            let backoff = backoff(limits.retry_backoff, attempts);
            if Instant::now() + backoff >= deadline {
                break; // a retry could not finish in time; report what we have
            }
            tokio::time::sleep(backoff).await;
        }
        let last = last.expect("at least one attempt ran");
        Delivery {
            status: last.status,
            attempts,
            latency: started.elapsed(),
            error: last.error,
            body: last.body,
            headers: last.headers,
        }
    }

    async fn attempt(
        &self,
        target: &Target,
        request: &PodRequest,
        uri: &Result<Uri, String>,
        limits: &Limits,
        tls: Option<&PodTls>,
    ) -> Attempt {
        let uri = match uri {
            Ok(uri) => uri,
            Err(detail) => return Attempt::failed(ErrorKind::Protocol, detail.clone()),
        };
        let exchange =
            self.pods
                .exchange(target.addr, tls, request, uri, limits.max_pod_body_bytes);
        match tokio::time::timeout(limits.timeout, exchange).await {
            Err(_) => Attempt::failed(
                ErrorKind::Timeout,
                format!(
                    "no complete answer within {}",
                    humantime::format_duration(limits.timeout)
                ),
            ),
            Ok(Err(error)) => Attempt {
                status: None,
                error: Some(error),
                body: None,
                headers: HeaderMap::new(),
            },
            // The answer broke off in its body: it is not an answer, so
            // it reports no status.
            Ok(Ok(client::Answer {
                headers,
                body: Err(error),
                ..
            })) => Attempt {
                status: None,
                error: Some(error),
                body: None,
                headers,
            },
            Ok(Ok(client::Answer {
                status,
                headers,
                body: Ok(body),
            })) => Attempt {
                headers,
                status: Some(status),
                error: (!status.is_success()).then(|| DeliveryError {
                    kind: ErrorKind::Status,
                    detail: format!("the pod answered {status}"),
                }),
                body: Some(body),
            },
        }
    }
}

/// When one broadcast's deliveries may run: its concurrency slots, its
/// start and its deadline.
struct Schedule {
    slots: Semaphore,
    started: Instant,
    deadline: Instant,
}

/// Each request's path as a URI. Pods that share one request (no plugin
/// transformed it) share one parse.
#[derive(Default)]
struct PodUris<'a> {
    last: Option<(&'a Arc<PodRequest>, Result<Uri, String>)>,
}

impl<'a> PodUris<'a> {
    /// The origin-form URI of `request`'s path and query, or why it is not
    /// one.
    fn uri(&mut self, request: &'a Arc<PodRequest>) -> Result<Uri, String> {
        if let Some((shared, uri)) = &self.last
            && Arc::ptr_eq(shared, request)
        {
            return uri.clone();
        }
        let uri = parse_path(&request.path_and_query);
        self.last = Some((request, uri.clone()));
        uri
    }
}

/// `path_and_query` as an origin-form URI (`/path?query`).
fn parse_path(path_and_query: &str) -> Result<Uri, String> {
    let invalid = |error: &dyn std::fmt::Display| {
        format!("invalid upstream path {path_and_query:?}: {error}")
    };
    if !path_and_query.starts_with('/') {
        return Err(invalid(&"it does not start with `/`"));
    }
    let uri = path_and_query
        .parse::<Uri>()
        .map_err(|error| invalid(&error))?;
    match uri.path_and_query() {
        Some(parsed) if uri.scheme().is_none() && parsed.as_str() == path_and_query => Ok(uri),
        _ => Err(invalid(&"it is not a path and query")),
    }
}

/// One attempt's outcome.
struct Attempt {
    status: Option<StatusCode>,
    error: Option<DeliveryError>,
    body: Option<PodBody>,
    headers: HeaderMap,
}

impl Attempt {
    fn failed(kind: ErrorKind, detail: String) -> Self {
        Self {
            status: None,
            error: Some(DeliveryError { kind, detail }),
            body: None,
            headers: HeaderMap::new(),
        }
    }

    /// Connect errors, timeouts and 502/503/504 are worth another attempt;
    /// anything else (including resets, where the pod may have acted on the
    /// request) is final.
    fn retryable(&self) -> bool {
        match &self.error {
            None => false,
            Some(error) => match error.kind {
                ErrorKind::Connect | ErrorKind::Timeout => true,
                ErrorKind::Status => matches!(
                    self.status,
                    Some(
                        StatusCode::BAD_GATEWAY
                            | StatusCode::SERVICE_UNAVAILABLE
                            | StatusCode::GATEWAY_TIMEOUT
                    )
                ),
                _ => false,
            },
        }
    }
}

/// Exponential backoff with "equal jitter": half fixed, half random.
fn backoff(base: Duration, attempts: u32) -> Duration {
    let exponential = base
        .saturating_mul(1 << attempts.saturating_sub(1).min(16))
        .min(Duration::from_secs(10));
    let half = exponential / 2;
    half + half.mul_f64(fastrand::f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    use bytes::Bytes;
    use http::Method;

    #[test]
    fn pod_uris_are_parsed_once_per_request_and_only_as_paths() {
        let request = |path: &str| {
            Arc::new(PodRequest {
                method: Method::POST,
                path_and_query: path.to_owned(),
                headers: HeaderMap::new(),
                body: Bytes::new(),
            })
        };
        let shared = request("/cache/a%20b/../c?key=user:42&x=%2F");
        let other = request("/other");
        let bad: Vec<_> = ["http://evil.example/x", "x", "/a b", "*"]
            .into_iter()
            .map(request)
            .collect();
        let mut uris = PodUris::default();
        let first = uris.uri(&shared).unwrap();
        assert_eq!(first, "/cache/a%20b/../c?key=user:42&x=%2F");
        assert_eq!(uris.uri(&shared).unwrap(), first);
        assert_eq!(uris.uri(&other).unwrap(), "/other");
        for bad in &bad {
            assert!(uris.uri(bad).is_err(), "{:?} accepted", bad.path_and_query);
        }
    }

    #[test]
    fn backoff_grows_and_stays_jittered_within_bounds() {
        let base = Duration::from_millis(100);
        for attempts in 1..6 {
            let full = base * (1 << (attempts - 1));
            let delay = backoff(base, attempts);
            assert!(
                delay >= full / 2 && delay <= full,
                "{delay:?} for {attempts}"
            );
        }
        assert!(backoff(base, 40) <= Duration::from_secs(10));
    }
}

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
//! never copied per pod, and so is the parsed URL: pods that share one
//! request get its URL with only the address changed.

pub mod headers;
pub mod udp;

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use futures_util::stream::FuturesUnordered;
use http::{HeaderMap, StatusCode};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tracing::Instrument;

use crate::route::Limits;
use crate::tls::{PodTls, PodTlsError};
pub use crate::vocabulary::delivery::{Delivery, DeliveryError, ErrorKind, PodBody, PodRequest};
use crate::vocabulary::target::Target;

/// The shared delivery machinery.
#[derive(Clone)]
pub struct Fanout {
    client: reqwest::Client,
}

impl Fanout {
    /// Builds the shared, pooled HTTP client.
    pub fn new() -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .tcp_nodelay(true)
            .pool_idle_timeout(Duration::from_secs(30))
            .build()?;
        Ok(Self { client })
    }

    /// The shared HTTP client (also used to send reports to collectors).
    pub fn client(&self) -> &reqwest::Client {
        &self.client
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
        let mut urls = PodUrls::default();
        targets
            .iter()
            .zip(requests)
            .enumerate()
            .map(move |(position, (target, request))| {
                let schedule = Arc::clone(&schedule);
                let url = urls.url(request, target);
                let span = tracing::debug_span!("delivery", target = %target);
                async move {
                    let delivery = self.deliver(request, url, limits, tls, &schedule).await;
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
        request: &PodRequest,
        url: Result<reqwest::Url, String>,
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
                self.attempt(request, &url, limits, tls).await
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
        request: &PodRequest,
        url: &Result<reqwest::Url, String>,
        limits: &Limits,
        tls: Option<&PodTls>,
    ) -> Attempt {
        let url = match url {
            Ok(url) => url.clone(),
            Err(detail) => return Attempt::failed(ErrorKind::Protocol, detail.clone()),
        };
        let exchange = async {
            // Built directly rather than through a `RequestBuilder`, which
            // would re-insert every header one by one.
            let mut pod_request = reqwest::Request::new(request.method.clone(), url);
            *pod_request.headers_mut() = request.headers.clone();
            *pod_request.body_mut() = Some(request.body.clone().into());
            let mut response = match tls {
                None => self
                    .client
                    .execute(pod_request)
                    .await
                    .map_err(|error| classify(&error))?,
                Some(tls) => tls
                    .execute(pod_request)
                    .await
                    .map_err(|error| classify_tls(&error))?,
            };
            let status = response.status();
            let headers = std::mem::take(response.headers_mut());
            let body = read_capped(response, limits.max_pod_body_bytes).await;
            Ok::<_, DeliveryError>((status, headers, body))
        };
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
            Ok(Ok((status, headers, Err(error)))) => Attempt {
                status: Some(status),
                error: Some(error),
                body: None,
                headers,
            },
            Ok(Ok((status, headers, Ok(body)))) => Attempt {
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

/// Each pod's URL. Parsing a URL is a large part of a delivery's cost, so
/// pods that share one request (no plugin transformed it) get the URL
/// parsed for the first of them, with only the address replaced.
#[derive(Default)]
struct PodUrls<'a> {
    last: Option<(&'a Arc<PodRequest>, reqwest::Url)>,
}

impl<'a> PodUrls<'a> {
    /// `http://{target}{path_and_query}`, or why it is not a valid URL.
    fn url(
        &mut self,
        request: &'a Arc<PodRequest>,
        target: &Target,
    ) -> Result<reqwest::Url, String> {
        let template = match &self.last {
            Some((shared, url)) if Arc::ptr_eq(shared, request) => url.clone(),
            _ => {
                let text = format!("http://0.0.0.0{}", request.path_and_query);
                let url = reqwest::Url::parse(&text).map_err(|error| {
                    format!(
                        "invalid upstream path {:?}: {error}",
                        request.path_and_query
                    )
                })?;
                self.last = Some((request, url.clone()));
                url
            }
        };
        let mut url = template;
        url.set_ip_host(target.addr.ip())
            .and_then(|()| url.set_port(Some(target.addr.port())))
            .map_err(|()| format!("cannot address {} over http", target.addr))?;
        Ok(url)
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

/// Reads the body, keeping at most `limit` bytes. Bodies much longer than
/// the limit are not drained (the connection is closed instead).
async fn read_capped(
    mut response: reqwest::Response,
    limit: usize,
) -> Result<PodBody, DeliveryError> {
    const DRAIN_LIMIT: usize = 1 << 20;
    let mut kept = BytesMut::new();
    let mut seen = 0usize;
    while let Some(chunk) = response.chunk().await.map_err(|error| classify(&error))? {
        seen += chunk.len();
        if kept.len() < limit {
            let room = limit - kept.len();
            kept.extend_from_slice(&chunk[..chunk.len().min(room)]);
        }
        if seen > limit.saturating_add(DRAIN_LIMIT) {
            break;
        }
    }
    Ok(PodBody {
        truncated: seen > kept.len(),
        bytes: kept.freeze(),
    })
}

/// Sorts a client error into the fixed set of kinds, keeping the innermost
/// cause as the detail (e.g. "Connection refused (os error 111)").
fn classify(error: &reqwest::Error) -> DeliveryError {
    classify_chain(error, error.is_connect(), error.is_timeout())
}

/// Sorts an HTTPS client's error like [`classify`].
fn classify_tls(error: &PodTlsError) -> DeliveryError {
    match error {
        PodTlsError::Address(detail) => DeliveryError {
            kind: ErrorKind::Protocol,
            detail: detail.clone(),
        },
        PodTlsError::Exchange(error) => classify_chain(error, error.is_connect(), false),
    }
}

/// [`classify`] for any client's error, given whether it happened while
/// connecting or timed out.
fn classify_chain(
    error: &(dyn std::error::Error + 'static),
    connect: bool,
    timeout: bool,
) -> DeliveryError {
    let mut detail = error.to_string();
    let mut kind = if connect {
        ErrorKind::Connect
    } else if timeout {
        ErrorKind::Timeout
    } else {
        ErrorKind::Protocol
    };
    let mut source = error.source();
    while let Some(cause) = source {
        if kind == ErrorKind::Protocol {
            if let Some(io) = cause.downcast_ref::<std::io::Error>() {
                use std::io::ErrorKind as Io;
                if matches!(
                    io.kind(),
                    Io::ConnectionReset
                        | Io::ConnectionAborted
                        | Io::BrokenPipe
                        | Io::UnexpectedEof
                ) {
                    kind = ErrorKind::Reset;
                }
            } else if let Some(hyper) = cause.downcast_ref::<hyper::Error>()
                && (hyper.is_incomplete_message() || hyper.is_canceled())
            {
                kind = ErrorKind::Reset;
            }
        }
        detail = cause.to_string();
        source = cause.source();
    }
    DeliveryError { kind, detail }
}

#[cfg(test)]
mod tests {
    use super::*;

    use bytes::Bytes;
    use http::Method;

    #[test]
    fn pod_urls_match_parsing_each_url_whole() {
        let request = |path: &str| {
            Arc::new(PodRequest {
                method: Method::POST,
                path_and_query: path.to_owned(),
                headers: HeaderMap::new(),
                body: Bytes::new(),
            })
        };
        let target = |addr: &str| Target {
            addr: addr.parse().unwrap(),
            service: None,
            index: 0,
        };
        let shared = request("/cache/a%20b/../c?key=user:42&x=%2F");
        let other = request("/other");
        let mut urls = PodUrls::default();
        for (request, addr) in [
            (&shared, "127.0.0.2:8080"),
            (&shared, "10.42.0.7:80"),
            (&shared, "[fd00::5]:9000"),
            (&other, "127.0.0.3:8080"),
            (&shared, "127.0.0.4:1"),
        ] {
            let whole = format!("http://{addr}{}", request.path_and_query);
            assert_eq!(
                urls.url(request, &target(addr)).unwrap(),
                reqwest::Url::parse(&whole).unwrap(),
                "{whole}"
            );
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

//! One job as stored ([`Job`]) and as the status API shows it
//! ([`JobView`]).

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use serde::{Deserialize, Serialize};

use crate::aggregate::{DeliveryReport, Report};
use crate::vocabulary::delivery::PodRequest;
use crate::vocabulary::target::{Target, authority};

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Stored; no pod has been sent its copy yet.
    Accepted,
    /// Deliveries (or the report's delivery to `report_to`) are under way.
    Running,
    /// Every pod has its outcome and the report was delivered or given up.
    Done,
}

impl std::str::FromStr for JobState {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "accepted" => Ok(Self::Accepted),
            "running" => Ok(Self::Running),
            "done" => Ok(Self::Done),
            other => Err(format!(
                "unknown state \"{other}\"; expected accepted, running or done"
            )),
        }
    }
}

/// Where the report is on its way to the route's `report_to`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReportState {
    /// Not acknowledged yet: retried, across restarts too, until
    /// `give_up_ms`.
    Pending,
    /// The collector answered 2xx.
    Delivered,
    /// Given up: a refusal (4xx) or `report_retry_for` ran out.
    Failed,
}

/// The report's delivery to the route's collector.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReportDelivery {
    /// Where it is.
    pub state: ReportState,
    /// When retrying stops (Unix ms): the broadcast's end plus
    /// `report_retry_for`.
    pub give_up_ms: u64,
}

/// One pod's copy of the broadcast, as stored to send it again after a
/// restart. Header values and the body are hex, so any bytes survive.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredRequest {
    method: String,
    path_and_query: String,
    headers: Vec<(String, String)>,
    body: String,
}

impl StoredRequest {
    /// The stored form of `request`.
    pub fn new(request: &PodRequest) -> Self {
        Self {
            method: request.method.to_string(),
            path_and_query: request.path_and_query.clone(),
            headers: request
                .headers
                .iter()
                .map(|(name, value)| (name.to_string(), hex(value.as_bytes())))
                .collect(),
            body: hex(&request.body),
        }
    }

    /// The request again; `None` if the stored form is damaged.
    pub fn request(&self) -> Option<PodRequest> {
        let mut headers = HeaderMap::new();
        for (name, value) in &self.headers {
            headers.append(
                HeaderName::from_bytes(name.as_bytes()).ok()?,
                HeaderValue::from_bytes(&unhex(value)?).ok()?,
            );
        }
        Some(PodRequest {
            method: Method::from_bytes(self.method.as_bytes()).ok()?,
            path_and_query: self.path_and_query.clone(),
            headers,
            body: Bytes::from(unhex(&self.body)?),
        })
    }
}

/// One pod of a job: where, which stored request, and its outcome once
/// recorded.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PodJob {
    /// The pod's address.
    pub addr: SocketAddr,
    /// The Service it was discovered under.
    pub service: Option<String>,
    /// Index into [`Job::requests`].
    pub request: usize,
    /// The outcome, once the delivery finished.
    pub result: Option<DeliveryReport>,
}

/// One broadcast as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Job {
    /// The broadcast id (`X-Broadcast-Id`).
    pub id: String,
    /// The route's name.
    pub route: String,
    /// The route's policy, for reports of unfinished jobs.
    pub policy: String,
    /// Where it is.
    pub state: JobState,
    /// The router process working on it (its lease holder).
    pub owner: String,
    /// This run of the broadcast id (a fresh UUID per accepted broadcast),
    /// so a later broadcast reusing the id fences this one's writes out.
    pub run: String,
    /// Unix ms when it was accepted.
    pub created_ms: u64,
    /// Unix ms of the last change.
    pub updated_ms: u64,
    /// Unix ms when it was done.
    pub finished_ms: Option<u64>,
    /// How many times a router resumed it after another stopped.
    pub resumed: u32,
    /// The distinct requests pods receive (one unless plugins transform);
    /// shared, so that copies of a job (the memory store keeps one per
    /// write) do not copy them.
    pub requests: Arc<[StoredRequest]>,
    /// Every pod, in target order.
    pub pods: Vec<PodJob>,
    /// The final report (the same a sync answer carries), once judged.
    pub report: Option<Report>,
    /// The report's way to `report_to`, when the route has one.
    pub report_to: Option<ReportDelivery>,
}

impl Job {
    /// About the length of the job's JSON, without encoding it: the
    /// stored requests (hex), each pod with its outcome, the report, and
    /// some room for the fixed fields.
    pub fn estimated_size(&self) -> u64 {
        let requests: usize = self
            .requests
            .iter()
            .map(|request| {
                let headers: usize = request
                    .headers
                    .iter()
                    .map(|(name, value)| name.len() + value.len() + 8)
                    .sum();
                request.path_and_query.len() + request.body.len() + headers + 64
            })
            .sum();
        let result = |result: &DeliveryReport| {
            160 + result.target.len()
                + result.pod.as_ref().map_or(0, String::len)
                + result.body.as_ref().map_or(0, String::len)
                + result.detail.as_ref().map_or(0, String::len)
        };
        let pods: usize = self
            .pods
            .iter()
            .map(|pod| {
                96 + pod.service.as_ref().map_or(0, String::len)
                    + pod.result.as_ref().map_or(0, result)
            })
            .sum();
        let report = self.report.as_ref().map_or(0, |report| {
            160 + report.results.iter().map(result).sum::<usize>()
        });
        (256 + 2 * self.id.len() + 2 * self.route.len() + requests + pods + report) as u64
    }

    /// A new job for `targets`, each receiving `requests[i]`, stored as
    /// few distinct requests as there are.
    pub fn new(
        id: &str,
        route: &str,
        policy: &str,
        targets: &[Target],
        requests: &[Arc<PodRequest>],
    ) -> Self {
        let mut stored: Vec<(*const PodRequest, StoredRequest)> = Vec::new();
        let pods = targets
            .iter()
            .zip(requests)
            .map(|(target, request)| {
                let key = Arc::as_ptr(request);
                let index = match stored.iter().position(|(seen, _)| *seen == key) {
                    Some(index) => index,
                    None => {
                        stored.push((key, StoredRequest::new(request)));
                        stored.len() - 1
                    }
                };
                PodJob {
                    addr: target.addr,
                    service: target.service.as_deref().map(str::to_owned),
                    request: index,
                    result: None,
                }
            })
            .collect();
        let now = super::now_ms();
        Self {
            id: id.to_owned(),
            route: route.to_owned(),
            policy: policy.to_owned(),
            state: JobState::Accepted,
            owner: String::new(),
            run: uuid::Uuid::new_v4().to_string(),
            created_ms: now,
            updated_ms: now,
            finished_ms: None,
            resumed: 0,
            requests: stored.into_iter().map(|(_, request)| request).collect(),
            pods,
            report: None,
            report_to: None,
        }
    }

    /// The pods as targets, in order.
    pub fn targets(&self) -> Vec<Target> {
        self.pods
            .iter()
            .enumerate()
            .map(|(index, pod)| Target {
                addr: pod.addr,
                service: pod.service.as_deref().map(Arc::from),
                index,
                pod: None,
            })
            .collect()
    }

    /// Every pod's recorded result, or a pending entry.
    pub fn results(&self) -> Vec<DeliveryReport> {
        self.pods
            .iter()
            .map(|pod| {
                pod.result
                    .clone()
                    .unwrap_or_else(|| DeliveryReport::pending_at(authority(pod.addr)))
            })
            .collect()
    }

    /// What `GET /broadcasts/{id}` shows: no stored requests.
    pub fn view(&self) -> JobView<'_> {
        let finished = self.pods.iter().filter(|pod| pod.result.is_some()).count();
        let succeeded = self
            .pods
            .iter()
            .filter(|pod| pod.result.as_ref().is_some_and(|r| r.error.is_none()))
            .count();
        JobView {
            id: &self.id,
            route: &self.route,
            state: self.state,
            created_at: rfc3339(self.created_ms),
            updated_at: rfc3339(self.updated_ms),
            finished_at: self.finished_ms.map(rfc3339),
            resumed: self.resumed,
            progress: Progress {
                targets: self.pods.len(),
                finished,
                succeeded,
                failed: finished - succeeded,
            },
            pods: match &self.report {
                Some(_) => None,
                None => Some(self.results()),
            },
            report: self.report.as_ref(),
            report_to: self.report_to.as_ref().map(|delivery| delivery.state),
        }
    }
}

/// A job as the status API shows it.
#[derive(Debug, Serialize)]
pub struct JobView<'a> {
    /// The broadcast id.
    pub id: &'a str,
    /// The route's name.
    pub route: &'a str,
    /// `accepted`, `running` or `done`.
    pub state: JobState,
    /// When it was accepted (RFC 3339, UTC).
    pub created_at: String,
    /// When it last changed.
    pub updated_at: String,
    /// When it was done.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    /// How many times a router resumed it after another stopped.
    pub resumed: u32,
    /// How many pods have their outcome.
    pub progress: Progress,
    /// Each pod's outcome so far (until the report is there).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pods: Option<Vec<DeliveryReport>>,
    /// The final report, the same a sync answer carries.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub report: Option<&'a Report>,
    /// The report's delivery to `report_to`: pending, delivered, failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub report_to: Option<ReportState>,
}

/// How far a job's deliveries are.
#[derive(Debug, Serialize)]
pub struct Progress {
    /// Pods it goes to.
    pub targets: usize,
    /// Pods with an outcome.
    pub finished: usize,
    /// Pods that answered 2xx.
    pub succeeded: usize,
    /// Pods that failed for good.
    pub failed: usize,
}

fn rfc3339(ms: u64) -> String {
    let time = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    humantime::format_rfc3339_millis(time).to_string()
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut text = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        text.push(DIGITS[usize::from(byte >> 4)] as char);
        text.push(DIGITS[usize::from(byte & 15)] as char);
    }
    text
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|at| u8::from_str_radix(text.get(at..at + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_request_round_trips_any_bytes() {
        let mut headers = HeaderMap::new();
        headers.insert("x-key", HeaderValue::from_bytes(b"a\xffb").unwrap());
        let request = PodRequest {
            method: Method::from_bytes(b"PURGE").unwrap(),
            path_and_query: "/p?q=1".into(),
            headers,
            body: Bytes::from_static(b"\x00\x01body"),
        };
        let back = StoredRequest::new(&request).request().unwrap();
        assert_eq!(back.method, request.method);
        assert_eq!(back.path_and_query, request.path_and_query);
        assert_eq!(back.headers, request.headers);
        assert_eq!(back.body, request.body);
    }
}

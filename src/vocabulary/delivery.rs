//! One pod's copy of a broadcast and what became of it: the request every
//! pod receives ([`PodRequest`]), and the outcome of delivering it to one
//! pod ([`Delivery`]), with its failure sorted into a small fixed set of
//! kinds ([`ErrorKind`]).

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode};
use serde::{Deserialize, Serialize};

/// What every pod of one broadcast receives (before per-pod addressing).
#[derive(Debug)]
pub struct PodRequest {
    /// The HTTP method.
    pub method: Method,
    /// Path and query, e.g. `/cache-invalidation?key=1`.
    pub path_and_query: String,
    /// Headers, as every pod receives them (hop-by-hop headers removed,
    /// `X-Forwarded-*`, `traceparent` and the broadcast id added).
    pub headers: HeaderMap,
    /// The body, shared by every pod.
    pub body: Bytes,
}

/// The outcome of delivering to one target.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// Status of the last answer received, if any.
    pub status: Option<StatusCode>,
    /// Attempts made (0 when the deadline passed before the first).
    pub attempts: u32,
    /// Time from the broadcast's start to this outcome.
    pub latency: Duration,
    /// Why the delivery failed; `None` means the pod answered 2xx.
    pub error: Option<DeliveryError>,
    /// The start of the last answer's body.
    pub body: Option<PodBody>,
    /// The last answer's headers.
    pub headers: HeaderMap,
}

impl Delivery {
    /// Whether the pod answered 2xx.
    pub fn succeeded(&self) -> bool {
        self.error.is_none()
    }

    /// A label for metrics: `success` or the error kind.
    pub fn outcome(&self) -> &'static str {
        self.error
            .as_ref()
            .map_or("success", |error| error.kind.as_str())
    }
}

/// The kept start of a pod's response body.
#[derive(Debug, Clone)]
pub struct PodBody {
    /// Up to `max_pod_body_bytes` bytes.
    pub bytes: Bytes,
    /// Whether the body was longer than what is kept.
    pub truncated: bool,
}

/// A failed delivery: what kind of failure, and a readable detail.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{kind}: {detail}")]
pub struct DeliveryError {
    /// The category, one of a small fixed set.
    pub kind: ErrorKind,
    /// What happened, e.g. "connection refused".
    pub detail: String,
}

/// The fixed set of delivery failure categories.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// No connection could be made (refused, unreachable).
    Connect,
    /// An attempt took longer than the route's `timeout`.
    Timeout,
    /// The pod answered with a non-2xx status.
    Status,
    /// The connection broke mid-exchange (reset, closed early).
    Reset,
    /// The broadcast's `deadline` passed before the pod answered.
    Deadline,
    /// The pod's answer was not valid HTTP.
    Protocol,
}

impl ErrorKind {
    /// The kind's name, as in the answer document and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Connect => "connect",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Status => "status",
            ErrorKind::Reset => "reset",
            ErrorKind::Deadline => "deadline",
            ErrorKind::Protocol => "protocol",
        }
    }
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

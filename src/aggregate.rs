//! Aggregation: how the pods' outcomes become one answer.
//!
//! [`Report`] is the document of one broadcast: every pod's result and
//! whether the route's policy was met. [`Verdict`] is the one place that
//! decides what the client receives: the policy's judgement (200, or 502
//! when it is not met; `collect` always 200), the aggregate plugin's own
//! status and body, or 502 with the plugin's error when it failed closed.

use bytes::Bytes;
use http::{HeaderValue, StatusCode};
use serde::{Deserialize, Serialize};

use crate::vocabulary::delivery::{Delivery, ErrorKind};
use crate::vocabulary::policy::Policy;
use crate::vocabulary::target::Target;

/// The answer document of one broadcast.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    /// The broadcast id, as sent to every pod in `X-Broadcast-Id`.
    pub id: String,
    /// The route's name.
    pub route: String,
    /// The policy the verdict was judged by.
    pub policy: String,
    /// Whether the policy was met.
    pub ok: bool,
    /// How many pods the broadcast was sent to.
    pub targets: usize,
    /// Pods that answered 2xx.
    pub succeeded: usize,
    /// Pods that failed for good (after retries).
    pub failed: usize,
    /// Deliveries still running when an early answer (`first`) was sent.
    pub pending: usize,
    /// One entry per pod, in target order.
    pub results: Vec<DeliveryReport>,
}

/// One pod's outcome in a [`Report`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeliveryReport {
    /// The pod's address (`ip:port`, IPv6 in brackets).
    pub target: String,
    /// The pod's name, when the Kubernetes API named it (`kubernetes`
    /// routes).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    /// The HTTP status of the last attempt, if the pod answered at all.
    pub status: Option<u16>,
    /// Attempts made so far.
    pub attempts: u32,
    /// Time from the start of the broadcast to this pod's outcome, in
    /// milliseconds (waiting for a concurrency slot and retries included).
    pub latency_ms: f64,
    /// Why the delivery failed, if it did.
    pub error: Option<ErrorKind>,
    /// A human-readable detail of the failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// The pod's response body, up to the route's `max_pod_body_bytes`.
    pub body: Option<String>,
    /// Whether `body` was cut at `max_pod_body_bytes`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub body_truncated: bool,
    /// Whether the delivery was still running when the answer was sent.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pending: bool,
}

impl Report {
    /// Builds the report from each target's outcome (`None`: still running).
    pub fn new(
        id: &str,
        route: &str,
        policy: Policy,
        targets: &[Target],
        outcomes: &[Option<Delivery>],
    ) -> Self {
        let mut succeeded = 0;
        let mut failed = 0;
        let mut pending = 0;
        let results = targets
            .iter()
            .zip(outcomes)
            .map(|(target, outcome)| match outcome {
                Some(delivery) => {
                    if delivery.succeeded() {
                        succeeded += 1;
                    } else {
                        failed += 1;
                    }
                    DeliveryReport::from_delivery(target, delivery)
                }
                None => {
                    pending += 1;
                    DeliveryReport::pending(target)
                }
            })
            .collect();
        Self {
            id: id.to_owned(),
            route: route.to_owned(),
            policy: policy.to_string(),
            ok: policy.is_met(succeeded, targets.len()),
            targets: targets.len(),
            succeeded,
            failed,
            pending,
            results,
        }
    }

    /// Builds the report from each pod's recorded result (entries with
    /// `pending` set are still running), as a resumed job does.
    pub fn from_results(
        id: &str,
        route: &str,
        policy: Policy,
        results: Vec<DeliveryReport>,
    ) -> Self {
        let pending = results.iter().filter(|result| result.pending).count();
        let succeeded = results
            .iter()
            .filter(|result| !result.pending && result.error.is_none())
            .count();
        let failed = results.len() - pending - succeeded;
        Self {
            id: id.to_owned(),
            route: route.to_owned(),
            policy: policy.to_string(),
            ok: policy.is_met(succeeded, results.len()),
            targets: results.len(),
            succeeded,
            failed,
            pending,
            results,
        }
    }
}

/// The name the Kubernetes API gave the pod behind `target`, if any.
fn pod_name(target: &Target) -> Option<String> {
    target.pod_name().map(str::to_owned)
}

impl DeliveryReport {
    /// One pod's finished delivery.
    pub fn from_delivery(target: &Target, delivery: &Delivery) -> Self {
        let (body, body_truncated) = match &delivery.body {
            Some(body) => (
                Some(String::from_utf8_lossy(&body.bytes).into_owned()),
                body.truncated,
            ),
            None => (None, false),
        };
        Self {
            target: target.authority(),
            pod: pod_name(target),
            status: delivery.status.map(|status| status.as_u16()),
            attempts: delivery.attempts,
            latency_ms: (delivery.latency.as_secs_f64() * 1e6).round() / 1e3,
            error: delivery.error.as_ref().map(|error| error.kind),
            detail: delivery.error.as_ref().map(|error| error.detail.clone()),
            body,
            body_truncated,
            pending: false,
        }
    }

    /// A delivery still running (or not started) to `target`.
    pub fn pending(target: &Target) -> Self {
        Self {
            pod: pod_name(target),
            ..Self::pending_at(target.authority())
        }
    }

    /// A delivery still running (or not started) to the pod at `address`
    /// (`ip:port`), whose name is not known.
    pub fn pending_at(address: String) -> Self {
        Self {
            target: address,
            pod: None,
            status: None,
            attempts: 0,
            latency_ms: 0.0,
            error: None,
            detail: None,
            body: None,
            body_truncated: false,
            pending: true,
        }
    }
}

/// The answer to an asynchronous broadcast: accepted, running.
#[derive(Debug, Clone, Serialize)]
pub struct Accepted {
    /// The broadcast id, to find the report at the collector.
    pub id: String,
    /// The route's name.
    pub route: String,
    /// Always `"async"`.
    pub mode: &'static str,
    /// How many pods the broadcast goes to.
    pub targets: usize,
}

/// An aggregate plugin's verdict, checked: what the router answers with.
#[derive(Debug, Clone)]
pub struct PluginVerdict {
    /// Whether the broadcast succeeded.
    pub ok: bool,
    /// The answer's status.
    pub status: StatusCode,
    /// The answer's content type.
    pub content_type: HeaderValue,
    /// The answer's body.
    pub body: Bytes,
}

/// The verdict of one broadcast: its report, and the decision of what the
/// client receives.
#[derive(Debug)]
pub struct Verdict {
    /// Every pod's outcome; `ok` is the verdict.
    pub report: Report,
    decision: Decision,
}

/// Who decided the answer.
#[derive(Debug)]
enum Decision {
    /// The route's built-in policy.
    Policy(Policy),
    /// The route's aggregate plugin.
    Plugin(PluginVerdict),
    /// The aggregate plugin failed closed, for this reason.
    PluginFailed(String),
}

impl Verdict {
    /// The route's policy decides (the report already says whether it was
    /// met).
    pub fn by_policy(report: Report, policy: Policy) -> Self {
        Self {
            report,
            decision: Decision::Policy(policy),
        }
    }

    /// The route's aggregate plugin decides: its verdict replaces the
    /// policy's (the report names `"plugin"` as its policy); a plugin that
    /// failed closed fails the broadcast; `Ok(None)` (no aggregate hook, or
    /// it failed open) leaves the decision to the policy.
    pub fn by_plugin<E: std::fmt::Display>(
        mut report: Report,
        policy: Policy,
        judged: Result<Option<PluginVerdict>, E>,
    ) -> Self {
        let decision = match judged {
            Ok(None) => Decision::Policy(policy),
            Ok(Some(verdict)) => {
                report.ok = verdict.ok;
                report.policy = "plugin".to_owned();
                Decision::Plugin(verdict)
            }
            Err(failure) => {
                report.ok = false;
                Decision::PluginFailed(failure.to_string())
            }
        };
        Self { report, decision }
    }

    /// Whether the broadcast succeeded.
    pub fn ok(&self) -> bool {
        self.report.ok
    }

    /// The answer's status: the plugin's own, 502 when it failed, else 200
    /// when the policy is met (always for `collect`) and 502 when not.
    pub fn status(&self) -> StatusCode {
        match &self.decision {
            Decision::Plugin(verdict) => verdict.status,
            Decision::PluginFailed(_) => StatusCode::BAD_GATEWAY,
            Decision::Policy(policy) if self.report.ok || *policy == Policy::Collect => {
                StatusCode::OK
            }
            Decision::Policy(_) => StatusCode::BAD_GATEWAY,
        }
    }

    /// The answer's content type and body: the plugin's own, or the report
    /// as JSON (with the plugin's `error` beside it when it failed).
    pub fn into_body(self) -> (HeaderValue, Bytes) {
        let json = HeaderValue::from_static("application/json");
        match self.decision {
            Decision::Plugin(verdict) => (verdict.content_type, verdict.body),
            Decision::PluginFailed(error) => {
                let mut body = serde_json::to_value(&self.report).unwrap_or_default();
                body["error"] = error.into();
                (json, serde_json::to_vec(&body).unwrap_or_default().into())
            }
            Decision::Policy(_) => (
                json,
                serde_json::to_vec(&self.report).unwrap_or_default().into(),
            ),
        }
    }
}

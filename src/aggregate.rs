//! Aggregation: how the pods' outcomes become one answer.
//!
//! A route's [`Policy`] decides whether a broadcast succeeded; [`Report`] is
//! the JSON document the client receives, with the verdict and every pod's
//! result. The HTTP status follows the verdict (see [`Report::status`]).

use std::fmt;

use axum::http::StatusCode;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize};

use crate::discovery::Target;
use crate::fanout::udp::UdpDelivery;
use crate::fanout::{Delivery, ErrorKind};

/// The built-in rule that turns pod outcomes into a verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Policy {
    /// Every pod must succeed. Waits for every delivery.
    #[default]
    All,
    /// At least one pod must succeed. Waits for every delivery.
    Any,
    /// At least this many pods must succeed. Waits for every delivery.
    Quorum(Quorum),
    /// Answers as soon as one pod succeeds; the remaining deliveries finish
    /// in the background and their outcomes are logged and counted.
    First,
    /// Always answers 200 with every pod's result; the client judges.
    Collect,
}

/// The size of a quorum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quorum {
    /// A fixed number of pods (at least 1).
    Count(usize),
    /// A percentage of the targets (1 to 100), rounded up.
    Percent(u8),
}

impl Policy {
    /// How many successes make the verdict positive for `targets` pods.
    pub fn required(self, targets: usize) -> usize {
        match self {
            Policy::All => targets,
            Policy::Any | Policy::First => 1,
            Policy::Quorum(Quorum::Count(count)) => count,
            Policy::Quorum(Quorum::Percent(percent)) => {
                (targets * usize::from(percent)).div_ceil(100).max(1)
            }
            Policy::Collect => 0,
        }
    }

    /// Whether `succeeded` successes out of `targets` meet the policy.
    pub fn is_met(self, succeeded: usize, targets: usize) -> bool {
        targets > 0 && succeeded >= self.required(targets)
    }

    /// Whether the answer may be sent before every delivery has finished.
    pub fn answers_early(self) -> bool {
        matches!(self, Policy::First)
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Policy::All => f.write_str("all"),
            Policy::Any => f.write_str("any"),
            Policy::First => f.write_str("first"),
            Policy::Collect => f.write_str("collect"),
            Policy::Quorum(Quorum::Count(count)) => write!(f, "quorum={count}"),
            Policy::Quorum(Quorum::Percent(percent)) => write!(f, "quorum={percent}%"),
        }
    }
}

impl<'de> Deserialize<'de> for Policy {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(PolicyVisitor)
    }
}

struct PolicyVisitor;

const POLICY_EXPECTED: &str = r#""all", "any", "first", "collect", or a quorum table such as { quorum = 2 } or { quorum = "51%" }"#;

impl<'de> Visitor<'de> for PolicyVisitor {
    type Value = Policy;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(POLICY_EXPECTED)
    }

    fn visit_str<E: de::Error>(self, name: &str) -> Result<Policy, E> {
        match name {
            "all" => Ok(Policy::All),
            "any" => Ok(Policy::Any),
            "first" => Ok(Policy::First),
            "collect" => Ok(Policy::Collect),
            "quorum" => Err(E::custom(
                r#"a quorum needs a size: write policy = { quorum = 2 } or { quorum = "51%" }"#,
            )),
            other => Err(E::custom(format!(
                "unknown policy `{other}`; expected {POLICY_EXPECTED}"
            ))),
        }
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Policy, A::Error> {
        let Some(key) = map.next_key::<String>()? else {
            return Err(de::Error::custom(format!(
                "empty policy table; expected {POLICY_EXPECTED}"
            )));
        };
        if key != "quorum" {
            return Err(de::Error::custom(format!(
                "unknown policy key `{key}`; only `quorum` takes a table"
            )));
        }
        let quorum = map.next_value::<QuorumSize>()?.0;
        if let Some(extra) = map.next_key::<String>()? {
            return Err(de::Error::custom(format!(
                "unexpected key `{extra}` in the quorum policy"
            )));
        }
        Ok(Policy::Quorum(quorum))
    }
}

struct QuorumSize(Quorum);

impl<'de> Deserialize<'de> for QuorumSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(QuorumVisitor)
    }
}

struct QuorumVisitor;

impl Visitor<'_> for QuorumVisitor {
    type Value = QuorumSize;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(r#"a pod count of at least 1, or a percentage such as "51%""#)
    }

    fn visit_i64<E: de::Error>(self, count: i64) -> Result<QuorumSize, E> {
        match usize::try_from(count) {
            Ok(count) if count >= 1 => Ok(QuorumSize(Quorum::Count(count))),
            _ => Err(E::custom(format!(
                "quorum must be at least 1 pod, got {count}"
            ))),
        }
    }

    fn visit_u64<E: de::Error>(self, count: u64) -> Result<QuorumSize, E> {
        self.visit_i64(i64::try_from(count).unwrap_or(i64::MAX))
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<QuorumSize, E> {
        let percent = text
            .strip_suffix('%')
            .and_then(|number| number.trim().parse::<u8>().ok())
            .filter(|percent| (1..=100).contains(percent));
        match percent {
            Some(percent) => Ok(QuorumSize(Quorum::Percent(percent))),
            None => Err(E::custom(format!(
                "quorum `{text}` is not a percentage between \"1%\" and \"100%\""
            ))),
        }
    }
}

/// The answer document of one broadcast.
#[derive(Debug, Clone, Serialize)]
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
#[derive(Debug, Clone, Serialize)]
pub struct DeliveryReport {
    /// The pod's address (`ip:port`, IPv6 in brackets).
    pub target: String,
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
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// The pod's response body, up to the route's `max_pod_body_bytes`.
    pub body: Option<String>,
    /// Whether `body` was cut at `max_pod_body_bytes`.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub body_truncated: bool,
    /// Whether the delivery was still running when the answer was sent.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
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

    /// The HTTP status of the answer: 200 when the policy is met (always for
    /// `collect`), 502 when it is not.
    pub fn status(&self, policy: Policy) -> StatusCode {
        if self.ok || policy == Policy::Collect {
            StatusCode::OK
        } else {
            StatusCode::BAD_GATEWAY
        }
    }
}

impl DeliveryReport {
    fn from_delivery(target: &Target, delivery: &Delivery) -> Self {
        let (body, body_truncated) = match &delivery.body {
            Some(body) => (
                Some(String::from_utf8_lossy(&body.bytes).into_owned()),
                body.truncated,
            ),
            None => (None, false),
        };
        Self {
            target: target.to_string(),
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

    fn pending(target: &Target) -> Self {
        Self {
            target: target.to_string(),
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

/// The answer document of a UDP broadcast (HTTP 202: datagrams were sent;
/// UDP has no acknowledgement, so nothing is known about their arrival).
#[derive(Debug, Clone, Serialize)]
pub struct UdpReport {
    /// The broadcast id, carried in every datagram's header.
    pub id: String,
    /// The route's name.
    pub route: String,
    /// Always `"udp"`.
    pub protocol: &'static str,
    /// The sequence number carried in every datagram's header.
    pub sequence: u64,
    /// Whether every copy to every pod was handed to the network.
    pub ok: bool,
    /// How many pods the datagrams went to.
    pub targets: usize,
    /// Copies sent to each pod.
    pub repeat: u8,
    /// The size of each datagram, header included.
    pub datagram_bytes: usize,
    /// One entry per pod, in target order.
    pub results: Vec<UdpDelivery>,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Policy, String> {
        #[derive(Deserialize)]
        struct Doc {
            policy: Policy,
        }
        toml::from_str::<Doc>(text)
            .map(|doc| doc.policy)
            .map_err(|error| error.message().to_owned())
    }

    #[test]
    fn policies_parse_from_names_and_quorum_tables() {
        assert_eq!(parse(r#"policy = "all""#), Ok(Policy::All));
        assert_eq!(parse(r#"policy = "first""#), Ok(Policy::First));
        assert_eq!(
            parse("policy = { quorum = 2 }"),
            Ok(Policy::Quorum(Quorum::Count(2)))
        );
        assert_eq!(
            parse(r#"policy = { quorum = "51%" }"#),
            Ok(Policy::Quorum(Quorum::Percent(51)))
        );
        assert!(
            parse(r#"policy = "most""#)
                .unwrap_err()
                .contains("unknown policy")
        );
        assert!(
            parse("policy = { quorum = 0 }")
                .unwrap_err()
                .contains("at least 1")
        );
        assert!(parse(r#"policy = { quorum = "150%" }"#).is_err());
    }

    #[test]
    fn required_successes_follow_the_policy() {
        assert_eq!(Policy::All.required(5), 5);
        assert_eq!(Policy::Any.required(5), 1);
        assert_eq!(Policy::Quorum(Quorum::Percent(51)).required(4), 3);
        assert_eq!(Policy::Quorum(Quorum::Percent(50)).required(4), 2);
        assert_eq!(Policy::Quorum(Quorum::Percent(1)).required(3), 1);
        assert!(!Policy::All.is_met(0, 0));
        assert!(Policy::Collect.is_met(0, 3));
    }
}

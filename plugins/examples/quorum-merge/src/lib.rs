//! `quorum-merge`: decides a broadcast by quorum and answers with every
//! pod's body merged into one JSON document.
//!
//! The broadcast succeeds (200) when at least `quorum` pods answered 2xx,
//! and fails (502) otherwise. The answer maps each successful pod's
//! `ip:port` to its body (parsed as JSON, or as a string when it is not
//! JSON) and each failed pod's to why it failed. See README.md.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

use std::fmt;

use broadcast_plugin_sdk::{Hooks, Outcome, Plugin, RequestHead, Verdict};
use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};
use serde_json::{Map, Value, json};

/// How many pods must succeed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quorum {
    /// A fixed number of pods (at least 1).
    Count(u32),
    /// A percentage of the targets (1 to 100), rounded up, at least 1 pod.
    Percent(u8),
}

impl Quorum {
    /// How many successes out of `targets` meet the quorum (the router's
    /// own `quorum` policy counts the same way).
    pub fn required(self, targets: usize) -> usize {
        match self {
            Quorum::Count(count) => count as usize,
            Quorum::Percent(percent) => (targets * usize::from(percent)).div_ceil(100).max(1),
        }
    }
}

impl<'de> Deserialize<'de> for Quorum {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(QuorumVisitor)
    }
}

struct QuorumVisitor;

impl Visitor<'_> for QuorumVisitor {
    type Value = Quorum;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(r#"a pod count of at least 1, or a percentage such as "51%""#)
    }

    fn visit_i64<E: de::Error>(self, count: i64) -> Result<Quorum, E> {
        match u32::try_from(count) {
            Ok(count) if count >= 1 => Ok(Quorum::Count(count)),
            _ => Err(E::custom(format!(
                "quorum must be at least 1 pod, got {count}"
            ))),
        }
    }

    fn visit_u64<E: de::Error>(self, count: u64) -> Result<Quorum, E> {
        self.visit_i64(i64::try_from(count).unwrap_or(i64::MAX))
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<Quorum, E> {
        text.strip_suffix('%')
            .and_then(|number| number.trim().parse::<u8>().ok())
            .filter(|percent| (1..=100).contains(percent))
            .map(Quorum::Percent)
            .ok_or_else(|| {
                E::custom(format!(
                    "quorum `{text}` is not a percentage between \"1%\" and \"100%\""
                ))
            })
    }
}

/// The plugin's config, as written in the route's `config` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// How many pods must answer 2xx: a count, or a percentage like `"51%"`.
    pub quorum: Quorum,
}

/// The plugin: its quorum.
#[derive(Debug)]
pub struct QuorumMerge {
    quorum: Quorum,
}

impl Plugin for QuorumMerge {
    type Config = Config;
    const HOOKS: Hooks = Hooks::AGGREGATE;

    fn new(config: Config) -> Result<Self, String> {
        Ok(QuorumMerge {
            quorum: config.quorum,
        })
    }

    fn aggregate(&self, _head: &RequestHead, outcomes: &[Outcome]) -> Result<Verdict, String> {
        let mut bodies = Map::new();
        let mut failed = Map::new();
        for outcome in outcomes {
            let pod = outcome.target.authority();
            match outcome.error {
                None => {
                    bodies.insert(pod, body_value(&outcome.body));
                }
                Some(kind) => {
                    failed.insert(pod, Value::String(kind.as_str().into()));
                }
            }
        }
        let targets = outcomes.len();
        let succeeded = bodies.len();
        let quorum = self.quorum.required(targets);
        let ok = targets > 0 && succeeded >= quorum;
        let document = json!({
            "ok": ok,
            "quorum": quorum,
            "succeeded": succeeded,
            "targets": targets,
            "bodies": bodies,
            "failed": failed,
        });
        Ok(Verdict::json(ok, if ok { 200 } else { 502 }, &document))
    }
}

/// A pod's body as JSON when it parses, else as a (lossy UTF-8) string;
/// an empty body is `null`.
fn body_value(body: &[u8]) -> Value {
    if body.is_empty() {
        return Value::Null;
    }
    serde_json::from_slice(body)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(body).into_owned()))
}

broadcast_plugin_sdk::export_plugin!(QuorumMerge);

#[cfg(test)]
mod tests {
    use super::*;
    use broadcast_plugin_sdk::{ErrorKind, instantiate, testing};

    fn merge(config: &str, outcomes: &[Outcome]) -> (Verdict, Value) {
        let plugin = instantiate::<QuorumMerge>(config).unwrap();
        let verdict = plugin.aggregate(&testing::head("b"), outcomes).unwrap();
        let document = serde_json::from_slice(&verdict.body).unwrap();
        (verdict, document)
    }

    fn outcomes() -> Vec<Outcome> {
        let pods = testing::targets(&["10.0.0.1", "10.0.0.2", "10.0.0.3", "fd00::4"], 8080);
        vec![
            testing::answered(pods[0].clone(), 200, br#"{"version":7}"#),
            testing::answered(pods[1].clone(), 204, b""),
            testing::answered(pods[2].clone(), 503, b"busy"),
            testing::failure(pods[3].clone(), ErrorKind::Timeout),
        ]
    }

    #[test]
    fn a_met_quorum_answers_200_with_every_body() {
        let (verdict, document) = merge(r#"{"quorum": 2}"#, &outcomes());
        assert!(verdict.ok);
        assert_eq!(verdict.status, 200);
        assert_eq!(verdict.content_type.as_deref(), Some("application/json"));
        assert_eq!(
            document,
            json!({
                "ok": true,
                "quorum": 2,
                "succeeded": 2,
                "targets": 4,
                "bodies": {"10.0.0.1:8080": {"version": 7}, "10.0.0.2:8080": null},
                "failed": {"10.0.0.3:8080": "status", "[fd00::4]:8080": "timeout"},
            })
        );
    }

    #[test]
    fn a_missed_quorum_answers_502() {
        let (verdict, document) = merge(r#"{"quorum": 3}"#, &outcomes());
        assert!(!verdict.ok);
        assert_eq!(verdict.status, 502);
        assert_eq!(document["ok"], false);
        let (verdict, _) = merge(r#"{"quorum": 1}"#, &[]);
        assert_eq!(verdict.status, 502, "no targets never meets a quorum");
    }

    #[test]
    fn percentages_round_up() {
        let (verdict, document) = merge(r#"{"quorum": "50%"}"#, &outcomes());
        assert!(verdict.ok);
        assert_eq!(document["quorum"], 2);
        let (verdict, document) = merge(r#"{"quorum": "51%"}"#, &outcomes());
        assert!(!verdict.ok);
        assert_eq!(document["quorum"], 3);
        assert_eq!(Quorum::Percent(1).required(3), 1);
        assert_eq!(Quorum::Percent(100).required(0), 1);
    }

    #[test]
    fn non_json_bodies_become_strings() {
        let pod = testing::target(0, "10.0.0.1", 80);
        let (_, document) = merge(
            r#"{"quorum": 1}"#,
            &[testing::answered(pod, 200, b"plain \xff text")],
        );
        assert_eq!(document["bodies"]["10.0.0.1:80"], "plain \u{fffd} text");
    }

    #[test]
    fn bad_quorums_are_rejected() {
        let error = |config| instantiate::<QuorumMerge>(config).unwrap_err();
        assert!(error("{}").contains("missing field `quorum`"));
        assert!(error(r#"{"quorum": 0}"#).contains("at least 1 pod"));
        assert!(error(r#"{"quorum": "0%"}"#).contains("between"));
        assert!(error(r#"{"quorum": "half"}"#).contains("`half`"));
        assert!(error(r#"{"quorum": 2.5}"#).contains("a pod count"));
    }
}

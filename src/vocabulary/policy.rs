//! Verdict policies: the built-in rules that turn the pods' outcomes into
//! a verdict, as a route's `policy` key writes them (`"all"`, `"any"`,
//! `"first"`, `"collect"`, or `{ quorum = 2 }` / `{ quorum = "51%" }`).

use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, Visitor};

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

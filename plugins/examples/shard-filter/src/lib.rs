//! `shard-filter`: sends a keyed broadcast only to the pods that own the
//! key, instead of to every pod.
//!
//! The key comes from a request header (`x-shard-key` by default). Pods are
//! chosen by rendezvous (highest-random-weight) hashing over their
//! `ip:port`, so adding or removing a pod only moves the keys that pod owned
//! or gains. Without the header the broadcast goes to every pod, or is
//! rejected. Pods can also be excluded by address, and a deterministic
//! percentage of pods sampled (canaries). See README.md for the config keys.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

use std::net::{IpAddr, SocketAddr};

use broadcast_plugin_sdk::{Hooks, Plugin, RequestHead, Target, log};
use serde::Deserialize;

/// What to do with a request that has no key header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MissingKey {
    /// Send it to every pod (after `exclude` and `sample_percent`).
    #[default]
    All,
    /// Fail the broadcast with an error.
    Reject,
}

/// The plugin's config, as written in the route's `config` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Group keys into this many shards before placing them on pods (keys of
    /// one shard always go to the same pods). Without it every key is
    /// placed on its own.
    #[serde(default)]
    pub shards: Option<u32>,
    /// The header that carries the key.
    #[serde(default = "default_key_header")]
    pub key_header: String,
    /// How many pods receive each key.
    #[serde(default = "default_replicas")]
    pub replicas: u32,
    /// What to do without a key: `"all"` (default) or `"reject"`.
    #[serde(default)]
    pub missing_key: MissingKey,
    /// Pods never to send to: an IP address (any port) or `ip:port`.
    #[serde(default)]
    pub exclude: Vec<String>,
    /// Keep only this percentage of the chosen pods (at least one),
    /// deterministically per broadcast id and pod.
    #[serde(default)]
    pub sample_percent: Option<f64>,
    /// Not supported: select-targets sees only the request head. Accepted
    /// only to explain that.
    #[serde(default)]
    pub key_json_field: Option<serde::de::IgnoredAny>,
}

fn default_key_header() -> String {
    "x-shard-key".into()
}

fn default_replicas() -> u32 {
    1
}

/// One `exclude` entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Excluded {
    /// Every port of this address.
    Address(IpAddr),
    /// This address and port only.
    Socket(SocketAddr),
}

impl Excluded {
    fn parse(text: &str) -> Result<Self, String> {
        if let Ok(address) = text.parse::<IpAddr>() {
            return Ok(Excluded::Address(address));
        }
        text.parse::<SocketAddr>()
            .map(Excluded::Socket)
            .map_err(|_| {
                format!("exclude: `{text}` is neither an IP address nor ip:port ([v6]:port)")
            })
    }

    fn matches(self, target: &Target) -> bool {
        let Ok(address) = target.address.parse::<IpAddr>() else {
            return false;
        };
        match self {
            Excluded::Address(excluded) => excluded == address,
            Excluded::Socket(excluded) => excluded == SocketAddr::new(address, target.port),
        }
    }
}

/// The plugin: its checked config.
#[derive(Debug)]
pub struct ShardFilter {
    shards: Option<u32>,
    key_header: String,
    replicas: usize,
    missing_key: MissingKey,
    exclude: Vec<Excluded>,
    /// `sample_percent` in hundredths of a percent (0..=10000).
    sample_basis_points: Option<u64>,
}

impl Plugin for ShardFilter {
    type Config = Config;
    const HOOKS: Hooks = Hooks::SELECT_TARGETS;

    fn new(config: Config) -> Result<Self, String> {
        if config.key_json_field.is_some() {
            return Err(
                "key_json_field is not supported: select-targets sees only the \
                        request head, not the body; send the key in a header (key_header)"
                    .into(),
            );
        }
        if config.shards == Some(0) {
            return Err("shards must be at least 1".into());
        }
        if config.replicas == 0 {
            return Err("replicas must be at least 1".into());
        }
        if config.key_header.trim().is_empty() {
            return Err("key_header must not be empty".into());
        }
        let sample_basis_points = match config.sample_percent {
            None => None,
            Some(percent) if (0.0..=100.0).contains(&percent) && percent > 0.0 => {
                Some((percent * 100.0).round() as u64)
            }
            Some(percent) => {
                return Err(format!(
                    "sample_percent must be more than 0 and at most 100, got {percent}"
                ));
            }
        };
        Ok(ShardFilter {
            shards: config.shards,
            key_header: config.key_header.trim().to_ascii_lowercase(),
            replicas: config.replicas as usize,
            missing_key: config.missing_key,
            exclude: config
                .exclude
                .iter()
                .map(|text| Excluded::parse(text))
                .collect::<Result<_, _>>()?,
            sample_basis_points,
        })
    }

    fn select_targets(&self, head: &RequestHead, targets: &[Target]) -> Result<Vec<u32>, String> {
        let candidates: Vec<Candidate> = (0..)
            .zip(targets)
            .filter(|(_, target)| !self.exclude.iter().any(|excluded| excluded.matches(target)))
            .collect();
        let key = head.header(&self.key_header).filter(|key| !key.is_empty());
        let chosen = match key {
            Some(key) => {
                let placement = self.placement(key);
                let owners = owners(&placement, &candidates, self.replicas);
                log::debug(
                    "placed key",
                    &[
                        ("placement", &placement),
                        ("owners", &owners.len().to_string()),
                    ],
                );
                owners
            }
            None if self.missing_key == MissingKey::Reject => {
                return Err(format!(
                    "shard-filter: the request has no `{}` header to pick pods by",
                    self.key_header
                ));
            }
            None => candidates,
        };
        let chosen = match self.sample_basis_points {
            Some(basis_points) => sample(&head.broadcast_id, chosen, basis_points),
            None => chosen,
        };
        Ok(chosen.into_iter().map(|(position, _)| position).collect())
    }
}

/// A target and its position in the list the hook received.
type Candidate<'a> = (u32, &'a Target);

impl ShardFilter {
    /// What a key is placed by: its shard number, or the key itself.
    fn placement(&self, key: &str) -> String {
        match self.shards {
            Some(shards) => format!("shard:{}", hash(key.as_bytes()) % u64::from(shards)),
            None => format!("key:{key}"),
        }
    }
}

/// The `replicas` candidates with the highest rendezvous weight for
/// `placement`, highest first (ties broken by position).
fn owners<'a>(
    placement: &str,
    candidates: &[Candidate<'a>],
    replicas: usize,
) -> Vec<Candidate<'a>> {
    let mut weighted: Vec<(u64, Candidate)> = candidates
        .iter()
        .map(|&(position, target)| (weight(placement, target), (position, target)))
        .collect();
    weighted.sort_by(|(a, (x, _)), (b, (y, _))| b.cmp(a).then(x.cmp(y)));
    weighted
        .into_iter()
        .take(replicas)
        .map(|(_, candidate)| candidate)
        .collect()
}

/// A pod's rendezvous weight for a placement.
fn weight(placement: &str, target: &Target) -> u64 {
    hash(format!("{placement}\n{}", target.authority()).as_bytes())
}

/// Keeps each candidate whose sample hash falls under `basis_points` out of
/// 10000, and at least the one with the lowest hash; order is kept.
fn sample<'a>(
    broadcast_id: &str,
    candidates: Vec<Candidate<'a>>,
    basis_points: u64,
) -> Vec<Candidate<'a>> {
    let scored: Vec<(u64, Candidate)> = candidates
        .into_iter()
        .map(|(position, target)| {
            let score = hash(format!("{broadcast_id}\n{}", target.authority()).as_bytes()) % 10_000;
            (score, (position, target))
        })
        .collect();
    let kept: Vec<Candidate> = scored
        .iter()
        .filter(|(score, _)| *score < basis_points)
        .map(|(_, candidate)| *candidate)
        .collect();
    if !kept.is_empty() {
        return kept;
    }
    scored
        .iter()
        .min_by_key(|(score, (position, _))| (*score, *position))
        .map(|(_, candidate)| vec![*candidate])
        .unwrap_or_default()
}

/// A stable 64-bit hash: FNV-1a, then the MurmurHash3 finaliser to spread
/// the bits (rendezvous hashing compares whole values).
fn hash(bytes: &[u8]) -> u64 {
    let mut state: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in bytes {
        state ^= u64::from(*byte);
        state = state.wrapping_mul(0x0000_0100_0000_01b3);
    }
    state ^= state >> 33;
    state = state.wrapping_mul(0xff51_afd7_ed55_8ccd);
    state ^= state >> 33;
    state = state.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    state ^ (state >> 33)
}

broadcast_plugin_sdk::export_plugin!(ShardFilter);

#[cfg(test)]
mod tests {
    use super::*;
    use broadcast_plugin_sdk::{instantiate, testing};

    fn plugin(config: &str) -> ShardFilter {
        instantiate::<ShardFilter>(config).unwrap()
    }

    fn pods(count: u8) -> Vec<Target> {
        let addresses: Vec<String> = (1..=count).map(|n| format!("10.0.0.{n}")).collect();
        let addresses: Vec<&str> = addresses.iter().map(String::as_str).collect();
        testing::targets(&addresses, 8080)
    }

    fn select(plugin: &ShardFilter, head: &RequestHead, targets: &[Target]) -> Vec<String> {
        plugin
            .select_targets(head, targets)
            .unwrap()
            .into_iter()
            .map(|index| targets[index as usize].address.clone())
            .collect()
    }

    fn keyed(key: &str) -> RequestHead {
        testing::head("b-1").with_header("x-shard-key", key)
    }

    #[test]
    fn a_key_goes_to_its_replicas_only() {
        let targets = pods(5);
        let one = plugin("{}");
        assert_eq!(select(&one, &keyed("user:42"), &targets).len(), 1);
        // The same key always lands on the same pod, whatever the broadcast.
        let again = testing::head("b-2").with_header("X-Shard-Key", "user:42");
        assert_eq!(
            select(&one, &keyed("user:42"), &targets),
            select(&one, &again, &targets)
        );
        let three = plugin(r#"{"replicas": 3}"#);
        let owners = select(&three, &keyed("user:42"), &targets);
        assert_eq!(owners.len(), 3);
        // The primary owner is the same as with one replica, and comes first.
        assert_eq!(owners[0], select(&one, &keyed("user:42"), &targets)[0]);
        let too_many = plugin(r#"{"replicas": 9}"#);
        assert_eq!(select(&too_many, &keyed("k"), &targets).len(), 5);
    }

    #[test]
    fn keys_spread_and_move_little_when_pods_change() {
        let before = pods(5);
        let after = pods(6);
        let filter = plugin("{}");
        let mut per_pod = std::collections::HashMap::new();
        let mut moved = 0;
        for n in 0..1000 {
            let head = keyed(&format!("key-{n}"));
            let old = select(&filter, &head, &before);
            let new = select(&filter, &head, &after);
            *per_pod.entry(old[0].clone()).or_insert(0) += 1;
            if old != new {
                // A key only ever moves to the new pod.
                assert_eq!(new, vec!["10.0.0.6".to_string()]);
                moved += 1;
            }
        }
        assert_eq!(per_pod.len(), 5);
        assert!(
            per_pod.values().all(|count| (120..=280).contains(count)),
            "{per_pod:?}"
        );
        assert!((100..=280).contains(&moved), "{moved} keys moved");
    }

    #[test]
    fn shards_group_keys() {
        let targets = pods(8);
        let filter = plugin(r#"{"shards": 2}"#);
        let mut owners = std::collections::BTreeSet::new();
        for n in 0..200 {
            owners.insert(select(&filter, &keyed(&format!("key-{n}")), &targets)[0].clone());
        }
        assert!(owners.len() <= 2, "{owners:?}");
    }

    #[test]
    fn a_missing_key_sends_to_all_or_rejects() {
        let targets = pods(3);
        let head = testing::head("b-1");
        assert_eq!(select(&plugin("{}"), &head, &targets).len(), 3);
        let empty = testing::head("b-1").with_header("x-shard-key", "");
        assert_eq!(select(&plugin("{}"), &empty, &targets).len(), 3);
        let reject = plugin(r#"{"missing_key": "reject", "key_header": "X-Tenant"}"#);
        assert_eq!(
            reject.select_targets(&head, &targets),
            Err("shard-filter: the request has no `x-tenant` header to pick pods by".into())
        );
        let tenant = testing::head("b-1").with_header("x-tenant", "acme");
        assert_eq!(select(&reject, &tenant, &targets).len(), 1);
    }

    #[test]
    fn excluded_pods_never_receive() {
        let mut targets = pods(4);
        targets.push(testing::target(4, "fd00::5", 8080));
        let filter =
            plugin(r#"{"exclude": ["10.0.0.2", "10.0.0.3:8080", "10.0.0.4:9999", "fd00::5"]}"#);
        let head = testing::head("b-1");
        assert_eq!(
            select(&filter, &head, &targets),
            vec!["10.0.0.1", "10.0.0.4"]
        );
        for n in 0..50 {
            let owners = select(&filter, &keyed(&format!("k{n}")), &targets);
            assert!(
                owners == ["10.0.0.1"] || owners == ["10.0.0.4"],
                "{owners:?}"
            );
        }
    }

    #[test]
    fn sampling_is_deterministic_per_broadcast_and_keeps_one() {
        let targets = pods(40);
        let filter = plugin(r#"{"sample_percent": 25}"#);
        let first = select(&filter, &testing::head("b-1"), &targets);
        assert_eq!(first, select(&filter, &testing::head("b-1"), &targets));
        assert!((3..=20).contains(&first.len()), "{} sampled", first.len());
        let other = select(&filter, &testing::head("b-2"), &targets);
        assert_ne!(first, other);
        let tiny = plugin(r#"{"sample_percent": 0.01}"#);
        assert_eq!(select(&tiny, &testing::head("b-1"), &targets[..3]).len(), 1);
        assert_eq!(
            select(
                &plugin(r#"{"sample_percent": 100}"#),
                &testing::head("b"),
                &targets
            )
            .len(),
            40
        );
    }

    #[test]
    fn positions_in_the_given_list_are_returned() {
        // After an earlier plugin in the chain, `index` keeps each pod's place
        // in the discovered list; the answer must be positions in this list.
        let mut targets = pods(6);
        targets.retain(|target| target.index % 2 == 1);
        let filter = plugin(r#"{"replicas": 2, "sample_percent": 50}"#);
        for n in 0..50 {
            let chosen = filter
                .select_targets(&keyed(&format!("k{n}")), &targets)
                .unwrap();
            assert!(chosen.iter().all(|&position| position < 3), "{chosen:?}");
        }
        let all = plugin("{}")
            .select_targets(&testing::head("b"), &targets)
            .unwrap();
        assert_eq!(all, vec![0, 1, 2]);
    }

    #[test]
    fn bad_configs_are_rejected_with_reasons() {
        let error = |config| instantiate::<ShardFilter>(config).unwrap_err();
        assert_eq!(
            error(r#"{"shards": 0}"#),
            "invalid config: shards must be at least 1"
        );
        assert_eq!(
            error(r#"{"replicas": 0}"#),
            "invalid config: replicas must be at least 1"
        );
        assert!(error(r#"{"sample_percent": 0}"#).contains("sample_percent"));
        assert!(error(r#"{"sample_percent": 101}"#).contains("sample_percent"));
        assert!(error(r#"{"exclude": ["pod-7"]}"#).contains("`pod-7`"));
        assert!(error(r#"{"key_json_field": "user"}"#).contains("only the request head"));
        assert!(error(r#"{"missing_key": "drop"}"#).contains("unknown variant `drop`"));
        assert!(error(r#"{"shard": 3}"#).contains("unknown field `shard`"));
    }

    #[test]
    fn the_hash_is_stable() {
        // Receivers may compute ownership themselves: the hash must not change.
        // (Values checked against an independent implementation.)
        assert_eq!(hash(b""), 0xefd0_1f60_ba99_2926);
        assert_eq!(hash(b"user:42"), 0x9988_17be_e671_8248);
        let target = testing::target(0, "10.0.0.1", 8080);
        assert_eq!(weight("key:user:42", &target), 0x382e_abab_a7fe_c4a0);
    }
}

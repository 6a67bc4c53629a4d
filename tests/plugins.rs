//! The example plugins (`shard-filter`, `hmac-sign`, `quorum-merge`), built
//! from source, through the real router with real pods and, where pods are
//! discovered, a real DNS server: each does what its README promises — a
//! keyed broadcast reaches exactly the pods the documented rendezvous
//! arithmetic names, and still does after an unrelated pod goes away;
//! excluded pods never receive and sampling follows the documented rule;
//! every pod's copy carries a signature a receiver can verify with a
//! standard HMAC tool; a quorum answer holds the pods' own bodies; a
//! failing fail-closed plugin sends nothing; and the three plugins compose
//! in chain order on one route.
//!
//! Expected owners, samples and signatures are computed here independently
//! (the hash as documented in `plugins/examples/shard-filter/README.md`,
//! the HMAC by `openssl` or Python), never by the plugins' own code.

mod support;

use std::io::Write;
use std::net::SocketAddr;
use std::process::{Command, Stdio};

use reqwest::StatusCode;
use serde_json::{Value, json};
use support::dns::TestDns;
use support::pods::{Behaviour, Pods};
use support::{Answer, TestRouter, eventually, plugins, preamble};

/// The headless Service the DNS-discovered routes resolve.
const WEB: &str = "web.default.svc.cluster.local";

/// Limits of every plugin table. The hook timeout is far above what the
/// plugins need (well under a millisecond), so that a loaded machine never
/// turns a slow hook into a failure these tests do not expect.
const LIMITS: &str = "memory = \"16MiB\"\nhook_timeout = \"1s\"";

/// The message `shard-filter` rejects a key-less request with.
const NO_KEY: &str = "shard-filter: the request has no `x-shard-key` header to pick pods by";

/// A `[plugins.NAME]` table (fail-closed) for the freshly built `file`.
fn plugin_table(name: &str, file: &str) -> String {
    plugins::table(name, file, &format!("on_error = \"fail-closed\"\n{LIMITS}"))
}

/// A `[[routes]]` entry on `/{name}` over `source` (`service = …` and
/// `port = …`, or `targets = […]`) with the given `plugins` chain.
fn route(name: &str, source: &str, plugins: &str) -> String {
    format!("\n[[routes]]\nname = \"{name}\"\npath = \"/{name}\"\n{source}\nplugins = {plugins}\n")
}

/// The route source for pods discovered through [`WEB`].
fn discovered(pods: &Pods) -> String {
    format!("service = \"{WEB}\"\nport = {}", pods.port)
}

/// POSTs `body` to `path` with broadcast id `id` and, when given, the
/// shard key header.
async fn post(router: &TestRouter, path: &str, id: &str, key: Option<&str>, body: &str) -> Answer {
    let mut request = router
        .client()
        .post(format!("{}{path}", router.url))
        .header("x-broadcast-id", id)
        .header("content-type", "application/json")
        .body(body.to_owned());
    if let Some(key) = key {
        request = request.header("x-shard-key", key);
    }
    router.send(request).await
}

/// The pods that received broadcast `id`, in address order.
fn receivers(pods: &Pods, id: &str) -> Vec<SocketAddr> {
    pods.pods
        .iter()
        .filter(|pod| {
            pod.received()
                .iter()
                .any(|received| received.header("x-broadcast-id") == Some(id))
        })
        .map(|pod| pod.addr)
        .collect()
}

/// The targets the answer's report lists, in address order. (The report
/// lists them in the order the plugins selected them: shard-filter puts a
/// key's primary owner first.)
fn listed(answer: &Answer) -> Vec<SocketAddr> {
    let mut targets: Vec<SocketAddr> = answer.json["results"]
        .as_array()
        .unwrap_or_else(|| panic!("no results in {}", answer.json))
        .iter()
        .map(|result| result["target"].as_str().unwrap().parse().unwrap())
        .collect();
    targets.sort();
    targets
}

fn error(answer: &Answer) -> &str {
    answer.json["error"].as_str().unwrap_or_default()
}

/// shard-filter's documented hash: 64-bit FNV-1a, then MurmurHash3's
/// `fmix64`.
fn hash(bytes: &[u8]) -> u64 {
    let mut state: u64 = 0xcbf29ce484222325;
    for byte in bytes {
        state ^= u64::from(*byte);
        state = state.wrapping_mul(0x100000001b3);
    }
    state ^= state >> 33;
    state = state.wrapping_mul(0xff51afd7ed558ccd);
    state ^= state >> 33;
    state = state.wrapping_mul(0xc4ceb9fe1a85ec53);
    state ^ (state >> 33)
}

/// The `replicas` owners of `key` among `pods` by the documented
/// rendezvous rule (weight `hash("key:" + key + "\n" + ip:port)`, highest
/// wins, ties to the lower position), in address order.
fn owners(key: &str, pods: &[SocketAddr], replicas: usize) -> Vec<SocketAddr> {
    let mut weighted: Vec<(u64, usize)> = pods
        .iter()
        .enumerate()
        .map(|(position, pod)| (hash(format!("key:{key}\n{pod}").as_bytes()), position))
        .collect();
    weighted.sort_by(|(a, x), (b, y)| b.cmp(a).then(x.cmp(y)));
    let mut chosen: Vec<SocketAddr> = weighted
        .iter()
        .take(replicas)
        .map(|&(_, position)| pods[position])
        .collect();
    chosen.sort();
    chosen
}

/// The pods `sample_percent = percent` keeps for broadcast `id` by the
/// documented rule (`hash(id + "\n" + ip:port) mod 10000 < round(p * 100)`,
/// at least the lowest-scoring one), in address order.
fn sampled(id: &str, pods: &[SocketAddr], percent: f64) -> Vec<SocketAddr> {
    let limit = (percent * 100.0).round() as u64;
    let scores: Vec<(u64, SocketAddr)> = pods
        .iter()
        .map(|pod| (hash(format!("{id}\n{pod}").as_bytes()) % 10_000, *pod))
        .collect();
    let kept: Vec<SocketAddr> = scores
        .iter()
        .filter(|(score, _)| *score < limit)
        .map(|&(_, pod)| pod)
        .collect();
    if kept.is_empty() {
        vec![scores.iter().min_by_key(|(score, _)| *score).unwrap().1]
    } else {
        kept
    }
}

/// Lowercase hex HMAC-SHA256 of `message` keyed with `secret`, computed by
/// `openssl` when the machine has it, else by Python's `hmac` module.
fn hmac_sha256_hex(secret: &str, message: &[u8]) -> String {
    let script = "import hashlib, hmac, sys\n\
                  print(hmac.new(sys.argv[1].encode(), sys.stdin.buffer.read(), hashlib.sha256).hexdigest())";
    let mut child = Command::new("openssl")
        .args(["dgst", "-sha256", "-hmac", secret])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .or_else(|_| {
            Command::new("python3")
                .args(["-c", script, secret])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
        })
        .expect("openssl or python3 runs");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(message)
        .expect("message written");
    let output = child.wait_with_output().expect("HMAC tool finishes");
    assert!(output.status.success(), "HMAC tool failed: {output:?}");
    // openssl prints `HMAC-SHA2-256(stdin)= <hex>` (older: `(stdin)= <hex>`),
    // Python only the hex.
    let text = String::from_utf8(output.stdout).unwrap();
    let hex = text
        .split_whitespace()
        .last()
        .unwrap_or_default()
        .to_owned();
    assert!(
        hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()),
        "unexpected HMAC tool output {text:?}"
    );
    hex.to_ascii_lowercase()
}

/// The `x-broadcast-signature` a receiver expects, per hmac-sign's README.
fn expected_signature(secret: &str, broadcast_id: &str, body: &[u8]) -> String {
    let mut message = format!("{broadcast_id}\n").into_bytes();
    message.extend_from_slice(body);
    format!("sha256={}", hmac_sha256_hex(secret, &message))
}

#[tokio::test(flavor = "multi_thread")]
async fn shard_filter_sends_each_key_only_to_its_owning_pods() {
    let dns = TestDns::start().await;
    let pods = Pods::start(2, &vec![Behaviour::Ok; 5]).await;
    let addrs: Vec<SocketAddr> = pods.pods.iter().map(|pod| pod.addr).collect();
    dns.set(WEB, &pods.ips(), 1).await;
    let config = format!(
        "{}{}{}{}",
        preamble(Some(dns.addr())),
        plugin_table("shard", "shard_filter.wasm"),
        route(
            "keyed",
            &discovered(&pods),
            "[{ use = \"shard\", config = { replicas = 2 } }]"
        ),
        route(
            "strict",
            &discovered(&pods),
            "[{ use = \"shard\", config = { replicas = 2, missing_key = \"reject\" } }]"
        ),
    );
    let router = TestRouter::start(&config).await;

    // A key reaches exactly its two owners, as a receiver computes them.
    let owners_of_42 = owners("user:42", &addrs, 2);
    let answer = post(&router, "/keyed", "shard-1", Some("user:42"), "{}").await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.json);
    assert_eq!(answer.json["targets"], 2);
    assert_eq!(answer.json["succeeded"], 2);
    assert_eq!(answer.header("x-broadcast-targets"), "2");
    assert_eq!(receivers(&pods, "shard-1"), owners_of_42);
    assert_eq!(listed(&answer), owners_of_42);
    assert_eq!(pods.total(), 2);

    // The same key goes to the same pods in every broadcast.
    let again = post(&router, "/keyed", "shard-2", Some("user:42"), "{}").await;
    assert_eq!(again.status, StatusCode::OK, "{}", again.json);
    assert_eq!(receivers(&pods, "shard-2"), owners_of_42);

    // Different keys spread over the pods, each to its own two owners.
    let mut reached = std::collections::BTreeSet::new();
    for n in 0..20 {
        let (id, key) = (format!("spread-{n}"), format!("user:{n}"));
        let answer = post(&router, "/keyed", &id, Some(&key), "{}").await;
        assert_eq!(answer.status, StatusCode::OK, "{key}: {}", answer.json);
        assert_eq!(answer.json["targets"], 2, "{key}");
        let got = receivers(&pods, &id);
        assert_eq!(got, owners(&key, &addrs, 2), "{key}");
        reached.extend(got);
    }
    assert!(
        reached.len() > 2,
        "20 keys all landed on {reached:?}: no sharding"
    );

    // Without a key the broadcast goes to every pod (missing_key = "all").
    let unkeyed = post(&router, "/keyed", "shard-all", None, "{}").await;
    assert_eq!(unkeyed.status, StatusCode::OK, "{}", unkeyed.json);
    assert_eq!(unkeyed.json["targets"], 5);
    assert_eq!(receivers(&pods, "shard-all"), addrs);

    // missing_key = "reject": 502 with the plugin's message, nothing sent.
    let before = pods.total();
    let rejected = post(&router, "/strict", "shard-reject", None, "{}").await;
    assert_eq!(
        rejected.status,
        StatusCode::BAD_GATEWAY,
        "{}",
        rejected.json
    );
    assert_eq!(rejected.json["ok"], false);
    assert!(error(&rejected).contains(NO_KEY), "{}", rejected.json);
    assert!(
        error(&rejected).contains("plugin \"shard\" returned an error"),
        "{}",
        rejected.json
    );
    assert_eq!(pods.total(), before, "fail-closed sends nothing");
    let keyed = post(&router, "/strict", "shard-strict", Some("user:42"), "{}").await;
    assert_eq!(keyed.status, StatusCode::OK, "{}", keyed.json);
    assert_eq!(receivers(&pods, "shard-strict"), owners_of_42);

    // Scale down by a pod that does not own the key: once the router sees
    // it gone, the key still maps to the same two pods.
    let leaving = *addrs
        .iter()
        .find(|addr| !owners_of_42.contains(addr))
        .unwrap();
    let staying: Vec<SocketAddr> = addrs.iter().copied().filter(|a| *a != leaving).collect();
    let staying_ips: Vec<_> = staying.iter().map(SocketAddr::ip).collect();
    dns.set(WEB, &staying_ips, 1).await;
    eventually("the router sees the pod gone", || async {
        let answer = router.post("/keyed", "{}").await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.json);
        (answer.json["targets"] == 4).then_some(())
    })
    .await;
    let after = post(&router, "/keyed", "shard-after", Some("user:42"), "{}").await;
    assert_eq!(after.status, StatusCode::OK, "{}", after.json);
    assert_eq!(after.json["targets"], 2);
    assert_eq!(receivers(&pods, "shard-after"), owners_of_42);
    assert_eq!(owners("user:42", &staying, 2), owners_of_42);
}

#[tokio::test(flavor = "multi_thread")]
async fn shard_filter_exclude_and_sampling() {
    let dns = TestDns::start().await;
    let pods = Pods::start(10, &vec![Behaviour::Ok; 5]).await;
    let addrs: Vec<SocketAddr> = pods.pods.iter().map(|pod| pod.addr).collect();
    let excluded = &pods.pods[0];
    dns.set(WEB, &pods.ips(), 30).await;
    let config = format!(
        "{}{}{}{}",
        preamble(Some(dns.addr())),
        plugin_table("shard", "shard_filter.wasm"),
        route(
            "exclude",
            &discovered(&pods),
            &format!(
                "[{{ use = \"shard\", config = {{ exclude = [\"{}\"] }} }}]",
                excluded.ip()
            )
        ),
        route(
            "sample",
            &discovered(&pods),
            "[{ use = \"shard\", config = { sample_percent = 40 } }]"
        ),
    );
    let router = TestRouter::start(&config).await;

    // An excluded pod gets neither key-less nor keyed broadcasts.
    let all = post(&router, "/exclude", "exclude-all", None, "{}").await;
    assert_eq!(all.status, StatusCode::OK, "{}", all.json);
    assert_eq!(all.json["targets"], 4);
    assert_eq!(receivers(&pods, "exclude-all"), addrs[1..]);
    for n in 0..20 {
        let (id, key) = (format!("exclude-{n}"), format!("user:{n}"));
        let answer = post(&router, "/exclude", &id, Some(&key), "{}").await;
        assert_eq!(answer.status, StatusCode::OK, "{key}: {}", answer.json);
        assert_eq!(answer.json["targets"], 1, "replicas defaults to 1");
        assert_eq!(receivers(&pods, &id), owners(&key, &addrs[1..], 1), "{key}");
    }
    assert_eq!(excluded.count(), 0, "the excluded pod received something");

    // sample_percent keeps each pod with that probability, decided by the
    // broadcast id: it is not round(40% of 5). Pick an id for which the
    // documented rule keeps exactly two pods.
    let id = (0..)
        .map(|n| format!("sample-{n}"))
        .find(|id| sampled(id, &addrs, 40.0).len() == 2)
        .unwrap();
    let expected = sampled(&id, &addrs, 40.0);
    for _ in 0..2 {
        let before: Vec<usize> = pods.pods.iter().map(|pod| pod.count()).collect();
        let answer = post(&router, "/sample", &id, None, "{}").await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.json);
        assert_eq!(answer.json["targets"], 2, "{}", answer.json);
        assert_eq!(answer.header("x-broadcast-targets"), "2");
        assert_eq!(listed(&answer), expected, "the same id picks the same pods");
        let got: Vec<SocketAddr> = pods
            .pods
            .iter()
            .zip(before)
            .filter(|(pod, before)| pod.count() > *before)
            .map(|(pod, _)| pod.addr)
            .collect();
        assert_eq!(got, expected);
    }
    // Other ids keep other counts, always as the rule says, never none.
    let mut counts = std::collections::BTreeSet::new();
    for n in 0..12 {
        let id = format!("other-{n}");
        let answer = post(&router, "/sample", &id, None, "{}").await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.json);
        let expected = sampled(&id, &addrs, 40.0);
        assert_eq!(receivers(&pods, &id), expected, "{id}");
        assert!(!expected.is_empty());
        counts.insert(expected.len());
    }
    assert!(counts.len() > 1, "every id kept {counts:?} pods");
}

#[tokio::test(flavor = "multi_thread")]
async fn hmac_sign_gives_each_pod_a_verifiable_signature() {
    // The external tool agrees with the plugin's own known vector.
    assert_eq!(
        expected_signature("s3cret", "b-1", br#"{"a":1}"#),
        "sha256=2a85ff22855649e6192812ea688c0504b0c5ed23d25ed6c81dd5b4bb91f239b6"
    );
    let pods = Pods::start(20, &vec![Behaviour::Ok; 3]).await;
    let config = format!(
        "{}{}{}",
        preamble(None),
        plugin_table("sign", "hmac_sign.wasm"),
        route(
            "signed",
            &format!("targets = {}", pods.targets_toml()),
            "[{ use = \"sign\", config = { secret = \"s3cret\", add_target = true, add_fields = { source = \"router\" } } }]"
        ),
    );
    let router = TestRouter::start(&config).await;

    let answer = post(&router, "/signed", "sign-1", None, r#"{"key":"user:42"}"#).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.json);
    assert_eq!(answer.json["targets"], 3);
    assert_eq!(answer.json["succeeded"], 3);
    let mut signatures = Vec::new();
    for pod in &pods.pods {
        let received = pod.received();
        assert_eq!(received.len(), 1, "{}", pod.addr);
        let copy = &received[0];
        let body: Value = serde_json::from_slice(&copy.body).expect("a JSON body");
        assert_eq!(
            body,
            json!({"key": "user:42", "source": "router", "target": pod.addr.to_string()}),
            "{}",
            pod.addr
        );
        assert_eq!(copy.header("x-broadcast-id"), Some("sign-1"));
        let signature = copy
            .header("x-broadcast-signature")
            .unwrap_or_else(|| panic!("{} got no signature", pod.addr));
        assert_eq!(
            signature,
            expected_signature("s3cret", "sign-1", &copy.body),
            "{}",
            pod.addr
        );
        signatures.push(signature.to_owned());
    }
    signatures.sort();
    signatures.dedup();
    assert_eq!(signatures.len(), 3, "each pod's copy is signed on its own");

    // Fields cannot be merged into a body that is not JSON: the broadcast
    // fails closed, and no pod gets an unsigned or unmerged copy.
    let rejected = post(&router, "/signed", "sign-2", None, "not json").await;
    assert_eq!(
        rejected.status,
        StatusCode::BAD_GATEWAY,
        "{}",
        rejected.json
    );
    assert_eq!(rejected.json["ok"], false);
    assert!(
        error(&rejected).contains("hmac-sign: fields must be added but the body is not JSON"),
        "{}",
        rejected.json
    );
    assert!(
        error(&rejected).contains("in transform"),
        "{}",
        rejected.json
    );
    assert_eq!(pods.total(), 3, "nothing was sent");
}

#[tokio::test(flavor = "multi_thread")]
async fn quorum_merge_answers_with_the_pods_bodies() {
    let pods = Pods::start(30, &[Behaviour::Ok, Behaviour::Status(500), Behaviour::Ok]).await;
    let (good, bad) = ([pods.pods[0].addr, pods.pods[2].addr], pods.pods[1].addr);
    let targets = format!("targets = {}\nretries = 0", pods.targets_toml());
    let config = format!(
        "{}{}{}{}",
        preamble(None),
        plugin_table("merge", "quorum_merge.wasm"),
        route(
            "two",
            &targets,
            "[{ use = \"merge\", config = { quorum = 2 } }]"
        ),
        route(
            "three",
            &targets,
            "[{ use = \"merge\", config = { quorum = 3 } }]"
        ),
    );
    let router = TestRouter::start(&config).await;
    let document = |ok: bool, quorum: u32| {
        json!({
            "ok": ok,
            "quorum": quorum,
            "succeeded": 2,
            "targets": 3,
            "bodies": {
                good[0].to_string(): {"pod": good[0].to_string()},
                good[1].to_string(): {"pod": good[1].to_string()},
            },
            "failed": { bad.to_string(): "status" },
        })
    };

    let met = post(&router, "/two", "merge-1", None, "{}").await;
    assert_eq!(met.status, StatusCode::OK, "{}", met.json);
    assert_eq!(met.header("content-type"), "application/json");
    assert_eq!(met.json, document(true, 2));
    assert_eq!(met.header("x-broadcast-targets"), "3");
    assert_eq!(met.header("x-broadcast-succeeded"), "2");
    assert_eq!(met.header("x-broadcast-id"), "merge-1");

    let missed = post(&router, "/three", "merge-2", None, "{}").await;
    assert_eq!(missed.status, StatusCode::BAD_GATEWAY, "{}", missed.json);
    assert_eq!(missed.json, document(false, 3));
    assert_eq!(missed.header("x-broadcast-targets"), "3");
    assert_eq!(missed.header("x-broadcast-succeeded"), "2");

    for pod in &pods.pods {
        assert_eq!(pod.count(), 2, "{} got one copy per broadcast", pod.addr);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn three_plugin_chain_composes_in_order() {
    let dns = TestDns::start().await;
    let pods = Pods::start(40, &vec![Behaviour::Ok; 4]).await;
    let addrs: Vec<SocketAddr> = pods.pods.iter().map(|pod| pod.addr).collect();
    dns.set(WEB, &pods.ips(), 30).await;
    let config = format!(
        "{}{}{}{}{}",
        preamble(Some(dns.addr())),
        plugin_table("shard", "shard_filter.wasm"),
        plugin_table("sign", "hmac_sign.wasm"),
        plugin_table("merge", "quorum_merge.wasm"),
        route(
            "chain",
            &discovered(&pods),
            "[{ use = \"shard\", config = { replicas = 2 } }, \
              { use = \"sign\", config = { secret = \"s3cret\", add_target = true } }, \
              { use = \"merge\", config = { quorum = 2 } }]"
        ),
    );
    let router = TestRouter::start(&config).await;

    let answer = post(
        &router,
        "/chain",
        "chain-1",
        Some("user:42"),
        r#"{"key":"user:42"}"#,
    )
    .await;

    // Selection first: only the key's owners get a copy…
    let owners = owners("user:42", &addrs, 2);
    assert_eq!(receivers(&pods, "chain-1"), owners);
    assert_eq!(pods.total(), 2);
    // …then each owner's copy is merged and signed for that owner…
    for pod in pods.pods.iter().filter(|pod| owners.contains(&pod.addr)) {
        let copy = &pod.received()[0];
        let body: Value = serde_json::from_slice(&copy.body).expect("a JSON body");
        assert_eq!(
            body,
            json!({"key": "user:42", "target": pod.addr.to_string()})
        );
        assert_eq!(copy.header("x-shard-key"), Some("user:42"));
        assert_eq!(
            copy.header("x-broadcast-signature"),
            Some(expected_signature("s3cret", "chain-1", &copy.body).as_str()),
            "{}",
            pod.addr
        );
    }
    // …and the merge plugin answers over the selected pods only.
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.json);
    assert_eq!(
        answer.json,
        json!({
            "ok": true,
            "quorum": 2,
            "succeeded": 2,
            "targets": 2,
            "bodies": {
                owners[0].to_string(): {"pod": owners[0].to_string()},
                owners[1].to_string(): {"pod": owners[1].to_string()},
            },
            "failed": {},
        })
    );
    assert_eq!(answer.header("x-broadcast-targets"), "2");
    assert_eq!(answer.header("x-broadcast-succeeded"), "2");
}

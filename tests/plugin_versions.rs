//! The two versions of the plugin contract, through the real router with
//! real pods and plugins built from source: `broadcast:plugin@0.2.0`
//! calls `transform` once for the pods that share a copy of the request
//! and takes one patch per pod, or one for all of them; another count is
//! invalid output; each
//! plugin of a chain sees each pod's own copy; pods given equal patches
//! keep sharing a copy, so a later plugin is still called once; a 0.1.0
//! component keeps working, alone and chained with 0.2.0 plugins; the
//! frozen 0.1.0 WIT is never edited; and `check` refuses a component built
//! for a version this router does not load, saying which.

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use reqwest::StatusCode;
use sha2::{Digest, Sha256};
use support::pods::{Behaviour, Pods};
use support::{Answer, TestRouter, plugins, preamble};

const ROUTER: &str = env!("CARGO_BIN_EXE_broadcast-router");

/// The SHA-256 of `plugins/wit/v0.1.0/plugin.wit`, the 0.1.0 contract as
/// released. Plugins built for it are in use: it never changes.
const V0_1_0_SHA256: &str = "26e548e409ce0fccc930eb6de2467e559472e310c89b757fa77d9a06d7ee54ab";

/// The limits of every plugin table (generous: no test here is about time).
const LIMITS: &str = "on_error = \"fail-closed\"\nmemory = \"16MiB\"\nhook_timeout = \"1s\"";

/// A `[plugins.NAME]` table for the freshly built `file`, with [`LIMITS`].
fn table(name: &str, file: &str) -> String {
    plugins::table(name, file, LIMITS)
}

/// A route on `/{name}` over `pods` with a `plugins` chain.
fn route(name: &str, pods: &Pods, chain: &str) -> String {
    format!(
        "\n[[routes]]\nname = \"{name}\"\npath = \"/{name}\"\ntargets = {}\nretries = 0\nplugins = {chain}\n",
        pods.targets_toml()
    )
}

/// The value of header `name` in the one copy each pod received, in pod
/// order (`None` for a pod that received nothing).
fn received(pods: &Pods, name: &str) -> Vec<Option<String>> {
    pods.pods
        .iter()
        .map(|pod| {
            let copies = pod.received();
            assert!(
                copies.len() <= 1,
                "{} got {} copies",
                pod.addr,
                copies.len()
            );
            copies
                .first()
                .map(|copy| copy.header(name).unwrap_or("(absent)").to_owned())
        })
        .collect()
}

/// `received` for pods that all received a copy.
fn every(pods: &Pods, name: &str) -> Vec<String> {
    received(pods, name)
        .into_iter()
        .map(|value| value.unwrap_or_else(|| panic!("a pod got no copy ({name})")))
        .collect()
}

/// The pods' `ip:port`s, in order.
fn addresses(pods: &Pods) -> Vec<String> {
    pods.pods.iter().map(|pod| pod.addr.to_string()).collect()
}

/// The numbers `1..=count` as text, in order.
fn one_to(count: usize) -> BTreeSet<String> {
    (1..=count).map(|n| n.to_string()).collect()
}

fn error(answer: &Answer) -> &str {
    answer.json["error"].as_str().unwrap_or_default()
}

#[test]
fn the_released_0_1_0_contract_is_frozen() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("plugins/wit");
    let frozen = std::fs::read(root.join("v0.1.0/plugin.wit")).expect("the 0.1.0 WIT reads");
    let digest: String = Sha256::digest(&frozen)
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect();
    assert_eq!(
        digest, V0_1_0_SHA256,
        "plugins/wit/v0.1.0/plugin.wit changed: a released contract is never edited \
         (change plugins/wit/plugin.wit, under a new version)"
    );
    let frozen = String::from_utf8(frozen).unwrap();
    assert!(frozen.contains("package broadcast:plugin@0.1.0;"));
    let current = std::fs::read_to_string(root.join("plugin.wit")).unwrap();
    assert!(current.contains("package broadcast:plugin@0.2.0;"));
    assert!(current.contains(
        "export transform: func(request: request, targets: list<target>) -> result<list<request-patch>, string>;"
    ));
}

#[tokio::test(flavor = "multi_thread")]
async fn one_transform_call_covers_every_pod_and_a_wrong_patch_count_is_invalid() {
    let pods = Pods::start(230, &[Behaviour::Ok, Behaviour::Ok, Behaviour::Ok]).await;
    let config = format!(
        "{}{}{}{}{}{}{}",
        preamble(None),
        table("stress", "stress.wasm"),
        plugins::table(
            "stress-open",
            "stress.wasm",
            &LIMITS.replace("fail-closed", "fail-open")
        ),
        route(
            "counted",
            &pods,
            "[{ use = \"stress\", config = { count_calls = true, stamp_target = true } }]"
        ),
        route(
            "miscounted",
            &pods,
            "[{ use = \"stress\", config = { patch_count = 4, stamp_target = true } }]"
        ),
        route(
            "miscounted-open",
            &pods,
            "[{ use = \"stress-open\", config = { patch_count = 2, stamp_target = true } }]"
        ),
        route(
            "one-for-all",
            &pods,
            "[{ use = \"stress\", config = { patch_count = 1, stamp_target = true, count_calls = true } }]"
        ),
    );
    let router = TestRouter::start(&config).await;

    let answer = router.post("/counted", "{}").await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.json);
    assert_eq!(every(&pods, "x-stress-call"), ["1", "1", "1"]);
    assert_eq!(every(&pods, "x-stress-targets"), ["3", "3", "3"]);
    assert_eq!(every(&pods, "x-stress-target"), addresses(&pods));

    // Four patches for three pods: invalid output, 502, nothing sent.
    let before = pods.total();
    let answer = router.post("/miscounted", "{}").await;
    assert_eq!(answer.status, StatusCode::BAD_GATEWAY, "{}", answer.json);
    assert!(
        error(&answer).contains(
            "plugin \"stress\" returned invalid output: 4 patches for 3 targets \
             (transform returns one patch per target, in the same order, or one patch for all of them) in transform \
             (policy fail-closed, answering 502)"
        ),
        "{}",
        answer.json
    );
    assert_eq!(pods.total(), before, "fail-closed sends nothing");

    // Fail-open: the plugin is skipped, every pod gets the request as sent.
    let answer = router.post("/miscounted-open", "{}").await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.json);
    assert_eq!(pods.total(), before + 3);
    for pod in &pods.pods {
        let last = pod.received().pop().unwrap();
        assert_eq!(last.header("x-stress-target"), None, "{}", pod.addr);
    }

    // One patch for three pods, from one call, applies to all of them (the
    // first pod's stamp, here). That they keep sharing one copy, so that a
    // later plugin is called once, is the next test's: hmac-sign's equal
    // patches reach the router as one, through the SDK.
    let answer = router.post("/one-for-all", "{}").await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.json);
    assert_eq!(pods.total(), before + 6);
    let first = addresses(&pods).swap_remove(0);
    for pod in &pods.pods {
        let last = pod.received().pop().unwrap();
        assert_eq!(
            last.header("x-stress-target"),
            Some(&*first),
            "{}",
            pod.addr
        );
        assert_eq!(last.header("x-stress-call"), Some("1"), "{}", pod.addr);
        assert_eq!(last.header("x-stress-targets"), Some("3"), "{}", pod.addr);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn each_plugin_of_a_chain_sees_each_pods_own_copy() {
    let pods = Pods::start(234, &[Behaviour::Ok, Behaviour::Ok, Behaviour::Ok]).await;
    let config = format!(
        "{}{}{}{}",
        preamble(None),
        table("sign", "hmac_sign.wasm"),
        table("count", "stress.wasm"),
        route(
            "chain",
            &pods,
            "[{ use = \"sign\", config = { secret = \"s3cret\", add_target = true } }, \
              { use = \"count\", config = { echo_header = \"x-broadcast-signature\", count_calls = true } }]"
        ),
    );
    let router = TestRouter::start(&config).await;
    let answer = router.post("/chain", "{}").await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.json);
    // The first plugin signed each pod's copy its own way…
    let signatures = every(&pods, "x-broadcast-signature");
    let distinct: BTreeSet<&String> = signatures.iter().collect();
    assert_eq!(distinct.len(), 3, "{signatures:?}");
    // …so the second is called once per copy, each time with that pod's.
    assert_eq!(every(&pods, "x-stress-echo"), signatures);
    assert_eq!(every(&pods, "x-stress-targets"), ["1", "1", "1"]);
    let calls: BTreeSet<String> = every(&pods, "x-stress-call").into_iter().collect();
    assert_eq!(calls, one_to(3));
}

#[tokio::test(flavor = "multi_thread")]
async fn equal_patches_keep_one_copy_so_a_later_plugin_is_called_once() {
    let pods = Pods::start(238, &[Behaviour::Ok, Behaviour::Ok, Behaviour::Ok]).await;
    // hmac-sign gives every pod the same patch unless asked to add the
    // target: the same signature header, or that and the same new body.
    let counted = "{ use = \"count\", config = { count_calls = true } }";
    let config = format!(
        "{}{}{}{}{}",
        preamble(None),
        table("sign", "hmac_sign.wasm"),
        table("count", "stress.wasm"),
        route(
            "signed",
            &pods,
            &format!("[{{ use = \"sign\", config = {{ secret = \"s3cret\" }} }}, {counted}]")
        ),
        route(
            "merged",
            &pods,
            &format!(
                "[{{ use = \"sign\", config = {{ secret = \"s3cret\", add_fields = {{ a = 1 }} }} }}, {counted}]"
            )
        ),
    );
    let router = TestRouter::start(&config).await;
    for path in ["/signed", "/merged"] {
        let before: Vec<usize> = pods.pods.iter().map(|pod| pod.count()).collect();
        let answer = router.post(path, "{}").await;
        assert_eq!(answer.status, StatusCode::OK, "{path}: {}", answer.json);
        let last = |name: &str| -> Vec<String> {
            pods.pods
                .iter()
                .zip(&before)
                .map(|(pod, before)| {
                    let copies = pod.received();
                    assert_eq!(copies.len(), before + 1, "{path}: {}", pod.addr);
                    copies[*before].header(name).unwrap_or("-").to_owned()
                })
                .collect()
        };
        let values = last("x-broadcast-signature");
        assert!(values[0].starts_with("sha256="), "{path}: {values:?}");
        assert!(values.iter().all(|value| *value == values[0]), "{path}");
        assert_eq!(last("x-stress-call"), ["1", "1", "1"], "{path}");
        assert_eq!(last("x-stress-targets"), ["3", "3", "3"], "{path}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_0_1_0_plugin_works_alone_and_chained_with_0_2_0_plugins() {
    let pods = Pods::start(242, &[Behaviour::Ok, Behaviour::Ok, Behaviour::Ok]).await;
    let skipped = pods.pods[1].addr.ip();
    let config = format!(
        "{}{}{}{}{}{}{}",
        preamble(None),
        table("legacy", "legacy_v0_1.wasm"),
        table("sign", "hmac_sign.wasm"),
        table("count", "stress.wasm"),
        route(
            "alone",
            &pods,
            &format!("[{{ use = \"legacy\", config = {{ skip = [\"{skipped}\"] }} }}]")
        ),
        route(
            "after",
            &pods,
            "[{ use = \"sign\", config = { secret = \"s3cret\" } }, \
              { use = \"legacy\", config = { echo_header = \"x-broadcast-signature\" } }, \
              { use = \"count\", config = { echo_header = \"x-legacy-target\", count_calls = true } }]"
        ),
        route(
            "before",
            &pods,
            "[{ use = \"count\", config = { count_calls = true } }, \
              { use = \"legacy\", config = { echo_header = \"x-stress-call\" } }]"
        ),
    );
    let router = TestRouter::start(&config).await;

    // Alone: its selection and its per-pod transform, as with 0.1.0.
    let answer = router.post("/alone", "{}").await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.json);
    assert_eq!(answer.json["targets"], 2);
    let targets = received(&pods, "x-legacy-target");
    let addresses = addresses(&pods);
    assert_eq!(
        targets,
        [Some(addresses[0].clone()), None, Some(addresses[2].clone())]
    );
    let calls: BTreeSet<String> = received(&pods, "x-legacy-call")
        .into_iter()
        .flatten()
        .collect();
    assert_eq!(calls, one_to(2), "one call per pod");

    // In a chain: it sees the copy a 0.2.0 plugin patched, patches each
    // pod its own way, and the 0.2.0 plugin after it sees each pod's copy.
    let answer = router.post("/after", "{}").await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.json);
    let last = |name: &str| -> Vec<String> {
        pods.pods
            .iter()
            .map(|pod| {
                let copy = pod.received().pop().expect("a copy");
                copy.header(name).unwrap_or("-").to_owned()
            })
            .collect()
    };
    let signature = last("x-broadcast-signature");
    assert!(signature[0].starts_with("sha256="), "{signature:?}");
    assert_eq!(last("x-legacy-echo"), signature);
    assert!(signature.iter().all(|value| *value == signature[0]));
    assert_eq!(last("x-legacy-target"), addresses);
    assert_eq!(last("x-stress-echo"), addresses);
    assert_eq!(last("x-stress-targets"), ["1", "1", "1"]);
    let legacy_calls: BTreeSet<String> = last("x-legacy-call").into_iter().collect();
    assert_eq!(legacy_calls, one_to(3));
    let calls: BTreeSet<String> = last("x-stress-call").into_iter().collect();
    assert_eq!(calls, one_to(3), "one call per distinct copy");

    // After a 0.2.0 plugin that made one call for all: still once per pod.
    let answer = router.post("/before", "{}").await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.json);
    assert_eq!(last("x-stress-call"), ["1", "1", "1"]);
    assert_eq!(last("x-legacy-echo"), ["1", "1", "1"]);
    assert_eq!(last("x-legacy-target"), addresses);
    let legacy_calls: BTreeSet<String> = last("x-legacy-call").into_iter().collect();
    assert_eq!(legacy_calls, one_to(3));
}

/// `file` with every `from` in its bytes replaced by `to` (of the same
/// length, so the component stays valid), written into `dir`.
fn rewritten(dir: &Path, file: &str, from: &str, to: &str) -> PathBuf {
    assert_eq!(from.len(), to.len());
    let bytes = std::fs::read(plugins::built().join(file)).unwrap();
    let mut out = Vec::with_capacity(bytes.len());
    let mut rest = &bytes[..];
    let mut replaced = 0;
    while let Some(at) = rest
        .windows(from.len())
        .position(|window| window == from.as_bytes())
    {
        out.extend_from_slice(&rest[..at]);
        out.extend_from_slice(to.as_bytes());
        rest = &rest[at + from.len()..];
        replaced += 1;
    }
    out.extend_from_slice(rest);
    assert!(replaced > 0, "{from} is not in {file}");
    let path = dir.join(format!("{}.wasm", to.replace([':', '/', '@', '.'], "-")));
    std::fs::write(&path, out).unwrap();
    path
}

#[test]
fn check_refuses_a_component_of_a_version_this_router_does_not_load() {
    let dir = tempfile::tempdir().unwrap();
    // The 0.1.0 test plugin, its import renamed: a component built for
    // 0.3.0, and one that imports nothing of the contract at all.
    let future = rewritten(
        dir.path(),
        "legacy_v0_1.wasm",
        "broadcast:plugin/types@0.1.0",
        "broadcast:plugin/types@0.3.0",
    );
    let foreign = rewritten(
        dir.path(),
        "legacy_v0_1.wasm",
        "broadcast:plugin/",
        "elsewhere:plugin/",
    );
    let config = dir.path().join("router.toml");
    let check = |plugin: &Path| {
        std::fs::write(
            &config,
            format!(
                "[plugins.old]\npath = \"{}\"\n\n[[routes]]\nname = \"r\"\npath = \"/r\"\n\
                 targets = [\"127.0.0.2:80\"]\nplugins = [{{ use = \"old\" }}]\n",
                plugin.display()
            ),
        )
        .unwrap();
        let output = Command::new(ROUTER)
            .args(["check", "--config"])
            .arg(&config)
            .output()
            .expect("the router runs");
        assert_eq!(output.status.code(), Some(1), "{output:?}");
        String::from_utf8_lossy(&output.stderr).into_owned()
    };
    let stderr = check(&future);
    assert!(
        stderr.contains("plugin \"old\": ")
            && stderr
                .contains("is built for broadcast:plugin@0.3.0; this router loads 0.1.0 and 0.2.0"),
        "{stderr}"
    );
    let stderr = check(&foreign);
    assert!(
        stderr.contains(
            "is not a broadcast:plugin component: it imports no broadcast:plugin interface"
        ),
        "{stderr}"
    );
}

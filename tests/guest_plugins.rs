//! Python and JavaScript plugins, built from source with the pinned
//! componentize-py and componentize-js, through the real router with real
//! pods: the templates of all three languages do the same thing; each
//! language's plugins filter pods, transform each copy (one call for the
//! pods that share a copy) and decide the answer; a returned error and a thrown exception fail the broadcast with
//! the plugin's own message; the Python and JavaScript ports of
//! shard-filter pick exactly the pods the Rust one picks; and with
//! `instances = "reuse"` state survives between broadcasts until a failure
//! discards the instance.

mod support;

use reqwest::StatusCode;
use serde_json::json;
use support::pods::{Behaviour, Pods};
use support::{Answer, TestRouter, plugins, preamble};

/// The two guest languages, as the probe plugins name themselves.
const LANGUAGES: [&str; 2] = ["python", "javascript"];

/// A route on `/{name}` over `pods` with a `plugins` chain.
fn route(name: &str, pods: &Pods, chain: &str) -> String {
    format!(
        "\n[[routes]]\nname = \"{name}\"\npath = \"/{name}\"\ntargets = {}\nretries = 0\nplugins = {chain}\n",
        pods.targets_toml()
    )
}

fn error(answer: &Answer) -> &str {
    answer.json["error"].as_str().unwrap_or_default()
}

async fn post_with(router: &TestRouter, path: &str, header: Option<(&str, &str)>) -> Answer {
    let mut request = router
        .client()
        .post(format!("{}{path}", router.url))
        .body("{}");
    if let Some((name, value)) = header {
        request = request.header(name, value);
    }
    router.send(request).await
}

#[tokio::test(flavor = "multi_thread")]
async fn the_templates_of_all_three_languages_skip_tag_and_judge_alike() {
    let pods = Pods::start(201, &[Behaviour::Ok, Behaviour::Ok, Behaviour::Ok]).await;
    let skipped = pods.pods[1].addr.ip().to_string();
    let mut config = preamble(None);
    config.push_str(&plugins::table(
        "rust",
        "template_rust.wasm",
        &format!("memory = \"{}\"", plugins::GUEST_MEMORY),
    ));
    config.push_str(&plugins::guest_table("python", "template_python.wasm", ""));
    config.push_str(&plugins::guest_table(
        "javascript",
        "template_javascript.wasm",
        "",
    ));
    for language in ["rust", "python", "javascript"] {
        config.push_str(&route(
            language,
            &pods,
            &format!(
                "[{{ use = \"{language}\", config = {{ skip = [\"{skipped}\"], tag = \"{language}\" }} }}]"
            ),
        ));
    }
    let router = TestRouter::start(&config).await;
    for language in ["rust", "python", "javascript"] {
        let answer = router.post(&format!("/{language}"), "{}").await;
        assert_eq!(answer.status, StatusCode::OK, "{language}: {}", answer.json);
        assert_eq!(
            answer.json,
            json!({"ok": true, "answered": 2, "pods": 2}),
            "{language}"
        );
        for (position, pod) in pods.pods.iter().enumerate() {
            let tags: Vec<String> = pod
                .received()
                .iter()
                .filter_map(|received| received.header("x-plugin-tag").map(str::to_owned))
                .collect();
            let expected = usize::from(position != 1);
            assert_eq!(
                tags.iter().filter(|tag| *tag == language).count(),
                expected,
                "{language}: pod {position} received {tags:?}"
            );
        }
    }
    assert_eq!(pods.pods[1].count(), 0, "the skipped pod never receives");
    // A config the plugin does not know is an init error, in every language.
    for language in ["python", "javascript"] {
        let text = format!(
            "{}{}{}",
            preamble(None),
            plugins::guest_table("t", &format!("template_{language}.wasm"), ""),
            route("r", &pods, "[{ use = \"t\", config = { skipp = [] } }]")
        );
        let config = broadcast_router::config::Config::parse(&text).unwrap();
        let problems = broadcast_router::plugin::Plugins::load(&config)
            .err()
            .expect("an unknown key is refused")
            .to_string();
        assert!(
            problems.contains("rejected its config: unknown config keys: skipp"),
            "{language}: {problems}"
        );
    }
}

/// A router with, for each language, probe routes: `/{language}-probe`
/// (excludes the first pod), `/{language}-fail-select` (returns an error),
/// `/{language}-raise-transform` (throws in transform),
/// `/{language}-fail-aggregate` (returns an error in aggregate).
async fn probes(pods: &Pods) -> TestRouter {
    let excluded = pods.pods[0].addr.ip();
    let mut config = preamble(None);
    for language in LANGUAGES {
        config.push_str(&plugins::guest_table(
            language,
            &format!("probe_{language}.wasm"),
            "",
        ));
        let throw = if language == "python" {
            "raise_in"
        } else {
            "throw_in"
        };
        for (name, plugin_config) in [
            ("probe", format!("exclude = [\"{excluded}\"]")),
            ("fail-select", "fail_in = \"select-targets\"".to_owned()),
            ("raise-transform", format!("{throw} = \"transform\"")),
            ("fail-aggregate", "fail_in = \"aggregate\"".to_owned()),
        ] {
            config.push_str(&route(
                &format!("{language}-{name}"),
                pods,
                &format!("[{{ use = \"{language}\", config = {{ {plugin_config} }} }}]"),
            ));
        }
    }
    TestRouter::start(&config).await
}

#[tokio::test(flavor = "multi_thread")]
async fn python_and_javascript_plugins_filter_transform_and_aggregate() {
    let pods = Pods::start(205, &[Behaviour::Ok, Behaviour::Ok, Behaviour::Ok]).await;
    let router = probes(&pods).await;
    for language in LANGUAGES {
        let answer = router.post(&format!("/{language}-probe"), "{}").await;
        assert_eq!(answer.status, StatusCode::OK, "{language}: {}", answer.json);
        // The aggregate hook decides the answer.
        // One transform call for both pods, one patch for each; the pods'
        // answers reach the plugin (as text, for the JavaScript one's JSON).
        let bodies: Vec<String> = pods.pods[1..]
            .iter()
            .map(|pod| format!("{{\"pod\":\"{}\"}}", pod.addr))
            .collect();
        assert_eq!(
            answer.json,
            json!({
                "probe": language, "answered": 2, "pods": 2, "broadcasts": 1,
                "transform_calls": 1, "transformed": 2, "bodies": bodies,
            }),
            "{language}"
        );
        assert_eq!(answer.header("x-broadcast-targets"), "2");
        for pod in &pods.pods[1..] {
            let stamps: Vec<String> = pod
                .received()
                .iter()
                .filter_map(|received| received.header("x-probe").map(str::to_owned))
                .collect();
            assert!(
                stamps.contains(&format!("{language} {}", pod.addr.ip())),
                "{language}: each copy is transformed for its pod: {stamps:?}"
            );
        }
    }
    assert_eq!(pods.pods[0].count(), 0, "the excluded pod never receives");
}

#[tokio::test(flavor = "multi_thread")]
async fn returned_errors_and_thrown_exceptions_fail_closed_with_the_plugins_message() {
    let pods = Pods::start(209, &[Behaviour::Ok, Behaviour::Ok]).await;
    let router = probes(&pods).await;
    let cases = [
        (
            "/python-fail-select",
            "returned an error: probe-python: asked to fail in select-targets",
        ),
        (
            "/javascript-fail-select",
            "returned an error: probe-javascript: asked to fail in select-targets",
        ),
        // An uncaught Python exception traps; the traceback's last line
        // names it.
        (
            "/python-raise-transform",
            "ValueError: probe-python: raised in transform",
        ),
        // A JavaScript Error, through the template's wrapper: the hook's
        // error, with the Error's message.
        (
            "/javascript-raise-transform",
            "returned an error: probe-javascript: thrown in transform",
        ),
    ];
    for (path, expected) in cases {
        let answer = router.post(path, "{}").await;
        assert_eq!(
            answer.status,
            StatusCode::BAD_GATEWAY,
            "{path}: {}",
            answer.json
        );
        assert!(error(&answer).contains(expected), "{path}: {}", answer.json);
    }
    assert!(
        error(&router.post("/python-raise-transform", "{}").await).contains("trapped"),
        "an exception other than Err traps"
    );
    assert_eq!(pods.total(), 0, "fail-closed sends nothing");
    for language in LANGUAGES {
        let answer = router
            .post(&format!("/{language}-fail-aggregate"), "{}")
            .await;
        assert_eq!(answer.status, StatusCode::BAD_GATEWAY, "{}", answer.json);
        assert!(
            error(&answer).contains("asked to fail in aggregate"),
            "{}",
            answer.json
        );
        assert_eq!(answer.json["succeeded"], 2, "the pods were reached");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn python_and_javascript_plugins_are_called_once_per_distinct_copy() {
    let pods = Pods::start(226, &[Behaviour::Ok, Behaviour::Ok, Behaviour::Ok]).await;
    let mut config = preamble(None);
    config.push_str(&plugins::table(
        "sign",
        "hmac_sign.wasm",
        &format!("memory = \"{}\"", plugins::GUEST_MEMORY),
    ));
    for language in LANGUAGES {
        config.push_str(&plugins::guest_table(
            language,
            &format!("probe_{language}.wasm"),
            "",
        ));
        // hmac-sign gives every pod the same patch, or with add_target
        // one of its own.
        for (name, add_target) in [("shared", false), ("own", true)] {
            config.push_str(&route(
                &format!("{language}-{name}"),
                &pods,
                &format!(
                    "[{{ use = \"sign\", config = {{ secret = \"k\", add_target = {add_target} }} }}, \
                      {{ use = \"{language}\" }}]"
                ),
            ));
        }
    }
    let router = TestRouter::start(&config).await;
    for language in LANGUAGES {
        for (name, calls) in [("shared", 1), ("own", 3)] {
            let answer = router.post(&format!("/{language}-{name}"), "{}").await;
            assert_eq!(answer.status, StatusCode::OK, "{language}: {}", answer.json);
            assert_eq!(answer.json["transform_calls"], calls, "{language}-{name}");
            assert_eq!(answer.json["transformed"], 3, "{language}-{name}");
        }
    }
    for pod in &pods.pods {
        let copies = pod.received();
        assert_eq!(copies.len(), 4, "{}", pod.addr);
        for copy in copies {
            let stamp = copy.header("x-probe").unwrap_or_default();
            assert!(stamp.ends_with(&pod.addr.ip().to_string()), "{stamp}");
        }
    }
}

/// shard-filter's owners of `key`, as the Rust plugin picks them.
#[tokio::test(flavor = "multi_thread")]
async fn shard_filter_ports_pick_exactly_the_pods_the_rust_plugin_picks() {
    let behaviours = vec![Behaviour::Ok; 6];
    let pods = Pods::start(213, &behaviours).await;
    let excluded = pods.pods[5].addr.ip();
    let mut config = preamble(None);
    config.push_str(&plugins::table(
        "rust",
        "shard_filter.wasm",
        &format!("memory = \"{}\"", plugins::GUEST_MEMORY),
    ));
    config.push_str(&plugins::guest_table(
        "python",
        "shard_filter_python.wasm",
        "",
    ));
    config.push_str(&plugins::guest_table(
        "javascript",
        "shard_filter_javascript.wasm",
        "",
    ));
    for language in ["rust", "python", "javascript"] {
        for (name, settings) in [
            ("keyed", format!("replicas = 2, exclude = [\"{excluded}\"]")),
            ("sharded", "shards = 7, replicas = 3".to_owned()),
            ("sampled", "sample_percent = 40".to_owned()),
            ("strict", "missing_key = \"reject\"".to_owned()),
        ] {
            config.push_str(&route(
                &format!("{language}-{name}"),
                &pods,
                &format!("[{{ use = \"{language}\", config = {{ {settings} }} }}]"),
            ));
        }
    }
    let router = TestRouter::start(&config).await;
    let targets = |answer: &Answer| -> Vec<String> {
        answer.json["results"]
            .as_array()
            .unwrap_or_else(|| panic!("no results in {}", answer.json))
            .iter()
            .map(|result| result["target"].as_str().unwrap().to_owned())
            .collect()
    };
    for name in ["keyed", "sharded", "sampled"] {
        for key in ["user:1", "user:42", "cart:7", "order:99"] {
            let send = |language: &str| {
                let request = router
                    .client()
                    .post(format!("{}/{language}-{name}", router.url))
                    .header("x-shard-key", key)
                    .header("x-broadcast-id", format!("b-{name}-{key}"))
                    .body("{}");
                router.send(request)
            };
            let expected = send("rust").await;
            assert_eq!(expected.status, StatusCode::OK, "{}", expected.json);
            for language in LANGUAGES {
                let answer = send(language).await;
                assert_eq!(answer.status, StatusCode::OK, "{language}: {}", answer.json);
                assert_eq!(
                    targets(&answer),
                    targets(&expected),
                    "{language} {name} {key}: the same pods, in the same order"
                );
            }
        }
    }
    for language in LANGUAGES {
        let answer = router.post(&format!("/{language}-strict"), "{}").await;
        assert_eq!(answer.status, StatusCode::BAD_GATEWAY, "{}", answer.json);
        assert!(
            error(&answer)
                .contains("shard-filter: the request has no `x-shard-key` header to pick pods by"),
            "{language}: {}",
            answer.json
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn reused_instances_keep_their_state_until_a_failure_discards_them() {
    let pods = Pods::start(221, &[Behaviour::Ok]).await;
    let mut config = preamble(None);
    for language in LANGUAGES {
        let file = format!("probe_{language}.wasm");
        config.push_str(&plugins::guest_table(
            &format!("{language}-reuse"),
            &file,
            "instances = \"reuse\"",
        ));
        config.push_str(&plugins::guest_table(
            &format!("{language}-fresh"),
            &file,
            "",
        ));
        for mode in ["reuse", "fresh"] {
            config.push_str(&route(
                &format!("{language}-{mode}"),
                &pods,
                &format!("[{{ use = \"{language}-{mode}\" }}]"),
            ));
        }
    }
    let router = TestRouter::start(&config).await;
    let broadcasts = |answer: &Answer| answer.json["broadcasts"].as_u64().unwrap_or(0);
    for language in LANGUAGES {
        let reuse = format!("/{language}-reuse");
        let fresh = format!("/{language}-fresh");
        for expected in 1..=3 {
            let answer = post_with(&router, &reuse, None).await;
            assert_eq!(broadcasts(&answer), expected, "{language}: {}", answer.json);
            let answer = post_with(&router, &fresh, None).await;
            assert_eq!(broadcasts(&answer), 1, "{language}: {}", answer.json);
        }
        // A failure discards the instance: the next broadcast starts afresh.
        let failed = post_with(&router, &reuse, Some(("x-probe-fail", "transform"))).await;
        assert_eq!(failed.status, StatusCode::BAD_GATEWAY, "{}", failed.json);
        let answer = post_with(&router, &reuse, None).await;
        assert_eq!(broadcasts(&answer), 1, "{language}: {}", answer.json);
    }
}

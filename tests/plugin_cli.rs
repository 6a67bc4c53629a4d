//! `broadcast-router plugin test` and `plugin inspect`, run as a plugin
//! author runs them, on Rust, Python and JavaScript plugins built from
//! source, of both versions of the contract: hooks run on JSON input
//! without a router and print their results as JSON; inspect tells the
//! world, the contract's version, hooks, imports, initial memory, and
//! whether (and why not) this router can load a component.

mod support;

use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::{Value, json};
use support::plugins;

const ROUTER: &str = env!("CARGO_BIN_EXE_broadcast-router");

/// Runs `plugin ARGS…` with `stdin`; returns the exit code and stdout as JSON.
fn plugin(args: &[&str], stdin: &str) -> (Option<i32>, Value) {
    let mut child = Command::new(ROUTER)
        .arg("plugin")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the router runs");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let json = serde_json::from_str(&stdout).unwrap_or_else(|_| {
        panic!(
            "not JSON: {stdout}\n{}",
            String::from_utf8_lossy(&output.stderr)
        )
    });
    (output.status.code(), json)
}

const INPUT: &str = r#"{
  "config": { "skip": ["10.0.0.2"], "tag": "t1" },
  "request": { "method": "PUT", "path": "/cache", "headers": { "x-shard-key": "user:42" }, "body": "hi" },
  "targets": ["10.0.0.1:8080", "10.0.0.2:8080", "10.0.0.3:8080"],
  "outcomes": [ { "status": 200, "body": "ok" }, { "status": null, "error": "timeout" } ]
}"#;

#[test]
fn plugin_test_runs_every_hook_of_each_language_on_json_input() {
    let rust = plugins::built().join("template_rust.wasm");
    let guests = plugins::guests();
    for file in [
        rust,
        guests.join("template_python.wasm"),
        guests.join("template_javascript.wasm"),
    ] {
        let path = file.to_str().unwrap();
        let (code, results) = plugin(&["test", path], INPUT);
        assert_eq!(code, Some(0), "{path}: {results}");
        assert_eq!(
            results["hooks"],
            json!(["select-targets", "transform", "aggregate"])
        );
        assert_eq!(
            results["select-targets"]["ok"],
            json!(["10.0.0.1:8080", "10.0.0.3:8080"]),
            "{path}"
        );
        let copies = results["transform"]["ok"].as_array().unwrap();
        assert_eq!(copies.len(), 2, "{path}");
        for copy in copies {
            assert_eq!(copy["headers"]["x-plugin-tag"], "t1", "{path}: {copy}");
            assert_eq!(copy["path"], "/cache");
            assert_eq!(copy["body"], "hi");
        }
        let verdict = &results["aggregate"]["ok"];
        assert_eq!(verdict["ok"], false, "{path}: one pod timed out");
        assert_eq!(verdict["status"], 502, "{path}");
        let body: Value = serde_json::from_str(verdict["body"].as_str().unwrap()).unwrap();
        assert_eq!(
            body,
            json!({"ok": false, "answered": 1, "pods": 2}),
            "{path}"
        );
    }
}

#[test]
fn plugin_test_reports_init_and_hook_errors_and_exits_1() {
    let guests = plugins::guests();
    let python = guests.join("template_python.wasm");
    let (code, results) = plugin(
        &["test", python.to_str().unwrap()],
        r#"{ "config": { "colour": "red" }, "targets": [] }"#,
    );
    assert_eq!(code, Some(1));
    assert_eq!(
        results["init"]["error"],
        "rejected its config: unknown config keys: colour"
    );
    let probe = guests.join("probe_javascript.wasm");
    let (code, results) = plugin(
        &["test", probe.to_str().unwrap()],
        r#"{ "config": { "throw_in": "transform" }, "targets": ["10.0.0.1:80"] }"#,
    );
    assert_eq!(code, Some(1));
    assert_eq!(results["select-targets"]["ok"], json!(["10.0.0.1:80"]));
    assert_eq!(
        results["transform"]["error"],
        "returned an error: probe-javascript: thrown in transform"
    );
}

#[test]
fn plugin_test_and_inspect_run_a_0_1_0_component_as_they_always_did() {
    let legacy = plugins::built().join("legacy_v0_1.wasm");
    let legacy = legacy.to_str().unwrap();
    let input = r#"{
      "config": { "skip": ["10.0.0.2"], "echo_header": "x-tag" },
      "request": { "headers": { "x-tag": "t1" } },
      "targets": ["10.0.0.1:8080", "10.0.0.2:8080", "10.0.0.3:8080"]
    }"#;
    let (code, results) = plugin(&["test", legacy], input);
    assert_eq!(code, Some(0), "{results}");
    assert_eq!(results["hooks"], json!(["select-targets", "transform"]));
    assert_eq!(
        results["select-targets"]["ok"],
        json!(["10.0.0.1:8080", "10.0.0.3:8080"])
    );
    // One call per pod, each patch for its pod.
    let copies = results["transform"]["ok"].as_array().unwrap();
    let stamps: Vec<(&Value, &Value, &Value)> = copies
        .iter()
        .map(|copy| {
            let headers = &copy["headers"];
            (
                &headers["x-legacy-target"],
                &headers["x-legacy-call"],
                &headers["x-legacy-echo"],
            )
        })
        .collect();
    assert_eq!(
        stamps,
        [
            (&json!("10.0.0.1:8080"), &json!("1"), &json!("t1")),
            (&json!("10.0.0.3:8080"), &json!("2"), &json!("t1")),
        ]
    );
    let (code, facts) = plugin(&["inspect", legacy], "");
    assert_eq!(code, Some(0), "{facts}");
    assert_eq!(facts["package"], "broadcast:plugin@0.1.0");
    assert_eq!(
        facts["contract"],
        json!({ "version": "0.1.0", "loads": true, "router": ["0.1.0", "0.2.0"], "current": "0.2.0" })
    );
    assert_eq!(facts["loadable"]["ok"], true);
}

#[test]
fn plugin_inspect_tells_what_a_component_is_and_whether_it_loads() {
    let guests = plugins::guests();
    let python = guests.join("shard_filter_python.wasm");
    let python = python.to_str().unwrap();
    let (code, facts) = plugin(&["inspect", python], "");
    assert_eq!(code, Some(0), "{facts}");
    assert_eq!(facts["world"], "plugin");
    assert_eq!(facts["package"], "broadcast:plugin@0.2.0");
    assert_eq!(facts["contract"]["version"], "0.2.0");
    assert_eq!(facts["contract"]["loads"], true);
    assert_eq!(facts["contract"]["router"], json!(["0.1.0", "0.2.0"]));
    assert_eq!(facts["hooks"], json!(["select-targets"]));
    assert_eq!(facts["loadable"]["ok"], true);
    let imports: Vec<&str> = facts["imports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|import| import.as_str().unwrap())
        .collect();
    assert!(
        imports.contains(&"broadcast:plugin/log@0.2.0"),
        "{imports:?}"
    );
    let memory = facts["initial_memory_bytes"].as_u64().unwrap();
    assert!(
        memory > 8 << 20,
        "a Python plugin starts above 8MiB: {memory}"
    );

    // Too little memory: not loadable, and the reason says what to do.
    let (code, facts) = plugin(&["inspect", python, "--memory", "8MiB"], "");
    assert_eq!(code, Some(1));
    assert_eq!(facts["loadable"]["ok"], false);
    let why = facts["loadable"]["why"].as_str().unwrap();
    assert!(why.contains("raise `memory`"), "{why}");
    assert_eq!(facts["initial_memory_bytes"].as_u64(), Some(memory));

    // The JavaScript plugins take their inputs as JSON: the other world.
    let javascript = guests.join("shard_filter_javascript.wasm");
    let (code, facts) = plugin(&["inspect", javascript.to_str().unwrap()], "");
    assert_eq!(code, Some(0), "{facts}");
    assert_eq!(facts["world"], "plugin-json");
    assert_eq!(facts["package"], "broadcast:plugin@0.2.0");
    assert_eq!(facts["loadable"]["ok"], true);
}

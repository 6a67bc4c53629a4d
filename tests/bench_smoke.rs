//! The benchmark harness (`cargo bench --bench harness`) still works: a
//! one-second run at three pods through the debug router binary must
//! produce a well-formed report. No timing is asserted — only that the
//! figures are there and consistent.

#[path = "../benches/harness/mod.rs"]
mod harness;

use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;

use harness::{Options, Plugins, Policy};

/// A phase's figures are present and consistent: broadcasts ran, none
/// failed, each reached all three pods exactly once.
fn check_phase(name: &str, phase: &Value) {
    check_phase_at(name, phase, 3);
}

/// [`check_phase`] for a phase whose requests each reach `pods` pods.
fn check_phase_at(name: &str, phase: &Value, pods: u64) {
    let number = |key: &str| {
        phase[key]
            .as_f64()
            .unwrap_or_else(|| panic!("{name}.{key} is not a number in {phase}"))
    };
    let broadcasts = phase["broadcasts"].as_u64().expect("broadcasts");
    assert!(broadcasts > 0, "{name}: no broadcast completed: {phase}");
    assert_eq!(phase["errors"], 0, "{name}: {phase}");
    assert_eq!(
        phase["deliveries"].as_u64(),
        Some(pods * broadcasts),
        "{name}: every broadcast reaches the {pods} pod(s): {phase}"
    );
    assert_eq!(phase["exactly_once"], true, "{name}: {phase}");
    assert!(number("broadcasts_per_s") > 0.0, "{name}: {phase}");
    assert!(number("deliveries_per_s") > 0.0, "{name}: {phase}");
    let latency = &phase["latency_us"];
    let percentiles: Vec<f64> = ["p50", "p90", "p99", "max"]
        .iter()
        .map(|key| latency[key].as_f64().expect("a latency percentile"))
        .collect();
    assert!(percentiles[0] > 0.0, "{name}: {latency}");
    assert!(
        percentiles.windows(2).all(|pair| pair[0] <= pair[1]),
        "{name}: percentiles are ordered: {latency}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn harness_produces_a_well_formed_report_at_three_pods() {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let options = Options {
        pods: vec![3],
        policies: vec![Policy::All],
        plugins: vec![Plugins::Off],
        bodies: vec![100],
        clients: 2,
        duration: Duration::from_secs(1),
        warmup: Duration::from_millis(200),
        probe: Duration::from_millis(300),
        concurrency: 64,
        routers: vec![PathBuf::from(env!("CARGO_BIN_EXE_broadcast-router"))],
        repo,
        // 127.0.1.x: no other test uses it.
        pod_block: 1,
        command: "cargo test --test bench_smoke".to_owned(),
    };
    let report = harness::run(&options, |line| eprintln!("{line}"))
        .await
        .expect("the harness runs");
    let out = tempfile::tempdir().unwrap();
    let (json, markdown) = report.write(out.path()).expect("the report is written");

    let report: Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert!(report["commit"].as_str().is_some_and(|c| !c.is_empty()));
    assert!(report["cores"].as_u64().is_some_and(|cores| cores >= 1));
    let scenarios = report["scenarios"].as_array().expect("scenarios");
    assert_eq!(scenarios.len(), 1, "{report}");
    let scenario = &scenarios[0];
    assert_eq!(scenario["pods"], 3);
    assert_eq!(scenario["policy"], "all");
    assert_eq!(scenario["plugins"], "off");
    assert_eq!(scenario["body_bytes"], 100);
    for name in ["baseline", "router", "baseline_probe", "router_probe"] {
        check_phase(name, &scenario[name]);
    }
    // The direct phase sends each request to one pod only.
    check_phase_at("direct_pod", &scenario["direct_pod"], 1);
    assert!(
        scenario["loopback_share"]
            .as_f64()
            .is_some_and(|share| share > 0.0),
        "{scenario}"
    );
    assert!(
        scenario["build"]
            .as_str()
            .is_some_and(|build| !build.is_empty())
    );
    assert!(scenario["ratio"].as_f64().is_some_and(|ratio| ratio > 0.0));
    assert!(scenario["added_p50_us"].as_f64().is_some());
    let process = &scenario["process"];
    assert!(
        process["cpu_us_per_broadcast"].as_f64().is_some(),
        "{process}"
    );
    assert!(
        process["peak_rss_kib"].as_u64().is_some_and(|kib| kib > 0),
        "{process}"
    );
    assert_eq!(process["delivery_failures"], 0, "{process}");
    assert_eq!(process["clean_exit"], true, "the router drained: {process}");

    let page = std::fs::read_to_string(markdown).unwrap();
    assert!(
        page.contains("| pods | policy | plugins | body |"),
        "{page}"
    );
    assert_eq!(
        page,
        std::fs::read_to_string(out.path().join("latest.md")).unwrap()
    );
}

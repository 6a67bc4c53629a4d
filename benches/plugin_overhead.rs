//! What plugins cost per broadcast of 10 pods: the host's own overhead (one
//! no-op plugin implementing all three hooks: a fresh instance, `init`,
//! `select-targets`, `transform` for every pod, `aggregate`), each example
//! plugin alone, and the three examples chained (shard-filter, hmac-sign,
//! quorum-merge) — against the same preparation without plugins. No
//! traffic is sent.
//!
//! Run with `cargo bench --bench plugin_overhead` (it builds the plugins
//! first with `plugins/build.sh`).

use std::hint::black_box;
use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use broadcast_router::config::Config;
use broadcast_router::discovery::Target;
use broadcast_router::fanout::{Delivery, PodBody, PodRequest};
use broadcast_router::plugin::Plugins;
use broadcast_router::plugin::bindings::request_head;
use criterion::{Criterion, criterion_group, criterion_main};

const PODS: usize = 10;

fn build_plugins() -> std::path::PathBuf {
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let status = Command::new("bash")
        .arg(root.join("plugins/build.sh"))
        .current_dir(&root)
        .status()
        .expect("bash runs plugins/build.sh");
    assert!(status.success(), "plugins/build.sh failed");
    root.join("plugins/build")
}

fn overhead(c: &mut Criterion) {
    let built = build_plugins();
    let targets: Vec<String> = (0..PODS)
        .map(|i| format!("\"127.0.0.{}:8080\"", i + 2))
        .collect();
    let text = format!(
        r#"
[plugins.shard]
path = "{dir}/shard_filter.wasm"
[plugins.sign]
path = "{dir}/hmac_sign.wasm"
[plugins.merge]
path = "{dir}/quorum_merge.wasm"
[plugins.noop]
path = "{dir}/stress.wasm"

[[routes]]
name = "chain"
path = "/chain"
targets = [{targets}]
plugins = [
  {{ use = "shard", config = {{ replicas = {PODS} }} }},
  {{ use = "sign", config = {{ secret = "bench-secret" }} }},
  {{ use = "merge", config = {{ quorum = "51%" }} }},
]

[[routes]]
name = "noop-three-hooks"
path = "/noop"
targets = [{targets}]
plugins = [{{ use = "noop" }}]

[[routes]]
name = "shard-only"
path = "/shard"
targets = [{targets}]
plugins = [{{ use = "shard", config = {{ replicas = {PODS} }} }}]

[[routes]]
name = "sign-only"
path = "/sign"
targets = [{targets}]
plugins = [{{ use = "sign", config = {{ secret = "bench-secret" }} }}]

[[routes]]
name = "merge-only"
path = "/merge"
targets = [{targets}]
plugins = [{{ use = "merge", config = {{ quorum = "51%" }} }}]
"#,
        dir = built.display(),
        targets = targets.join(", ")
    );
    let config = Config::parse(&text).expect("the bench configuration is valid");
    let plugins = Plugins::load(&config).expect("the example plugins load");
    let chain = plugins.chain("chain");
    let route: Arc<str> = "chain".into();

    let mut headers = HeaderMap::new();
    headers.insert("content-type", HeaderValue::from_static("application/json"));
    headers.insert("x-shard-key", HeaderValue::from_static("user:42"));
    let request = Arc::new(PodRequest {
        method: Method::POST,
        path_and_query: "/cache-invalidation".to_owned(),
        headers,
        body: bytes::Bytes::from_static(br#"{"key":"user:42"}"#),
    });
    let targets: Vec<Target> = (0..PODS)
        .map(|index| Target {
            addr: SocketAddr::from(([127, 0, 0, 2 + index as u8], 8080)),
            service: None,
            index,
        })
        .collect();
    let outcomes: Vec<Option<Delivery>> = (0..PODS)
        .map(|_| {
            Some(Delivery {
                status: Some(StatusCode::OK),
                attempts: 1,
                latency: Duration::from_micros(800),
                error: None,
                body: Some(PodBody {
                    bytes: bytes::Bytes::from_static(br#"{"evicted":1}"#),
                    truncated: false,
                }),
                headers: HeaderMap::new(),
            })
        })
        .collect();

    let mut group = c.benchmark_group("prepare and judge a broadcast of 10 pods");
    group.bench_function("no plugins", |b| {
        b.iter(|| {
            let requests = vec![Arc::clone(&request); black_box(&targets).len()];
            black_box((requests, targets.clone()))
        })
    });
    group.bench_function("three-hook chain", |b| {
        b.iter(|| {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
            let mut session = chain.session(&route, "bench-broadcast", deadline);
            let head = request_head("bench-broadcast", "chain", &request);
            let selected = session.select(&head, targets.clone()).expect("select");
            let requests: Vec<_> = selected
                .iter()
                .map(|target| {
                    session
                        .transform(&head, &request, target)
                        .expect("transform")
                })
                .collect();
            let verdict = session
                .aggregate(&head, &selected, &outcomes)
                .expect("aggregate");
            black_box((requests, verdict))
        })
    });
    group.finish();

    // Where the time goes: each plugin alone, with a fresh instance per
    // iteration as in a broadcast.
    let mut parts = c.benchmark_group("one plugin per broadcast of 10 pods");
    for (name, route) in [
        (
            "no-op plugin: select-targets + 10 x transform + aggregate",
            "noop-three-hooks",
        ),
        ("shard-filter select-targets", "shard-only"),
        ("hmac-sign transform x10", "sign-only"),
        ("quorum-merge aggregate", "merge-only"),
    ] {
        let chain = plugins.chain(route);
        let route: Arc<str> = route.into();
        parts.bench_function(name, |b| {
            b.iter(|| {
                let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
                let mut session = chain.session(&route, "bench-broadcast", deadline);
                let head = request_head("bench-broadcast", &route, &request);
                let selected = session.select(&head, targets.clone()).expect("select");
                let requests: Vec<_> = if chain.transforms() {
                    selected
                        .iter()
                        .map(|target| {
                            session
                                .transform(&head, &request, target)
                                .expect("transform")
                        })
                        .collect()
                } else {
                    Vec::new()
                };
                let verdict = session
                    .aggregate(&head, &selected, &outcomes)
                    .expect("aggregate");
                black_box((requests, verdict))
            })
        });
    }
    parts.finish();
}

criterion_group!(benches, overhead);
criterion_main!(benches);

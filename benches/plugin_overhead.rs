//! What plugins cost per broadcast of 10 pods, against the same preparation
//! without plugins. No traffic is sent.
//!
//! - The host's own overhead: the `noop` test plugin, which implements all
//!   three hooks and does nothing — a fresh instance, `init`,
//!   `select-targets`, `transform` over the pods, `aggregate`, and dropping
//!   the instance.
//! - The three examples chained (shard-filter, hmac-sign, quorum-merge).
//! - Where the time goes: each example alone, and the `stress` test plugin
//!   with `{}` (harmless, but it imports WASI's files and sockets, which
//!   makes every instance dearer to create).
//!
//! - Python and JavaScript: the templates (`plugins/templates/`, all
//!   three hooks, a little real work), each with a fresh instance per
//!   broadcast (the default) and with `instances = "reuse"`.
//!
//! Run with `cargo bench --bench plugin_overhead` (it builds the plugins
//! first with `plugins/build.sh rust python javascript`, which needs the
//! Python and JavaScript tools `bash scripts/test` installs).

/// The router's own allocator (see `src/main.rs`), so that the plugin
/// host is measured as the router runs it: the host and the bindings
/// allocate for every call.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::hint::black_box;
use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use broadcast_router::config::Config;
use broadcast_router::discovery::Target;
use broadcast_router::fanout::{Delivery, PodBody, PodRequest};
use broadcast_router::plugin::bindings::request_head;
use broadcast_router::plugin::{Chain, Plugins};
use criterion::{Criterion, criterion_group, criterion_main};

const PODS: usize = 10;

fn build_plugins() -> std::path::PathBuf {
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let status = Command::new("bash")
        .arg(root.join("plugins/build.sh"))
        .args(["rust", "python", "javascript"])
        .current_dir(&root)
        .status()
        .expect("bash runs plugins/build.sh");
    assert!(status.success(), "plugins/build.sh failed");
    root.join("plugins/build")
}

/// One broadcast as the router prepares and judges it: a session, the
/// selection, every selected pod's transform, the verdict.
struct Broadcast {
    request: Arc<PodRequest>,
    targets: Vec<Target>,
    outcomes: Vec<Option<Delivery>>,
}

impl Broadcast {
    fn new() -> Self {
        let mut headers = HeaderMap::new();
        headers.insert("content-type", HeaderValue::from_static("application/json"));
        headers.insert("x-shard-key", HeaderValue::from_static("user:42"));
        let request = Arc::new(PodRequest {
            method: Method::POST,
            path_and_query: "/cache-invalidation".to_owned(),
            headers,
            body: bytes::Bytes::from_static(br#"{"key":"user:42"}"#),
        });
        let targets = (0..PODS)
            .map(|index| Target {
                addr: SocketAddr::from(([127, 0, 0, 2 + index as u8], 8080)),
                service: None,
                index,
                pod: None,
            })
            .collect();
        let outcomes = (0..PODS)
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
        Self {
            request,
            targets,
            outcomes,
        }
    }

    #[inline(never)]
    fn run(&self, chain: &Chain, route: &Arc<str>) -> impl Sized {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        let mut session = chain.session(route, "bench-broadcast", deadline);
        let head = request_head("bench-broadcast", route, &self.request);
        let selected = session.select(&head, self.targets.clone()).expect("select");
        let requests: Vec<_> = if chain.transforms() {
            session
                .transform(&head, &self.request, &selected)
                .expect("transform")
        } else {
            vec![Arc::clone(&self.request); selected.len()]
        };
        let verdict = session
            .aggregate(&head, &selected, &self.outcomes)
            .expect("aggregate");
        (requests, verdict)
    }
}

fn overhead(c: &mut Criterion) {
    let built = build_plugins();
    let targets: Vec<String> = (0..PODS)
        .map(|i| format!("\"127.0.0.{}:8080\"", i + 2))
        .collect();
    // A generous hook_timeout: a noisy machine must not fail the benchmark.
    let text = format!(
        r#"
[plugins.shard]
path = "{dir}/shard_filter.wasm"
hook_timeout = "5s"
[plugins.sign]
path = "{dir}/hmac_sign.wasm"
hook_timeout = "5s"
[plugins.merge]
path = "{dir}/quorum_merge.wasm"
hook_timeout = "5s"
[plugins.noop]
path = "{dir}/noop.wasm"
hook_timeout = "5s"
[plugins.stress]
path = "{dir}/stress.wasm"
hook_timeout = "5s"
[plugins.python]
path = "{dir}/template_python.wasm"
hook_timeout = "5s"
memory = "64MiB"
[plugins.python-reuse]
path = "{dir}/template_python.wasm"
hook_timeout = "5s"
memory = "64MiB"
instances = "reuse"
[plugins.javascript]
path = "{dir}/template_javascript.wasm"
hook_timeout = "5s"
memory = "64MiB"
[plugins.javascript-reuse]
path = "{dir}/template_javascript.wasm"
hook_timeout = "5s"
memory = "64MiB"
instances = "reuse"
[plugins.rust]
path = "{dir}/template_rust.wasm"
hook_timeout = "5s"
[plugins.shard-python]
path = "{dir}/shard_filter_python.wasm"
hook_timeout = "5s"
memory = "64MiB"
instances = "reuse"
[plugins.shard-javascript]
path = "{dir}/shard_filter_javascript.wasm"
hook_timeout = "5s"
memory = "64MiB"
instances = "reuse"

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
name = "noop"
path = "/noop"
targets = [{targets}]
plugins = [{{ use = "noop" }}]

[[routes]]
name = "stress"
path = "/stress"
targets = [{targets}]
plugins = [{{ use = "stress" }}]

[[routes]]
name = "python"
path = "/python"
targets = [{targets}]
plugins = [{{ use = "python", config = {{ tag = "t" }} }}]

[[routes]]
name = "python-reuse"
path = "/python-reuse"
targets = [{targets}]
plugins = [{{ use = "python-reuse", config = {{ tag = "t" }} }}]

[[routes]]
name = "javascript"
path = "/javascript"
targets = [{targets}]
plugins = [{{ use = "javascript", config = {{ tag = "t" }} }}]

[[routes]]
name = "javascript-reuse"
path = "/javascript-reuse"
targets = [{targets}]
plugins = [{{ use = "javascript-reuse", config = {{ tag = "t" }} }}]

[[routes]]
name = "shard-python"
path = "/shard-python"
targets = [{targets}]
plugins = [{{ use = "shard-python", config = {{ replicas = {PODS} }} }}]

[[routes]]
name = "shard-javascript"
path = "/shard-javascript"
targets = [{targets}]
plugins = [{{ use = "shard-javascript", config = {{ replicas = {PODS} }} }}]

[[routes]]
name = "rust"
path = "/rust"
targets = [{targets}]
plugins = [{{ use = "rust", config = {{ tag = "t" }} }}]

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
    let plugins = Plugins::load(&config).expect("the plugins load");
    let broadcast = Broadcast::new();

    let mut group = c.benchmark_group("prepare and judge a broadcast of 10 pods");
    group.bench_function("no plugins", |b| {
        b.iter(|| {
            let requests =
                vec![Arc::clone(&broadcast.request); black_box(&broadcast.targets).len()];
            black_box((requests, broadcast.targets.clone()))
        })
    });
    for (name, route) in [
        ("no-op plugin with all three hooks", "noop"),
        ("three-hook chain of examples", "chain"),
    ] {
        let chain = plugins.chain(route);
        let route: Arc<str> = route.into();
        group.bench_function(name, |b| {
            b.iter(|| black_box(broadcast.run(&chain, &route)))
        });
    }
    group.finish();

    // Where the time goes: one plugin per broadcast, with a fresh instance
    // per iteration as in a broadcast.
    let mut parts = c.benchmark_group("one plugin per broadcast of 10 pods");
    for (name, route) in [
        ("stress plugin, harmless: all three hooks", "stress"),
        ("shard-filter select-targets", "shard-only"),
        ("hmac-sign transform x10", "sign-only"),
        ("quorum-merge aggregate", "merge-only"),
    ] {
        let chain = plugins.chain(route);
        let route: Arc<str> = route.into();
        parts.bench_function(name, |b| {
            b.iter(|| black_box(broadcast.run(&chain, &route)))
        });
    }
    parts.finish();

    // The templates of the three languages: all three hooks, the same work.
    let mut languages = c.benchmark_group("template plugin per broadcast of 10 pods");
    for (name, route) in [
        ("rust, fresh instance", "rust"),
        ("python, fresh instance", "python"),
        ("python, reused instance", "python-reuse"),
        ("javascript, fresh instance", "javascript"),
        ("javascript, reused instance", "javascript-reuse"),
        (
            "shard-filter (select-targets only): rust, fresh",
            "shard-only",
        ),
        (
            "shard-filter (select-targets only): python, reused",
            "shard-python",
        ),
        (
            "shard-filter (select-targets only): javascript, reused",
            "shard-javascript",
        ),
    ] {
        let chain = plugins.chain(route);
        let route: Arc<str> = route.into();
        languages.bench_function(name, |b| {
            b.iter(|| black_box(broadcast.run(&chain, &route)))
        });
    }
    languages.finish();
}

criterion_group!(benches, overhead);
criterion_main!(benches);

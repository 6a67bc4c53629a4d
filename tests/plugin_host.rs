//! The plugin host, through the real router with real pods and plugins
//! built from source: for every limit, a well-behaved configuration (of the
//! `stress` test plugin) passes and a hostile one is stopped, both failure
//! policies give their documented answer, and the router keeps serving the
//! next request; loading checks every plugin; compiled code is cached on
//! disk; UDP routes apply plugins too.

mod support;

use broadcast_router::config::Config;
use broadcast_router::plugin::Plugins;
use reqwest::StatusCode;
use support::pods::{Behaviour, Pods};
use support::{Answer, TestRouter, plugins, preamble};

/// The routes under test, each using the stress plugin with one config,
/// through a fail-closed or a fail-open plugin table.
const ROUTES: &[(&str, &str, &str)] = &[
    ("good", "closed", "{ spin = 100000, allocate = 4194304 }"),
    ("loop-closed", "closed", "{ spin = \"forever\" }"),
    ("loop-open", "open", "{ spin = \"forever\" }"),
    ("bomb-closed", "closed", "{ allocate = \"forever\" }"),
    ("bomb-open", "open", "{ allocate = \"forever\" }"),
    ("panic-closed", "closed", "{ panic = \"transform\" }"),
    ("panic-open", "open", "{ panic = \"transform\" }"),
    ("fail-closed", "closed", "{ fail = \"select-targets\" }"),
    ("index-closed", "closed", "{ bad_index = true }"),
    ("header-closed", "closed", "{ bad_header = true }"),
    ("aggregate-closed", "closed", "{ panic = \"aggregate\" }"),
    ("probe", "closed", "{ probe = true }"),
];

async fn start() -> (Pods, TestRouter) {
    let pods = Pods::start(100, &[Behaviour::Ok, Behaviour::Ok]).await;
    let limits = "memory = \"16MiB\"\nhook_timeout = \"100ms\"";
    let mut config = preamble(None);
    config.push_str(&plugins::table(
        "closed",
        "stress.wasm",
        &format!("on_error = \"fail-closed\"\n{limits}"),
    ));
    config.push_str(&plugins::table(
        "open",
        "stress.wasm",
        &format!("on_error = \"fail-open\"\n{limits}"),
    ));
    for (name, table, plugin_config) in ROUTES {
        config.push_str(&format!(
            "\n[[routes]]\nname = \"{name}\"\npath = \"/{name}\"\ntargets = {}\nretries = 0\n\
             plugins = [{{ use = \"{table}\", config = {plugin_config} }}]\n",
            pods.targets_toml()
        ));
    }
    let router = TestRouter::start(&config).await;
    (pods, router)
}

fn error(answer: &Answer) -> &str {
    answer.json["error"].as_str().unwrap_or_default()
}

/// The well-behaved route still answers normally: nothing was poisoned.
async fn still_serving(router: &TestRouter) {
    let answer = router.post("/good", "x").await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.json);
    assert_eq!(answer.json, serde_json::json!({"stress": "ok"}));
}

#[tokio::test(flavor = "multi_thread")]
async fn well_behaved_plugin_within_its_limits_passes_every_hook() {
    let (pods, router) = start().await;
    let answer = router.post("/good", "x").await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.json);
    // The stress plugin's aggregate decides the answer.
    assert_eq!(answer.json, serde_json::json!({"stress": "ok"}));
    assert_eq!(answer.header("x-broadcast-targets"), "2");
    for pod in &pods.pods {
        assert_eq!(pod.count(), 1);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn infinite_loop_is_cut_off_by_the_hook_timeout() {
    let (pods, router) = start().await;
    let closed = router.post("/loop-closed", "x").await;
    assert_eq!(closed.status, StatusCode::BAD_GATEWAY, "{}", closed.json);
    assert!(
        error(&closed).contains("plugin \"closed\" ran out of time in select-targets"),
        "{}",
        closed.json
    );
    assert_eq!(pods.total(), 0, "fail-closed sends nothing");

    let open = router.post("/loop-open", "x").await;
    assert_eq!(open.status, StatusCode::OK, "{}", open.json);
    assert_eq!(open.json["policy"], "all", "the built-in policy decides");
    assert_eq!(open.json["succeeded"], 2);
    assert_eq!(
        pods.total(),
        2,
        "fail-open behaves as if the plugin were absent"
    );
    still_serving(&router).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn memory_bomb_is_stopped_by_the_memory_cap() {
    let (pods, router) = start().await;
    let closed = router.post("/bomb-closed", "x").await;
    assert_eq!(closed.status, StatusCode::BAD_GATEWAY, "{}", closed.json);
    assert!(
        error(&closed).contains("hit its memory limit"),
        "{}",
        closed.json
    );
    assert_eq!(pods.total(), 0);

    let open = router.post("/bomb-open", "x").await;
    assert_eq!(open.status, StatusCode::OK, "{}", open.json);
    assert_eq!(pods.total(), 2);
    still_serving(&router).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn panic_becomes_a_trap() {
    let (pods, router) = start().await;
    let closed = router.post("/panic-closed", "x").await;
    assert_eq!(closed.status, StatusCode::BAD_GATEWAY, "{}", closed.json);
    assert!(error(&closed).contains("trapped"), "{}", closed.json);
    assert!(error(&closed).contains("in transform"), "{}", closed.json);
    assert_eq!(pods.total(), 0);

    let open = router.post("/panic-open", "x").await;
    assert_eq!(open.status, StatusCode::OK, "{}", open.json);
    assert_eq!(pods.total(), 2, "untransformed copies still go out");
    still_serving(&router).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn errors_and_invalid_output_fail_closed() {
    let (pods, router) = start().await;
    let cases = [
        ("/fail-closed", "returned an error: stress: asked to fail"),
        ("/index-closed", "returned invalid output: index"),
        ("/header-closed", "returned invalid output: header name"),
    ];
    for (path, expected) in cases {
        let answer = router.post(path, "x").await;
        assert_eq!(
            answer.status,
            StatusCode::BAD_GATEWAY,
            "{path}: {}",
            answer.json
        );
        assert!(error(&answer).contains(expected), "{path}: {}", answer.json);
    }
    assert_eq!(pods.total(), 0);
    still_serving(&router).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn failing_aggregate_answers_502_with_every_pods_result() {
    let (pods, router) = start().await;
    let answer = router.post("/aggregate-closed", "x").await;
    assert_eq!(answer.status, StatusCode::BAD_GATEWAY, "{}", answer.json);
    assert!(error(&answer).contains("trapped"), "{}", answer.json);
    assert!(error(&answer).contains("in aggregate"), "{}", answer.json);
    assert_eq!(answer.json["succeeded"], 2, "the pods were reached");
    assert_eq!(pods.total(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn plugin_failures_are_counted_by_cause() {
    let (_pods, router) = start().await;
    for path in [
        "/loop-closed",
        "/bomb-closed",
        "/panic-closed",
        "/index-closed",
    ] {
        router.post(path, "x").await;
    }
    let (_, metrics) = router.admin_get("/metrics").await;
    for (route, cause) in [
        ("loop-closed", "timeout"),
        ("bomb-closed", "memory"),
        ("panic-closed", "trap"),
        ("index-closed", "invalid_output"),
    ] {
        let line = format!(
            "broadcast_router_plugin_failures_total{{route=\"{route}\",plugin=\"closed\",cause=\"{cause}\"}}"
        );
        assert!(metrics.contains(&line), "missing {line}:\n{metrics}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn loading_checks_every_plugin_and_runs_init_with_each_routes_config() {
    let stress = plugins::table("stress", "stress.wasm", "");
    let missing = "\n[plugins.missing]\npath = \"/nonexistent/plugin.wasm\"\n";
    let text = format!(
        "{}{stress}{missing}\
         \n[[routes]]\nname = \"bad-config\"\npath = \"/a\"\ntargets = [\"127.0.0.2:80\"]\n\
         plugins = [{{ use = \"stress\", config = {{ spin = \"sometimes\" }} }}]\n\
         \n[[routes]]\nname = \"two-aggregators\"\npath = \"/b\"\ntargets = [\"127.0.0.2:80\"]\n\
         plugins = [{{ use = \"stress\" }}, {{ use = \"stress\" }}]\n",
        preamble(None)
    );
    let config = Config::parse(&text).unwrap_or_else(|problems| panic!("{problems}"));
    let problems = Plugins::load(&config).err().expect("problems").to_string();
    for expected in [
        "plugin \"missing\": cannot read /nonexistent/plugin.wasm",
        "route \"bad-config\": plugin \"stress\" rejected its config",
        "at most one plugin per route may implement aggregate",
    ] {
        assert!(
            problems.contains(expected),
            "missing {expected:?} in:\n{problems}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn compiled_plugins_are_cached_on_disk() {
    let cache = tempfile::tempdir().unwrap();
    let text = format!(
        "{}plugin_cache_dir = \"{}\"\n{}\n[[routes]]\nname = \"r\"\npath = \"/r\"\ntargets = [\"127.0.0.2:80\"]\n\
         plugins = [{{ use = \"stress\" }}]\n",
        preamble(None),
        cache.path().display(),
        plugins::table("stress", "stress.wasm", "")
    );
    let config = Config::parse(&text).unwrap_or_else(|problems| panic!("{problems}"));
    // Compiled artifacts, with when they were written (wasmtime also keeps
    // `.stats` files and a cleanup marker beside them).
    let artifacts = || {
        fn walk(dir: &std::path::Path, out: &mut Vec<(std::path::PathBuf, std::time::SystemTime)>) {
            for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                let path = entry.path();
                let name = entry.file_name().to_string_lossy().into_owned();
                if path.is_dir() {
                    walk(&path, out);
                } else if !name.starts_with('.') && !name.ends_with(".stats") {
                    out.push((path, entry.metadata().unwrap().modified().unwrap()));
                }
            }
        }
        let mut out = Vec::new();
        walk(cache.path(), &mut out);
        out
    };
    assert!(artifacts().is_empty());
    Plugins::load(&config).expect("the plugin loads");
    let first = support::eventually("the compiled plugin is in the cache", || async {
        let found = artifacts();
        (!found.is_empty()).then_some(found)
    })
    .await;
    // A second load (a restart) uses the artifact instead of writing it again.
    Plugins::load(&config).expect("the plugin loads again");
    assert_eq!(artifacts(), first);
}

#[tokio::test(flavor = "multi_thread")]
async fn udp_routes_apply_target_selection() {
    let sockets: Vec<tokio::net::UdpSocket> = {
        let mut found = None;
        'port: for _ in 0..50 {
            let head = tokio::net::UdpSocket::bind("127.0.0.150:0").await.unwrap();
            let port = head.local_addr().unwrap().port();
            let mut sockets = vec![head];
            for host in 151..153 {
                match tokio::net::UdpSocket::bind(("127.0.0.".to_owned() + &host.to_string(), port))
                    .await
                {
                    Ok(socket) => sockets.push(socket),
                    Err(_) => continue 'port,
                }
            }
            found = Some(sockets);
            break;
        }
        found.expect("a common UDP port")
    };
    let addrs: Vec<String> = sockets
        .iter()
        .map(|socket| socket.local_addr().unwrap().to_string())
        .collect();
    let targets: Vec<String> = addrs.iter().map(|addr| format!("\"{addr}\"")).collect();
    let text = format!(
        "{}{}\n[[routes]]\nname = \"notify\"\npath = \"/notify\"\nprotocol = \"udp\"\ntargets = [{}]\n\
         udp = {{ repeat = 1 }}\nplugins = [{{ use = \"shard\", config = {{ exclude = [\"127.0.0.151\"] }} }}]\n",
        preamble(None),
        plugins::table("shard", "shard_filter.wasm", ""),
        targets.join(", ")
    );
    let router = TestRouter::start(&text).await;
    let answer = router.post("/notify", "hello").await;
    assert_eq!(answer.status, StatusCode::ACCEPTED, "{}", answer.json);
    assert_eq!(answer.json["targets"], 2);
    let listed: Vec<&str> = answer.json["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|result| result["target"].as_str().unwrap())
        .collect();
    assert_eq!(listed, [addrs[0].as_str(), addrs[2].as_str()]);
    for socket in [&sockets[0], &sockets[2]] {
        let mut buffer = [0u8; 2048];
        let (len, _) = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            socket.recv_from(&mut buffer),
        )
        .await
        .expect("the datagram arrives")
        .unwrap();
        let frame = broadcast_router::frame::decode(&buffer[..len]).unwrap();
        assert_eq!(&frame.payload[..], b"hello");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn plugins_cannot_see_files_sockets_or_the_environment() {
    let (_pods, router) = start().await;
    let answer = router.post("/probe", "x").await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.json);
    let seen = &answer.json;
    assert_eq!(
        seen["env"],
        serde_json::json!([]),
        "no environment variables: {seen}"
    );
    for what in ["file", "dir", "socket"] {
        let outcome = seen[what].as_str().unwrap_or_default();
        assert!(
            outcome.starts_with("denied"),
            "{what} must be denied: {seen}"
        );
    }
    assert_eq!(seen["clock"], true, "clocks are available: {seen}");
}

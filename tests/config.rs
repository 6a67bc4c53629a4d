//! The configuration as an operator meets it: `Config::parse` reports every
//! problem of a file at once, each with the line and column it refers to;
//! the real `broadcast-router check` command prints them as
//! `FILE:LINE:COL: message` and fails, or prints a one-line summary and
//! succeeds; every example under `config/` is valid; relative paths in a
//! file start at its directory; and the demo that the README's quick start
//! runs answers a broadcast.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use broadcast_router::config::{Config, Problem};
use broadcast_router::{demo, server};
use serde_json::Value;

/// The real binary, built by cargo for these tests.
const BINARY: &str = env!("CARGO_BIN_EXE_broadcast-router");

/// Runs the binary with `args` and a quiet log, without inheriting a
/// configuration path from the environment.
fn run(args: &[&str]) -> Output {
    Command::new(BINARY)
        .args(args)
        .env_remove("BROADCAST_ROUTER_CONFIG")
        .env("RUST_LOG", "off")
        .output()
        .expect("the broadcast-router binary runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8(bytes.to_vec()).expect("output is UTF-8")
}

/// Every `*.toml` file under `config/`, sorted.
fn example_configs() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|error| panic!("cannot list {}: {error}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "toml"))
        .collect();
    files.sort();
    files
}

/// Nine independent problems across every section. Line numbers matter:
/// the first line of the text is line 1.
const NINE_PROBLEMS: &str = r#"[server]
listen = "127.0.0.1:8080"
admin_port = 9090

[dns]
min_ttl = "1m"
max_ttl = "30s"

[[routes]]
name = "invalidate"
path = "/cache/invalidate"
service = "web.default.svc.cluster.local"
port = 8080

[[routes]]
name = "typo"
path = "/typo"
target = ["127.0.0.2:8080"]

[[routes]]
name = "bad-policy"
path = "/bad-policy"
targets = ["127.0.0.2:8080"]
policy = "most"

[[routes]]
name = "invalidate"
path = "/other"
targets = ["127.0.0.2:8080"]

[[routes]]
name = "both"
path = "/both"
service = "web.default.svc.cluster.local"
port = 8080
targets = ["127.0.0.2:8080"]

[[routes]]
name = "open"
path = "/{service}/{*rest}"
service = "{service}.default.svc.cluster.local"
port = 8080

[[routes]]
name = "slow"
path = "/slow"
targets = ["127.0.0.2:8080"]
deadline = "2 parsecs"

[[routes]]
name = "again"
path = "/cache/invalidate"
targets = ["127.0.0.3:8080"]
"#;

#[test]
fn check_reports_every_problem_with_its_location() {
    let problems = Config::parse(NINE_PROBLEMS)
        .expect_err("the text has problems")
        .0;

    // (line, column, part of the message), in file order. Unknown keys
    // point at the key; bad values and semantic problems at the value.
    let expected: [(usize, usize, &str); 9] = [
        (3, 1, "unknown field `admin_port`"),
        (6, 11, "`min_ttl` (1m) is larger than `max_ttl` (30s)"),
        (18, 1, "unknown field `target`"),
        (24, 10, "unknown policy `most`"),
        (
            27,
            8,
            "route \"invalidate\": the name is already used by route #1",
        ),
        (
            36,
            11,
            "route \"both\": `service` and `targets` are exclusive",
        ),
        (
            41,
            11,
            "route \"open\": a templated `service` needs `allow_services`",
        ),
        (
            48,
            12,
            "invalid value: string \"2 parsecs\", expected a duration",
        ),
        (
            52,
            8,
            "route \"again\": `/cache/invalidate` with POST is already served by route #1",
        ),
    ];
    let listing = || {
        problems
            .iter()
            .map(Problem::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    };
    for (line, column, message) in expected {
        assert!(
            problems.iter().any(|problem| problem.line == line
                && problem.column == column
                && problem.message.contains(message)),
            "expected {line}:{column}: {message}\nbut got:\n{}",
            listing()
        );
    }
    assert_eq!(
        problems.len(),
        expected.len(),
        "all problems at once, and nothing else:\n{}",
        listing()
    );
    let positions: Vec<(usize, usize)> = problems.iter().map(|p| (p.line, p.column)).collect();
    let mut sorted = positions.clone();
    sorted.sort_unstable();
    assert_eq!(positions, sorted, "problems come in file order");
}

#[test]
fn syntax_errors_are_located() {
    // Line 2 lacks its `=`; the bad `retries` further down is a semantic
    // problem, which waits until the syntax is fixed.
    let text = "[server]\nlisten \"127.0.0.1:8080\"\n\n[[routes]]\nname = \"a\"\npath = \"/a\"\ntargets = [\"127.0.0.2:8080\"]\nretries = 11\n";
    let problems = Config::parse(text).expect_err("the text is broken").0;

    assert!(!problems.is_empty());
    for problem in &problems {
        assert_eq!(problem.line, 2, "{problem}");
    }
    assert_eq!(problems[0].column, 8, "{}", problems[0]);
    assert!(
        problems[0].message.contains("expected `=`"),
        "{}",
        problems[0]
    );
}

/// Builds the example plugins into `plugins/build/`, which
/// `config/plugins.toml` names.
fn build_plugins() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let built = Command::new("bash")
        .arg(root.join("plugins/build.sh"))
        .current_dir(root)
        .output()
        .expect("bash runs plugins/build.sh");
    assert!(built.status.success(), "{}", text(&built.stderr));
}

#[test]
fn every_example_config_passes_check() {
    build_plugins();
    let files = example_configs();
    let names: Vec<String> = files
        .iter()
        .filter_map(|path| path.file_name())
        .map(|name| name.to_string_lossy().into_owned())
        .collect();
    for required in [
        "generic.toml",
        "plugins.toml",
        "router.toml",
        "static-targets.toml",
    ] {
        assert!(
            names.iter().any(|name| name == required),
            "config/{required} is missing; found {names:?}"
        );
    }

    for path in &files {
        let config = Config::load(path).unwrap_or_else(|error| panic!("{error}"));
        assert!(
            !config.routes.is_empty(),
            "{} has no routes",
            path.display()
        );

        let file = path.to_str().expect("UTF-8 path");
        let output = run(&["check", "--config", file]);
        let stdout = text(&output.stdout);
        assert!(
            output.status.success(),
            "check {file} failed:\n{stdout}{}",
            text(&output.stderr)
        );
        let lines: Vec<&str> = stdout.lines().collect();
        assert_eq!(lines.len(), 1, "a one-line summary, got:\n{stdout}");
        let summary = lines[0];
        assert!(
            summary.starts_with(&format!("{file}: ok, {} route(s): ", config.routes.len())),
            "{summary}"
        );
        for route in &config.routes {
            assert!(
                summary.contains(&format!("{} (", route.name())),
                "the summary lacks route {}: {summary}",
                route.name()
            );
        }
    }
}

#[test]
fn check_command_lists_problems_and_fails() {
    let mut file = tempfile::Builder::new()
        .suffix(".toml")
        .tempfile()
        .expect("temp file");
    std::io::Write::write_all(
        &mut file,
        br#"[server]
listen = "127.0.0.1:8080"
admin_listen = "127.0.0.1:8080"

[[routes]]
name = "invalidate"
path = "cache/invalidate"
targets = ["127.0.0.2"]
"#,
    )
    .expect("write the config");
    let path = file.path().to_str().expect("UTF-8 path").to_owned();

    let output = run(&["check", "--config", &path]);

    assert!(!output.status.success(), "check must fail on a bad file");
    assert_eq!(text(&output.stdout), "", "problems go to stderr only");
    let stderr = text(&output.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    let expected = [
        format!("{path}:3:16: `admin_listen` must differ from `listen`"),
        format!("{path}:7:8: route \"invalidate\": `path` must start with `/`"),
        format!("{path}:8:12: route \"invalidate\": target `127.0.0.2` has no port"),
    ];
    assert_eq!(
        lines.len(),
        expected.len() + 1,
        "one line per problem, then a count:\n{stderr}"
    );
    for (line, start) in lines.iter().zip(&expected) {
        assert!(
            line.starts_with(start.as_str()),
            "{line}\ndoes not start with\n{start}"
        );
    }
    assert_eq!(lines[3], format!("{path}: 3 problem(s) found"));
}

#[test]
fn config_path_comes_from_the_environment() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/static-targets.toml");
    let example = example.to_str().expect("UTF-8 path");
    // Run where the default `config/router.toml` does not exist, so only
    // the environment can name the file.
    let elsewhere = tempfile::tempdir().expect("temp dir");

    let output = Command::new(BINARY)
        .arg("check")
        .current_dir(elsewhere.path())
        .env("BROADCAST_ROUTER_CONFIG", example)
        .env("RUST_LOG", "off")
        .output()
        .expect("the broadcast-router binary runs");

    let stdout = text(&output.stdout);
    assert!(output.status.success(), "{stdout}{}", text(&output.stderr));
    assert!(
        stdout.starts_with(&format!("{example}: ok, 1 route(s): invalidate (")),
        "{stdout}"
    );
}

/// A file with relative and absolute paths: a plugin cache, a plugin under
/// `plugins/`, one elsewhere by absolute path, and a route using both.
const RELATIVE_PATHS: &str = r#"[server]
plugin_cache_dir = "cache/wasm"

[plugins.shard]
path = "plugins/shard_filter.wasm"

[plugins.sign]
path = "/opt/plugins/hmac_sign.wasm"

[[routes]]
name = "invalidate"
path = "/cache/invalidate"
targets = ["127.0.0.2:8080"]
plugins = [{ use = "shard" }, { use = "sign" }]
"#;

#[test]
fn relative_paths_start_at_the_config_files_directory() {
    let dir = tempfile::tempdir().expect("temp dir");
    let etc = dir.path().join("etc");
    std::fs::create_dir(&etc).expect("create etc/");
    let file = etc.join("router.toml");
    std::fs::write(&file, RELATIVE_PATHS).expect("write the config");

    let loaded = Config::load(&file).unwrap_or_else(|error| panic!("{error}"));

    assert_eq!(
        loaded.plugins["shard"].path,
        etc.join("plugins/shard_filter.wasm")
    );
    assert_eq!(
        loaded.plugins["sign"].path,
        Path::new("/opt/plugins/hmac_sign.wasm"),
        "absolute paths stay as written"
    );
    assert_eq!(
        loaded.server.plugin_cache_dir.as_deref(),
        Some(etc.join("cache/wasm").as_path())
    );

    let parsed = Config::parse(RELATIVE_PATHS).unwrap_or_else(|problems| panic!("{problems}"));
    assert_eq!(
        parsed.plugins["shard"].path,
        Path::new("plugins/shard_filter.wasm"),
        "text without a file keeps its paths relative to the working directory"
    );
    assert_eq!(
        parsed.server.plugin_cache_dir.as_deref(),
        Some(Path::new("cache/wasm"))
    );
}

/// A Kubernetes ConfigMap volume mounts `router.toml` as a symbolic link
/// into a hidden, versioned directory; the plugins mounted beside it must
/// still be found next to the link, not next to its target.
#[cfg(unix)]
#[test]
fn relative_paths_start_at_the_link_not_at_its_target() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mount = dir.path().join("etc/broadcast-router");
    let data = mount.join("..2025_01_01_00_00_00.000000000");
    std::fs::create_dir_all(&data).expect("create the data directory");
    std::fs::write(data.join("router.toml"), RELATIVE_PATHS).expect("write the config");
    std::os::unix::fs::symlink(
        "..2025_01_01_00_00_00.000000000/router.toml",
        mount.join("router.toml"),
    )
    .expect("link router.toml");

    let loaded = Config::load(&mount.join("router.toml")).unwrap_or_else(|error| panic!("{error}"));

    assert_eq!(
        loaded.plugins["shard"].path,
        mount.join("plugins/shard_filter.wasm")
    );
}

#[test]
fn check_finds_the_plugins_of_a_file_from_any_working_directory() {
    build_plugins();
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/plugins.toml");
    let example = example.to_str().expect("UTF-8 path");
    let elsewhere = tempfile::tempdir().expect("temp dir");

    let output = Command::new(BINARY)
        .args(["check", "--config", example])
        .current_dir(elsewhere.path())
        .env_remove("BROADCAST_ROUTER_CONFIG")
        .env("RUST_LOG", "off")
        .output()
        .expect("the broadcast-router binary runs");

    let stdout = text(&output.stdout);
    assert!(output.status.success(), "{stdout}{}", text(&output.stderr));
    assert!(
        stdout.starts_with(&format!("{example}: ok, 1 route(s): invalidate (")),
        "{stdout}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn demo_answers_a_broadcast() {
    let pods = demo::spawn_echo_pods(3).await.expect("demo pods start");
    let config = demo::config(
        &pods,
        "127.0.0.1:0".parse().expect("address"),
        "127.0.0.1:0".parse().expect("address"),
    );
    let running = server::start(&config).await.expect("the router starts");

    let client = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("HTTP client");
    let response = client
        .post(format!("http://{}/cache/invalidate", running.addr))
        .header("content-type", "application/json")
        .body(r#"{"key":"user:42"}"#)
        .send()
        .await
        .expect("the router answers");

    assert_eq!(response.status(), reqwest::StatusCode::OK);
    let id = response.headers()["x-broadcast-id"]
        .to_str()
        .expect("ASCII id")
        .to_owned();
    assert_eq!(response.headers()["x-broadcast-targets"], "3");
    assert_eq!(response.headers()["x-broadcast-succeeded"], "3");
    let body = response.bytes().await.expect("answer body");
    let answer: Value = serde_json::from_slice(&body).expect("a JSON answer");
    assert_eq!(answer["ok"], true, "{answer}");
    assert_eq!(answer["id"], id.as_str());
    assert_eq!(answer["route"], "invalidate");
    assert_eq!(answer["policy"], "all");
    assert_eq!(answer["targets"], 3);
    assert_eq!(answer["succeeded"], 3);
    let results = answer["results"].as_array().expect("results");
    assert_eq!(results.len(), 3);
    for (result, pod) in results.iter().zip(&pods) {
        assert_eq!(result["target"], pod.to_string(), "{answer}");
        assert_eq!(result["status"], 200, "{answer}");
        assert_eq!(result["error"], Value::Null, "{answer}");
        // Each echo pod reports what it received.
        let echo: Value =
            serde_json::from_str(result["body"].as_str().expect("a body")).expect("echo JSON");
        assert_eq!(echo["path"], "/cache-invalidation");
        assert_eq!(echo["broadcast_id"], id.as_str());
    }

    let unfinished = running.shutdown().await;
    assert!(
        unfinished.is_empty(),
        "unfinished broadcasts: {unfinished:?}"
    );
}

#[test]
fn jobs_table_problems_are_reported_at_their_keys() {
    let text = "[jobs]\npath = \"/var/lib/jobs.db\"\nredis = \"redis://r:6379/0\"\nmax_pending = 0\nlease = \"100ms\"\n\n[[routes]]\nname = \"status\"\npath = \"/broadcasts/{id}\"\ntargets = [\"127.0.0.2:80\"]\n";
    let problems = Config::parse(text).expect_err("the text has problems").0;
    let found: Vec<(usize, &str)> = problems
        .iter()
        .map(|problem| (problem.line, problem.message.as_str()))
        .collect();
    for (line, part) in [
        (3, "`path` and `redis` are exclusive"),
        (4, "`max_pending` must be larger than 0"),
        (5, "`lease` must be at least 300ms"),
        (9, "the router's status API"),
    ] {
        assert!(
            found
                .iter()
                .any(|(at, message)| *at == line && message.contains(part)),
            "no problem {part:?} on line {line}: {found:?}"
        );
    }
    let neither = Config::parse("[jobs]\nretention = \"1h\"\n").expect_err("no store");
    assert!(neither.to_string().contains("needs `path`"), "{neither}");
    let scheme = Config::parse("[jobs]\nredis = \"http://r:6379\"\n").expect_err("not redis");
    assert!(
        scheme.to_string().contains("redis:// or rediss://"),
        "{scheme}"
    );
}

#[test]
fn a_relative_jobs_path_starts_at_the_configuration_files_directory() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("router.toml");
    std::fs::write(
        &file,
        "[jobs]\npath = \"state/jobs.db\"\n\n[[routes]]\nname = \"a\"\npath = \"/a\"\ntargets = [\"127.0.0.2:80\"]\n",
    )
    .unwrap();
    let config = Config::load(&file).unwrap();
    assert_eq!(
        config.jobs.unwrap().path.unwrap(),
        dir.path().join("state/jobs.db")
    );
}

/// The messages of every problem `text` has (it must have some).
fn problems(text: &str) -> Vec<String> {
    Config::parse(text)
        .expect_err("the configuration has problems")
        .0
        .iter()
        .map(|problem| problem.to_string())
        .collect()
}

#[test]
fn kubernetes_routes_are_checked_like_the_api_would() {
    let valid = Config::parse(
        "[kubernetes]\nmax_watches = 4\n\n[[routes]]\nname = \"a\"\npath = \"/a\"\nkubernetes = { service = \"web\", namespace = \"shop\", port = \"http\" }\nendpoints = \"ready\"\n\n[[routes]]\nname = \"b\"\npath = \"/b/{service}\"\nkubernetes = { service = \"{service}\", port = 8080 }\nallow_services = [\"web-*\"]\n",
    )
    .unwrap_or_else(|problems| panic!("{problems}"));
    let source = valid.routes[0].source.to_string();
    assert_eq!(source, "kubernetes shop/web:http (ready endpoints)");

    let found = problems(
        "[kubernetes]\nmax_watches = 0\n\n[[routes]]\nname = \"both\"\npath = \"/both\"\nservice = \"web\"\nport = 80\nkubernetes = { service = \"web\", port = \"http\" }\n\n[[routes]]\nname = \"bad\"\npath = \"/bad\"\nport = 80\nkubernetes = { service = \"Web\", namespace = \"-x\", port = \"a--b\" }\n\n[[routes]]\nname = \"dns\"\npath = \"/dns\"\nservice = \"web\"\nport = 80\nendpoints = \"serving\"\n\n[[routes]]\nname = \"open\"\npath = \"/open\"\nkubernetes = { service = \"{service}\", port = 70000 }\n",
    );
    let all = found.join("\n");
    for expected in [
        "`max_watches` must be at least 1",
        "route \"both\": `service` and `kubernetes` are exclusive",
        "route \"bad\": with `kubernetes`, the port goes inside the table",
        "`kubernetes.service` `Web` is not a Service name",
        "`kubernetes.namespace` `-x` is not a namespace name",
        "`kubernetes.port` `a--b` is not a port name",
        "route \"dns\": `endpoints` applies to `kubernetes` routes",
        "route \"open\": a templated `kubernetes` needs a `{service}` capture in `path`",
        "route \"open\": a templated `kubernetes` needs `allow_services`",
        "`kubernetes.port` 70000 is not a port number",
    ] {
        assert!(all.contains(expected), "missing {expected:?} in:\n{all}");
    }
    // Serde stops at a route's first shape error, so one each.
    let unknown = problems("[[routes]]\nname = \"x\"\npath = \"/x\"\nkubernetes = { service = \"web\", port = \"http\", zone = \"a\" }\n").join("\n");
    assert!(unknown.contains("unknown field `zone`"), "{unknown}");
    let endpoints = problems("[[routes]]\nname = \"x\"\npath = \"/x\"\nkubernetes = { service = \"web\", port = \"http\" }\nendpoints = \"some\"\n").join("\n");
    assert!(
        endpoints.contains("unknown variant `some`, expected one of `ready`, `serving`, `all`"),
        "{endpoints}"
    );
}

/// `check` writes its problems to stderr itself while the log writer
/// thread writes log lines there too: neither may hold stderr so that the
/// other waits forever. With logging on, a failing check still prints its
/// problems and exits.
#[test]
fn check_with_logging_on_prints_problems_and_exits() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("router.toml");
    std::fs::write(&path, "[[routes]]\nname = \"x\"\npath = \"/x\"\n").unwrap();
    let mut child = Command::new(BINARY)
        .args(["check", "--config"])
        .arg(&path)
        .env("RUST_LOG", "debug")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("the binary runs");
    let give_up = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > give_up {
            let _ = child.kill();
            panic!("check did not exit: it is stuck writing to stderr");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let output = child.wait_with_output().unwrap();
    assert!(!status.success());
    assert!(
        text(&output.stderr).contains("problem(s) found"),
        "{}",
        text(&output.stderr)
    );
}

//! What Python and JavaScript plugins write to stdout and stderr, at load,
//! in `init` and in every hook, reaches the router's log, and never
//! crashes it: the regression tests of the "Cannot start a runtime from
//! within a runtime" panic, which made `check` and `serve` exit 101 when a
//! plugin printed in `init` (a JavaScript `console.log`, a JavaScript
//! `init` that throws an Error, a Python `init` that raises). A failing
//! `init` is reported with the plugin's own message by `check`, `serve`
//! and a live reload. The real binary is run for `check` and `serve`.

mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use broadcast_router::reload::{Reloader, Snapshot, Trigger};
use broadcast_router::server;
use reqwest::StatusCode;
use support::pods::{Behaviour, Pods};
use support::{eventually, plugins};

const ROUTER: &str = env!("CARGO_BIN_EXE_broadcast-router");

/// A configuration file: both probes, one route per `(name, plugin,
/// config)`, over `targets` (a TOML array).
fn config(listen: &str, targets: &str, routes: &[(&str, &str, &str)]) -> String {
    let mut text = format!(
        "[server]\nlisten = \"{listen}\"\nadmin_listen = \"127.0.0.1:0\"\nshutdown_grace = \"5s\"\n"
    );
    for language in ["python", "javascript"] {
        text.push_str(&plugins::guest_table(
            language,
            &format!("probe_{language}.wasm"),
            "",
        ));
    }
    for (name, plugin, plugin_config) in routes {
        text.push_str(&format!(
            "\n[[routes]]\nname = \"{name}\"\npath = \"/{name}\"\ntargets = {targets}\nretries = 0\n\
             plugins = [{{ use = \"{plugin}\", config = {plugin_config} }}]\n"
        ));
    }
    text
}

fn write(dir: &Path, text: &str) -> std::path::PathBuf {
    let path = dir.join("router.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn check_reports_each_plugins_own_words_and_never_panics() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        &config(
            "127.0.0.1:0",
            "[\"127.0.0.2:80\"]",
            &[
                ("js-says", "javascript", "{ say = \"js-hello-from-init\" }"),
                ("js-throws", "javascript", "{ throw_in = \"init\" }"),
                ("js-traps", "javascript", "{ raw_throw_in = \"init\" }"),
                ("py-says", "python", "{ say = \"py-hello-from-init\" }"),
                ("py-raises", "python", "{ raise_in = \"init\" }"),
                ("py-fails", "python", "{ fail_in = \"init\" }"),
            ],
        ),
    );
    let output = Command::new(ROUTER)
        .args(["check", "--config"])
        .arg(&path)
        .env("RUST_LOG", "info")
        .output()
        .expect("the router runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        output.status.code(),
        Some(1),
        "problems, no panic:\n{stderr}"
    );
    // (The Python runtime's own "panicked at" line is quoted output.)
    assert!(!stderr.contains("within a runtime"), "{stderr}");
    for expected in [
        // Output in init is logged with the plugin and the hook.
        "js-hello-from-init (init)",
        "py-hello-from-init (init)",
        // A JavaScript Error thrown in init: its message.
        "route \"js-throws\": plugin \"javascript\" rejected its config: probe-javascript: thrown in init",
        // An Error componentize-js cannot return traps; what it wrote is quoted.
        "route \"js-traps\": plugin \"javascript\" trapped in `init`",
        "expected a string, received [object]",
        // A Python exception: the traceback's last line.
        "route \"py-raises\": plugin \"python\" trapped in `init`",
        "ValueError: probe-python: raised in init",
        "route \"py-fails\": plugin \"python\" rejected its config: probe-python: asked to fail in init",
        "4 problem(s) found",
    ] {
        assert!(
            stderr.contains(expected),
            "missing {expected:?} in:\n{stderr}"
        );
    }
    let logged = stderr
        .lines()
        .find(|line| line.contains("js-hello-from-init"))
        .unwrap();
    for field in ["plugin", "javascript", "hook", "init", "stdout"] {
        assert!(logged.contains(field), "{logged}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn serve_logs_output_from_init_and_every_hook_with_route_and_broadcast_id() {
    let pods = Pods::start(225, &[Behaviour::Ok, Behaviour::Ok]).await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        &config(
            &format!("127.0.0.1:{port}"),
            &pods.targets_toml(),
            &[
                ("js", "javascript", "{ say = \"js-said\" }"),
                ("py", "python", "{ say = \"py-said\" }"),
            ],
        ),
    );
    let log = dir.path().join("router.log");
    let mut child = Command::new(ROUTER)
        .args(["--log-format", "json", "serve", "--config"])
        .arg(&path)
        .env("RUST_LOG", "info")
        .stderr(Stdio::from(std::fs::File::create(&log).unwrap()))
        .spawn()
        .expect("the router starts");
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    for route in ["js", "py"] {
        let answer = eventually("the router answers", || async {
            client
                .post(format!("http://127.0.0.1:{port}/{route}"))
                .header("x-broadcast-id", format!("id-{route}"))
                .body("{}")
                .send()
                .await
                .ok()
        })
        .await;
        assert_eq!(answer.status(), StatusCode::OK);
    }
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        status.success(),
        "the router exits cleanly: {status}\n{text}"
    );
    let lines: Vec<serde_json::Value> = text
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect();
    for (route, said, plugin) in [("js", "js-said", "javascript"), ("py", "py-said", "python")] {
        for hook in ["init", "select-targets", "transform", "aggregate"] {
            let message = format!("{said} ({hook})");
            let found = lines.iter().any(|line| {
                let fields = &line["fields"];
                fields["message"] == message.as_str()
                    && fields["plugin"] == plugin
                    && fields["route"] == route
                    && fields["hook"] == hook
                    && fields["stream"] == "stdout"
                    && (hook == "init" || fields["id"] == format!("id-{route}").as_str())
            });
            assert!(found, "no log line {message:?} of route {route}:\n{text}");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn reload_rejects_a_raising_init_with_the_python_traceback() {
    let dir = tempfile::tempdir().unwrap();
    let good = config(
        "127.0.0.1:0",
        "[\"127.0.0.2:80\"]",
        &[("py", "python", "{ say = \"fine\" }")],
    );
    let path = write(dir.path(), &good);
    let snapshot = Snapshot::read(&path).unwrap();
    let running = server::start_with(&snapshot.config, snapshot.origin.clone())
        .await
        .expect("the router starts");
    let reloader = Arc::new(Reloader::new(
        Arc::clone(running.state()),
        path.clone(),
        &snapshot,
    ));
    write(
        dir.path(),
        &good.replace("{ say = \"fine\" }", "{ raise_in = \"init\" }"),
    );
    let error = tokio::time::timeout(Duration::from_secs(60), reloader.reload(Trigger::Signal))
        .await
        .expect("the reload finishes")
        .expect_err("the reload is rejected")
        .to_string();
    for expected in [
        "plugin \"python\" trapped in `init`",
        "ValueError: probe-python: raised in init",
    ] {
        assert!(error.contains(expected), "missing {expected:?} in {error}");
    }
    assert!(running.shutdown().await.is_empty());
}

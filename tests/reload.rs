//! Live reload through the real router: configuration files swapped the
//! way Kubernetes swaps a mounted ConfigMap (a `..data` symlink renamed
//! over the old one), files edited in place, invalid versions, and plugin
//! files replaced on disk, while clients keep sending broadcasts.

mod support;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use broadcast_router::reload::{self, Outcome, Reloader, Snapshot, Trigger};
use broadcast_router::server::{self, Running};
use reqwest::StatusCode;
use serde_json::Value;
use support::pods::{Behaviour, Gate, Pods};
use support::{eventually, preamble};

/// A directory laid out like a mounted ConfigMap: `router.toml` is a
/// symlink to `..data/router.toml`, and `..data` a symlink to the current
/// hidden version directory.
struct ConfigMapDir {
    dir: tempfile::TempDir,
    versions: usize,
}

impl ConfigMapDir {
    fn new(text: &str) -> Self {
        let mut configmap = Self {
            dir: tempfile::tempdir().unwrap(),
            versions: 0,
        };
        configmap.publish(text);
        std::os::unix::fs::symlink("..data/router.toml", configmap.path()).unwrap();
        configmap
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join("router.toml")
    }

    /// Publishes a new version the way the kubelet does: write a new
    /// directory, point a temporary symlink at it, rename that over
    /// `..data`, remove the old directory.
    fn publish(&mut self, text: &str) {
        self.versions += 1;
        let root = self.dir.path();
        let version = format!("..2026_11_21_{:02}", self.versions);
        std::fs::create_dir(root.join(&version)).unwrap();
        std::fs::write(root.join(&version).join("router.toml"), text).unwrap();
        std::os::unix::fs::symlink(&version, root.join("..data_tmp")).unwrap();
        std::fs::rename(root.join("..data_tmp"), root.join("..data")).unwrap();
        if self.versions > 1 {
            let old = format!("..2026_11_21_{:02}", self.versions - 1);
            std::fs::remove_dir_all(root.join(old)).unwrap();
        }
    }
}

/// The router started from a file and watching it.
struct Watched {
    running: Option<Running>,
    reloader: Arc<Reloader>,
    watching: tokio::task::JoinHandle<()>,
    url: String,
    admin: String,
    client: reqwest::Client,
}

impl Watched {
    async fn start(path: &Path) -> Self {
        let snapshot = Snapshot::read(path).expect("the first configuration is valid");
        let running = server::start_with(&snapshot.config, snapshot.origin.clone())
            .await
            .expect("router starts");
        let reloader = Arc::new(Reloader::new(
            Arc::clone(running.state()),
            path.to_owned(),
            &snapshot,
        ));
        Watched {
            url: format!("http://{}", running.addr),
            admin: format!("http://{}", running.admin_addr),
            watching: reload::watch(Arc::clone(&reloader), false),
            reloader,
            running: Some(running),
            client: reqwest::Client::builder().no_proxy().build().unwrap(),
        }
    }

    async fn config(&self) -> Value {
        let response = self
            .client
            .get(format!("{}/admin/config", self.admin))
            .send()
            .await
            .expect("admin answers");
        assert_eq!(response.status(), StatusCode::OK);
        serde_json::from_slice(&response.bytes().await.unwrap()).unwrap()
    }

    async fn version(&self) -> u64 {
        self.config().await["active"]["version"].as_u64().unwrap()
    }

    /// Waits until the active configuration has `version`.
    async fn until_version(&self, version: u64) {
        eventually(
            &format!("configuration version {version} is active"),
            || async { (self.version().await == version).then_some(()) },
        )
        .await;
    }

    async fn ready(&self) -> bool {
        let response = self
            .client
            .get(format!("{}/readyz", self.admin))
            .send()
            .await
            .unwrap();
        response.status() == StatusCode::OK
    }

    async fn shutdown(mut self) -> Vec<String> {
        self.watching.abort();
        self.running.take().unwrap().shutdown().await
    }
}

/// A configuration with one route over `targets` (a TOML array).
fn route_over(targets: &str) -> String {
    format!(
        "{}\n[[routes]]\nname = \"invalidate\"\npath = \"/cache/invalidate\"\ntargets = {targets}\n",
        preamble(None)
    )
}

/// What one client broadcast saw.
#[derive(Debug)]
struct Seen {
    status: StatusCode,
    targets: u64,
    succeeded: u64,
    pods: Vec<String>,
}

/// Sends broadcasts one after another until `stop`, recording each answer.
fn keep_broadcasting(
    client: reqwest::Client,
    url: String,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Vec<Seen>> {
    tokio::spawn(async move {
        let mut seen = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            let response = client
                .post(format!("{url}/cache/invalidate"))
                .body(r#"{"key":"user:42"}"#)
                .send()
                .await
                .expect("the router answers every request");
            let status = response.status();
            let body = response.bytes().await.expect("a whole answer");
            let report: Value = serde_json::from_slice(&body).expect("a JSON report");
            let mut pods: Vec<String> = report["results"]
                .as_array()
                .map(|results| {
                    results
                        .iter()
                        .map(|result| result["target"].as_str().unwrap().to_owned())
                        .collect()
                })
                .unwrap_or_default();
            pods.sort();
            seen.push(Seen {
                status,
                targets: report["targets"].as_u64().unwrap_or(0),
                succeeded: report["succeeded"].as_u64().unwrap_or(0),
                pods,
            });
        }
        seen
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reload_under_load_answers_every_request_from_the_old_or_the_new_config() {
    let pods = Pods::start(90, &[Behaviour::Ok, Behaviour::Ok, Behaviour::Ok]).await;
    let two = format!("[\"{}\", \"{}\"]", pods.pods[0].addr, pods.pods[1].addr);
    let three = pods.targets_toml();
    let mut configmap = ConfigMapDir::new(&route_over(&two));
    let router = Watched::start(&configmap.path()).await;
    assert_eq!(router.version().await, 1);

    let stop = Arc::new(AtomicBool::new(false));
    let client = keep_broadcasting(router.client.clone(), router.url.clone(), stop.clone());
    let total_after = |count: usize| {
        let pods = &pods;
        move || async move { (pods.total() >= count).then_some(()) }
    };
    eventually("broadcasts flow", total_after(20)).await;

    // 1. A ConfigMap update: the symlink swap is seen.
    configmap.publish(&route_over(&three));
    router.until_version(2).await;
    eventually(
        "broadcasts flow on version 2",
        total_after(pods.total() + 30),
    )
    .await;

    // 2. An invalid version is rejected; version 2 keeps serving.
    configmap.publish("[[routes]]\nname = \"invalidate\"\npath = 42\n");
    eventually("the invalid version is rejected", || async {
        let config = router.config().await;
        config["last_reload_failure"]["error"]
            .as_str()
            .map(ToOwned::to_owned)
    })
    .await;
    assert_eq!(router.version().await, 2);
    assert!(router.ready().await, "readiness does not flap");
    eventually(
        "broadcasts flow after the rejection",
        total_after(pods.total() + 30),
    )
    .await;

    // 3. Back to two pods, then a forced reload of the same files.
    configmap.publish(&route_over(&two));
    router.until_version(3).await;
    let config = router.config().await;
    assert!(config["last_reload_failure"].is_null(), "{config}");
    eventually(
        "broadcasts flow on version 3",
        total_after(pods.total() + 30),
    )
    .await;
    match router.reloader.reload(Trigger::Signal).await {
        Ok(Outcome::Reloaded(info)) => assert_eq!(info.version, 4),
        other => panic!("a forced reload reloads: {other:?}"),
    }
    eventually(
        "broadcasts flow on version 4",
        total_after(pods.total() + 30),
    )
    .await;

    stop.store(true, Ordering::Relaxed);
    let seen = client.await.unwrap();
    let first_two = {
        let mut pods = vec![pods.pods[0].addr.to_string(), pods.pods[1].addr.to_string()];
        pods.sort();
        pods
    };
    let all_three = {
        let mut all: Vec<String> = pods.pods.iter().map(|pod| pod.addr.to_string()).collect();
        all.sort();
        all
    };
    for answer in &seen {
        assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
        assert_eq!(answer.succeeded, answer.targets, "{answer:?}");
        assert!(
            answer.pods == first_two || answer.pods == all_three,
            "every answer is complete under one configuration: {answer:?}"
        );
    }
    let on_three = seen.iter().filter(|answer| answer.targets == 3).count();
    assert!(on_three > 0, "some broadcasts used the new configuration");
    assert!(seen.len() > on_three, "some broadcasts used the old one");
    let delivered: u64 = seen.iter().map(|answer| answer.targets).sum();
    assert_eq!(
        pods.total() as u64,
        delivered,
        "every delivery is in exactly one answer"
    );
    assert_eq!(router.shutdown().await, Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_file_edited_in_place_is_reloaded_and_an_invalid_edit_is_rejected() {
    let pods = Pods::start(95, &[Behaviour::Ok, Behaviour::Ok]).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("router.toml");
    let one = format!("[\"{}\"]", pods.pods[0].addr);
    std::fs::write(&path, route_over(&one)).unwrap();
    let router = Watched::start(&path).await;
    let first = router.config().await;
    let first_sha = first["active"]["sha256"].as_str().unwrap().to_owned();
    assert_eq!(first_sha.len(), 64, "{first}");
    assert_eq!(first["active"]["source"], path.display().to_string());

    std::fs::write(&path, route_over(&pods.targets_toml())).unwrap();
    router.until_version(2).await;
    let second = router.config().await;
    assert_ne!(second["active"]["sha256"], first_sha.as_str());
    let answer = router
        .client
        .post(format!("{}/cache/invalidate", router.url))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::OK);
    assert_eq!(answer.headers()["x-broadcast-targets"], "2");

    // Unknown key: rejected with its location, version 2 keeps serving.
    let invalid = route_over(&pods.targets_toml()) + "retries_forever = true\n";
    let line = invalid.lines().count();
    std::fs::write(&path, &invalid).unwrap();
    let error = eventually("the invalid edit is rejected", || async {
        router.config().await["last_reload_failure"]["error"]
            .as_str()
            .map(ToOwned::to_owned)
    })
    .await;
    assert!(error.contains("retries_forever"), "{error}");
    assert!(
        error.contains(&format!("{line}:1: ")),
        "the error has its line: {error}"
    );
    assert_eq!(router.version().await, 2);
    assert!(router.ready().await);
    let (_, metrics) = admin_get(&router, "/metrics").await;
    assert!(
        metrics.contains("broadcast_router_config_reloads_total{outcome=\"error\"}"),
        "{metrics}"
    );
    let answer = router
        .client
        .post(format!("{}/cache/invalidate", router.url))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.headers()["x-broadcast-targets"], "2");

    // Undoing the bad edit brings the files back to the active
    // configuration: nothing to reload, and the failure is cleared.
    std::fs::write(&path, route_over(&pods.targets_toml())).unwrap();
    eventually("the failure is cleared", || async {
        router.config().await["last_reload_failure"]
            .is_null()
            .then_some(())
    })
    .await;
    match router.reloader.reload(Trigger::Watch).await {
        Ok(Outcome::Unchanged) => {}
        other => panic!("unchanged files are not reloaded: {other:?}"),
    }
    assert_eq!(router.version().await, 2);
    assert_eq!(router.shutdown().await, Vec::<String>::new());
}

async fn admin_get(router: &Watched, path: &str) -> (StatusCode, String) {
    let response = router
        .client
        .get(format!("{}{path}", router.admin))
        .send()
        .await
        .unwrap();
    (response.status(), response.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replaced_plugin_is_used_after_reload_and_the_old_one_finishes_in_flight() {
    let built = support::plugins::built();
    let gate = Gate::new();
    let pods = Pods::start(97, &[Behaviour::Ok, Behaviour::Gated(gate.clone())]).await;
    let dir = tempfile::tempdir().unwrap();
    let plugin = dir.path().join("plugin.wasm");
    std::fs::copy(built.join("stress.wasm"), &plugin).unwrap();
    let path = dir.path().join("router.toml");
    let text = format!(
        "{}\n[plugins.judge]\npath = \"{}\"\non_error = \"fail-closed\"\n\n{}plugins = [{{ use = \"judge\", config = {{}} }}]\n",
        preamble(None),
        plugin.display(),
        route_over(&pods.targets_toml())
            .split_once("\n[[routes]]")
            .map(|(_, route)| format!("[[routes]]{route}"))
            .unwrap(),
    );
    std::fs::write(&path, text).unwrap();
    let router = Watched::start(&path).await;

    // In flight on the first plugin: its aggregate hook answers.
    let in_flight = tokio::spawn({
        let request = router
            .client
            .post(format!("{}/cache/invalidate", router.url));
        async move { request.send().await.unwrap() }
    });
    eventually("the gated pod has the request", || async {
        (pods.pods[1].count() == 1).then_some(())
    })
    .await;

    // Replace the plugin file (write beside it, rename over it).
    let staged = dir.path().join("plugin.wasm.new");
    std::fs::copy(built.join("shard_filter.wasm"), &staged).unwrap();
    std::fs::rename(&staged, &plugin).unwrap();
    router.until_version(2).await;
    gate.open();

    let fresh = router
        .client
        .post(format!("{}/cache/invalidate", router.url))
        .send()
        .await
        .unwrap();
    assert_eq!(fresh.status(), StatusCode::OK);
    let fresh: Value = serde_json::from_slice(&fresh.bytes().await.unwrap()).unwrap();
    assert_eq!(
        fresh["targets"], 2,
        "the new plugin (a filter without an aggregate hook) leaves the built-in report: {fresh}"
    );

    let old = in_flight.await.unwrap();
    assert_eq!(old.status(), StatusCode::OK);
    let old: Value = serde_json::from_slice(&old.bytes().await.unwrap()).unwrap();
    assert_eq!(
        old,
        serde_json::json!({ "stress": "ok" }),
        "the broadcast in flight finished with the plugin it started with"
    );
    assert_eq!(router.shutdown().await, Vec::<String>::new());
}

/// A port that was free a moment ago on 127.0.0.1.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn signal(child: &std::process::Child, name: &str) {
    let status = std::process::Command::new("kill")
        .args([format!("-{name}"), child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_serve_command_reloads_on_sighup_and_drains_on_sigterm() {
    let pods = Pods::start(99, &[Behaviour::Ok]).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("router.toml");
    let (listen, admin) = (free_port(), free_port());
    std::fs::write(
        &path,
        format!(
            "[server]\nlisten = \"127.0.0.1:{listen}\"\nadmin_listen = \"127.0.0.1:{admin}\"\n\n[[routes]]\nname = \"invalidate\"\npath = \"/cache/invalidate\"\ntargets = {}\n",
            pods.targets_toml()
        ),
    )
    .unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_broadcast-router"))
        .args(["serve", "--config"])
        .arg(&path)
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("the router starts");
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let version = || async {
        let response = client
            .get(format!("http://127.0.0.1:{admin}/admin/config"))
            .send()
            .await
            .ok()?;
        let config: Value = serde_json::from_slice(&response.bytes().await.ok()?).ok()?;
        config["active"]["version"].as_u64()
    };
    eventually("the router serves version 1", || async {
        (version().await == Some(1)).then_some(())
    })
    .await;

    signal(&child, "HUP");
    eventually("SIGHUP reloads the unchanged file", || async {
        (version().await == Some(2)).then_some(())
    })
    .await;
    let answer = client
        .post(format!("http://127.0.0.1:{listen}/cache/invalidate"))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::OK);

    signal(&child, "TERM");
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "a drained router exits cleanly: {status}");
    assert_eq!(pods.total(), 1);
}

/// The fault the reload storm came from: the router's own log file lives
/// beside its configuration, so each rejection's log line was a change in
/// the watched directory that triggered another check, which failed and
/// logged again. Now only the configuration's own files count, and a
/// rejected content is not checked again until it changes: one rejection
/// is reported once, however long the log keeps growing.
#[tokio::test(flavor = "multi_thread")]
async fn a_rejected_edit_is_reported_once_with_the_log_file_beside_the_config() {
    let pods = Pods::start(102, &[Behaviour::Ok]).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("router.toml");
    let log_path = dir.path().join("router.log");
    let (listen, admin) = (free_port(), free_port());
    let valid = format!(
        "[server]\nlisten = \"127.0.0.1:{listen}\"\nadmin_listen = \"127.0.0.1:{admin}\"\n\n[[routes]]\nname = \"invalidate\"\npath = \"/cache/invalidate\"\ntargets = {}\n",
        pods.targets_toml()
    );
    std::fs::write(&path, &valid).unwrap();
    let log = std::fs::File::create(&log_path).unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_broadcast-router"))
        .args(["serve", "--config"])
        .arg(&path)
        .env("RUST_LOG", "info")
        .stderr(log)
        .spawn()
        .expect("the router starts");
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let config = || async {
        let response = client
            .get(format!("http://127.0.0.1:{admin}/admin/config"))
            .send()
            .await
            .ok()?;
        serde_json::from_slice::<Value>(&response.bytes().await.ok()?).ok()
    };
    eventually("the router serves version 1", || async {
        (config().await?["active"]["version"].as_u64() == Some(1)).then_some(())
    })
    .await;

    std::fs::write(&path, valid.replace("targets =", "targets_typo =")).unwrap();
    eventually("the invalid edit is rejected", || async {
        config().await?["last_reload_failure"]["error"]
            .as_str()
            .map(|_| ())
    })
    .await;
    let rejections = || {
        std::fs::read_to_string(&log_path)
            .unwrap()
            .matches("Configuration reload rejected")
            .count()
    };
    // Give a storm time to show: at five rejections a second it would
    // have logged a dozen by now. Other writes beside the configuration
    // (an editor's swap file) are no changes either.
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        std::fs::write(dir.path().join(".router.toml.swp"), "x").unwrap();
    }
    assert_eq!(
        rejections(),
        1,
        "{}",
        std::fs::read_to_string(&log_path).unwrap()
    );

    // A different invalid content is a new rejection; fixing it reloads.
    std::fs::write(&path, valid.replace("targets =", "targets_other =")).unwrap();
    eventually("the second invalid edit is rejected", || async {
        (rejections() == 2).then_some(())
    })
    .await;
    std::fs::write(
        &path,
        valid.replace("invalidate\"\npath", "invalidate\"\nretries = 1\npath"),
    )
    .unwrap();
    eventually("the fixed file is reloaded", || async {
        (config().await?["active"]["version"].as_u64() == Some(2)).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(rejections(), 2);
    signal(&child, "TERM");
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status}");
}

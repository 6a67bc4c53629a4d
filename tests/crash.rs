//! Crash safety with real processes: the router binary is killed with
//! SIGKILL (or stopped with SIGTERM and a grace period too short) in the
//! middle of an async broadcast to slow pods (reached one at a time), and
//! the broadcast is finished, by the same router restarted on the same job
//! file, or by another router sharing a real Redis. Every
//! pod ends with the broadcast, only the pod that was in flight gets a
//! second copy (with the same `X-Broadcast-Id`), the collector gets
//! exactly one report, and the status API says done.

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::Request;
use reqwest::StatusCode;
use serde_json::Value;
use support::eventually;
use support::pods::{Behaviour, Gate, Pods};
use support::redis::RedisServer;
use tokio::net::TcpListener;

/// A collector that keeps every report with its `X-Broadcast-Id`.
#[derive(Clone, Default)]
struct Collector {
    reports: Arc<Mutex<Vec<(String, Value)>>>,
}

impl Collector {
    async fn start() -> (Collector, SocketAddr) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let collector = Collector::default();
        let reports = collector.reports.clone();
        let app = axum::Router::new().fallback(move |request: Request| {
            let reports = reports.clone();
            async move {
                let id = request.headers()["x-broadcast-id"]
                    .to_str()
                    .unwrap()
                    .to_owned();
                let body = axum::body::to_bytes(request.into_body(), usize::MAX)
                    .await
                    .unwrap();
                reports
                    .lock()
                    .unwrap()
                    .push((id, serde_json::from_slice(&body).unwrap()));
                StatusCode::NO_CONTENT
            }
        });
        tokio::spawn(async move { axum::serve(listener, app).await });
        (collector, addr)
    }

    fn reports(&self) -> Vec<(String, Value)> {
        self.reports.lock().unwrap().clone()
    }
}

/// The router binary, serving a configuration file, logging to a file.
struct Router {
    child: Child,
    url: String,
    log: PathBuf,
}

impl Router {
    fn start(dir: &Path, name: &str, jobs: &str, pods: &Pods, collector: SocketAddr) -> Router {
        let free = || {
            std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port()
        };
        let (listen, admin) = (free(), free());
        let config = dir.join(format!("{name}.toml"));
        std::fs::write(
            &config,
            format!(
                "[server]\nlisten = \"127.0.0.1:{listen}\"\nadmin_listen = \"127.0.0.1:{admin}\"\n\
                 shutdown_grace = \"1s\"\n\n\
                 [jobs]\n{jobs}\n\n\
                 [[routes]]\nname = \"purge\"\npath = \"/purge\"\ntargets = {}\nmode = \"async\"\n\
                 concurrency = 1\ntimeout = \"30s\"\ndeadline = \"60s\"\nretries = 0\n\
                 report_to = \"http://{collector}/reports\"\n",
                pods.targets_toml()
            ),
        )
        .unwrap();
        let log = dir.join(format!("{name}.log"));
        let child = Command::new(env!("CARGO_BIN_EXE_broadcast-router"))
            .args(["serve", "--config"])
            .arg(&config)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("the router binary starts");
        Router {
            child,
            url: format!("http://127.0.0.1:{listen}"),
            log,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    async fn job(&self, client: &reqwest::Client, id: &str) -> Option<Value> {
        let response = client
            .get(format!("{}/broadcasts/{id}", self.url))
            .send()
            .await
            .ok()?;
        (response.status() == StatusCode::OK).then_some(())?;
        serde_json::from_slice(&response.bytes().await.ok()?).ok()
    }

    /// SIGKILL: no drain, no last write.
    fn kill(mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().unwrap();
    }
}

impl Router {
    /// SIGTERM: drains for `shutdown_grace` (1s), then exits, failing
    /// when broadcasts were left unfinished.
    async fn stop(mut self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success());
        let mut child = std::mem::replace(
            &mut self.child,
            Command::new("true").spawn().expect("true runs"),
        );
        let exited = tokio::task::spawn_blocking(move || child.wait())
            .await
            .unwrap()
            .unwrap();
        assert!(
            !exited.success(),
            "a router leaving broadcasts unfinished says so in its exit status"
        );
    }
}

impl Drop for Router {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

/// Four slow pods, each waiting on its own gate.
async fn gated_pods(first_host: u8) -> (Pods, Vec<Gate>) {
    let gates: Vec<Gate> = (0..4).map(|_| Gate::new()).collect();
    let behaviours: Vec<Behaviour> = gates.iter().cloned().map(Behaviour::Gated).collect();
    (Pods::start(first_host, &behaviours).await, gates)
}

/// Posts an async broadcast to `router`, lets the first pod answer and
/// waits until its outcome is recorded and the second pod holds its copy:
/// the moment to crash. Returns the id and the in-flight pod's index.
async fn broadcast_until_mid_flight(
    router: &Router,
    reader: &Router,
    pods: &Pods,
    gates: &[Gate],
) -> (String, usize) {
    let client = client();
    let answer = eventually("the router accepts the broadcast", || async {
        let response = client
            .post(format!("{}/purge", router.url))
            .body("purge-key")
            .send()
            .await
            .ok()?;
        (response.status() == StatusCode::ACCEPTED).then_some(response)
    })
    .await;
    let id = answer.headers()["x-broadcast-id"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        answer.headers()["location"],
        format!("/broadcasts/{id}").as_str()
    );
    let first = eventually("a pod has the first copy", || async {
        pods.pods.iter().position(|pod| pod.count() == 1)
    })
    .await;
    gates[first].open();
    eventually("the first pod's outcome is recorded", || async {
        let job = reader.job(&client, &id).await?;
        (job["progress"]["finished"] == 1).then_some(())
    })
    .await;
    let in_flight = eventually("the next pod holds its copy", || async {
        (pods.total() == 2).then_some(())?;
        pods.pods
            .iter()
            .enumerate()
            .position(|(index, pod)| index != first && pod.count() == 1)
    })
    .await;
    (id, in_flight)
}

/// What must hold after the broadcast was finished by `survivor`.
async fn assert_finished_once(
    survivor: &Router,
    id: &str,
    pods: &Pods,
    in_flight: usize,
    collector: &Collector,
) {
    let client = client();
    let job = eventually("the resumed job is done", || async {
        let job = survivor.job(&client, id).await?;
        (job["state"] == "done").then_some(job)
    })
    .await;
    assert_eq!(job["resumed"], 1, "{job}");
    assert_eq!(job["report"]["ok"], true, "{job}\n{}", survivor.log());
    assert_eq!(job["report"]["succeeded"], 4, "{job}");
    assert_eq!(job["report_to"], "delivered", "{job}");
    for (index, pod) in pods.pods.iter().enumerate() {
        let copies = if index == in_flight { 2 } else { 1 };
        assert_eq!(pod.count(), copies, "pod {index} ({})", pod.addr);
        for received in pod.received() {
            assert_eq!(received.header("x-broadcast-id"), Some(id));
            assert_eq!(received.body.as_ref(), b"purge-key");
        }
    }
    eventually("the collector has the report", || async {
        (!collector.reports().is_empty()).then_some(())
    })
    .await;
    // A second report would have come right after the first.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let reports = collector.reports();
    assert_eq!(reports.len(), 1, "exactly one report: {reports:?}");
    assert_eq!(reports[0].0, id);
    assert_eq!(reports[0].1["succeeded"], 4);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_router_killed_mid_broadcast_finishes_it_after_restart_on_the_same_file() {
    let dir = tempfile::tempdir().unwrap();
    let (pods, gates) = gated_pods(230).await;
    let (collector, collector_addr) = Collector::start().await;
    let jobs = format!("path = \"{}\"", dir.path().join("jobs.db").display());

    let first = Router::start(dir.path(), "first", &jobs, &pods, collector_addr);
    let (id, in_flight) = broadcast_until_mid_flight(&first, &first, &pods, &gates).await;
    first.kill();

    for gate in &gates {
        gate.open();
    }
    let restarted = Router::start(dir.path(), "restarted", &jobs, &pods, collector_addr);
    assert_finished_once(&restarted, &id, &pods, in_flight, &collector).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_router_stopped_mid_broadcast_finishes_it_after_restart_on_the_same_file() {
    let dir = tempfile::tempdir().unwrap();
    let (pods, gates) = gated_pods(240).await;
    let (collector, collector_addr) = Collector::start().await;
    let jobs = format!("path = \"{}\"", dir.path().join("jobs.db").display());

    let first = Router::start(dir.path(), "first", &jobs, &pods, collector_addr);
    let (id, in_flight) = broadcast_until_mid_flight(&first, &first, &pods, &gates).await;
    // The in-flight pod does not answer within the grace period.
    let log = first.log.clone();
    first.stop().await;
    let log = std::fs::read_to_string(log).unwrap();
    assert!(
        log.contains(&id) && log.contains("they resume when a router starts"),
        "the unfinished broadcast is named: {log}"
    );

    for gate in &gates {
        gate.open();
    }
    let restarted = Router::start(dir.path(), "restarted", &jobs, &pods, collector_addr);
    assert_finished_once(&restarted, &id, &pods, in_flight, &collector).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_router_killed_for_good_has_its_broadcast_finished_by_one_sharing_redis() {
    let dir = tempfile::tempdir().unwrap();
    let redis = RedisServer::start();
    let (pods, gates) = gated_pods(235).await;
    let (collector, collector_addr) = Collector::start().await;
    let jobs = format!("redis = \"{}\"\nlease = \"1s\"", redis.url());

    let doomed = Router::start(dir.path(), "doomed", &jobs, &pods, collector_addr);
    let survivor = Router::start(dir.path(), "survivor", &jobs, &pods, collector_addr);
    // The survivor reads the job the doomed router is working on.
    let (id, in_flight) = broadcast_until_mid_flight(&doomed, &survivor, &pods, &gates).await;
    doomed.kill();

    for gate in &gates {
        gate.open();
    }
    assert_finished_once(&survivor, &id, &pods, in_flight, &collector).await;
    assert!(
        survivor.log().contains("Resuming an unfinished broadcast"),
        "{}",
        survivor.log()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_router_stopped_gracefully_hands_its_unfinished_broadcast_to_one_sharing_redis() {
    let dir = tempfile::tempdir().unwrap();
    let redis = RedisServer::start();
    let (pods, gates) = gated_pods(245).await;
    let (collector, collector_addr) = Collector::start().await;
    // A lease far longer than the test may wait: only giving it up at the
    // end of the graceful stop lets the survivor take over in time.
    let jobs = format!("redis = \"{}\"\nlease = \"1m\"", redis.url());

    let stopping = Router::start(dir.path(), "stopping", &jobs, &pods, collector_addr);
    let survivor = Router::start(dir.path(), "survivor", &jobs, &pods, collector_addr);
    let (id, in_flight) = broadcast_until_mid_flight(&stopping, &survivor, &pods, &gates).await;
    stopping.stop().await;

    for gate in &gates {
        gate.open();
    }
    assert_finished_once(&survivor, &id, &pods, in_flight, &collector).await;
}

//! Asynchronous broadcasts and `report_to` collectors, through the real
//! router to real pods and a real collector: 202 before slow pods answer,
//! exactly one report per broadcast, reports that survive a collector
//! outage, and reports still pending at shutdown named, not dropped.

mod support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::extract::Request;
use reqwest::StatusCode;
use serde_json::Value;
use support::pods::{Behaviour, Gate, Pods};
use support::{TestRouter, eventually, preamble};
use tokio::net::TcpListener;

/// A collector that stores every report it receives with its id header.
#[derive(Clone, Default)]
struct Collector {
    reports: Arc<Mutex<Vec<(String, Value)>>>,
}

impl Collector {
    async fn serve(&self, listener: TcpListener) {
        let reports = self.reports.clone();
        let app = axum::Router::new().fallback(move |request: Request| {
            let reports = reports.clone();
            async move {
                let id = request
                    .headers()
                    .get("x-broadcast-id")
                    .map(|value| value.to_str().unwrap().to_owned())
                    .unwrap_or_default();
                let body = axum::body::to_bytes(request.into_body(), usize::MAX)
                    .await
                    .unwrap();
                let report = serde_json::from_slice(&body).expect("a JSON report");
                reports.lock().unwrap().push((id, report));
                StatusCode::NO_CONTENT
            }
        });
        tokio::spawn(async move { axum::serve(listener, app).await });
    }

    async fn start() -> (Collector, SocketAddr) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let collector = Collector::default();
        collector.serve(listener).await;
        (collector, addr)
    }

    fn reports(&self) -> Vec<(String, Value)> {
        self.reports.lock().unwrap().clone()
    }

    async fn wait_for(&self, count: usize) -> Vec<(String, Value)> {
        eventually(&format!("the collector has {count} report(s)"), || async {
            let reports = self.reports();
            (reports.len() >= count).then_some(reports)
        })
        .await
    }
}

fn route(pods: &Pods, collector: SocketAddr, extra: &str) -> String {
    format!(
        "{}\n[[routes]]\nname = \"invalidate\"\npath = \"/cache/invalidate\"\ntargets = {}\nreport_to = \"http://{collector}/results\"\n{extra}\n",
        preamble(None),
        pods.targets_toml()
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn async_broadcast_answers_before_slow_pods_and_reports_once() {
    let gate = Gate::new();
    let pods = Pods::start(165, &[Behaviour::Ok, Behaviour::Gated(gate.clone())]).await;
    let (collector, addr) = Collector::start().await;
    let router = TestRouter::start(&route(
        &pods,
        addr,
        "mode = \"async\"\ntimeout = \"20s\"\ndeadline = \"30s\"",
    ))
    .await;

    let answer = router.post("/cache/invalidate", "x").await;
    assert_eq!(answer.status, StatusCode::ACCEPTED, "{}", answer.json);
    assert_eq!(answer.json["mode"], "async");
    assert_eq!(answer.json["targets"], 2);
    let id = answer.header("x-broadcast-id").to_owned();
    assert_eq!(answer.json["id"], id.as_str());
    // The gated pod has not answered: the 202 did not wait for it.
    assert!(collector.reports().is_empty());

    gate.open();
    let reports = collector.wait_for(1).await;
    let (header_id, report) = &reports[0];
    assert_eq!(header_id, &id);
    assert_eq!(report["id"], id.as_str());
    assert_eq!(report["ok"], true);
    assert_eq!(report["succeeded"], 2);
    assert_eq!(report["pending"], 0);
    for pod in &pods.pods {
        assert_eq!(pod.count(), 1);
        let result = report["results"]
            .as_array()
            .unwrap()
            .iter()
            .find(|result| result["target"] == pod.addr.to_string())
            .expect("every pod's outcome");
        assert_eq!(result["status"], 200);
    }
    // Nothing more arrives for this broadcast.
    router.post("/cache/invalidate", "y").await;
    let reports = collector.wait_for(2).await;
    assert_eq!(reports.iter().filter(|(id2, _)| id2 == &id).count(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn every_sync_broadcast_sends_exactly_one_full_report() {
    let pods = Pods::start(167, &[Behaviour::Ok, Behaviour::Status(500)]).await;
    let (collector, addr) = Collector::start().await;
    let router = TestRouter::start(&route(&pods, addr, "retries = 0")).await;

    let mut ids = Vec::new();
    for _ in 0..3 {
        let answer = router.post("/cache/invalidate", "x").await;
        assert_eq!(answer.status, StatusCode::BAD_GATEWAY);
        ids.push(answer.header("x-broadcast-id").to_owned());
    }
    let reports = collector.wait_for(3).await;
    for id in &ids {
        let matching: Vec<_> = reports
            .iter()
            .filter(|(_, r)| r["id"] == id.as_str())
            .collect();
        assert_eq!(matching.len(), 1, "one report for {id}");
        let report = &matching[0].1;
        assert_eq!(report["ok"], false);
        assert_eq!(report["results"].as_array().unwrap().len(), 2);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn collector_down_at_first_receives_the_report_when_it_returns() {
    let pods = Pods::start(169, &[Behaviour::Ok]).await;
    // Reserve a port for the collector, then leave it closed for now.
    let reserved = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = reserved.local_addr().unwrap();
    drop(reserved);
    let config = route(&pods, addr, "report_retry_for = \"30s\"")
        .replace("name = \"invalidate\"", "name = \"late-collector\"");
    let router = TestRouter::start(&config).await;

    let answer = router.post("/cache/invalidate", "x").await;
    assert_eq!(answer.status, StatusCode::OK);
    let id = answer.header("x-broadcast-id").to_owned();

    // Wait until a delivery attempt has failed, then come up.
    eventually("a report delivery is being retried", || async {
        let (_, metrics) = router.admin_get("/metrics").await;
        metrics
            .contains("broadcast_router_report_retries_total{route=\"late-collector\"}")
            .then_some(())
    })
    .await;
    let collector = Collector::default();
    collector
        .serve(
            TcpListener::bind(addr)
                .await
                .expect("the reserved port is free"),
        )
        .await;
    let reports = collector.wait_for(1).await;
    assert_eq!(reports.len(), 1);
    assert_eq!(reports[0].0, id);
    assert_eq!(reports[0].1["succeeded"], 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn reports_still_pending_at_shutdown_are_named() {
    let pods = Pods::start(170, &[Behaviour::Ok]).await;
    let reserved = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = reserved.local_addr().unwrap();
    drop(reserved);
    let config = route(&pods, addr, "report_retry_for = \"5m\"")
        .replace("shutdown_grace = \"5s\"", "shutdown_grace = \"500ms\"");
    let mut router = TestRouter::start(&config).await;

    let answer = router.post("/cache/invalidate", "x").await;
    assert_eq!(answer.status, StatusCode::OK);
    let id = answer.header("x-broadcast-id").to_owned();
    let unfinished = router.shutdown().await;
    assert_eq!(
        unfinished,
        vec![id],
        "the broadcast whose report is pending is named"
    );
}

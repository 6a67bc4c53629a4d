//! Broadcasts through the real router to real pods on loopback addresses:
//! delivery, forwarding, failures per policy, retries, limits, shutdown.

mod support;

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;
use support::pods::{Behaviour, Gate, Pods};
use support::{TestRouter, eventually, preamble};

/// A static-target route over `pods` with extra route keys.
fn route(pods: &Pods, extra: &str) -> String {
    format!(
        "{}\n[[routes]]\nname = \"invalidate\"\npath = \"/cache/invalidate\"\ntargets = {}\n{extra}\n",
        preamble(None),
        pods.targets_toml()
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn every_pod_receives_exactly_one_copy() {
    let pods = Pods::start(2, &[Behaviour::Ok, Behaviour::Ok, Behaviour::Ok]).await;
    let router = TestRouter::start(&route(&pods, "upstream_path = \"/cache-invalidation\"")).await;

    let request = router
        .client()
        .post(format!("{}/cache/invalidate?scope=all", router.url))
        .header("content-type", "application/json")
        .header(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )
        .header("connection", "keep-alive, x-hop")
        .header("x-hop", "do-not-forward")
        .body(r#"{"key":"user:42"}"#);
    let answer = router.send(request).await;

    assert_eq!(answer.status, StatusCode::OK, "{}", answer.json);
    assert_eq!(answer.json["ok"], true);
    assert_eq!(answer.json["policy"], "all");
    assert_eq!(answer.json["targets"], 3);
    assert_eq!(answer.json["succeeded"], 3);
    assert_eq!(answer.json["failed"], 0);
    assert_eq!(answer.header("x-broadcast-targets"), "3");
    assert_eq!(answer.header("x-broadcast-succeeded"), "3");
    let id = answer.header("x-broadcast-id").to_owned();
    assert_eq!(answer.json["id"], id.as_str());

    for pod in &pods.pods {
        let received = pod.received();
        assert_eq!(
            received.len(),
            1,
            "{} got {} copies",
            pod.addr,
            received.len()
        );
        let copy = &received[0];
        assert_eq!(copy.method, "POST");
        assert_eq!(copy.path, "/cache-invalidation?scope=all");
        assert_eq!(&copy.body[..], br#"{"key":"user:42"}"#);
        assert_eq!(copy.header("x-broadcast-id"), Some(id.as_str()));
        assert_eq!(copy.header("content-type"), Some("application/json"));
        assert_eq!(copy.header("x-forwarded-for"), Some("127.0.0.1"));
        assert_eq!(copy.header("x-forwarded-proto"), Some("http"));
        assert!(copy.header("x-forwarded-host").is_some());
        assert!(
            copy.header("x-hop").is_none(),
            "hop-by-hop header forwarded"
        );
        let traceparent = copy.header("traceparent").expect("traceparent");
        assert!(traceparent.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));

        let result = answer.result(pod.addr);
        assert_eq!(result["status"], 200);
        assert_eq!(result["attempts"], 1);
        assert_eq!(result["error"], Value::Null);
        assert_eq!(result["body"], format!("{{\"pod\":\"{}\"}}", pod.addr));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn client_broadcast_id_reaches_every_pod_and_bad_ids_are_refused() {
    let pods = Pods::start(20, &[Behaviour::Ok, Behaviour::Ok]).await;
    let router = TestRouter::start(&route(&pods, "")).await;

    let request = router
        .client()
        .post(format!("{}/cache/invalidate", router.url))
        .header("x-broadcast-id", "deploy-7.invalidate:1")
        .body("x");
    let answer = router.send(request).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.header("x-broadcast-id"), "deploy-7.invalidate:1");
    for pod in &pods.pods {
        assert_eq!(
            pod.received()[0].header("x-broadcast-id"),
            Some("deploy-7.invalidate:1")
        );
    }

    let request = router
        .client()
        .post(format!("{}/cache/invalidate", router.url))
        .header("x-broadcast-id", "has spaces")
        .body("x");
    let answer = router.send(request).await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert!(
        answer.json["error"]
            .as_str()
            .unwrap()
            .contains("X-Broadcast-Id")
    );
    assert_eq!(pods.total(), 2, "a refused broadcast must not reach pods");
}

#[tokio::test(flavor = "multi_thread")]
async fn refused_pod_fails_all_but_meets_any() {
    let pods = Pods::start(30, &[Behaviour::Ok, Behaviour::Refuse, Behaviour::Ok]).await;
    let refused = pods.pods[1].addr;
    let config = format!(
        "{}\n[[routes]]\nname = \"all\"\npath = \"/all\"\ntargets = {t}\nretries = 1\nretry_backoff = \"1ms\"\n\
         \n[[routes]]\nname = \"any\"\npath = \"/any\"\ntargets = {t}\npolicy = \"any\"\nretries = 0\n",
        preamble(None),
        t = pods.targets_toml()
    );
    let router = TestRouter::start(&config).await;

    let all = router.post("/all", "x").await;
    assert_eq!(all.status, StatusCode::BAD_GATEWAY, "{}", all.json);
    assert_eq!(all.json["ok"], false);
    assert_eq!(all.json["succeeded"], 2);
    assert_eq!(all.json["failed"], 1);
    let result = all.result(refused);
    assert_eq!(result["error"], "connect");
    assert_eq!(result["status"], Value::Null);
    assert_eq!(result["attempts"], 2, "connect errors are retried");

    let any = router.post("/any", "x").await;
    assert_eq!(any.status, StatusCode::OK, "{}", any.json);
    assert_eq!(any.json["ok"], true);
    assert_eq!(any.result(refused)["error"], "connect");
    assert_eq!(any.result(refused)["attempts"], 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn hanging_pod_times_out_and_quorum_is_still_met() {
    let pods = Pods::start(40, &[Behaviour::Ok, Behaviour::Hang, Behaviour::Ok]).await;
    let hanging = pods.pods[1].addr;
    let router = TestRouter::start(&route(
        &pods,
        "timeout = \"200ms\"\nretries = 1\nretry_backoff = \"1ms\"\npolicy = { quorum = 2 }",
    ))
    .await;

    let answer = router.post("/cache/invalidate", "x").await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.json);
    assert_eq!(answer.json["policy"], "quorum=2");
    assert_eq!(answer.json["succeeded"], 2);
    let result = answer.result(hanging);
    assert_eq!(result["error"], "timeout");
    assert_eq!(result["attempts"], 2, "timeouts are retried");
    assert_eq!(pods.pods[1].count(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn service_unavailable_then_ok_pod_is_retried_with_the_same_id() {
    let flaky = Behaviour::FailFirst {
        status: 503,
        times: 1,
    };
    let pods = Pods::start(50, &[Behaviour::Ok, flaky]).await;
    let router = TestRouter::start(&route(&pods, "retries = 2\nretry_backoff = \"5ms\"")).await;

    let answer = router.post("/cache/invalidate", "x").await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.json);
    let result = answer.result(pods.pods[1].addr);
    assert_eq!(result["status"], 200);
    assert_eq!(result["attempts"], 2);
    let copies = pods.pods[1].received();
    assert_eq!(copies.len(), 2);
    assert_eq!(
        copies[0].header("x-broadcast-id"),
        copies[1].header("x-broadcast-id"),
        "a retry carries the broadcast's id so receivers can drop duplicates"
    );
    assert_eq!(pods.pods[0].count(), 1, "a healthy pod is not retried");
}

#[tokio::test(flavor = "multi_thread")]
async fn client_errors_from_pods_are_not_retried() {
    let pods = Pods::start(60, &[Behaviour::Status(400), Behaviour::Status(500)]).await;
    let router = TestRouter::start(&route(&pods, "retries = 3\nretry_backoff = \"1ms\"")).await;
    let answer = router.post("/cache/invalidate", "x").await;
    assert_eq!(answer.status, StatusCode::BAD_GATEWAY);
    for pod in &pods.pods {
        let result = answer.result(pod.addr);
        assert_eq!(result["error"], "status");
        assert_eq!(result["attempts"], 1);
        assert_eq!(pod.count(), 1);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn reset_connection_is_reported_as_reset() {
    let pods = Pods::start(70, &[Behaviour::Ok, Behaviour::Reset]).await;
    let router = TestRouter::start(&route(&pods, "retries = 2\npolicy = \"collect\"")).await;
    let answer = router.post("/cache/invalidate", "x").await;
    assert_eq!(answer.status, StatusCode::OK, "collect always answers 200");
    assert_eq!(answer.json["ok"], true);
    let result = answer.result(pods.pods[1].addr);
    assert_eq!(result["error"], "reset", "{result}");
    assert_eq!(
        result["attempts"], 1,
        "a reset pod may have acted: no retry"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn every_policy_gives_its_verdict_and_status() {
    // Two pods succeed, one answers 500.
    let pods = Pods::start(80, &[Behaviour::Ok, Behaviour::Ok, Behaviour::Status(500)]).await;
    let t = pods.targets_toml();
    let mut config = preamble(None);
    let policies = [
        ("all", "\"all\"", StatusCode::BAD_GATEWAY, false),
        ("any", "\"any\"", StatusCode::OK, true),
        ("q2", "{ quorum = 2 }", StatusCode::OK, true),
        ("q3", "{ quorum = 3 }", StatusCode::BAD_GATEWAY, false),
        ("q51", "{ quorum = \"51%\" }", StatusCode::OK, true),
        (
            "q100",
            "{ quorum = \"100%\" }",
            StatusCode::BAD_GATEWAY,
            false,
        ),
        ("collect", "\"collect\"", StatusCode::OK, true),
    ];
    for (name, policy, _, _) in &policies {
        config.push_str(&format!(
            "\n[[routes]]\nname = \"{name}\"\npath = \"/{name}\"\ntargets = {t}\npolicy = {policy}\nretries = 0\n"
        ));
    }
    let router = TestRouter::start(&config).await;
    for (name, _, status, ok) in policies {
        let answer = router.post(&format!("/{name}"), "x").await;
        assert_eq!(answer.status, status, "policy {name}: {}", answer.json);
        assert_eq!(answer.json["ok"], ok, "policy {name}");
        assert_eq!(answer.json["succeeded"], 2, "policy {name}");
        assert_eq!(answer.json["failed"], 1, "policy {name}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn first_answers_early_and_finishes_the_rest_in_the_background() {
    let gate = Gate::new();
    let pods = Pods::start(90, &[Behaviour::Ok, Behaviour::Gated(gate.clone())]).await;
    let config = route(
        &pods,
        "policy = \"first\"\ntimeout = \"20s\"\ndeadline = \"30s\"",
    )
    .replace("name = \"invalidate\"", "name = \"early\"");
    let router = TestRouter::start(&config).await;

    let answer = router.post("/cache/invalidate", "x").await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.json);
    assert_eq!(answer.json["ok"], true);
    assert_eq!(answer.json["succeeded"], 1);
    assert_eq!(answer.json["pending"], 1);
    assert_eq!(answer.result(pods.pods[1].addr)["pending"], true);

    // The gated pod gets its copy (the early answer may come before the
    // copy is through); releasing it lets the background delivery finish,
    // which the metrics record as a success.
    eventually("the gated pod has its copy", || async {
        (pods.pods[1].count() == 1).then_some(())
    })
    .await;
    gate.open();
    eventually("the background delivery is counted", || async {
        let (_, metrics) = router.admin_get("/metrics").await;
        metrics
            .lines()
            .any(|line| {
                line.starts_with("broadcast_router_broadcasts_total")
                    && line.contains("route=\"early\"")
                    && line.contains("outcome=\"ok\"")
                    // The series exists from the start, at 0.
                    && line.ends_with(" 1")
            })
            .then_some(())
    })
    .await;
    assert_eq!(pods.total(), 2, "exactly one copy per pod");
}

#[tokio::test(flavor = "multi_thread")]
async fn deadline_bounds_the_whole_broadcast() {
    let pods = Pods::start(100, &[Behaviour::Ok, Behaviour::Hang]).await;
    let router = TestRouter::start(&route(&pods, "timeout = \"30s\"\ndeadline = \"300ms\"")).await;
    let answer = router.post("/cache/invalidate", "x").await;
    assert_eq!(answer.status, StatusCode::BAD_GATEWAY);
    let result = answer.result(pods.pods[1].addr);
    assert_eq!(result["error"], "deadline");
    assert_eq!(result["attempts"], 1);
    assert!(result["detail"].as_str().unwrap().contains("deadline"));
    assert_eq!(answer.result(pods.pods[0].addr)["status"], 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrency_caps_deliveries_in_flight() {
    let slow = Behaviour::Delay(Duration::from_millis(30));
    let pods = Pods::start(110, &vec![slow; 8]).await;
    let router = TestRouter::start(&route(&pods, "concurrency = 2")).await;
    let answer = router.post("/cache/invalidate", "x").await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.json["succeeded"], 8);
    assert!(
        pods.peak_in_flight() <= 2,
        "{} deliveries ran at once with concurrency = 2",
        pods.peak_in_flight()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn oversized_body_is_refused_and_reaches_no_pod() {
    let pods = Pods::start(120, &[Behaviour::Ok, Behaviour::Ok]).await;
    let config = route(&pods, "").replace(
        "shutdown_grace = \"5s\"",
        "shutdown_grace = \"5s\"\nmax_body_bytes = \"1KiB\"",
    );
    let router = TestRouter::start(&config).await;

    let answer = router.post("/cache/invalidate", vec![b'x'; 2048]).await;
    assert_eq!(answer.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(
        answer.json["error"]
            .as_str()
            .unwrap()
            .contains("1024 bytes")
    );

    // Without Content-Length (chunked), the limit still holds while reading.
    let chunks =
        futures_util::stream::iter((0..4).map(|_| Ok::<_, std::io::Error>(vec![b'y'; 512])));
    let answer = router
        .post("/cache/invalidate", reqwest::Body::wrap_stream(chunks))
        .await;
    assert_eq!(answer.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(pods.total(), 0);

    let answer = router.post("/cache/invalidate", vec![b'x'; 1024]).await;
    assert_eq!(answer.status, StatusCode::OK, "a body at the limit passes");
}

#[tokio::test(flavor = "multi_thread")]
async fn pod_bodies_are_truncated_at_the_limit() {
    let pods = Pods::start(130, &[Behaviour::Ok]).await;
    let router = TestRouter::start(&route(&pods, "max_pod_body_bytes = \"8B\"")).await;
    let answer = router.post("/cache/invalidate", "x").await;
    let result = answer.result(pods.pods[0].addr);
    assert_eq!(result["body"], "{\"pod\":\"");
    assert_eq!(result["body_truncated"], true);
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_paths_and_methods_are_refused() {
    let pods = Pods::start(140, &[Behaviour::Ok]).await;
    let router = TestRouter::start(&route(&pods, "")).await;
    let answer = router.post("/nowhere", "x").await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND);
    let answer = router
        .send(
            router
                .client()
                .get(format!("{}/cache/invalidate", router.url)),
        )
        .await;
    assert_eq!(answer.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(pods.total(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_port_reports_health_readiness_and_metrics() {
    let pods = Pods::start(150, &[Behaviour::Ok, Behaviour::Status(503)]).await;
    // A route name of its own: the metrics recorder is process-wide.
    let config = route(&pods, "retries = 0").replace("name = \"invalidate\"", "name = \"metered\"");
    let router = TestRouter::start(&config).await;
    router.post("/cache/invalidate", "x").await;

    assert_eq!(router.admin_get("/healthz").await.0, StatusCode::OK);
    assert_eq!(router.admin_get("/readyz").await.0, StatusCode::OK);
    let (status, metrics) = router.admin_get("/metrics").await;
    assert_eq!(status, StatusCode::OK);
    for expected in [
        "broadcast_router_broadcasts_total{route=\"metered\",outcome=\"failed\"} 1",
        "broadcast_router_deliveries_total{route=\"metered\",outcome=\"success\"} 1",
        "broadcast_router_deliveries_total{route=\"metered\",outcome=\"status\"} 1",
        "broadcast_router_broadcast_targets_bucket",
        "broadcast_router_broadcast_targets_count{route=\"metered\"} 1",
        "broadcast_router_delivery_duration_seconds_bucket",
        "broadcast_router_delivery_duration_seconds_count{route=\"metered\"} 2",
    ] {
        assert!(
            metrics.contains(expected),
            "metrics lack {expected}:\n{metrics}"
        );
    }
    // The broadcast listener does not serve admin paths.
    let answer = router
        .send(router.client().get(format!("{}/metrics", router.url)))
        .await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread")]
async fn shutdown_lets_in_flight_broadcasts_finish() {
    let gate = Gate::new();
    let pods = Pods::start(160, &[Behaviour::Ok, Behaviour::Gated(gate.clone())]).await;
    let mut router =
        TestRouter::start(&route(&pods, "timeout = \"20s\"\ndeadline = \"30s\"")).await;

    let client = router.client().clone();
    let url = format!("{}/cache/invalidate", router.url);
    let in_flight = tokio::spawn(async move { client.post(url).body("x").send().await });
    eventually("the gated pod has the request", || async {
        (pods.pods[1].count() == 1).then_some(())
    })
    .await;

    let running = router.take();
    let state = running.state().clone();
    let stopping = tokio::spawn(running.shutdown());
    eventually("readiness drops", || async {
        (!state.is_ready()).then_some(())
    })
    .await;
    gate.open();

    let response = in_flight
        .await
        .unwrap()
        .expect("the in-flight broadcast is answered");
    assert_eq!(response.status(), StatusCode::OK);
    let report: Value = serde_json::from_slice(&response.bytes().await.unwrap()).unwrap();
    assert_eq!(report["succeeded"], 2);
    assert_eq!(stopping.await.unwrap(), Vec::<String>::new());
}

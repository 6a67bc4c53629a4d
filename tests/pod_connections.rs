//! Pods that close keep-alive connections: the router reuses idle
//! connections to pods, and a pod may close one at the very moment the
//! router sends on it. Such a request never reached the pod, so it is sent
//! again at once on a new connection, without counting as a retry, and
//! every pod still gets exactly one copy of every broadcast. A request
//! that fails on a new connection may have reached the pod and keeps the
//! ordinary rules (see `reset_connection_is_reported_as_reset` in
//! `tests/broadcast.rs`).

mod support;

use std::collections::HashMap;
use std::time::Duration;

use reqwest::StatusCode;
use support::pods::{Behaviour, Pods};
use support::{TestRouter, preamble};

fn config(pods: &Pods, extra: &str) -> String {
    format!(
        "{}{extra}\n[[routes]]\nname = \"invalidate\"\npath = \"/cache/invalidate\"\ntargets = {}\nretries = 0\npolicy = \"all\"\n",
        preamble(None),
        pods.targets_toml()
    )
}

/// How many requests with each broadcast id every pod received.
fn copies(pods: &Pods) -> Vec<HashMap<String, usize>> {
    pods.pods
        .iter()
        .map(|pod| {
            let mut seen = HashMap::new();
            for received in pod.received() {
                let id = received.header("x-broadcast-id").unwrap_or_default();
                *seen.entry(id.to_owned()).or_default() += 1;
            }
            seen
        })
        .collect()
}

/// Sends `count` broadcasts with ids `b-0`…, pausing `pause(i)` before
/// each; asserts that every one succeeded with one attempt per pod.
async fn broadcast_all(router: &TestRouter, count: usize, pause: impl Fn(usize) -> Duration) {
    for i in 0..count {
        tokio::time::sleep(pause(i)).await;
        let answer = router
            .send(
                router
                    .client()
                    .post(format!("{}/cache/invalidate", router.url))
                    .header("x-broadcast-id", format!("b-{i}"))
                    .body("{}"),
            )
            .await;
        assert_eq!(
            answer.status,
            StatusCode::OK,
            "broadcast {i}: {}",
            answer.json
        );
        for result in answer.json["results"].as_array().unwrap() {
            assert_eq!(result["attempts"], 1, "broadcast {i}: {result}");
        }
    }
}

fn assert_exactly_once(pods: &Pods, count: usize) {
    for (pod, seen) in pods.pods.iter().zip(copies(pods)) {
        assert_eq!(seen.len(), count, "{}: {seen:?}", pod.addr);
        assert!(
            seen.values().all(|copies| *copies == 1),
            "{} got a broadcast twice: {seen:?}",
            pod.addr
        );
    }
}

/// The value of a label-less counter on `/metrics`.
async fn counter(router: &TestRouter, name: &str) -> u64 {
    let (_, metrics) = router.admin_get("/metrics").await;
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_on_a_connection_the_pod_closed_is_sent_again_on_a_new_one() {
    let pods = Pods::start(120, &[Behaviour::OneRequestPerConnection, Behaviour::Ok]).await;
    let router = TestRouter::start(&config(&pods, "")).await;
    let count = 30;
    broadcast_all(&router, count, |_| Duration::ZERO).await;
    assert_exactly_once(&pods, count);
    // Every broadcast after the first found the closing pod's connection
    // pooled, sent on it, had it closed under it, and was sent again on a
    // new one (the counter is process-wide: other tests may add to it).
    assert_eq!(pods.pods[0].unanswered(), count - 1);
    assert!(
        counter(&router, "broadcast_router_pod_request_resends_total").await >= count as u64 - 1
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn pods_closing_idle_connections_lose_no_broadcast() {
    let idle = Duration::from_millis(150);
    let pods = Pods::start(
        123,
        &[
            Behaviour::CloseIdleAfter(idle),
            Behaviour::CloseIdleAfter(idle),
        ],
    )
    .await;
    let router = TestRouter::start(&config(&pods, "pod_idle_timeout = \"30s\"\n")).await;
    // Broadcasts land around the moment the pods close their idle
    // connections: some just before, some just after.
    let count = 40;
    broadcast_all(&router, count, |i| {
        idle - Duration::from_millis(3) + Duration::from_micros(150 * (i % 40) as u64)
    })
    .await;
    assert_exactly_once(&pods, count);
}

#[tokio::test(flavor = "multi_thread")]
async fn without_an_idle_timeout_every_request_gets_a_new_connection() {
    let pods = Pods::start(126, &[Behaviour::OneRequestPerConnection]).await;
    let router = TestRouter::start(&config(&pods, "pod_idle_timeout = \"0s\"\n")).await;
    broadcast_all(&router, 10, |_| Duration::ZERO).await;
    assert_exactly_once(&pods, 10);
    assert_eq!(
        pods.pods[0].unanswered(),
        0,
        "no connection was reused, so none was closed under a request"
    );
}

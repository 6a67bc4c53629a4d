//! Kubernetes-native discovery through the real router: `kubernetes`
//! routes watch a Service's EndpointSlices with the real kube-rs client,
//! which reaches an in-process API server (`support::kube_api`) through a
//! kubeconfig, as it would reach a cluster's. Pods are real HTTP servers
//! on loopback addresses. Scaling and rollouts apply as the watch delivers
//! them; a terminating pod that still serves is reached with
//! `endpoints = "serving"` and not with `"ready"`; a dropped watch keeps
//! the last known pods and resumes (or lists again after `410 Gone`); an
//! API that is down at start makes the route answer 503 with the reason
//! until it is back; reports name the pods.

mod support;

use std::net::IpAddr;
use std::path::Path;
use std::process::Command;

use reqwest::StatusCode;
use support::kube_api::{Ep, KubeApi};
use support::plugins;
use support::pods::{Behaviour, Pods};
use support::{Answer, TestRouter, eventually, preamble};

/// A router whose `[kubernetes]` table uses `kubeconfig`, with `routes`.
async fn start(kubeconfig: &Path, routes: &str) -> TestRouter {
    let config = format!(
        "{}\n[kubernetes]\nkubeconfig = \"{}\"\n{routes}",
        preamble(None),
        kubeconfig.display()
    );
    TestRouter::start(&config).await
}

/// A `kubernetes` route on `path` to Service `web`, port `http`.
fn route(name: &str, path: &str, endpoints: Option<&str>) -> String {
    let endpoints = endpoints
        .map(|endpoints| format!("endpoints = \"{endpoints}\"\n"))
        .unwrap_or_default();
    format!(
        "\n[[routes]]\nname = \"{name}\"\npath = \"{path}\"\nkubernetes = {{ service = \"web\", namespace = \"shop\", port = \"http\" }}\n{endpoints}"
    )
}

/// The pod names of an answer's results, in order.
fn pod_names(answer: &Answer) -> Vec<String> {
    answer.json["results"]
        .as_array()
        .unwrap_or_else(|| panic!("no results in {}", answer.json))
        .iter()
        .map(|result| result["pod"].as_str().expect("a pod name").to_owned())
        .collect()
}

/// `count` ready endpoints named `web-0`, `web-1`, … for `ips`.
fn ready(ips: &[IpAddr]) -> Vec<Ep> {
    ips.iter()
        .enumerate()
        .map(|(i, ip)| Ep::ready(*ip, &format!("web-{i}")))
        .collect()
}

/// Broadcasts to `path` until the answer lists exactly `pods`.
async fn until_pods(router: &TestRouter, path: &str, pods: &[&str]) -> Answer {
    eventually(&format!("{path} reaches {pods:?}"), || async {
        let answer = router.post(path, "x").await;
        (answer.status == StatusCode::OK && pod_names(&answer) == pods).then_some(answer)
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn pods_are_found_through_the_api_and_named_in_reports() {
    let api = KubeApi::start().await;
    let pods = Pods::start(60, &[Behaviour::Ok, Behaviour::Ok, Behaviour::Ok]).await;
    api.set_slice(
        "shop",
        "web",
        "web-a",
        &[("http", pods.port), ("metrics", 1)],
        &ready(&pods.ips()),
    );
    // Another Service's slice in the same namespace is not ours.
    api.set_slice(
        "shop",
        "db",
        "db-a",
        &[("http", pods.port)],
        &[Ep::ready(pods.ips()[0], "db-0")],
    );
    let router = start(&api.kubeconfig("default"), &route("web", "/web", None)).await;

    let answer = until_pods(&router, "/web", &["web-0", "web-1", "web-2"]).await;

    assert_eq!(answer.json["targets"], 3);
    for (index, pod) in pods.pods.iter().enumerate() {
        assert_eq!(pod.count(), 1, "{} got one copy", pod.addr);
        assert_eq!(answer.result(pod.addr)["pod"], format!("web-{index}"));
    }
    let requests = api.requests();
    let selector = "labelSelector=kubernetes.io%2Fservice-name%3Dweb";
    assert!(
        requests.iter().any(|r| r
            .starts_with("/apis/discovery.k8s.io/v1/namespaces/shop/endpointslices?")
            && r.contains(selector)
            && !r.contains("watch=")),
        "one list of the Service's slices: {requests:?}"
    );
    // The watch follows the list the broadcast already used: it may reach
    // the server a moment after the answer.
    eventually("a watch with bookmarks follows", || async {
        api.requests()
            .iter()
            .any(|r| {
                r.contains("watch=true")
                    && r.contains("allowWatchBookmarks=true")
                    && r.contains(selector)
            })
            .then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn scale_up_and_down_apply_as_the_watch_delivers_them() {
    let api = KubeApi::start().await;
    let pods = Pods::start(64, &[Behaviour::Ok, Behaviour::Ok, Behaviour::Ok]).await;
    let ips = pods.ips();
    api.set_slice(
        "shop",
        "web",
        "web-a",
        &[("http", pods.port)],
        &ready(&ips[..2]),
    );
    let router = start(&api.kubeconfig("default"), &route("web", "/web", None)).await;
    until_pods(&router, "/web", &["web-0", "web-1"]).await;

    // Scale up: a second slice appears with the new pod.
    api.set_slice(
        "shop",
        "web",
        "web-b",
        &[("http", pods.port)],
        &[Ep::ready(ips[2], "web-2")],
    );
    until_pods(&router, "/web", &["web-0", "web-1", "web-2"]).await;
    api.bookmark();

    // Scale down: web-1 leaves its slice.
    api.set_slice(
        "shop",
        "web",
        "web-a",
        &[("http", pods.port)],
        &ready(&ips[..1]),
    );
    until_pods(&router, "/web", &["web-0", "web-2"]).await;
    api.delete_slice("shop", "web-b");
    until_pods(&router, "/web", &["web-0"]).await;

    // The watch followed every change: one list, no relisting.
    let lists = api
        .requests()
        .iter()
        .filter(|r| !r.contains("watch="))
        .count();
    assert_eq!(lists, 1, "{:?}", api.requests());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_terminating_pod_that_still_serves_is_reached_with_serving_not_with_ready() {
    let api = KubeApi::start().await;
    let pods = Pods::start(68, &[Behaviour::Ok, Behaviour::Ok, Behaviour::Ok]).await;
    let ips = pods.ips();
    let mut endpoints = ready(&ips);
    api.set_slice("shop", "web", "web-a", &[("http", pods.port)], &endpoints);
    let routes = [
        route("ready", "/ready", Some("ready")),
        route("serving", "/serving", None),
        route("all", "/all", Some("all")),
    ]
    .concat();
    let router = start(&api.kubeconfig("default"), &routes).await;
    let everyone = ["web-0", "web-1", "web-2"];
    until_pods(&router, "/ready", &everyone).await;

    // Rollout, step 1: web-1 fails its readiness probe.
    endpoints[1] = endpoints[1].clone().not_ready();
    api.set_slice("shop", "web", "web-a", &[("http", pods.port)], &endpoints);
    until_pods(&router, "/ready", &["web-0", "web-2"]).await;
    until_pods(&router, "/serving", &["web-0", "web-2"]).await;
    until_pods(&router, "/all", &everyone).await;

    // Step 2: web-1 is terminating but still serves from its cache.
    endpoints[1] = Ep::ready(ips[1], "web-1").terminating_but_serving();
    api.set_slice("shop", "web", "web-a", &[("http", pods.port)], &endpoints);
    let serving = until_pods(&router, "/serving", &everyone).await;
    assert_eq!(serving.result(pods.pods[1].addr)["status"], 200);
    let ready = router.post("/ready", "x").await;
    assert_eq!(pod_names(&ready), ["web-0", "web-2"], "{}", ready.json);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dropped_watch_keeps_the_last_known_pods_then_resumes_or_lists_again_after_410() {
    let mut api = KubeApi::start().await;
    let pods = Pods::start(72, &[Behaviour::Ok, Behaviour::Ok, Behaviour::Ok]).await;
    let ips = pods.ips();
    api.set_slice(
        "shop",
        "web",
        "web-a",
        &[("http", pods.port)],
        &ready(&ips[..1]),
    );
    let router = start(&api.kubeconfig("default"), &route("web", "/web", None)).await;
    until_pods(&router, "/web", &["web-0"]).await;
    eventually("the watch is open", || async {
        (api.open_watches() == 1).then_some(())
    })
    .await;

    // The watch breaks mid-stream; it resumes from its resource version,
    // and a change made meanwhile is replayed (or arrives live).
    api.drop_watches();
    api.set_slice(
        "shop",
        "web",
        "web-a",
        &[("http", pods.port)],
        &ready(&ips[..2]),
    );
    until_pods(&router, "/web", &["web-0", "web-1"]).await;

    // The API goes away: broadcasts keep the pods last delivered, counted
    // as stale answers.
    api.stop().await;
    eventually("broadcasts count as stale", || async {
        let answer = router.post("/web", "x").await;
        assert_eq!(pod_names(&answer), ["web-0", "web-1"], "{}", answer.json);
        let (_, metrics) = router.admin_get("/metrics").await;
        metrics
            .lines()
            .any(|line| line.starts_with("broadcast_router_kubernetes_stale_answers_total "))
            .then_some(())
    })
    .await;

    // While it is down, a pod is added and history is compacted: resuming
    // gets 410 Gone, and the watcher lists again.
    api.set_slice("shop", "web", "web-a", &[("http", pods.port)], &ready(&ips));
    api.compact();
    api.serve().await;
    until_pods(&router, "/web", &["web-0", "web-1", "web-2"]).await;
    let requests = api.requests();
    let lists = requests.iter().filter(|r| !r.contains("watch=")).count();
    assert_eq!(lists, 2, "listed again after 410: {requests:?}");
    let (_, metrics) = router.admin_get("/metrics").await;
    assert!(
        metrics.contains("broadcast_router_kubernetes_watch_events_total{outcome=\"error\"}"),
        "the broken watch is counted"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_api_down_at_start_answers_503_with_the_reason_until_it_is_back() {
    let mut api = KubeApi::reserve();
    let pods = Pods::start(76, &[Behaviour::Ok, Behaviour::Ok]).await;
    api.set_slice(
        "shop",
        "web",
        "web-a",
        &[("http", pods.port)],
        &ready(&pods.ips()),
    );
    // The router starts although the API is unreachable.
    let router = start(&api.kubeconfig("default"), &route("web", "/web", None)).await;

    let answer = router.post("/web", "x").await;
    assert_eq!(
        answer.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        answer.json
    );
    assert_eq!(answer.json["source"], "kubernetes");
    assert_eq!(answer.json["targets"], 0);
    let error = answer.json["error"].as_str().unwrap();
    assert!(
        error.contains("service `shop/web` cannot be watched through the Kubernetes API"),
        "{error}"
    );
    assert!(pods.pods.iter().all(|pod| pod.count() == 0));

    api.serve().await;
    until_pods(&router, "/web", &["web-0", "web-1"]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn no_pods_and_missing_named_ports_answer_503_no_pods() {
    let api = KubeApi::start().await;
    let pods = Pods::start(80, &[Behaviour::Ok]).await;
    api.set_slice("shop", "web", "web-a", &[("http", pods.port)], &[]);
    let router = start(&api.kubeconfig("default"), &route("web", "/web", None)).await;

    let empty = router.post("/web", "x").await;
    assert_eq!(
        empty.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        empty.json
    );
    assert!(
        empty.json["error"]
            .as_str()
            .unwrap()
            .contains("has no pods"),
        "{}",
        empty.json
    );

    // A slice whose ports lack `http` is skipped, with a reason.
    api.set_slice(
        "shop",
        "web",
        "web-a",
        &[("grpc", pods.port)],
        &ready(&pods.ips()),
    );
    let skipped = eventually("the slice without `http` is seen", || async {
        let answer = router.post("/web", "x").await;
        let error = answer.json["error"].as_str().unwrap_or_default().to_owned();
        error
            .contains("without a port named `http`")
            .then_some(answer)
    })
    .await;
    assert_eq!(skipped.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(pods.pods[0].count(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn templated_routes_watch_only_allowed_services() {
    let api = KubeApi::start().await;
    let pods = Pods::start(84, &[Behaviour::Ok, Behaviour::Ok]).await;
    let ips = pods.ips();
    api.set_slice(
        "shop",
        "web",
        "web-a",
        &[("http", pods.port)],
        &[Ep::ready(ips[0], "web-0")],
    );
    api.set_slice(
        "shop",
        "web-v2",
        "web-v2-a",
        &[("http", pods.port)],
        &[Ep::ready(ips[1], "v2-0")],
    );
    let routes = "\n[[routes]]\nname = \"by-service\"\npath = \"/{service}/purge\"\nkubernetes = { service = \"{service}\", namespace = \"shop\", port = \"http\" }\nallow_services = [\"web*\"]\n";
    let router = start(&api.kubeconfig("default"), routes).await;

    until_pods(&router, "/web/purge", &["web-0"]).await;
    until_pods(&router, "/web-v2/purge", &["v2-0"]).await;
    let refused = router.post("/db/purge", "x").await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN, "{}", refused.json);
    assert!(
        !api.requests()
            .iter()
            .any(|r| r.contains("service-name%3Ddb")),
        "no watch for a refused name"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn resolve_uses_kubeconfig_from_the_environment() {
    let api = KubeApi::start().await;
    let pods = Pods::start(88, &[Behaviour::Ok, Behaviour::Ok]).await;
    api.set_slice(
        "shop",
        "web",
        "web-a",
        &[("http", pods.port)],
        &ready(&pods.ips()),
    );
    // No `[kubernetes] kubeconfig`, and no namespace: the context's is used.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("router.toml");
    let text = "[[routes]]\nname = \"web\"\npath = \"/web\"\nkubernetes = { service = \"web\", port = \"http\" }\n";
    std::fs::write(&config, text).unwrap();
    let kubeconfig = api.kubeconfig("shop");

    let output = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_broadcast-router"))
            .args(["resolve", "--config"])
            .arg(&config)
            .arg("web")
            .env("KUBECONFIG", &kubeconfig)
            .env("HOME", dir.path())
            .env_remove("KUBERNETES_SERVICE_HOST")
            .output()
            .unwrap()
    })
    .await
    .unwrap();

    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let expected: Vec<String> = pods
        .pods
        .iter()
        .enumerate()
        .map(|(i, pod)| format!("{} web-{i}", pod.addr))
        .collect();
    assert_eq!(stdout.lines().collect::<Vec<_>>(), expected);
}

#[tokio::test(flavor = "multi_thread")]
async fn plugins_see_the_pod_name_node_zone_and_conditions_as_labels() {
    let api = KubeApi::start().await;
    let pods = Pods::start(92, &[Behaviour::Ok, Behaviour::Ok]).await;
    let ips = pods.ips();
    let endpoints = [
        Ep::ready(ips[0], "web-0"),
        Ep::ready(ips[1], "web-1").terminating_but_serving(),
    ];
    api.set_slice("shop", "web", "web-a", &[("http", pods.port)], &endpoints);
    let routes = format!(
        "{}{}plugins = [{{ use = \"echo\", config = {{ echo_labels = true }} }}]\n",
        plugins::table("echo", "stress.wasm", ""),
        route("labels", "/labels", None)
    );
    let router = start(&api.kubeconfig("default"), &routes).await;

    // The plugin's aggregate hook answers, so watch the pods instead.
    eventually("both pods are told", || async {
        let answer = router.post("/labels", "x").await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.json);
        pods.pods.iter().all(|pod| pod.count() > 0).then_some(())
    })
    .await;

    let labels = |pod: usize| {
        let received = pods.pods[pod].received();
        received
            .last()
            .unwrap()
            .header("x-target-labels")
            .unwrap()
            .to_owned()
    };
    let common = "namespace=shop,node=node-1,zone=zone-a";
    assert_eq!(
        labels(0),
        format!("pod=web-0,{common},ready=true,serving=true,terminating=false")
    );
    assert_eq!(
        labels(1),
        format!("pod=web-1,{common},ready=false,serving=true,terminating=true")
    );
}

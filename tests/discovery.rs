//! DNS discovery through the real router: headless Services resolved by a
//! real (in-process) DNS server to real pods on loopback addresses. Scaling
//! up and down is seen after the TTL, a DNS outage is bridged by the last
//! good answer until `serve_stale_for` runs out, names without pods answer
//! 503, templated routes only ever ask DNS about allowed service names, and
//! `broadcast-router resolve` prints what a route resolves to.

mod support;

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::StatusCode;
use support::dns::TestDns;
use support::pods::{Behaviour, Pods};
use support::{Answer, TestRouter, eventually, preamble};

/// The headless Service most tests resolve.
const WEB: &str = "web.default.svc.cluster.local";

/// One `[[routes]]` entry broadcasting on `path` to the pods of `service`.
fn service_route(name: &str, path: &str, service: &str, port: u16) -> String {
    format!(
        "\n[[routes]]\nname = \"{name}\"\npath = \"{path}\"\nservice = \"{service}\"\nport = {port}\n"
    )
}

/// Starts the router over `dns` with the given `[[routes]]` entries.
async fn start(dns: &TestDns, routes: &str) -> TestRouter {
    TestRouter::start(&format!("{}{routes}", preamble(Some(dns.addr())))).await
}

/// The targets of an answer's results, in the order the answer lists them.
fn listed_targets(answer: &Answer) -> Vec<SocketAddr> {
    answer.json["results"]
        .as_array()
        .unwrap_or_else(|| panic!("no results in {}", answer.json))
        .iter()
        .map(|result| {
            result["target"]
                .as_str()
                .expect("target is a string")
                .parse()
                .expect("target is ip:port")
        })
        .collect()
}

/// The value of one Prometheus series (`name` or `name{labels}`), 0 if absent.
async fn metric(router: &TestRouter, series: &str) -> f64 {
    let (status, text) = router.admin_get("/metrics").await;
    assert_eq!(status, StatusCode::OK);
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            line.strip_prefix(series)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread")]
async fn pods_behind_the_service_each_receive_one_copy() {
    let dns = TestDns::start().await;
    let pods = Pods::start(180, &[Behaviour::Ok, Behaviour::Ok, Behaviour::Ok]).await;
    // DNS order is not address order; the answer is sorted anyway.
    let ips = pods.ips();
    dns.set(WEB, &[ips[2], ips[0], ips[1]], 30).await;
    let router = start(&dns, &service_route("web-all", "/web", WEB, pods.port)).await;

    let answer = router.post("/web?scope=all", "flush").await;

    assert_eq!(answer.status, StatusCode::OK, "{}", answer.json);
    assert_eq!(answer.json["ok"], true);
    assert_eq!(answer.json["targets"], 3);
    assert_eq!(answer.json["succeeded"], 3);
    assert_eq!(answer.header("x-broadcast-targets"), "3");
    let id = answer.header("x-broadcast-id").to_owned();
    let expected: Vec<SocketAddr> = pods.pods.iter().map(|pod| pod.addr).collect();
    assert_eq!(
        listed_targets(&answer),
        expected,
        "results are listed by address"
    );
    for pod in &pods.pods {
        let received = pod.received();
        assert_eq!(
            received.len(),
            1,
            "{} got {} copies",
            pod.addr,
            received.len()
        );
        assert_eq!(received[0].path, "/web?scope=all");
        assert_eq!(&received[0].body[..], b"flush");
        assert_eq!(received[0].header("x-broadcast-id"), Some(id.as_str()));
        assert_eq!(answer.result(pod.addr)["status"], 200);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn scale_up_is_seen_after_the_ttl() {
    let dns = TestDns::start().await;
    // Three pods run, but only two are in DNS yet.
    let pods = Pods::start(190, &[Behaviour::Ok, Behaviour::Ok, Behaviour::Ok]).await;
    let ips = pods.ips();
    let new_pod = &pods.pods[2];
    dns.set(WEB, &ips[..2], 1).await;
    let router = start(&dns, &service_route("web-up", "/web", WEB, pods.port)).await;

    let answer = router.post("/web", "x").await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.json);
    assert_eq!(answer.json["targets"], 2);
    assert_eq!(new_pod.count(), 0);

    dns.set(WEB, &ips, 1).await;
    let answer = eventually("a broadcast reaches the new pod", || async {
        let answer = router.post("/web", "x").await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.json);
        (answer.json["targets"] == 3).then_some(answer)
    })
    .await;
    assert_eq!(answer.json["succeeded"], 3);
    assert_eq!(answer.result(new_pod.addr)["status"], 200);
    assert_eq!(new_pod.count(), 1, "the new pod got exactly this broadcast");
    let expected: Vec<SocketAddr> = pods.pods.iter().map(|pod| pod.addr).collect();
    assert_eq!(listed_targets(&answer), expected);
}

#[tokio::test(flavor = "multi_thread")]
async fn scale_down_is_seen_after_the_ttl() {
    let dns = TestDns::start().await;
    let pods = Pods::start(200, &[Behaviour::Ok, Behaviour::Ok, Behaviour::Ok]).await;
    let ips = pods.ips();
    let removed = &pods.pods[2];
    dns.set(WEB, &ips, 1).await;
    let router = start(&dns, &service_route("web-down", "/web", WEB, pods.port)).await;

    let answer = router.post("/web", "x").await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.json);
    assert_eq!(answer.json["targets"], 3);
    assert_eq!(removed.count(), 1);

    dns.set(WEB, &ips[..2], 1).await;
    eventually("broadcasts leave the removed pod out", || async {
        let answer = router.post("/web", "x").await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.json);
        (answer.json["targets"] == 2).then_some(())
    })
    .await;

    // From now on, the removed pod receives nothing.
    let copies = removed.count();
    for _ in 0..5 {
        let answer = router.post("/web", "x").await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.json);
        assert_eq!(answer.json["targets"], 2, "{}", answer.json);
        assert!(!listed_targets(&answer).contains(&removed.addr));
    }
    assert_eq!(removed.count(), copies, "the removed pod still gets copies");
}

#[tokio::test(flavor = "multi_thread")]
async fn dns_outage_serves_the_last_good_answer_then_503() {
    const STALE: &str = "broadcast_router_dns_stale_answers_total";
    let mut dns = TestDns::start().await;
    let pods = Pods::start(210, &[Behaviour::Ok, Behaviour::Ok]).await;
    dns.set(WEB, &pods.ips(), 1).await;
    let router = start(&dns, &service_route("web-outage", "/web", WEB, pods.port)).await;

    let answer = router.post("/web", "x").await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.json);
    assert_eq!(answer.json["targets"], 2);
    let stale_before = metric(&router, STALE).await;

    dns.stop().await;
    // Wait for the 1 s TTL to run out, so the next broadcast needs DNS.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let answer = router.post("/web", "x").await;
    assert_eq!(
        answer.status,
        StatusCode::OK,
        "the last good answer is served while DNS is down: {}",
        answer.json
    );
    assert_eq!(answer.json["targets"], 2);
    for pod in &pods.pods {
        assert_eq!(pod.count(), 2, "{} missed the stale broadcast", pod.addr);
    }
    assert!(
        metric(&router, STALE).await > stale_before,
        "the stale answer is counted"
    );

    let refused = eventually(
        "serve_stale_for runs out and broadcasts get 503",
        || async {
            let answer = router.post("/web", "x").await;
            match answer.status {
                StatusCode::OK => {
                    assert_eq!(answer.json["targets"], 2, "{}", answer.json);
                    None
                }
                StatusCode::SERVICE_UNAVAILABLE => Some(answer),
                other => panic!("unexpected {other}: {}", answer.json),
            }
        },
    )
    .await;
    assert_eq!(refused.json["ok"], false);
    assert_eq!(refused.json["targets"], 0);
    assert_eq!(refused.json["route"], "web-outage");
    let error = refused.json["error"].as_str().expect("error message");
    assert!(error.contains(WEB), "the error names the service: {error}");
    assert!(error.contains("cannot be resolved"), "{error}");

    dns.restart().await;
    eventually("broadcasts succeed again once DNS is back", || async {
        let answer = router.post("/web", "x").await;
        (answer.status == StatusCode::OK && answer.json["targets"] == 2).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_service_is_503_with_a_clear_message() {
    let dns = TestDns::start().await;
    let ghost = "ghost.default.svc.cluster.local";
    let empty = "empty.default.svc.cluster.local";
    dns.set(empty, &[], 1).await;
    let routes = format!(
        "{}{}",
        service_route("ghost", "/ghost", ghost, 8080),
        service_route("empty", "/empty", empty, 8080)
    );
    let router = start(&dns, &routes).await;

    for (path, service, why) in [
        ("/ghost", ghost, "NXDOMAIN"),
        ("/empty", empty, "no records"),
    ] {
        // Twice: the second answer comes from the cached negative answer.
        for _ in 0..2 {
            let answer = router.post(path, "x").await;
            assert_eq!(
                answer.status,
                StatusCode::SERVICE_UNAVAILABLE,
                "{why}: {}",
                answer.json
            );
            assert_eq!(answer.json["ok"], false, "{why}");
            assert_eq!(answer.json["targets"], 0, "{why}");
            let error = answer.json["error"].as_str().expect("error message");
            assert!(error.contains("has no pods"), "{why}: {error}");
            assert!(error.contains(service), "{why}: {error}");
        }
    }
    assert!(dns.queries() > 0, "the names were really looked up");
}

#[tokio::test(flavor = "multi_thread")]
async fn templated_route_only_reaches_allowed_services() {
    let dns = TestDns::start().await;
    // Pods 0-1 are `web`, pods 2-3 are `cache-eu`; a templated route has
    // one port for every service.
    let pods = Pods::start(220, &vec![Behaviour::Ok; 4]).await;
    let ips = pods.ips();
    dns.set(WEB, &ips[..2], 30).await;
    dns.set("cache-eu.default.svc.cluster.local", &ips[2..], 30)
        .await;
    // Names a refusal must not leak into DNS, even though they exist.
    for name in [
        "other.default.svc.cluster.local",
        "web.evil.default.svc.cluster.local",
        "cache-eu.kube-system.default.svc.cluster.local",
    ] {
        dns.set(name, &ips, 30).await;
    }
    let routes = format!(
        "{}allow_services = [\"web\", \"cache-*\"]\nupstream_path = \"/{{rest}}\"\n",
        service_route(
            "by-service",
            "/{service}/{*rest}",
            "{service}.default.svc.cluster.local",
            pods.port
        )
    );
    let router = start(&dns, &routes).await;

    let label_64 = format!("cache-{}", "a".repeat(58));
    let refused = [
        "other",
        "Web",
        "WEB",
        "web.evil",
        "web.",
        "127.0.0.1",
        "10",
        "xn--web-abc",
        "-web",
        "cache-",
        "cache-eu.kube-system",
        "web%2eevil",
        "web%2Eevil",
        "web%2Fevil",
        "web%2F..%2Fother",
        "cache-eu%00",
        label_64.as_str(),
    ];
    let queries = dns.queries();
    for name in refused {
        let answer = router.post(&format!("/{name}/flush"), "x").await;
        assert_eq!(
            answer.status,
            StatusCode::FORBIDDEN,
            "{name:?} must be refused: {}",
            answer.json
        );
        assert_eq!(answer.json["ok"], false, "{name:?}");
        assert_eq!(answer.json["route"], "by-service", "{name:?}");
        let error = answer.json["error"].as_str().expect("error message");
        assert!(error.contains("service"), "{name:?}: {error}");
    }
    assert_eq!(dns.queries(), queries, "a refused name was looked up");
    assert_eq!(pods.total(), 0, "a refused request reached a pod");

    let answer = router.post("/web/flush?x=1", "x").await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.json);
    assert_eq!(answer.json["targets"], 2);
    for pod in &pods.pods[..2] {
        let received = pod.received();
        assert_eq!(received.len(), 1, "{}", pod.addr);
        assert_eq!(received[0].path, "/flush?x=1");
    }

    let answer = router.post("/cache-eu/flush", "x").await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.json);
    assert_eq!(answer.json["targets"], 2);
    assert_eq!(
        listed_targets(&answer),
        vec![pods.pods[2].addr, pods.pods[3].addr]
    );
    for pod in &pods.pods[2..] {
        let received = pod.received();
        assert_eq!(received.len(), 1, "{}", pod.addr);
        assert_eq!(received[0].path, "/flush");
    }
    for pod in &pods.pods[..2] {
        assert_eq!(pod.count(), 1, "a web pod got the cache-eu broadcast");
    }

    // A 63-character label is still a name: it is allowed and looked up.
    let label_63 = format!("cache-{}", "a".repeat(57));
    let answer = router.post(&format!("/{label_63}/flush"), "x").await;
    assert_eq!(
        answer.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        answer.json
    );
    assert!(
        answer.json["error"]
            .as_str()
            .expect("error message")
            .contains(&format!("{label_63}.default.svc.cluster.local"))
    );
    assert_eq!(pods.total(), 4);
}

#[tokio::test(flavor = "multi_thread")]
async fn ipv4_and_ipv6_records_are_both_used() {
    if let Err(error) = std::net::TcpListener::bind("[::1]:0") {
        eprintln!("note: skipping, [::1] cannot be bound here: {error}");
        return;
    }
    let dns = TestDns::start().await;
    // One IPv4 pod, and one IPv6 pod on the same port (pods share a port).
    let mut found = None;
    for first_host in 240..245 {
        let pods = Pods::start(first_host, &[Behaviour::Ok]).await;
        if let Ok(listener) = tokio::net::TcpListener::bind(("::1", pods.port)).await {
            found = Some((pods, listener));
            break;
        }
    }
    let (pods, listener) = found.expect("a port free on both 127.0.0.x and [::1]");
    let v6_received = Arc::new(Mutex::new(Vec::<String>::new()));
    let app = axum::Router::new().fallback({
        let received = v6_received.clone();
        move |uri: axum::http::Uri| async move {
            received.lock().unwrap().push(uri.to_string());
            "v6"
        }
    });
    tokio::spawn(async move { axum::serve(listener, app).await });
    let v6_pod = SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), pods.port);
    let v4_pod = pods.pods[0].addr;

    dns.set(WEB, &[v6_pod.ip(), v4_pod.ip()], 30).await;
    let router = start(&dns, &service_route("dual-stack", "/web", WEB, pods.port)).await;
    let answer = router.post("/web", "x").await;

    assert_eq!(answer.status, StatusCode::OK, "{}", answer.json);
    assert_eq!(answer.json["targets"], 2);
    assert_eq!(listed_targets(&answer), vec![v4_pod, v6_pod]);
    let v6_target = format!("[::1]:{}", pods.port);
    assert_eq!(answer.json["results"][1]["target"], v6_target.as_str());
    assert_eq!(answer.json["results"][1]["body"], "v6");
    assert_eq!(pods.pods[0].count(), 1);
    assert_eq!(*v6_received.lock().unwrap(), vec!["/web".to_owned()]);
}

#[tokio::test(flavor = "multi_thread")]
async fn resolve_command_prints_the_current_targets() {
    let dns = TestDns::start().await;
    let pods = Pods::start(246, &[Behaviour::Ok, Behaviour::Ok, Behaviour::Ok]).await;
    let ips = pods.ips();
    dns.set(WEB, &[ips[2], ips[0], ips[1]], 30).await;
    let config = format!(
        "{}{}{}",
        preamble(Some(dns.addr())),
        service_route("invalidate", "/cache/invalidate", WEB, pods.port),
        service_route(
            "purge",
            "/cache/purge",
            "ghost.default.svc.cluster.local",
            pods.port
        )
    );
    let mut file = tempfile::NamedTempFile::new().expect("temp config");
    std::io::Write::write_all(&mut file, config.as_bytes()).expect("write config");
    let path = file.path().to_owned();

    let run = |route: &'static str| {
        let path = path.clone();
        tokio::task::spawn_blocking(move || {
            Command::new(env!("CARGO_BIN_EXE_broadcast-router"))
                .arg("resolve")
                .arg("--config")
                .arg(&path)
                .arg(route)
                .env_remove("BROADCAST_ROUTER_CONFIG")
                .output()
                .expect("the binary runs")
        })
    };

    let output = run("invalidate").await.unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{}\n{stderr}", output.status);
    let expected: Vec<String> = pods.pods.iter().map(|pod| pod.addr.to_string()).collect();
    assert_eq!(
        stdout.lines().collect::<Vec<_>>(),
        expected,
        "one sorted ip:port per line; stderr: {stderr}"
    );
    assert_eq!(pods.total(), 0, "resolving sends nothing to pods");

    let output = run("nope").await.unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "an unknown route must fail");
    assert!(
        output.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );
    assert!(stderr.contains("nope"), "{stderr}");
    assert!(
        stderr.contains("invalidate, purge"),
        "the routes are listed: {stderr}"
    );
}

/// A DNS server that stops answering (a black hole, not a refusal) makes
/// every lookup wait for its whole timeout. Once a Service's answer has
/// expired, broadcasts use it while the lookup runs in the background,
/// so none of them waits for that timeout; the fresh answer is used once
/// DNS answers again.
#[tokio::test(flavor = "multi_thread")]
async fn a_silent_dns_server_never_holds_a_broadcast_while_a_stale_answer_exists() {
    let dns = TestDns::start().await;
    let pods = Pods::start(214, &[Behaviour::Ok, Behaviour::Ok, Behaviour::Ok]).await;
    dns.set(WEB, &pods.ips()[..2], 1).await;
    // Lookups time out only after 8 s: a broadcast that waited for one
    // would outlast the client's 3 s of patience below.
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\nshutdown_grace = \"5s\"\n\n[dns]\nnameservers = [\"{}\"]\nmin_ttl = \"1s\"\nmax_ttl = \"1s\"\nserve_stale_for = \"5m\"\ntimeout = \"8s\"\nattempts = 1\n{}",
        dns.addr(),
        service_route("web-silent", "/web", WEB, pods.port)
    );
    let router = TestRouter::start(&config).await;
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(3))
        .build()
        .unwrap();
    let post = || async {
        let response = client
            .post(format!("{}/web", router.url))
            .body("x")
            .send()
            .await
            .expect("the broadcast answers without waiting for DNS");
        let status = response.status();
        let json: serde_json::Value =
            serde_json::from_slice(&response.bytes().await.unwrap()).unwrap();
        (status, json)
    };
    let (status, json) = post().await;
    assert_eq!(status, StatusCode::OK, "{json}");
    assert_eq!(json["targets"], 2);

    dns.set_silent(true);
    // Past the 1 s TTL, every broadcast needs a lookup DNS never answers.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for _ in 0..5 {
        let (status, json) = post().await;
        assert_eq!(status, StatusCode::OK, "{json}");
        assert_eq!(json["targets"], 2, "the stale answer is used: {json}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    // DNS answers again, with a third pod: the next lookup sees it (once
    // the lookup lost in the black hole has timed out).
    dns.set(WEB, &pods.ips(), 1).await;
    dns.set_silent(false);
    eventually("the fresh answer is used once DNS answers", || async {
        let (status, json) = post().await;
        (status == StatusCode::OK && json["targets"] == 3).then_some(())
    })
    .await;
}

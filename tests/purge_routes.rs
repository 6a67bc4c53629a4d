//! What cache invalidation needs from a route, through the real router to
//! loopback pods: any method token (`PURGE`, `BAN`, …, or `"*"`) forwarded
//! verbatim with its body, the `Host` the route names (`pod`, `client`, a
//! fixed name), identical broadcasts coalesced within a window, and
//! per-pod pacing that refuses before anything is sent. Also the
//! in-process cache recipe, run as written.

mod support;

use broadcast_router::config::Config;
use reqwest::StatusCode;
use support::caches::{recipe, replace_once};
use support::dns::TestDns;
use support::pods::{Behaviour, Pods};
use support::{TestRouter, preamble};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A static-target route over `pods` at `/purge/{*rest}` with `extra` keys.
fn route(pods: &Pods, extra: &str) -> String {
    format!(
        "{}\n[[routes]]\nname = \"purge\"\npath = \"/purge/{{*rest}}\"\ntargets = {}\n{extra}\n",
        preamble(None),
        pods.targets_toml()
    )
}

/// A request with `method` (any token) to the router's `path`.
fn request(router: &TestRouter, method: &str, path: &str) -> reqwest::RequestBuilder {
    router.client().request(
        reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
        format!("{}{path}", router.url),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn extension_methods_reach_every_pod_verbatim_with_their_body() {
    let pods = Pods::start(2, &[Behaviour::Ok, Behaviour::Ok, Behaviour::Ok]).await;
    let methods = "methods = [\"PURGE\", \"BAN\", \"REFRESH\", \"FULLBAN\", \"DELETE\"]";
    let router = TestRouter::start(&route(&pods, methods)).await;
    for method in ["PURGE", "BAN", "REFRESH", "FULLBAN", "DELETE"] {
        let body = format!("{method} body");
        let answer = router
            .send(request(&router, method, "/purge/products/42").body(body))
            .await;
        assert_eq!(answer.status, StatusCode::OK, "{method}: {}", answer.json);
    }
    for pod in &pods.pods {
        let received = pod.received();
        let seen: Vec<(&str, &[u8])> = received
            .iter()
            .map(|copy| (copy.method.as_str(), &copy.body[..]))
            .collect();
        assert_eq!(
            seen,
            [
                ("PURGE", &b"PURGE body"[..]),
                ("BAN", b"BAN body"),
                ("REFRESH", b"REFRESH body"),
                ("FULLBAN", b"FULLBAN body"),
                ("DELETE", b"DELETE body"),
            ]
        );
        assert!(
            received
                .iter()
                .all(|copy| copy.path == "/purge/products/42")
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_templated_route_forwards_extension_methods_too() {
    let pods = Pods::start(6, &[Behaviour::Ok, Behaviour::Ok]).await;
    let dns = TestDns::start().await;
    dns.set("web.default.svc.cluster.local", &pods.ips(), 30)
        .await;
    let config = format!(
        "{}\n[[routes]]\nname = \"generic\"\npath = \"/{{service}}/{{*rest}}\"\nmethods = [\"PURGE\"]\nservice = \"{{service}}.default.svc.cluster.local\"\nport = {}\nallow_services = [\"web\"]\nupstream_path = \"/{{rest}}\"\n",
        preamble(Some(dns.addr())),
        pods.port
    );
    let router = TestRouter::start(&config).await;
    let answer = router
        .send(request(&router, "PURGE", "/web/products/42"))
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.json);
    for pod in &pods.pods {
        let received = pod.received();
        assert_eq!(received.len(), 1);
        assert_eq!(
            (received[0].method.as_str(), received[0].path.as_str()),
            ("PURGE", "/products/42")
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_star_route_accepts_any_method_and_others_get_405_with_allow() {
    let pods = Pods::start(9, &[Behaviour::Ok]).await;
    let config = format!(
        "{}\n[[routes]]\nname = \"bans\"\npath = \"/bans\"\nmethods = [\"BAN\", \"PURGE\"]\ntargets = {}\n",
        route(&pods, "methods = [\"*\"]"),
        pods.targets_toml()
    );
    let router = TestRouter::start(&config).await;
    for method in ["GET", "POST", "PURGE", "M-SEARCH", "XKEY"] {
        let answer = router.send(request(&router, method, "/purge/x")).await;
        assert_eq!(answer.status, StatusCode::OK, "{method}: {}", answer.json);
    }
    let methods: Vec<String> = pods.pods[0]
        .received()
        .into_iter()
        .map(|copy| copy.method)
        .collect();
    assert_eq!(methods, ["GET", "POST", "PURGE", "M-SEARCH", "XKEY"]);

    let refused = router.send(request(&router, "POST", "/bans")).await;
    assert_eq!(refused.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(refused.header("allow"), "BAN,PURGE");
    assert_eq!(pods.total(), 5, "a refused method reaches no pod");
}

#[test]
fn invalid_method_tokens_are_check_errors() {
    let config = "[[routes]]\nname = \"r\"\npath = \"/r\"\ntargets = [\"127.0.0.2:80\"]\nmethods = [\"PUR GE\", \"\", \"purge\\u0007\", \"get\", \"CONNECT\"]\n";
    let problems = Config::parse(config)
        .expect_err("invalid methods")
        .to_string();
    for expected in [
        "\"PUR GE\" is not an HTTP method",
        "\"\" is not an HTTP method",
        "\"purge\\u{7}\" is not an HTTP method",
        "`get` must be written `GET`",
        "`CONNECT` cannot be broadcast",
    ] {
        assert!(
            problems.contains(expected),
            "{expected:?} missing from:\n{problems}"
        );
    }
    let mixed = "[[routes]]\nname = \"r\"\npath = \"/r\"\ntargets = [\"127.0.0.2:80\"]\nmethods = [\"*\", \"GET\"]\n";
    let problems = Config::parse(mixed).expect_err("* with others").to_string();
    assert!(problems.contains("cannot be combined"), "{problems}");
}

#[tokio::test(flavor = "multi_thread")]
async fn pods_receive_their_address_the_clients_host_or_a_fixed_host() {
    let pods = Pods::start(12, &[Behaviour::Ok, Behaviour::Ok]).await;
    let config = format!(
        "{}\n[[routes]]\nname = \"client\"\npath = \"/client/{{*rest}}\"\nmethods = [\"PURGE\"]\nhost = \"client\"\ntargets = {targets}\n\n[[routes]]\nname = \"fixed\"\npath = \"/fixed/{{*rest}}\"\nmethods = [\"PURGE\"]\nhost = \"www.example.com:8080\"\ntargets = {targets}\n",
        route(&pods, "methods = [\"PURGE\"]\nhost = \"pod\""),
        targets = pods.targets_toml()
    );
    let router = TestRouter::start(&config).await;
    for path in ["/purge/a", "/client/a", "/fixed/a"] {
        let answer = router
            .send(request(&router, "PURGE", path).header("host", "shop.example.com"))
            .await;
        assert_eq!(answer.status, StatusCode::OK, "{path}: {}", answer.json);
    }
    for pod in &pods.pods {
        let received = pod.received();
        let hosts: Vec<&str> = received
            .iter()
            .map(|copy| copy.header("host").unwrap())
            .collect();
        let own = pod.addr.to_string();
        assert_eq!(
            hosts,
            [own.as_str(), "shop.example.com", "www.example.com:8080"]
        );
        for copy in &received {
            assert_eq!(copy.header("x-forwarded-host"), Some("shop.example.com"));
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_host_route_refuses_a_request_without_a_host() {
    let pods = Pods::start(15, &[Behaviour::Ok]).await;
    let router = TestRouter::start(&route(&pods, "methods = [\"PURGE\"]\nhost = \"client\"")).await;
    let addr = router.url.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"PURGE /purge/a HTTP/1.1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("the request has none"), "{answer}");
    assert_eq!(pods.total(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn identical_purges_waiting_to_start_share_one_broadcast_and_its_answer() {
    let pods = Pods::start(18, &[Behaviour::Ok, Behaviour::Ok]).await;
    // The longest window, so that every concurrent request arrives in it.
    let extra = "methods = [\"PURGE\"]\nhost = \"client\"\ncoalesce = \"1s\"";
    let router = TestRouter::start(&route(&pods, extra)).await;
    let purge = |path: &'static str, host: &'static str| {
        let request = request(&router, "PURGE", path).header("host", host);
        router.send(request)
    };
    let mut purges = Vec::new();
    for _ in 0..20 {
        purges.push(purge("/purge/products/42", "www.example.com"));
    }
    // Another Host is another object: a broadcast of its own.
    purges.push(purge("/purge/products/42", "api.example.com"));
    let answers = futures_util::future::join_all(purges).await;

    let shared = answers[0].header("x-broadcast-id").to_owned();
    for answer in &answers[..20] {
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.json);
        assert_eq!(answer.header("x-broadcast-id"), shared);
        assert_eq!(
            answer.json, answers[0].json,
            "every client gets the shared report"
        );
    }
    assert_ne!(answers[20].header("x-broadcast-id"), shared);
    for pod in &pods.pods {
        let mut hosts: Vec<String> = pod
            .received()
            .iter()
            .map(|copy| copy.header("host").unwrap().to_owned())
            .collect();
        hosts.sort();
        assert_eq!(
            hosts,
            ["api.example.com", "www.example.com"],
            "{}",
            pod.addr
        );
    }
    let (_, metrics) = router.admin_get("/metrics").await;
    assert!(
        metrics.contains("broadcast_router_coalesced_requests_total{route=\"purge\"} 19"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pod_over_its_rate_gets_nothing_and_the_client_gets_429_with_retry_after() {
    let pods = Pods::start(21, &[Behaviour::Ok, Behaviour::Ok]).await;
    // A refill far slower than the test, so only the burst counts.
    let extra = "methods = [\"PURGE\"]\npod_rate_limit = { per_second = 0.1, burst = 2 }";
    let router = TestRouter::start(&route(&pods, extra)).await;
    for key in ["a", "b"] {
        let answer = router
            .send(request(&router, "PURGE", &format!("/purge/{key}")))
            .await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.json);
    }
    let refused = router.send(request(&router, "PURGE", "/purge/c")).await;
    assert_eq!(
        refused.status,
        StatusCode::TOO_MANY_REQUESTS,
        "{}",
        refused.json
    );
    let retry_after: u64 = refused.header("retry-after").parse().unwrap();
    assert!(
        (1..=10).contains(&retry_after),
        "Retry-After: {retry_after}"
    );
    assert_eq!(refused.json["source"], "client");
    assert!(
        refused.json["error"]
            .as_str()
            .unwrap()
            .contains("deliveries per second to each pod"),
        "{}",
        refused.json
    );
    for pod in &pods.pods {
        assert_eq!(pod.count(), 2, "nothing was sent for the refused purge");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_in_process_cache_recipe_drops_a_key_from_every_replica() {
    let pods = Pods::start(24, &[Behaviour::Ok, Behaviour::Ok, Behaviour::Ok]).await;
    let dns = TestDns::start().await;
    dns.set("app.web.svc.cluster.local", &pods.ips(), 30).await;
    let routes = replace_once(
        &recipe("in-process/router.toml"),
        "port = 8080\n",
        &format!("port = {}\n", pods.port),
    );
    let router = TestRouter::start(&format!("{}\n{routes}", preamble(Some(dns.addr())))).await;
    let answer = router
        .send(request(&router, "DELETE", "/cache/user:42"))
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.json);
    assert_eq!(answer.json["succeeded"], 3);
    for pod in &pods.pods {
        let received = pod.received();
        assert_eq!(received.len(), 1);
        assert_eq!(
            (received[0].method.as_str(), received[0].path.as_str()),
            ("DELETE", "/internal/cache/user:42")
        );
    }
}

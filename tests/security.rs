//! Abuse resistance through the real router: bearer tokens (missing,
//! wrong, foreign, rotated), the admin port's protection, rate and
//! concurrency limits with exact counts, the router-wide delivery budget,
//! `max_targets`, loop protection, and the client limits of the listener.

mod support;

use std::path::Path;
use std::sync::Arc;

use broadcast_router::config::Config;
use broadcast_router::reload::{Outcome, Reloader, Snapshot, Trigger};
use broadcast_router::server;
use reqwest::StatusCode;
use support::dns::TestDns;
use support::pods::{Behaviour, Gate, Pods};
use support::{TestRouter, eventually, preamble};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const OPS: &str = "ops-token-0123456789abcdef";
const OPS_NEXT: &str = "ops-token-rotated-fedcba98";
const CI: &str = "ci-token-0123456789abcdefg";

/// Writes the token files and returns the `[tokens.*]` tables.
fn token_tables(dir: &Path, ops: &[&str]) -> String {
    std::fs::write(
        dir.join("ops"),
        format!("# ops tokens\n{}\n", ops.join("\n")),
    )
    .unwrap();
    std::fs::write(dir.join("ci"), format!("{CI}\n")).unwrap();
    format!(
        "\n[tokens.ops]\nfile = \"{}\"\n\n[tokens.ci]\nfile = \"{}\"\n",
        dir.join("ops").display(),
        dir.join("ci").display()
    )
}

fn route(targets: &str, extra: &str) -> String {
    format!(
        "\n[[routes]]\nname = \"invalidate\"\npath = \"/cache/invalidate\"\ntargets = {targets}\nretries = 0\n{extra}\n"
    )
}

async fn post_with(router: &TestRouter, token: Option<&str>) -> support::Answer {
    let mut request = router
        .client()
        .post(format!("{}/cache/invalidate", router.url))
        .body("{}");
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    router.send(request).await
}

#[tokio::test]
async fn tokens_missing_wrong_foreign_and_rotated() {
    let pods = Pods::start(20, &[Behaviour::Ok, Behaviour::Ok]).await;
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "{}{}{}",
        preamble(None),
        token_tables(dir.path(), &[OPS, OPS_NEXT]),
        route(&pods.targets_toml(), "auth = [\"ops\"]")
    );
    let mut router = TestRouter::start(&config).await;

    let missing = post_with(&router, None).await;
    assert_eq!(
        missing.status,
        StatusCode::UNAUTHORIZED,
        "{:?}",
        missing.json
    );
    assert_eq!(missing.header("www-authenticate"), "Bearer");
    let wrong = post_with(&router, Some("not-a-token-at-all-0000")).await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    let foreign = post_with(&router, Some(CI)).await;
    assert_eq!(foreign.status, StatusCode::FORBIDDEN, "{:?}", foreign.json);
    let basic = router
        .send(
            router
                .client()
                .post(format!("{}/cache/invalidate", router.url))
                .basic_auth("ops", Some(OPS)),
        )
        .await;
    assert_eq!(basic.status, StatusCode::UNAUTHORIZED);
    assert_eq!(pods.total(), 0, "refused requests reach no pod");

    assert_eq!(post_with(&router, Some(OPS)).await.status, StatusCode::OK);
    assert_eq!(
        post_with(&router, Some(OPS_NEXT)).await.status,
        StatusCode::OK,
        "both tokens of a set work during a rotation"
    );
    assert_eq!(pods.total(), 4);
    for pod in &pods.pods {
        for received in pod.received() {
            assert_eq!(
                received.header("authorization"),
                None,
                "the router's token is not passed on to pods"
            );
        }
    }
    for refused in [&missing, &wrong, &foreign] {
        let text = refused.json.to_string();
        assert!(
            !text.contains(OPS) && !text.contains(CI),
            "tokens never appear in answers: {text}"
        );
    }
    assert_eq!(router.shutdown().await, Vec::<String>::new());
}

#[tokio::test]
async fn a_rotated_token_file_is_picked_up_by_a_reload() {
    let pods = Pods::start(23, &[Behaviour::Ok]).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("router.toml");
    let text = format!(
        "{}{}{}",
        preamble(None),
        token_tables(dir.path(), &[OPS]),
        route(&pods.targets_toml(), "auth = [\"ops\"]")
    );
    std::fs::write(&path, text).unwrap();
    let snapshot = Snapshot::read(&path).unwrap();
    let running = server::start_with(&snapshot.config, snapshot.origin.clone())
        .await
        .unwrap();
    let reloader = Reloader::new(Arc::clone(running.state()), path.clone(), &snapshot);
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let url = format!("http://{}/cache/invalidate", running.addr);
    let status = |token: &'static str| {
        let request = client.post(&url).bearer_auth(token);
        async move { request.send().await.unwrap().status() }
    };
    assert_eq!(status(OPS).await, StatusCode::OK);
    assert_eq!(status(OPS_NEXT).await, StatusCode::UNAUTHORIZED);

    // The Secret now holds only the new token.
    token_tables(dir.path(), &[OPS_NEXT]);
    match reloader.reload(Trigger::Watch).await {
        Ok(Outcome::Reloaded(_)) => {}
        other => panic!("a changed token file is a change: {other:?}"),
    }
    assert_eq!(status(OPS_NEXT).await, StatusCode::OK);
    assert_eq!(status(OPS).await, StatusCode::UNAUTHORIZED);
    assert_eq!(running.shutdown().await, Vec::<String>::new());
}

#[tokio::test]
async fn token_sets_that_cannot_be_used_are_reported_with_their_location() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("short"), "tooshort\n").unwrap();
    std::fs::write(dir.path().join("empty"), "# nothing yet\n\n").unwrap();
    let text = format!(
        "{}\n[tokens.short]\nfile = \"{}\"\n\n[tokens.empty]\nfile = \"{}\"\n\n[tokens.gone]\nfile = \"{}\"\n\n[tokens.unset]\nenv = \"BROADCAST_ROUTER_TEST_UNSET_TOKENS\"\n{}",
        preamble(None),
        dir.path().join("short").display(),
        dir.path().join("empty").display(),
        dir.path().join("gone").display(),
        route(
            "[\"127.0.0.25:80\"]",
            "auth = [\"short\", \"empty\", \"gone\", \"unset\"]"
        ),
    );
    let config = Config::parse(&text).expect("the file itself is valid");
    let error = match server::start(&config).await {
        Ok(_) => panic!("unusable token sets stop the start"),
        Err(error) => error.to_string(),
    };
    for expected in [
        "token set \"short\": token 1 of the file",
        "is shorter than 16 characters",
        "token set \"empty\": the file",
        "holds no token",
        "token set \"gone\": cannot read",
        "token set \"unset\": the environment variable BROADCAST_ROUTER_TEST_UNSET_TOKENS is not set",
    ] {
        assert!(error.contains(expected), "`{expected}` in:\n{error}");
    }
    assert!(
        !error.contains("tooshort"),
        "token values never appear: {error}"
    );

    let unknown = format!(
        "{}{}",
        preamble(None),
        route("[\"127.0.0.25:80\"]", "auth = [\"nobody\"]")
    );
    let problems = Config::parse(&unknown).unwrap_err().to_string();
    assert!(
        problems.contains("no token set named `nobody`"),
        "{problems}"
    );
}

#[tokio::test]
async fn the_admin_port_protects_metrics_and_config_but_not_probes() {
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "{}admin_auth = [\"ops\"]\n{}{}",
        preamble(None),
        token_tables(dir.path(), &[OPS]),
        route("[\"127.0.0.26:80\"]", "")
    );
    let mut router = TestRouter::start(&config).await;
    for open in ["/healthz", "/readyz"] {
        assert_eq!(router.admin_get(open).await.0, StatusCode::OK, "{open}");
    }
    for protected in ["/metrics", "/admin/config"] {
        assert_eq!(
            router.admin_get(protected).await.0,
            StatusCode::UNAUTHORIZED,
            "{protected}"
        );
        let with_token = router
            .client()
            .get(format!("{}{protected}", router.admin))
            .bearer_auth(OPS)
            .send()
            .await
            .unwrap();
        assert_eq!(with_token.status(), StatusCode::OK, "{protected}");
        let foreign = router
            .client()
            .get(format!("{}{protected}", router.admin))
            .bearer_auth(CI)
            .send()
            .await
            .unwrap();
        assert_eq!(foreign.status(), StatusCode::FORBIDDEN, "{protected}");
    }
    router.shutdown().await;
}

#[tokio::test]
async fn the_rate_limit_admits_exactly_the_burst_and_says_when_to_retry() {
    let pods = Pods::start(27, &[Behaviour::Ok, Behaviour::Ok]).await;
    let config = format!(
        "{}{}",
        preamble(None),
        // Metrics are process-wide: a route name of its own keeps the
        // counts exact.
        route(
            &pods.targets_toml(),
            "rate_limit = { per_second = 0.01, burst = 3 }"
        )
        .replace("\"invalidate\"", "\"rated\"")
    );
    let mut router = TestRouter::start(&config).await;
    let mut statuses = Vec::new();
    for _ in 0..10 {
        let answer = post_with(&router, None).await;
        if answer.status == StatusCode::TOO_MANY_REQUESTS {
            let retry_after: u64 = answer.header("retry-after").parse().unwrap();
            assert!(retry_after >= 1, "{retry_after}");
            assert!(
                answer.json["error"]
                    .as_str()
                    .unwrap()
                    .contains("allows 0.01 broadcasts per second (burst 3)"),
                "{}",
                answer.json
            );
        }
        statuses.push(answer.status);
    }
    let admitted = statuses.iter().filter(|s| **s == StatusCode::OK).count();
    assert_eq!(admitted, 3, "{statuses:?}");
    assert_eq!(statuses[..3], [StatusCode::OK; 3]);
    assert_eq!(
        pods.total(),
        6,
        "each admitted broadcast reached both pods once"
    );
    let (_, metrics) = router.admin_get("/metrics").await;
    assert!(
        metrics.contains(
            "broadcast_router_broadcasts_total{route=\"rated\",outcome=\"rate_limited\"} 7"
        ),
        "{metrics}"
    );
    router.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_burst_far_above_the_limit_is_shed_cleanly() {
    let pods = Pods::start(30, &[Behaviour::Ok, Behaviour::Ok, Behaviour::Ok]).await;
    let config = format!(
        "{}{}",
        preamble(None),
        route(
            &pods.targets_toml(),
            "rate_limit = { per_second = 0.01, burst = 5 }\nmax_concurrent = 50"
        )
    );
    let mut router = TestRouter::start(&config).await;
    let url = format!("{}/cache/invalidate", router.url);
    let burst: Vec<_> = (0..300)
        .map(|_| {
            let request = router.client().post(&url).body("{}");
            tokio::spawn(async move { request.send().await.map(|response| response.status()) })
        })
        .collect();
    let mut ok = 0;
    let mut shed = 0;
    for request in burst {
        match request.await.unwrap().expect("every request is answered") {
            StatusCode::OK => ok += 1,
            StatusCode::TOO_MANY_REQUESTS => shed += 1,
            other => panic!("unexpected answer {other}"),
        }
    }
    assert_eq!((ok, shed), (5, 295));
    for pod in &pods.pods {
        assert_eq!(pod.count(), 5, "no pod receives more than the limit allows");
    }
    router.shutdown().await;
}

#[tokio::test]
async fn max_concurrent_refuses_while_the_route_is_busy() {
    let gate = Gate::new();
    let pods = Pods::start(34, &[Behaviour::Gated(gate.clone())]).await;
    let config = format!(
        "{}{}",
        preamble(None),
        route(
            &pods.targets_toml(),
            "max_concurrent = 2\ntimeout = \"20s\"\ndeadline = \"20s\""
        )
    );
    let mut router = TestRouter::start(&config).await;
    let url = format!("{}/cache/invalidate", router.url);
    let running: Vec<_> = (0..2)
        .map(|_| {
            let request = router.client().post(&url);
            tokio::spawn(async move { request.send().await.unwrap().status() })
        })
        .collect();
    eventually("both broadcasts reach the pod", || async {
        (pods.total() == 2).then_some(())
    })
    .await;
    let busy = post_with(&router, None).await;
    assert_eq!(
        busy.status,
        StatusCode::TOO_MANY_REQUESTS,
        "{:?}",
        busy.json
    );
    assert_eq!(busy.header("retry-after"), "1");
    assert!(
        busy.json["error"]
            .as_str()
            .unwrap()
            .contains("maximum of 2 broadcasts"),
        "{}",
        busy.json
    );
    gate.open();
    for answer in running {
        assert_eq!(answer.await.unwrap(), StatusCode::OK);
    }
    assert_eq!(post_with(&router, None).await.status, StatusCode::OK);
    assert_eq!(pods.total(), 3);
    router.shutdown().await;
}

#[tokio::test]
async fn the_router_wide_delivery_budget_is_never_exceeded() {
    let gate = Gate::new();
    let pods = Pods::start(
        36,
        &[
            Behaviour::Gated(gate.clone()),
            Behaviour::Gated(gate.clone()),
        ],
    )
    .await;
    let config = format!(
        "{}max_in_flight_deliveries = 3\n{}",
        preamble(None),
        route(
            &pods.targets_toml(),
            "timeout = \"20s\"\ndeadline = \"20s\""
        )
    );
    let mut router = TestRouter::start(&config).await;
    let first = tokio::spawn({
        let request = router
            .client()
            .post(format!("{}/cache/invalidate", router.url));
        async move { request.send().await.unwrap().status() }
    });
    eventually("the first broadcast holds two deliveries", || async {
        (pods.total() == 2).then_some(())
    })
    .await;
    let refused = post_with(&router, None).await;
    assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(
        refused.json["error"]
            .as_str()
            .unwrap()
            .contains("too many pod deliveries in flight to add 2 more (limit 3)"),
        "{}",
        refused.json
    );
    assert_eq!(pods.total(), 2, "the refused broadcast sent nothing");
    gate.open();
    assert_eq!(first.await.unwrap(), StatusCode::OK);
    assert_eq!(post_with(&router, None).await.status, StatusCode::OK);
    router.shutdown().await;
}

#[tokio::test]
async fn more_pods_than_max_targets_are_refused_not_truncated() {
    let dns = TestDns::start().await;
    let pods = Pods::start(40, &[Behaviour::Ok, Behaviour::Ok, Behaviour::Ok]).await;
    dns.set("web.test.", &pods.ips(), 30).await;
    let config = format!(
        "{}\n[[routes]]\nname = \"invalidate\"\npath = \"/cache/invalidate\"\nservice = \"web.test\"\nport = {}\nmax_targets = 2\n",
        preamble(Some(dns.addr())),
        pods.port
    );
    let mut router = TestRouter::start(&config).await;
    let answer = post_with(&router, None).await;
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        answer.json["error"]
            .as_str()
            .unwrap()
            .contains("discovery found 3 pods, more than the route's max_targets of 2"),
        "{}",
        answer.json
    );
    assert_eq!(pods.total(), 0);

    let too_many_static = format!(
        "{}{}",
        preamble(None),
        route(&pods.targets_toml(), "max_targets = 2")
    );
    let problems = Config::parse(&too_many_static).unwrap_err().to_string();
    assert!(
        problems.contains("3 static targets are more than `max_targets` (2)"),
        "{problems}"
    );
    router.shutdown().await;
}

#[tokio::test]
async fn a_route_that_targets_the_router_itself_does_not_loop() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:{port}\"\nadmin_listen = \"127.0.0.1:0\"\n{}",
        route(&format!("[\"127.0.0.1:{port}\"]"), "").replace("\"invalidate\"", "\"looping\"")
    );
    let mut router = TestRouter::start(&config).await;
    let answer = post_with(&router, None).await;
    assert_eq!(answer.status, StatusCode::BAD_GATEWAY, "{:?}", answer.json);
    let result = &answer.json["results"][0];
    assert_eq!(result["status"], 508, "the second hop refused: {result}");

    let marked = router
        .send(
            router
                .client()
                .post(format!("{}/cache/invalidate", router.url))
                .header("via", "1.0 edge, 1.1 broadcast-router"),
        )
        .await;
    assert_eq!(marked.status, StatusCode::LOOP_DETECTED);
    let (_, metrics) = router.admin_get("/metrics").await;
    assert!(
        metrics.contains("broadcast_router_broadcasts_total{route=\"looping\",outcome=\"loop\"} 2"),
        "{metrics}"
    );
    router.shutdown().await;
}

/// Sends raw bytes and returns what the router answered before closing.
async fn raw_exchange(addr: &str, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer).await;
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test]
async fn the_listener_limits_header_count_size_and_slow_clients() {
    let pods = Pods::start(44, &[Behaviour::Ok]).await;
    let config = format!(
        "{}max_header_count = 10\nmax_header_bytes = \"8KiB\"\nclient_timeout = \"300ms\"\n{}",
        preamble(None),
        route(&pods.targets_toml(), "")
    );
    let mut router = TestRouter::start(&config).await;
    let addr = router.url.trim_start_matches("http://").to_owned();

    let many: String = (0..20).map(|i| format!("x-filler-{i}: {i}\r\n")).collect();
    let answer = raw_exchange(
        &addr,
        format!("POST /cache/invalidate HTTP/1.1\r\nhost: r\r\n{many}content-length: 0\r\nconnection: close\r\n\r\n").as_bytes(),
    )
    .await;
    assert!(
        answer.starts_with("HTTP/1.1 431"),
        "too many headers: {answer}"
    );

    let huge = "a".repeat(20 * 1024);
    let answer = raw_exchange(
        &addr,
        format!("POST /cache/invalidate HTTP/1.1\r\nhost: r\r\nx-huge: {huge}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n").as_bytes(),
    )
    .await;
    assert!(
        answer.starts_with("HTTP/1.1 431"),
        "headers too large: {answer}"
    );

    // Slowloris: headers that never end are cut off.
    let answer = raw_exchange(
        &addr,
        b"POST /cache/invalidate HTTP/1.1\r\nhost: r\r\nx-slow: 1\r\n",
    )
    .await;
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
        "a client that never finishes its headers is disconnected: {answer}"
    );

    // A body that stops arriving gets 408, and nothing is broadcast.
    let answer = raw_exchange(
        &addr,
        b"POST /cache/invalidate HTTP/1.1\r\nhost: r\r\ncontent-length: 100\r\nconnection: close\r\n\r\n0123456789",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 408"), "slow body: {answer}");
    assert!(answer.contains("did not arrive within"), "{answer}");
    assert_eq!(pods.total(), 0);

    // A well-behaved client is unaffected.
    assert_eq!(post_with(&router, None).await.status, StatusCode::OK);
    router.shutdown().await;
}

/// A refused request answers 431 with the same JSON error document as
/// every other refusal, not an empty body.
#[tokio::test]
async fn too_many_or_too_large_headers_get_a_json_431() {
    let pods = Pods::start(46, &[Behaviour::Ok]).await;
    let config = format!(
        "{}max_header_count = 10\nmax_header_bytes = \"8KiB\"\n{}",
        preamble(None),
        route(&pods.targets_toml(), "")
    );
    let mut router = TestRouter::start(&config).await;
    let addr = router.url.trim_start_matches("http://").to_owned();
    let many: String = (0..20).map(|i| format!("x-filler-{i}: {i}\r\n")).collect();
    let huge = format!("x-huge: {}\r\n", "a".repeat(20 * 1024));
    for extra in [many, huge] {
        let answer = raw_exchange(
            &addr,
            format!("POST /cache/invalidate HTTP/1.1\r\nhost: r\r\n{extra}content-length: 0\r\nconnection: close\r\n\r\n").as_bytes(),
        )
        .await;
        assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
        assert!(
            answer.contains("content-type: application/json"),
            "{answer}"
        );
        let body = answer.split("\r\n\r\n").nth(1).unwrap_or_default();
        let json: serde_json::Value = serde_json::from_str(body).expect("a JSON body");
        assert_eq!(json["ok"], false);
        assert_eq!(json["source"], "client");
        assert!(
            json["error"]
                .as_str()
                .unwrap()
                .contains("the limits are 10 fields and 8192 bytes"),
            "{json}"
        );
    }
    assert_eq!(pods.total(), 0);
    router.shutdown().await;
}

/// `..;` (which Tomcat and others read as `..`) and backslashes (a `/` to
/// some servers), raw or percent-encoded, are refused like `..`.
#[tokio::test]
async fn path_parameters_and_backslashes_cannot_climb_out_of_the_path() {
    let pods = Pods::start(47, &[Behaviour::Ok]).await;
    let config = format!(
        "{}\n[[routes]]\nname = \"files\"\npath = \"/files/{{*rest}}\"\ntargets = {}\n\n[[routes]]\nname = \"api\"\npath = \"/api/{{*rest}}\"\nupstream_path = \"/v1/{{rest}}\"\ntargets = {}\n",
        preamble(None),
        pods.targets_toml(),
        pods.targets_toml()
    );
    let mut router = TestRouter::start(&config).await;
    for path in [
        "/files/..;/admin",
        "/files/..;jsessionid=1/admin",
        "/files/%2e%2e;/admin",
        "/files/a%5c..%5cadmin",
        "/files/a%5Cb",
        "/api/..;/admin",
        "/api/a%5c..%5cadmin",
    ] {
        let answer = router.post(path, "x").await;
        assert_eq!(
            answer.status,
            StatusCode::BAD_REQUEST,
            "{path}: {}",
            answer.json
        );
        assert!(
            answer.json["error"]
                .as_str()
                .unwrap()
                .contains("cannot be forwarded"),
            "{path}: {}",
            answer.json
        );
    }
    assert_eq!(pods.total(), 0, "nothing reached a pod");
    let fine = router.post("/files/a;v=1/b", "x").await;
    assert_eq!(fine.status, StatusCode::OK, "{}", fine.json);
    assert_eq!(pods.pods[0].received()[0].path, "/files/a;v=1/b");
    router.shutdown().await;
}

/// `/admin/config` tells file paths, route names and reload errors: off
/// loopback it needs `admin_auth`, while the probes stay open.
#[tokio::test]
async fn admin_config_needs_a_token_when_the_admin_port_is_not_on_loopback() {
    let pods = Pods::start(48, &[Behaviour::Ok]).await;
    let open_to_all = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"0.0.0.0:0\"\n{}",
        route(&pods.targets_toml(), "")
    );
    let config = Config::parse(&open_to_all).unwrap();
    let running = server::start(&config).await.unwrap();
    let admin = format!("http://127.0.0.1:{}", running.admin_addr.port());
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let get = |path: &'static str| {
        let (client, admin) = (client.clone(), admin.clone());
        async move {
            let response = client.get(format!("{admin}{path}")).send().await.unwrap();
            let status = response.status();
            (status, response.text().await.unwrap())
        }
    };
    let (status, body) = get("/admin/config").await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(body.contains("admin_auth"), "{body}");
    assert!(!body.contains("invalidate"), "no route names leak: {body}");
    assert_eq!(get("/healthz").await.0, StatusCode::OK);
    assert_eq!(get("/readyz").await.0, StatusCode::OK);
    running.shutdown().await;

    // With admin_auth, a token opens it wherever the port is.
    let dir = tempfile::tempdir().unwrap();
    let guarded = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"0.0.0.0:0\"\nadmin_auth = [\"ops\"]\n{}{}",
        token_tables(dir.path(), &[OPS]),
        route(&pods.targets_toml(), "")
    );
    let running = server::start(&Config::parse(&guarded).unwrap())
        .await
        .unwrap();
    let response = client
        .get(format!(
            "http://127.0.0.1:{}/admin/config",
            running.admin_addr.port()
        ))
        .bearer_auth(OPS)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    running.shutdown().await;
}

/// A flood of refused requests writes a bounded amount of log: each
/// refusal is counted and logged at debug, and at the default level a
/// route and reason get one warning per interval.
#[tokio::test(flavor = "multi_thread")]
async fn a_flood_of_refused_requests_writes_a_bounded_log() {
    let pods = Pods::start(49, &[Behaviour::Ok]).await;
    let dir = tempfile::tempdir().unwrap();
    let listen = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let admin = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let path = dir.path().join("router.toml");
    std::fs::write(
        &path,
        format!(
            "[server]\nlisten = \"{listen}\"\nadmin_listen = \"{admin}\"\n{}{}",
            token_tables(dir.path(), &[OPS]),
            route(
                &pods.targets_toml(),
                "auth = [\"ops\"]\nrate_limit = { per_second = 1, burst = 1 }"
            )
        ),
    )
    .unwrap();
    let log_path = dir.path().join("router.log");
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_broadcast-router"))
        .args(["serve", "--config"])
        .arg(&path)
        .env("RUST_LOG", "info")
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .expect("the router starts");
    let _stop = Terminate(child);
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let url = format!("http://{listen}/cache/invalidate");
    eventually("the router listens", || async {
        client
            .get(format!("http://{admin}/readyz"))
            .send()
            .await
            .ok()?
            .status()
            .is_success()
            .then_some(())
    })
    .await;
    let size_before = std::fs::metadata(&log_path).unwrap().len();
    let (mut unauthorized, mut limited) = (0, 0);
    for i in 0..2000 {
        let mut request = client.post(&url).body("{}");
        if i % 2 == 0 {
            request = request.bearer_auth(OPS);
        }
        match request.send().await.unwrap().status() {
            StatusCode::UNAUTHORIZED => unauthorized += 1,
            StatusCode::TOO_MANY_REQUESTS => limited += 1,
            _ => {}
        }
    }
    assert_eq!(unauthorized, 1000);
    assert!(limited >= 990, "{limited}");
    let log = std::fs::read_to_string(&log_path).unwrap();
    let written = log.len() as u64 - size_before;
    assert!(
        written < 8 * 1024,
        "about 2000 refusals wrote {written} bytes of log:\n{log}"
    );
    assert_eq!(log.matches("reason=\"unauthorized\"").count(), 1, "{log}");
    assert_eq!(log.matches("reason=\"rate_limited\"").count(), 1, "{log}");
}

/// Stops a router process when dropped, even when a test fails.
struct Terminate(std::process::Child);

impl Drop for Terminate {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let _ = self.0.wait();
    }
}

//! The `allow_services` guard of templated routes, through the real router:
//! a service name taken from the path that tries to escape the route's
//! pattern — dots, case tricks, IP literals, trailing dots, punycode and
//! other Unicode, percent-encoded separators, hyphens at the edges,
//! over-long labels, control characters — is refused before any DNS query
//! and reaches no pod, even on a route that allows every name (`*`).
//!
//! Requests are written as raw bytes on a TCP connection, so that the path
//! reaches the router exactly as written: HTTP client libraries would
//! normalise `..`, `%2e` or brackets before sending.
//!
//! What the router answers (see docs/configuration.md, "Templated routes and
//! `allow_services`"):
//!
//! - **403** for every name the route decodes from the path and refuses:
//!   not one valid label, or not allowed, or too long for DNS;
//! - **400** when the path itself is malformed: a percent-escape that does
//!   not decode to UTF-8 (`%FF`), or bytes HTTP does not allow in a
//!   request line (a raw space, NUL or control character).

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;
use support::dns::TestDns;
use support::pods::{Behaviour, Pods};
use support::{TestRouter, preamble};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One answer read off the wire.
struct RawAnswer {
    status: u16,
    json: Value,
}

/// POSTs a one-byte body to `target`, written into the request line
/// byte for byte, and reads the whole answer (the connection is closed).
async fn raw_post(router: &TestRouter, target: &[u8]) -> RawAnswer {
    let addr: SocketAddr = router
        .url
        .strip_prefix("http://")
        .expect("http URL")
        .parse()
        .expect("router address");
    let mut request = b"POST ".to_vec();
    request.extend_from_slice(target);
    request.extend_from_slice(
        b" HTTP/1.1\r\nhost: router\r\ncontent-length: 1\r\nconnection: close\r\n\r\nx",
    );
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await.expect("connect to router");
        stream.write_all(&request).await.expect("send request");
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await.expect("read answer");
        answer
    };
    let answer = tokio::time::timeout(Duration::from_secs(30), exchange)
        .await
        .expect("router answers within 30s");
    let text = String::from_utf8_lossy(&answer);
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    let json = text
        .split_once("\r\n\r\n")
        .and_then(|(_, body)| serde_json::from_str(body).ok())
        .unwrap_or(Value::Null);
    RawAnswer { status, json }
}

/// What the router must answer for one hostile name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// 403 from the guard, with a message about the service.
    Refused,
    /// 400: the path itself is malformed.
    BadRequest,
}

/// Hostile service segments, as raw path bytes, and what each must get.
fn hostile_names() -> Vec<(Vec<u8>, Expect)> {
    use Expect::{BadRequest, Refused};
    let refused = [
        // No name at all (`/n//flush`).
        "",
        // Case: DNS ignores case, so `WEB` would alias the allowed `web`;
        // the router refuses it instead of folding it.
        "WEB",
        "Web",
        "wEB",
        "CACHE-EU",
        "Cache-eu",
        "LOCALHOST",
        // Dots: another namespace, a whole name, an absolute name.
        "web.evil",
        "web.default.svc.cluster.local",
        "web.",
        "web..",
        ".web",
        ".",
        "..",
        // `cache-*` would match these if `*` could span a dot.
        "cache-eu.kube-system",
        "cache-.evil",
        "cache-eu.default.svc.cluster.local",
        // IP literals, in every notation an address parser reads.
        "10.0.0.1",
        "127.0.0.1",
        "[::1]",
        "::1",
        "%5B%3A%3A1%5D",
        "0x7f000001",
        "0X7F000001",
        "2130706433",
        "017700000001",
        "0177.0.0.1",
        "0x7f.1",
        "127.1",
        // Names a resolver answers itself.
        "localhost",
        "localhost.",
        "web.localhost",
        // Punycode and Unicode that IDNA would map onto ASCII names.
        "xn--80ak6aa92e",
        "xn--web-abc",
        "w%C3%A9b",
        "%EF%BD%97%EF%BD%85%EF%BD%82",
        "web%E3%80%82evil",
        "%E2%84%AAache-eu",
        // Hyphens at the edges (`cache-` matches `cache-*` as a glob).
        "-web",
        "web-",
        "cache-",
        "-",
        "--",
        // Percent-encoded dots and slashes, once and twice.
        "web%2eevil",
        "web%2Eevil",
        "web%2fevil",
        "web%2Fevil",
        "web%2F..%2Fother",
        "%2e%2e",
        "%2E",
        "web%252eevil",
        "web%",
        // Glob syntax and other punctuation taken literally.
        "*",
        "cache-*",
        "cache-%2A",
        "cache-%3F",
        "cache-[a-z]",
        "web%23frag",
        "web%3Fx=1",
        "web:80",
        "web@evil",
        "web_1",
        // NUL, whitespace and line breaks, percent-encoded.
        "web%00",
        "%00",
        "web%20",
        "%20web",
        "web%09",
        "web%0A",
        "web%0D%0AX-Evil:%201",
    ];
    let mut names: Vec<(Vec<u8>, Expect)> = refused
        .iter()
        .map(|name| (name.as_bytes().to_vec(), Refused))
        .collect();
    // 64 characters is one more than a DNS label holds.
    names.push((format!("cache-{}", "a".repeat(58)).into_bytes(), Refused));
    names.push((format!("web{}", "b".repeat(100)).into_bytes(), Refused));
    // Raw UTF-8 in the request line reaches the router and is refused too.
    names.push(("wéb".as_bytes().to_vec(), Refused));
    // Malformed paths: the router cannot even read the name.
    for malformed in ["web%FF", "web%C3", "%C0%AE"] {
        names.push((malformed.as_bytes().to_vec(), BadRequest));
    }
    for raw in [&b"web\0"[..], b"web evil", b"web\tevil", b"web\x7f"] {
        names.push((raw.to_vec(), BadRequest));
    }
    names
}

/// Checks every hostile name against route `prefix`; returns what went
/// wrong, one line per name.
async fn check_refusals(router: &TestRouter, prefix: &str, route: &str) -> Vec<String> {
    let mut wrong = Vec::new();
    for (name, expect) in hostile_names() {
        let mut target = format!("/{prefix}/").into_bytes();
        target.extend_from_slice(&name);
        target.extend_from_slice(b"/flush");
        let shown = String::from_utf8_lossy(&target).into_owned();
        let answer = raw_post(router, &target).await;
        let expected = match expect {
            Expect::Refused => 403,
            Expect::BadRequest => 400,
        };
        if answer.status != expected {
            wrong.push(format!(
                "{shown:?}: expected {expected}, got {} {}",
                answer.status, answer.json
            ));
            continue;
        }
        if expect == Expect::Refused {
            let error = answer.json["error"].as_str().unwrap_or_default();
            if answer.json["route"] != route || !error.contains("service") {
                wrong.push(format!("{shown:?}: unexpected refusal {}", answer.json));
            }
        }
    }
    wrong
}

#[tokio::test(flavor = "multi_thread")]
async fn names_escaping_the_allowed_pattern_are_refused_before_dns() {
    let dns = TestDns::start().await;
    // Pods 0-1 are `web`, pods 2-3 are `cache-eu`.
    let pods = Pods::start(60, &vec![Behaviour::Ok; 4]).await;
    let ips = pods.ips();
    dns.set("web.default.svc.cluster.local", &ips[..2], 30)
        .await;
    dns.set("web", &ips[..2], 30).await;
    dns.set("cache-eu.default.svc.cluster.local", &ips[2..], 30)
        .await;
    // Bait: names a leaking guard would reach. They exist, so a leak would
    // show up as a delivery as well as a query.
    for bait in [
        "web.evil.default.svc.cluster.local",
        "web.evil",
        "web.default.svc.cluster.local.default.svc.cluster.local",
        "cache-eu.kube-system.default.svc.cluster.local",
        "cache-eu.kube-system",
        "xn--80ak6aa92e",
        "xn--80ak6aa92e.default.svc.cluster.local",
        "0x7f000001",
        "0x7f000001.default.svc.cluster.local",
        "2130706433",
        "10.0.0.1.default.svc.cluster.local",
        "web.localhost",
        "cache-",
        "cache-.default.svc.cluster.local",
    ] {
        dns.set(bait, &ips, 30).await;
    }
    // `narrow` allows two patterns under the cluster suffix; `open` allows
    // every name and has no suffix, so only the label rules protect it.
    let port = pods.port;
    let config = format!(
        "{}
[[routes]]
name = \"narrow\"
path = \"/n/{{service}}/{{*rest}}\"
service = \"{{service}}.default.svc.cluster.local\"
port = {port}
allow_services = [\"web\", \"cache-*\"]
upstream_path = \"/{{rest}}\"

[[routes]]
name = \"open\"
path = \"/o/{{service}}/{{*rest}}\"
service = \"{{service}}\"
port = {port}
allow_services = [\"*\"]
upstream_path = \"/{{rest}}\"
",
        preamble(Some(dns.addr()))
    );
    let router = TestRouter::start(&config).await;

    let queries = dns.queries();
    let mut wrong = check_refusals(&router, "n", "narrow").await;
    wrong.extend(check_refusals(&router, "o", "open").await);
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    assert_eq!(dns.queries(), queries, "a refused name was looked up");
    assert_eq!(pods.total(), 0, "a refused request reached a pod");

    // The guard refuses names, not routes: allowed names still get through.
    let answer = raw_post(&router, b"/n/web/flush").await;
    assert_eq!(answer.status, 200, "{}", answer.json);
    assert_eq!(answer.json["targets"], 2);
    let answer = raw_post(&router, b"/n/cache-eu/flush").await;
    assert_eq!(answer.status, 200, "{}", answer.json);
    assert_eq!(answer.json["targets"], 2);
    let answer = raw_post(&router, b"/o/web/flush").await;
    assert_eq!(answer.status, 200, "{}", answer.json);
    assert_eq!(answer.json["targets"], 2);
    // A name that only percent-encodes plain letters is the same name.
    let answer = raw_post(&router, b"/n/%77eb/flush").await;
    assert_eq!(answer.status, 200, "{}", answer.json);
    for pod in &pods.pods[..2] {
        assert_eq!(pod.count(), 3, "{}", pod.addr);
    }
    for pod in &pods.pods[2..] {
        assert_eq!(pod.count(), 1, "{}", pod.addr);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn names_making_the_dns_name_too_long_are_refused_before_dns() {
    let dns = TestDns::start().await;
    let pods = Pods::start(64, &[Behaviour::Ok]).await;
    // A 199-character suffix: with a 6-character sample the template is a
    // valid name (206 characters), with a 63-character label it is not
    // (263 > 253).
    let suffix = vec!["a".repeat(49); 4].join(".");
    let fits = "f".repeat(40);
    dns.set(&format!("{fits}.{suffix}"), &pods.ips(), 30).await;
    let config = format!(
        "{}
[[routes]]
name = \"long\"
path = \"/{{service}}/{{*rest}}\"
service = \"{{service}}.{suffix}\"
port = {}
allow_services = [\"*\"]
upstream_path = \"/{{rest}}\"
",
        preamble(Some(dns.addr())),
        pods.port
    );
    let router = TestRouter::start(&config).await;

    let queries = dns.queries();
    let too_long = "t".repeat(63);
    let answer = raw_post(&router, format!("/{too_long}/flush").as_bytes()).await;
    assert_eq!(answer.status, 403, "{}", answer.json);
    let error = answer.json["error"].as_str().expect("error message");
    assert!(error.contains("253"), "{error}");
    assert_eq!(
        dns.queries(),
        queries,
        "a name too long for DNS was looked up"
    );

    let answer = raw_post(&router, format!("/{fits}/flush").as_bytes()).await;
    assert_eq!(answer.status, 200, "{}", answer.json);
    assert_eq!(pods.total(), 1);
}

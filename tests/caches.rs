//! Cache invalidation against real caches: three `varnishd` (PURGE, BAN
//! with an `X-Ban-Url` regex, surrogate keys with vmod xkey) and three
//! nginx with the cache purge module, each on its own loopback address
//! behind the in-process DNS server, driven by the recipes of
//! `docs/recipes/` (router configuration, VCL and nginx site) as written.
//!
//! The caches are installed by `scripts/test`; when one is missing these
//! tests fail and say how to install it.

mod support;

use std::net::IpAddr;

use reqwest::StatusCode;
use support::caches::{self, Daemon, Origin, get, loopback, recipe, replace_once};
use support::dns::TestDns;
use support::{TestRouter, preamble};

/// The Host the site's visitors use.
const SITE: &str = "www.example.com";

/// The router running the recipe `router` (a file under `docs/recipes/`),
/// with its pods' port replaced by `port` and DNS from `dns`, which
/// resolves `service` to `ips`.
async fn recipe_router(
    router: &str,
    recipe_port: u16,
    port: u16,
    dns: &TestDns,
    service: &str,
    ips: &[IpAddr],
) -> TestRouter {
    dns.set(service, ips, 30).await;
    let routes = replace_once(
        &recipe(router),
        &format!("port = {recipe_port}\n"),
        &format!("port = {port}\n"),
    );
    TestRouter::start(&format!("{}\n{routes}", preamble(Some(dns.addr())))).await
}

/// Sends `method` to the router's `path` with `Host: host` and `headers`.
async fn invalidate(
    router: &TestRouter,
    method: &str,
    path: &str,
    host: &str,
    headers: &[(&str, &str)],
) -> support::Answer {
    let mut request = router
        .client()
        .request(
            reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
            format!("{}{path}", router.url),
        )
        .header("host", host);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    router.send(request).await
}

/// Fetches `path` twice from every cache; the origin sees one fetch per
/// cache.
async fn warm(caches: &[Daemon], origin: &Origin, path: &str) {
    for cache in caches {
        get(cache, SITE, path).await;
        get(cache, SITE, path).await;
    }
    assert_eq!(
        origin.fetches(SITE, path),
        caches.len(),
        "each cache fetched {path} once, then served it"
    );
}

/// Fetches `path` from every cache again.
async fn refetch(caches: &[Daemon], path: &str) {
    for cache in caches {
        get(cache, SITE, path).await;
    }
}

async fn three_varnishes(first: u8) -> (Origin, Vec<Daemon>, TestDns, TestRouter) {
    let origin = Origin::start().await;
    let ips = loopback(first, 3);
    let port = caches::free_port(&ips);
    let varnishes = caches::varnish("varnish/purge.vcl", &ips, port, &origin).await;
    let dns = TestDns::start().await;
    let router = recipe_router(
        "varnish/router.toml",
        6081,
        port,
        &dns,
        "varnish.web.svc.cluster.local",
        &ips,
    )
    .await;
    (origin, varnishes, dns, router)
}

#[tokio::test(flavor = "multi_thread")]
async fn one_purge_with_the_clients_host_empties_every_varnish() {
    let (origin, varnishes, _dns, router) = three_varnishes(21).await;
    warm(&varnishes, &origin, "/products/42").await;
    warm(&varnishes, &origin, "/products/43").await;

    let answer = invalidate(&router, "PURGE", "/varnish/products/42", SITE, &[]).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.json);
    assert_eq!(answer.json["succeeded"], 3, "{}", answer.json);

    refetch(&varnishes, "/products/42").await;
    assert_eq!(
        origin.fetches(SITE, "/products/42"),
        6,
        "every cache refetched"
    );
    refetch(&varnishes, "/products/43").await;
    assert_eq!(
        origin.fetches(SITE, "/products/43"),
        3,
        "other objects stay cached"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_purge_for_another_host_leaves_the_sites_objects_cached() {
    let (origin, varnishes, _dns, router) = three_varnishes(39).await;
    warm(&varnishes, &origin, "/products/42").await;
    let answer = invalidate(
        &router,
        "PURGE",
        "/varnish/products/42",
        "api.example.com",
        &[],
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.json);
    refetch(&varnishes, "/products/42").await;
    assert_eq!(
        origin.fetches(SITE, "/products/42"),
        3,
        "the Host is part of the cache key: nothing of www.example.com was purged"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_ban_by_url_regex_removes_matching_objects_from_every_varnish() {
    let (origin, varnishes, _dns, router) = three_varnishes(24).await;
    for path in ["/products/1", "/products/2", "/about"] {
        warm(&varnishes, &origin, path).await;
    }

    let ban = [("x-ban-url", "^/products/")];
    let answer = invalidate(&router, "BAN", "/varnish/products", SITE, &ban).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.json);
    assert_eq!(answer.json["succeeded"], 3, "{}", answer.json);

    for path in ["/products/1", "/products/2", "/about"] {
        refetch(&varnishes, path).await;
    }
    assert_eq!(origin.fetches(SITE, "/products/1"), 6);
    assert_eq!(origin.fetches(SITE, "/products/2"), 6);
    assert_eq!(origin.fetches(SITE, "/about"), 3, "/about does not match");
}

#[tokio::test(flavor = "multi_thread")]
async fn one_surrogate_key_purges_every_tagged_object_in_every_varnish() {
    let (origin, varnishes, _dns, router) = three_varnishes(27).await;
    let tagged = [
        "/products/1?xkey=product-1+catalog",
        "/products/2?xkey=product-2+catalog",
    ];
    let other = "/about?xkey=about";
    for path in tagged.iter().chain([&other]) {
        warm(&varnishes, &origin, path).await;
    }

    let keys = [("xkey-purge", "catalog")];
    let answer = invalidate(&router, "PURGE", "/varnish/keys", SITE, &keys).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.json);
    for result in answer.json["results"].as_array().unwrap() {
        assert_eq!(result["body"], "Purged 2 objects", "{}", answer.json);
    }

    for path in tagged.iter().chain([&other]) {
        refetch(&varnishes, path).await;
    }
    for path in tagged {
        assert_eq!(origin.fetches(SITE, path), 6, "{path} was tagged");
    }
    assert_eq!(origin.fetches(SITE, other), 3, "{other} was not");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cache_that_is_down_is_named_and_the_others_are_still_purged() {
    let (origin, mut varnishes, _dns, router) = three_varnishes(30).await;
    warm(&varnishes, &origin, "/products/42").await;
    let mut down = varnishes.remove(1);
    down.stop();

    let answer = invalidate(&router, "PURGE", "/varnish/products/42", SITE, &[]).await;
    // The recipe's policy is `all`: one cache missing the purge fails it.
    assert_eq!(answer.status, StatusCode::BAD_GATEWAY, "{}", answer.json);
    assert_eq!(answer.json["ok"], false);
    assert_eq!(
        (
            answer.json["succeeded"].as_u64(),
            answer.json["failed"].as_u64()
        ),
        (Some(2), Some(1))
    );
    let failed = answer.result(down.addr);
    assert_eq!(failed["error"], "connect", "{}", answer.json);
    for up in &varnishes {
        assert_eq!(answer.result(up.addr)["status"], 200, "{}", answer.json);
    }

    refetch(&varnishes, "/products/42").await;
    assert_eq!(
        origin.fetches(SITE, "/products/42"),
        5,
        "both live caches refetched"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn one_purge_empties_every_nginx_cache() {
    let origin = Origin::start().await;
    let ips = loopback(33, 3);
    let port = caches::free_port(&ips);
    let nginxes = caches::nginx("nginx/purge.conf", &ips, port, &origin).await;
    let dns = TestDns::start().await;
    let router = recipe_router(
        "nginx/router.toml",
        8080,
        port,
        &dns,
        "nginx.web.svc.cluster.local",
        &ips,
    )
    .await;
    warm(&nginxes, &origin, "/products/42").await;
    warm(&nginxes, &origin, "/products/43").await;

    // The route sends its fixed Host, whatever the client called it.
    let answer = invalidate(&router, "PURGE", "/nginx/products/42", "router.local", &[]).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.json);
    assert_eq!(answer.json["succeeded"], 3, "{}", answer.json);

    refetch(&nginxes, "/products/42").await;
    assert_eq!(
        origin.fetches(SITE, "/products/42"),
        6,
        "every cache refetched"
    );
    refetch(&nginxes, "/products/43").await;
    assert_eq!(
        origin.fetches(SITE, "/products/43"),
        3,
        "other objects stay cached"
    );
}

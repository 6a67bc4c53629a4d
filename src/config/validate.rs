//! Semantic checks that the TOML types alone cannot express.
//!
//! Every check records its problem and carries on, so one run of
//! `broadcast-router check` lists everything that needs fixing.

mod route;

use std::collections::HashMap;
use std::time::Duration;

use super::Config;
use super::load::{Sink, Spans};
use super::route::{RouteConfig, RouteTable};
use route::{PathTable, RouteCheck};

/// Checks `config`'s tables and each route table, and parses every route
/// into its typed [`RouteConfig`]. A route whose values cannot all be
/// parsed has at least one problem recorded and yields nothing.
pub(super) fn validate(
    config: &Config,
    tables: Vec<RouteTable>,
    spans: &Spans<'_>,
    sink: &mut Sink<'_>,
) -> Vec<RouteConfig> {
    if config.server.listen == config.server.admin_listen && config.server.listen.port() != 0 {
        sink.push(
            spans.section("server", "admin_listen"),
            "`admin_listen` must differ from `listen`: admin endpoints are never mixed with routes",
        );
    }
    if config.server.max_body_bytes.as_u64() == 0 {
        sink.push(
            spans.section("server", "max_body_bytes"),
            "`max_body_bytes` must be larger than 0",
        );
    }
    let server = &config.server;
    if server.max_header_count == 0 {
        sink.push(
            spans.section("server", "max_header_count"),
            "`max_header_count` must be at least 1",
        );
    }
    if server.client_timeout.is_zero() {
        sink.push(
            spans.section("server", "client_timeout"),
            "`client_timeout` must be larger than 0",
        );
    }
    if server.max_in_flight_deliveries == 0 {
        sink.push(
            spans.section("server", "max_in_flight_deliveries"),
            "`max_in_flight_deliveries` must be at least 1",
        );
    }
    for name in &server.admin_auth {
        if !config.tokens.contains_key(name) {
            sink.push(
                spans.section("server", "admin_auth"),
                unknown_token_set(name, config),
            );
        }
    }
    for (name, set) in &config.tokens {
        if set.file.is_some() == set.env.is_some() {
            sink.push(
                spans.section("tokens", name),
                format!("token set \"{name}\": give exactly one of `file` or `env`"),
            );
        }
    }

    let dns = &config.dns;
    if dns.min_ttl > dns.max_ttl {
        sink.push(
            spans.section("dns", "min_ttl"),
            format!(
                "`min_ttl` ({}) is larger than `max_ttl` ({})",
                humantime::format_duration(dns.min_ttl),
                humantime::format_duration(dns.max_ttl)
            ),
        );
    }
    if dns.max_ttl.is_zero() {
        sink.push(
            spans.section("dns", "max_ttl"),
            "`max_ttl` must be larger than 0",
        );
    }
    if dns.timeout.is_zero() {
        sink.push(
            spans.section("dns", "timeout"),
            "`timeout` must be larger than 0",
        );
    }
    if dns.attempts == 0 {
        sink.push(
            spans.section("dns", "attempts"),
            "`attempts` must be at least 1",
        );
    }
    if config.kubernetes.max_watches == 0 {
        sink.push(
            spans.section("kubernetes", "max_watches"),
            "`max_watches` must be at least 1",
        );
    }

    if let Some(jobs) = &config.jobs {
        check_jobs(jobs, spans, sink);
    }

    for (name, plugin) in &config.plugins {
        let span = spans.section("plugins", name);
        let memory = plugin.memory.as_u64();
        if !(bytesize::ByteSize::mib(1).as_u64()..=bytesize::ByteSize::gib(1).as_u64())
            .contains(&memory)
        {
            sink.push(
                span.clone(),
                format!("plugin \"{name}\": `memory` must be between 1MiB and 1GiB"),
            );
        }
        if plugin.hook_timeout.is_zero() || plugin.hook_timeout > Duration::from_secs(5) {
            sink.push(
                span,
                format!("plugin \"{name}\": `hook_timeout` must be between 1ms and 5s"),
            );
        }
    }

    let mut names = HashMap::new();
    let mut paths = PathTable::default();
    let mut routes = Vec::with_capacity(tables.len());
    for (index, route) in tables.into_iter().enumerate() {
        let mut check = RouteCheck {
            index,
            route: &route,
            spans,
            sink: &mut *sink,
        };
        check.name(&mut names);
        let methods = check.methods();
        check.path(&mut paths, methods.as_ref());
        let host = check.host();
        check.pacing();
        let source = check.targets();
        let allow_services = check.allow_services();
        check.upstream_path();
        check.limits();
        let report_to = check.delivery();
        check.plugins(&config.plugins);
        check.admission(config, source.as_ref());
        check.scheme();
        if let (Some(methods), Some(host), Some(source), Some(allow_services), Some(report_to)) =
            (methods, host, source, allow_services, report_to)
        {
            routes.push(RouteConfig {
                table: route,
                methods,
                host,
                source,
                allow_services,
                report_to,
            });
        }
    }
    routes
}

/// The problem of a reference to a token set that is not defined.
/// `[jobs]`: one store, a usable Redis URL, bounds above zero.
fn check_jobs(jobs: &super::JobsConfig, spans: &Spans<'_>, sink: &mut Sink<'_>) {
    match (&jobs.path, &jobs.redis) {
        (Some(_), Some(_)) => sink.push(
            spans.section("jobs", "redis"),
            "`path` and `redis` are exclusive: give the embedded store's file or a Redis URL, not both",
        ),
        (None, None) => sink.push(
            spans.section("jobs", "path"),
            "[jobs] needs `path` (the embedded store's file) or `redis` (a Redis URL); without [jobs], jobs are kept in memory",
        ),
        (Some(path), None) if path.as_os_str().is_empty() => {
            sink.push(spans.section("jobs", "path"), "`path` must not be empty");
        }
        (None, Some(url)) if !(url.starts_with("redis://") || url.starts_with("rediss://")) => {
            sink.push(
                spans.section("jobs", "redis"),
                format!("`redis` must be a redis:// or rediss:// URL, got `{url}`"),
            );
        }
        _ => {}
    }
    for (key, zero) in [
        ("retention", jobs.retention.is_zero()),
        ("max_pending", jobs.max_pending == 0),
        ("max_bytes", jobs.max_bytes.as_u64() == 0),
        ("lease", jobs.lease < Duration::from_millis(300)),
    ] {
        if zero {
            let least = if key == "lease" {
                "at least 300ms"
            } else {
                "larger than 0"
            };
            sink.push(
                spans.section("jobs", key),
                format!("`{key}` must be {least}"),
            );
        }
    }
}

fn unknown_token_set(name: &str, config: &Config) -> String {
    let known: Vec<&str> = config.tokens.keys().map(String::as_str).collect();
    format!(
        "no token set named `{name}`; define it in a [tokens.{name}] table (defined: {})",
        if known.is_empty() {
            "none".to_owned()
        } else {
            known.join(", ")
        }
    )
}

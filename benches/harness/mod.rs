//! The router-level benchmark: router throughput and latency against a
//! direct fan-out baseline, entirely on loopback.
//!
//! For each pod count it starts the pods ([`pods`]: small hyper servers on
//! `127.0.<block>.1…` sharing one port) and a name server answering the
//! headless Service with all of them ([`dns`]). For each body size and
//! policy it first measures the baseline — the load generator ([`load`])
//! sending every pod its copy itself — and then, for each plugin setting,
//! starts the router binary on a fresh configuration ([`router`]) and
//! measures the same load through it. Each phase has an unmeasured warm-up,
//! a measured part with `clients` closed-loop clients, and a one-client
//! probe for unloaded latency. The pods check that every broadcast reached
//! every pod exactly once. [`report`] turns it all into JSON and Markdown.

pub mod dns;
pub mod load;
pub mod pods;
pub mod report;
pub mod router;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use anyhow::Context;
use bytes::Bytes;

use self::load::{Load, Measured, Target};
use self::pods::Pods;
use self::report::{Phase, Process, Report, Scenario};
use self::router::{Router, RssTrend};

/// The route's verdict policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Policy {
    /// Answer when every pod has answered.
    All,
    /// Answer at the first success.
    First,
}

impl Policy {
    fn name(self) -> &'static str {
        match self {
            Policy::All => "all",
            Policy::First => "first",
        }
    }
}

/// The route's plugin chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Plugins {
    /// No plugins.
    Off,
    /// The `stress` test plugin configured as a no-op: all three hooks,
    /// no work (the host's own cost).
    Noop,
    /// The three examples chained: shard-filter (keeping every pod),
    /// hmac-sign and quorum-merge (requiring every pod).
    Chain,
}

impl Plugins {
    fn name(self) -> &'static str {
        match self {
            Plugins::Off => "off",
            Plugins::Noop => "noop",
            Plugins::Chain => "chain",
        }
    }
}

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Pod counts.
    pub pods: Vec<usize>,
    /// Policies.
    pub policies: Vec<Policy>,
    /// Plugin settings.
    pub plugins: Vec<Plugins>,
    /// Request body sizes in bytes.
    pub bodies: Vec<usize>,
    /// Concurrent closed-loop clients.
    pub clients: usize,
    /// Length of each measured phase.
    pub duration: Duration,
    /// Unmeasured warm-up before each measured phase.
    pub warmup: Duration,
    /// One-client latency probe after each measured phase (zero: none).
    pub probe: Duration,
    /// The route's per-broadcast `concurrency` (and the baseline's).
    pub concurrency: usize,
    /// The router binaries; every scenario runs through each.
    pub routers: Vec<PathBuf>,
    /// The repository (for `git` and `plugins/build.sh`).
    pub repo: PathBuf,
    /// Pods live on `127.0.<pod_block>.1` onwards (250 per /24).
    pub pod_block: u8,
    /// The command line, for the report.
    pub command: String,
}

/// Runs every scenario; `progress` gets one line per finished phase.
pub async fn run(options: &Options, progress: impl Fn(&str)) -> anyhow::Result<Report> {
    let plugin_dir = if options.plugins.iter().any(|p| *p != Plugins::Off) {
        Some(build_plugins(&options.repo)?)
    } else {
        None
    };
    let work = tempfile::tempdir()?;
    // Run private copies: a rebuild of the shared target/ during the run
    // must not change a router between scenarios.
    let mut binaries = Vec::new();
    for (index, router) in options.routers.iter().enumerate() {
        let binary = work.path().join(format!("broadcast-router-{index}"));
        std::fs::copy(router, &binary)
            .with_context(|| format!("cannot copy {}", router.display()))?;
        binaries.push((router.display().to_string(), binary));
    }
    let ids = Arc::new(AtomicU64::new(1));
    let mut report = Report {
        started: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
        commit: commit(&options.repo),
        cores: std::thread::available_parallelism().map_or(1, usize::from),
        command: options.command.clone(),
        load_generator: "built-in closed-loop Rust clients (hyper HTTP/1.1 keep-alive to the \
                         router; reqwest fan-out for the baseline)"
            .to_owned(),
        clients: options.clients,
        duration_s: options.duration.as_secs_f64(),
        warmup_s: options.warmup.as_secs_f64(),
        probe_s: options.probe.as_secs_f64(),
        per_broadcast_concurrency: options.concurrency,
        router_log: "default (info), JSON lines to a file".to_owned(),
        scenarios: Vec::new(),
    };
    for &count in &options.pods {
        let pods = Pods::start(options.pod_block, count).await?;
        let dns = dns::BenchDns::start(pods.ips(), 30).await?;
        progress(&format!(
            "{count} pod(s) on {}… port {}, DNS on {}",
            pods.addrs[0].ip(),
            pods.port,
            dns.addr()
        ));
        for &body_len in &options.bodies {
            let body = json_body(body_len);
            let single = Load {
                clients: options.clients,
                duration: options.duration,
                body: body.clone(),
            };
            let direct_pod = one_pod(&single, options.warmup, &pods, &ids).await;
            progress(&format!(
                "P={count} body={body_len} one pod directly: {}",
                summary(&direct_pod)
            ));
            for &policy in &options.policies {
                let direct = Target::Direct {
                    urls: pods
                        .addrs
                        .iter()
                        .map(|addr| format!("http://{addr}/bench"))
                        .collect(),
                    concurrency: options.concurrency,
                    first: policy == Policy::First,
                };
                let label = format!("P={count} {} body={body_len}", policy.name());
                let load = Load {
                    clients: options.clients,
                    duration: options.duration,
                    body: body.clone(),
                };
                warm_up(&direct, &load, options.warmup, &pods, &ids).await;
                let (baseline, _) = measure(&direct, &load, &pods, &ids).await;
                progress(&format!("{label} baseline: {}", summary(&baseline)));
                let baseline_probe = probe(&direct, &load, options.probe, &pods, &ids).await;
                for (&plugins, (build, binary)) in options
                    .plugins
                    .iter()
                    .flat_map(|plugins| binaries.iter().map(move |binary| (plugins, binary)))
                {
                    let config = router_config(
                        dns.addr(),
                        pods.port,
                        policy,
                        plugins,
                        count,
                        options.concurrency,
                        plugin_dir.as_deref(),
                    );
                    let dir = work.path().join(format!(
                        "p{count}-{}-{}-{body_len}-{}",
                        policy.name(),
                        plugins.name(),
                        binary
                            .file_name()
                            .map(|name| name.to_string_lossy().into_owned())
                            .unwrap_or_default()
                    ));
                    std::fs::create_dir_all(&dir)?;
                    let (router, router_probe, process) =
                        through_router(options, binary, &config, &dir, &load, &pods, &ids).await?;
                    let loopback_share = router.broadcasts_per_s * count as f64
                        / direct_pod.broadcasts_per_s.max(f64::MIN_POSITIVE);
                    progress(&format!(
                        "{label} plugins={} router {build}: {} ({:.0}% of baseline, {:.0}% of the loopback limit; {:.0} µs CPU/bcast, peak {} MiB)",
                        plugins.name(),
                        summary(&router),
                        100.0 * router.broadcasts_per_s
                            / baseline.broadcasts_per_s.max(f64::MIN_POSITIVE),
                        100.0 * loopback_share,
                        process.cpu_us_per_broadcast,
                        process.peak_rss_kib / 1024
                    ));
                    let added_p50_us = match (&router_probe, &baseline_probe) {
                        (Some(router), Some(baseline)) => {
                            Some(router.latency_us.p50 - baseline.latency_us.p50)
                        }
                        _ => None,
                    };
                    report.scenarios.push(Scenario {
                        build: build.clone(),
                        direct_pod: direct_pod.clone(),
                        loopback_share,
                        pods: count,
                        policy: policy.name().to_owned(),
                        plugins: plugins.name().to_owned(),
                        body_bytes: body_len,
                        ratio: router.broadcasts_per_s
                            / baseline.broadcasts_per_s.max(f64::MIN_POSITIVE),
                        baseline: baseline.clone(),
                        router,
                        baseline_probe: baseline_probe.clone(),
                        router_probe,
                        added_p50_us,
                        process,
                    });
                }
            }
        }
        dns.stop().await;
        drop(pods);
        // Let the pods' connections close before the next set binds.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(report)
}

/// One scenario through a fresh router process: warm-up, the loaded
/// phase (with the process's CPU time, memory and in-flight broadcasts),
/// the one-client probe, then SIGTERM.
async fn through_router(
    options: &Options,
    binary: &Path,
    config: &str,
    dir: &Path,
    load: &Load,
    pods: &Pods,
    ids: &Arc<AtomicU64>,
) -> anyhow::Result<(Phase, Option<Phase>, Process)> {
    let router = Router::start(binary, dir, config).await?;
    let target = Target::Router {
        addr: router.addr,
        path: "/bench".to_owned(),
    };
    let start_rss = router.memory().rss_kib;
    warm_up(&target, load, options.warmup, pods, ids).await;
    let idle_rss = router.memory().rss_kib;
    router.reset_peak();
    let in_flight = AtomicU64::new(0);
    let open_files = AtomicU64::new(router.open_files());
    let rss = std::sync::Mutex::new(RssTrend::default());
    let cpu_before = router.cpu_time();
    let sample = async {
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            rss.lock()
                .expect("rss lock")
                .sample(router.memory().rss_kib);
            if let Some(now) = router
                .metric("broadcast_router_broadcasts_in_flight", |_| true)
                .await
            {
                in_flight.fetch_max(now as u64, Ordering::Relaxed);
            }
            open_files.fetch_max(router.open_files(), Ordering::Relaxed);
        }
    };
    let (mut phase, elapsed) = tokio::select! {
        measured = measure(&target, load, pods, ids) => measured,
        () = sample => unreachable!("sampling never ends"),
    };
    let cpu = router.cpu_time().saturating_sub(cpu_before);
    phase.other_cpu_cores =
        (phase.other_cpu_cores - cpu.as_secs_f64() / phase.window_s.max(1e-9)).max(0.0);
    let memory = router.memory();
    let probe_phase = probe(&target, load, options.probe, pods, ids).await;
    let delivery_failures = router
        .metric("broadcast_router_deliveries_total", |labels| {
            !labels.contains("outcome=\"success\"")
        })
        .await
        .unwrap_or(0.0) as u64;
    let (warnings, first_warnings) = router.warnings(3);
    for line in &first_warnings {
        eprintln!("  router warning: {line}");
    }
    let status = router.stop().await?;
    let max_in_flight = in_flight.load(Ordering::Relaxed);
    let process = Process {
        cpu_us_per_broadcast: cpu.as_secs_f64() * 1e6 / (phase.broadcasts.max(1) as f64),
        cpu_cores: cpu.as_secs_f64() / elapsed.as_secs_f64().max(1e-9),
        start_rss_kib: start_rss,
        idle_rss_kib: idle_rss,
        peak_rss_kib: memory.peak_kib,
        end_rss_kib: memory.rss_kib,
        rss_slope_mib_per_min: rss.into_inner().expect("rss lock").slope_mib_per_min(),
        max_in_flight,
        max_open_files: open_files.load(Ordering::Relaxed),
        kib_per_in_flight: memory.peak_kib.saturating_sub(start_rss) as f64
            / max_in_flight.max(1) as f64,
        delivery_failures,
        warnings,
        clean_exit: status.success(),
    };
    Ok((phase, probe_phase, process))
}

/// The same load sent straight to one pod, one request per "broadcast"
/// (after a warm-up): what one pod can take on this machine, the unit of
/// the loopback limit.
async fn one_pod(load: &Load, warmup: Duration, pods: &Pods, ids: &Arc<AtomicU64>) -> Phase {
    let target = Target::Router {
        addr: pods.addrs[0],
        path: "/bench".to_owned(),
    };
    if !warmup.is_zero() {
        let warm = Load {
            duration: warmup,
            ..load.clone()
        };
        load::run(&target, &warm, ids).await;
    }
    let before = pods.tallies()[0];
    let measured = load::run(&target, load, ids).await;
    let after = pods.tallies()[0];
    let seconds = measured.elapsed.as_secs_f64().max(1e-9);
    phase(
        load,
        &measured,
        after.count - before.count,
        after.since(before) == measured.issued,
        Window {
            harness_cpu: Duration::ZERO,
            seconds,
            others: Duration::ZERO,
        },
    )
}

/// What a measured window cost the harness and the rest of the machine.
struct Window {
    harness_cpu: Duration,
    seconds: f64,
    others: Duration,
}

/// A phase's figures from what the load generator measured and what the
/// pods received.
fn phase(
    load: &Load,
    measured: &Measured,
    deliveries: u64,
    exactly_once: bool,
    window: Window,
) -> Phase {
    let seconds = measured.elapsed.as_secs_f64().max(1e-9);
    Phase {
        clients: load.clients,
        elapsed_s: seconds,
        broadcasts: measured.ok,
        errors: measured.errors,
        refused: measured.refused,
        first_error: measured.first_error.clone(),
        broadcasts_per_s: measured.ok as f64 / seconds,
        deliveries,
        deliveries_per_s: deliveries as f64 / seconds,
        latency_us: load::Percentiles::of(&measured.latencies),
        exactly_once,
        harness_cpu_us_per_broadcast: window.harness_cpu.as_secs_f64() * 1e6
            / (measured.ok.max(1) as f64),
        window_s: window.seconds,
        other_cpu_cores: window.others.as_secs_f64() / window.seconds,
    }
}

/// Unmeasured load, then waits for the pods to have every copy.
async fn warm_up(
    target: &Target,
    load: &Load,
    duration: Duration,
    pods: &Pods,
    ids: &Arc<AtomicU64>,
) {
    if duration.is_zero() {
        return;
    }
    let before = pods.total();
    let warm = Load {
        duration,
        ..load.clone()
    };
    let measured = load::run(target, &warm, ids).await;
    let expected = before + measured.issued.count * pods.addrs.len() as u64;
    pods.settle(expected, Duration::from_secs(10)).await;
}

/// The one-client probe, unless its duration is zero.
async fn probe(
    target: &Target,
    load: &Load,
    duration: Duration,
    pods: &Pods,
    ids: &Arc<AtomicU64>,
) -> Option<Phase> {
    if duration.is_zero() {
        return None;
    }
    let one = Load {
        clients: 1,
        duration,
        ..load.clone()
    };
    Some(measure(target, &one, pods, ids).await.0)
}

/// One measured phase; also returns its elapsed time.
async fn measure(
    target: &Target,
    load: &Load,
    pods: &Pods,
    ids: &Arc<AtomicU64>,
) -> (Phase, Duration) {
    let before = pods.tallies();
    let total_before: u64 = before.iter().map(|tally| tally.count).sum();
    let window = std::time::Instant::now();
    let busy_before = router::busy_cpu_time();
    let cpu_before = router::cpu_time(std::process::id()).unwrap_or_default();
    let measured: Measured = load::run(target, load, ids).await;
    let expected = total_before + measured.issued.count * pods.addrs.len() as u64;
    let settled = pods.settle(expected, Duration::from_secs(10)).await;
    let harness_cpu = router::cpu_time(std::process::id())
        .unwrap_or_default()
        .saturating_sub(cpu_before);
    let window = window.elapsed().as_secs_f64().max(1e-9);
    let others = router::busy_cpu_time()
        .saturating_sub(busy_before)
        .saturating_sub(harness_cpu);
    let after = pods.tallies();
    let exactly_once = settled
        && after
            .iter()
            .zip(&before)
            .all(|(after, before)| after.since(*before) == measured.issued);
    let deliveries: u64 = after.iter().map(|tally| tally.count).sum::<u64>() - total_before;
    let phase = phase(
        load,
        &measured,
        deliveries,
        exactly_once,
        Window {
            harness_cpu,
            seconds: window,
            others,
        },
    );
    (phase, measured.elapsed)
}

fn summary(phase: &Phase) -> String {
    let mut text = format!(
        "{:.0} bcast/s, {:.0} deliveries/s, p50 {:.0} µs, p99 {:.0} µs, {} error(s), {} refused{}",
        phase.broadcasts_per_s,
        phase.deliveries_per_s,
        phase.latency_us.p50,
        phase.latency_us.p99,
        phase.errors,
        phase.refused,
        if phase.exactly_once {
            ""
        } else {
            ", NOT exactly once"
        }
    );
    if let Some(error) = &phase.first_error {
        text.push_str(&format!(" (first: {error})"));
    }
    text
}

/// A JSON object body of exactly `len` bytes (plain `x`s below 32 bytes).
pub fn json_body(len: usize) -> Bytes {
    const HEAD: &str = r#"{"key":"user:42","pad":""#;
    const TAIL: &str = r#""}"#;
    if len < 32 {
        return Bytes::from(vec![b'x'; len]);
    }
    let mut body = String::with_capacity(len);
    body.push_str(HEAD);
    body.extend(std::iter::repeat_n('x', len - HEAD.len() - TAIL.len()));
    body.push_str(TAIL);
    Bytes::from(body)
}

/// The router's configuration for one scenario.
fn router_config(
    dns: std::net::SocketAddr,
    port: u16,
    policy: Policy,
    plugins: Plugins,
    pods: usize,
    concurrency: usize,
    plugin_dir: Option<&Path>,
) -> String {
    let mut text = format!(
        r#"[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
max_body_bytes = "1MiB"
shutdown_grace = "30s"

[dns]
nameservers = ["{dns}"]
min_ttl = "1s"
max_ttl = "30s"
"#
    );
    let dir = plugin_dir.map(|dir| dir.display().to_string());
    let chain = match (plugins, &dir) {
        (Plugins::Off, _) | (_, None) => String::new(),
        (Plugins::Noop, Some(dir)) => {
            // A generous hook timeout: on two busy cores a hook can be
            // preempted, and this measures cost, not the limit.
            text.push_str(&format!(
                "\n[plugins.noop]\npath = \"{dir}/stress.wasm\"\nhook_timeout = \"100ms\"\n"
            ));
            "plugins = [{ use = \"noop\" }]\n".to_owned()
        }
        (Plugins::Chain, Some(dir)) => {
            for (name, file) in [
                ("shard", "shard_filter"),
                ("sign", "hmac_sign"),
                ("merge", "quorum_merge"),
            ] {
                text.push_str(&format!(
                    "\n[plugins.{name}]\npath = \"{dir}/{file}.wasm\"\nhook_timeout = \"100ms\"\n"
                ));
            }
            format!(
                "plugins = [\n  {{ use = \"shard\", config = {{ replicas = {pods} }} }},\n  \
                 {{ use = \"sign\", config = {{ secret = \"bench-secret\" }} }},\n  \
                 {{ use = \"merge\", config = {{ quorum = \"100%\" }} }},\n]\n"
            )
        }
    };
    text.push_str(&format!(
        r#"
[[routes]]
name = "bench"
path = "/bench"
service = "{service}"
port = {port}
policy = "{policy}"
concurrency = {concurrency}
{chain}"#,
        service = dns::SERVICE,
        policy = policy.name(),
    ));
    text
}

/// Builds the plugins with `plugins/build.sh`; returns `plugins/build`.
fn build_plugins(repo: &Path) -> anyhow::Result<PathBuf> {
    let status = Command::new("bash")
        .arg(repo.join("plugins/build.sh"))
        .current_dir(repo)
        .stdout(std::process::Stdio::null())
        .status()
        .context("cannot run plugins/build.sh")?;
    anyhow::ensure!(status.success(), "plugins/build.sh failed");
    Ok(repo.join("plugins/build"))
}

/// The short commit of `repo`'s HEAD, `+dirty` with uncommitted changes
/// to tracked files.
fn commit(repo: &Path) -> String {
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .current_dir(repo)
            .output()
            .ok()
            .filter(|output| output.status.success())
            .map(|output| String::from_utf8_lossy(&output.stdout).trim().to_owned())
    };
    let head = git(&["rev-parse", "--short=10", "HEAD"]).unwrap_or_else(|| "unknown".to_owned());
    match git(&["status", "--porcelain", "--untracked-files=no"]) {
        Some(changes) if !changes.is_empty() => format!("{head}+dirty"),
        _ => head,
    }
}

//! `cargo bench --bench coalesce`: how many broadcasts reach the pods when
//! clients send the same purge 1,000 times a second, without coalescing
//! and with `coalesce` windows of 5, 20 and 100 ms.
//!
//! Everything runs in one process on loopback: three counting pods on
//! 127.0.0.2–4, the router (the library, in-process), and an open-loop
//! client that starts one identical `PURGE` every millisecond whatever the
//! answers do. The pods count the broadcasts they receive; the figure is
//! broadcasts per second at one pod.
//!
//! ```sh
//! cargo bench --bench coalesce                      # 5 s per window
//! cargo bench --bench coalesce -- --duration 20s --rate 1000
//! ```
//!
//! Writes `bench/results/coalesce-<time>-<commit>.md` and
//! `bench/results/coalesce-latest.md`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use broadcast_router::config::Config;
use broadcast_router::server;
use clap::Parser;

/// Identical purges per second into the router; broadcasts out.
#[derive(Parser)]
#[command(about)]
struct Cli {
    /// Identical requests per second (open loop).
    #[arg(long, default_value_t = 1000)]
    rate: u32,
    /// Length of each measured phase.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// `coalesce` windows to measure; `off` measures without.
    #[arg(long, value_delimiter = ',', default_value = "off,5ms,20ms,100ms")]
    windows: Vec<String>,
    /// Where results are written.
    #[arg(long, default_value = "bench/results")]
    out: PathBuf,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

/// One measured phase.
struct Phase {
    window: String,
    sent: usize,
    answered_ok: usize,
    other: usize,
    broadcasts_at_pod: usize,
    elapsed: Duration,
    latency_ms: (f64, f64, f64),
}

fn main() {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let phases: Vec<Phase> = cli
        .windows
        .iter()
        .map(|window| runtime.block_on(phase(window, cli.rate, cli.duration)))
        .collect();
    let report = markdown(&cli, &phases);
    print!("{report}");
    std::fs::create_dir_all(&cli.out).expect("results directory");
    let stamp = humantime::format_rfc3339_seconds(SystemTime::now())
        .to_string()
        .replace([':', '-'], "");
    let file = cli.out.join(format!("coalesce-{stamp}-{}.md", commit()));
    std::fs::write(&file, &report).expect("write the results");
    std::fs::write(cli.out.join("coalesce-latest.md"), &report).expect("write latest");
    eprintln!("written to {}", file.display());
}

/// Sends `rate` identical purges a second for `duration` through a route
/// with `coalesce = window` (or none) and counts what reaches the pods.
async fn phase(window: &str, rate: u32, duration: Duration) -> Phase {
    let received = Arc::new(AtomicUsize::new(0));
    let ips: Vec<IpAddr> = (2..5)
        .map(|last| IpAddr::V4(Ipv4Addr::new(127, 0, 0, last)))
        .collect();
    let port = pods(&ips, &received).await;
    let targets: Vec<String> = ips
        .iter()
        .map(|ip| format!("\"{}\"", SocketAddr::new(*ip, port)))
        .collect();
    let coalesce = match window {
        "off" => String::new(),
        window => format!("coalesce = \"{window}\"\n"),
    };
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n\n[[routes]]\nname = \"purge\"\npath = \"/purge/{{*url}}\"\nmethods = [\"PURGE\"]\nupstream_path = \"/{{url}}\"\nhost = \"client\"\ntargets = [{}]\n{coalesce}",
        targets.join(", ")
    );
    let config = Config::parse(&config).unwrap_or_else(|problems| panic!("{problems}"));
    let running = server::start(&config).await.expect("router starts");
    let url = format!("http://{}/purge/products/42", running.addr);
    let client = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(512)
        .build()
        .unwrap();
    let purge = reqwest::Method::from_bytes(b"PURGE").unwrap();

    let ok = Arc::new(AtomicUsize::new(0));
    let other = Arc::new(AtomicUsize::new(0));
    let latencies = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut ticker = tokio::time::interval(Duration::from_secs(1) / rate);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let started = Instant::now();
    let mut requests = tokio::task::JoinSet::new();
    let mut sent = 0;
    while started.elapsed() < duration {
        ticker.tick().await;
        sent += 1;
        let request = client
            .request(purge.clone(), &url)
            .header("host", "www.example.com");
        let (ok, other, latencies) = (ok.clone(), other.clone(), latencies.clone());
        requests.spawn(async move {
            let begun = Instant::now();
            match request.send().await {
                Ok(response) if response.status().is_success() => {
                    let _ = response.bytes().await;
                    ok.fetch_add(1, Ordering::Relaxed);
                }
                _ => {
                    other.fetch_add(1, Ordering::Relaxed);
                }
            }
            latencies.lock().unwrap().push(begun.elapsed());
        });
    }
    let elapsed = started.elapsed();
    while requests.join_next().await.is_some() {}
    running.shutdown().await;

    let mut latencies = std::mem::take(&mut *latencies.lock().unwrap());
    latencies.sort();
    let percentile = |p: f64| {
        latencies
            .get(((latencies.len() as f64 - 1.0) * p) as usize)
            .map_or(0.0, |latency| latency.as_secs_f64() * 1e3)
    };
    Phase {
        window: window.to_owned(),
        sent,
        answered_ok: ok.load(Ordering::Relaxed),
        other: other.load(Ordering::Relaxed),
        // Every broadcast reaches each of the three pods once.
        broadcasts_at_pod: received.load(Ordering::Relaxed) / ips.len(),
        elapsed,
        latency_ms: (percentile(0.5), percentile(0.99), percentile(1.0)),
    }
}

/// Starts one counting pod per address, all on one port; returns it.
async fn pods(ips: &[IpAddr], received: &Arc<AtomicUsize>) -> u16 {
    'port: for _ in 0..50 {
        let first = tokio::net::TcpListener::bind((ips[0], 0)).await.unwrap();
        let port = first.local_addr().unwrap().port();
        let mut listeners = vec![first];
        for ip in &ips[1..] {
            match tokio::net::TcpListener::bind((*ip, port)).await {
                Ok(listener) => listeners.push(listener),
                Err(_) => continue 'port,
            }
        }
        for listener in listeners {
            let received = received.clone();
            let app = axum::Router::new().fallback(move || {
                received.fetch_add(1, Ordering::Relaxed);
                async { "Purged" }
            });
            tokio::spawn(async move { axum::serve(listener, app).await });
        }
        return port;
    }
    panic!("no port free on all of {ips:?}");
}

fn markdown(cli: &Cli, phases: &[Phase]) -> String {
    let mut text = format!(
        "# Coalescing benchmark, {}\n\nCommit `{}`. `cargo bench --bench coalesce -- --rate {} --duration {}`: an open-loop client sends {} identical `PURGE` requests per second (same path, `Host: www.example.com`, no body) to a `host = \"client\"` route over 3 loopback pods, for {} per phase; the pods count what they receive. Router, client and pods share the machine's cores.\n\n| `coalesce` | requests sent | sent/s | answered 2xx | other | broadcasts at each pod | **broadcasts/s** | requests per broadcast | answer p50 / p99 / max ms |\n|---|---:|---:|---:|---:|---:|---:|---:|---|\n",
        humantime::format_rfc3339_seconds(SystemTime::now()),
        commit(),
        cli.rate,
        humantime::format_duration(cli.duration),
        cli.rate,
        humantime::format_duration(cli.duration),
    );
    for phase in phases {
        let seconds = phase.elapsed.as_secs_f64();
        text.push_str(&format!(
            "| {} | {} | {:.0} | {} | {} | {} | **{:.1}** | {:.1} | {:.1} / {:.1} / {:.1} |\n",
            phase.window,
            phase.sent,
            phase.sent as f64 / seconds,
            phase.answered_ok,
            phase.other,
            phase.broadcasts_at_pod,
            phase.broadcasts_at_pod as f64 / seconds,
            phase.sent as f64 / phase.broadcasts_at_pod.max(1) as f64,
            phase.latency_ms.0,
            phase.latency_ms.1,
            phase.latency_ms.2,
        ));
    }
    text.push_str("\nA window of W lets at most one broadcast start per W (1 s / 20 ms = 50 per second); every request is answered with the report of the broadcast it shared, after up to W of waiting plus the broadcast itself.\n");
    text
}

/// The short commit of the working tree, `+dirty` with uncommitted
/// changes.
fn commit() -> String {
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|output| output.status.success())
            .map(|output| String::from_utf8_lossy(&output.stdout).trim().to_owned())
    };
    let hash = git(&["rev-parse", "--short=10", "HEAD"]).unwrap_or_else(|| "unknown".into());
    let dirty = git(&["status", "--porcelain", "--untracked-files=no"])
        .is_some_and(|status| !status.is_empty());
    if dirty { format!("{hash}+dirty") } else { hash }
}

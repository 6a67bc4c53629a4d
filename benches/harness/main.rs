//! `cargo bench --bench harness`: router throughput and latency against a
//! direct fan-out baseline, at 1 to 1,000 pods, entirely on loopback.
//!
//! ```sh
//! cargo bench --bench harness -- --duration 5s
//! cargo bench --bench harness -- --pods 10 --policies all --plugins off --bodies 100 --duration 60s
//! cargo bench --bench harness -- --router old/broadcast-router --router target/release/broadcast-router
//! ```
//!
//! Besides the fan-out baseline, each pod count gets a "direct" phase: the
//! same load sent straight to one pod. A broadcast to P pods costs at least
//! P such requests, so `router broadcasts/s × P ÷ direct requests/s` is the
//! share of that loopback limit the router reaches.
//!
//! Writes `bench/results/<time>-<commit>.{json,md}` and
//! `bench/results/latest.md`. See `--help` and `docs/performance.md`
//! (how to run it); the pieces are in this directory's modules.

#[path = "mod.rs"]
mod harness;

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use harness::{Options, Plugins, Policy};

/// Router throughput and latency against a direct fan-out baseline.
#[derive(Parser)]
#[command(about)]
struct Cli {
    /// Pod counts.
    #[arg(long, value_delimiter = ',', default_value = "1,10,100,1000")]
    pods: Vec<usize>,
    /// Verdict policies.
    #[arg(long, value_delimiter = ',', default_value = "all,first")]
    policies: Vec<Policy>,
    /// Plugin chains: off, noop (the stress plugin doing nothing in all
    /// three hooks), chain (shard-filter + hmac-sign + quorum-merge).
    #[arg(long, value_delimiter = ',', default_value = "off,noop,chain")]
    plugins: Vec<Plugins>,
    /// Request body sizes in bytes.
    #[arg(long, value_delimiter = ',', default_value = "100,65536")]
    bodies: Vec<usize>,
    /// Concurrent closed-loop clients.
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// Length of each measured phase, e.g. 10s.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Unmeasured warm-up before each measured phase.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// One-client latency probe after each measured phase (0s: none).
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    probe: Duration,
    /// The route's per-broadcast concurrency (the baseline uses the same).
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Where results are written.
    #[arg(long, default_value = "bench/results")]
    out: PathBuf,
    /// A router binary to measure (default: the one `cargo bench` built).
    /// Give it more than once to compare builds in one run, e.g. before
    /// and after a change: every scenario runs through each of them.
    #[arg(long)]
    router: Vec<PathBuf>,
    /// Pods live on 127.0.BLOCK.1 onwards (250 per /24).
    #[arg(long, default_value_t = 10)]
    pod_block: u8,
    /// A quick check: 3 pods, policy all, no plugins, 100 B, 2 clients,
    /// 1 s (overrides the matrix; results go to target/bench-smoke).
    #[arg(long)]
    smoke: bool,
    /// Run the harness and the router under the round-robin real-time
    /// scheduler (SCHED_RR, priority 10; needs root or CAP_SYS_NICE), so
    /// that other processes on a shared machine (builds) disturb the
    /// figures less. The kernel still keeps 5% of the CPU for them.
    #[arg(long)]
    realtime: bool,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let limit = raise_fd_limit(1 << 20);
    let mut options = Options {
        pods: cli.pods,
        policies: cli.policies,
        plugins: cli.plugins,
        bodies: cli.bodies,
        clients: cli.clients,
        duration: cli.duration,
        warmup: cli.warmup,
        probe: cli.probe,
        concurrency: cli.concurrency,
        routers: if cli.router.is_empty() {
            vec![PathBuf::from(env!("CARGO_BIN_EXE_broadcast-router"))]
        } else {
            cli.router
        },
        repo: repo.clone(),
        pod_block: cli.pod_block,
        command: command_line(),
    };
    let mut out = cli.out;
    if cli.smoke {
        options.pods = vec![3];
        options.policies = vec![Policy::All];
        options.plugins = vec![Plugins::Off];
        options.bodies = vec![100];
        options.clients = 2;
        options.duration = Duration::from_secs(1);
        options.warmup = Duration::from_millis(200);
        options.probe = Duration::from_millis(300);
        out = repo.join("target/bench-smoke");
    }
    let largest = options.pods.iter().copied().max().unwrap_or(0) as u64;
    let needed = 2 * largest * options.clients as u64 + 1024;
    if limit < needed {
        eprintln!(
            "warning: the open-file limit is {limit}; {needed} may be needed at {largest} pods and {} clients",
            options.clients
        );
    }
    let routers: Vec<String> = options
        .routers
        .iter()
        .map(|router| router.display().to_string())
        .collect();
    eprintln!("router(s) {}; open-file limit {limit}", routers.join(", "));
    if cli.realtime {
        match realtime() {
            Ok(()) => eprintln!("scheduling: SCHED_RR priority 10 (harness and router)"),
            Err(error) => eprintln!("warning: --realtime: {error}; running normally"),
        }
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let report = runtime.block_on(harness::run(&options, |line| eprintln!("{line}")))?;
    let out = if out.is_absolute() {
        out
    } else {
        repo.join(out)
    };
    let (json, markdown) = report.write(&out)?;
    println!("{}", report.markdown());
    eprintln!("wrote {} and {}", json.display(), markdown.display());
    Ok(())
}

/// How the run was started, as one would type it.
fn command_line() -> String {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|arg| arg != "--bench")
        .collect();
    if args.is_empty() {
        "cargo bench --bench harness".to_owned()
    } else {
        format!("cargo bench --bench harness -- {}", args.join(" "))
    }
}

/// Moves this process (and so every thread and child it starts later) to
/// SCHED_RR priority 10.
fn realtime() -> std::io::Result<()> {
    let parameters = libc::sched_param { sched_priority: 10 };
    // SAFETY: sched_setscheduler only reads the struct we pass.
    if unsafe { libc::sched_setscheduler(0, libc::SCHED_RR, &parameters) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Raises the soft (and, as root, the hard) open-file limit towards
/// `wanted`; the router, a child, inherits it. Returns the soft limit now.
fn raise_fd_limit(wanted: u64) -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 0;
        }
        let raised = libc::rlimit {
            rlim_cur: wanted,
            rlim_max: wanted.max(limit.rlim_max),
        };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) != 0 {
            let soft = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            libc::setrlimit(libc::RLIMIT_NOFILE, &soft);
        }
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
    }
    limit.rlim_cur
}

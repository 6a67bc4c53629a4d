//! The run's report: one JSON document (every figure) and one Markdown
//! page (the tables), written to `bench/results/<time>-<commit>.{json,md}`
//! with a copy of the page as `bench/results/latest.md`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::load::Percentiles;

/// One whole run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    /// When the run started (RFC 3339, UTC).
    pub started: String,
    /// `git describe`-like commit of the working tree, `+dirty` when it had
    /// uncommitted changes.
    pub commit: String,
    /// Cores available to the run (router and load generator share them).
    pub cores: usize,
    /// The command line that produced it.
    pub command: String,
    /// How the load was generated.
    pub load_generator: String,
    /// Concurrent closed-loop clients in the measured phases.
    pub clients: usize,
    /// Seconds of each measured phase.
    pub duration_s: f64,
    /// Seconds of unmeasured warm-up before each phase.
    pub warmup_s: f64,
    /// Seconds of the one-client latency probe (0: none).
    pub probe_s: f64,
    /// The route's per-broadcast `concurrency` (the baseline uses the same).
    pub per_broadcast_concurrency: usize,
    /// The router's log setting.
    pub router_log: String,
    /// Every scenario, in the order run.
    pub scenarios: Vec<Scenario>,
}

/// One point of the matrix: pods × policy × plugins × body size × router
/// build.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Scenario {
    /// The router binary measured (its path as given).
    pub build: String,
    /// The same load straight to one pod: the unit of the loopback limit.
    pub direct_pod: Phase,
    /// Router broadcasts/s × pods ÷ one pod's requests/s: the share of
    /// the loopback limit the router reaches.
    pub loopback_share: f64,
    /// Pods per broadcast.
    pub pods: usize,
    /// `all` or `first`.
    pub policy: String,
    /// `off`, `noop` or `chain`.
    pub plugins: String,
    /// Request body size.
    pub body_bytes: usize,
    /// The direct fan-out, `clients` clients.
    pub baseline: Phase,
    /// Through the router, `clients` clients.
    pub router: Phase,
    /// The direct fan-out, one client (unloaded latency).
    pub baseline_probe: Option<Phase>,
    /// Through the router, one client (unloaded latency).
    pub router_probe: Option<Phase>,
    /// Router throughput / baseline throughput.
    pub ratio: f64,
    /// Router p50 − baseline p50 at one client, in µs (the router's own
    /// latency); `None` without a probe.
    pub added_p50_us: Option<f64>,
    /// What the router process used.
    pub process: Process,
}

/// One measured phase.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Phase {
    /// Concurrent clients.
    pub clients: usize,
    /// Seconds from start until the last broadcast was answered.
    pub elapsed_s: f64,
    /// Broadcasts answered with success.
    pub broadcasts: u64,
    /// Failed broadcasts and failed copies (see the JSON of `load`).
    pub errors: u64,
    /// Broadcasts the router refused with 429 (its cap on pod deliveries
    /// in flight was reached; nothing was sent). Not errors.
    pub refused: u64,
    /// The first error, in words.
    pub first_error: Option<String>,
    /// Successful broadcasts per second.
    pub broadcasts_per_s: f64,
    /// Requests the pods received in the phase (background copies of
    /// `first` broadcasts included).
    pub deliveries: u64,
    /// Deliveries per second of `elapsed_s`.
    pub deliveries_per_s: f64,
    /// Broadcast latency (from sending the request to the whole answer).
    pub latency_us: Percentiles,
    /// Every pod received every broadcast sent in the phase exactly once.
    pub exactly_once: bool,
    /// CPU time of the harness process (load generator and pods) per
    /// broadcast, in µs.
    pub harness_cpu_us_per_broadcast: f64,
    /// Seconds over which CPU time was counted (the phase and the wait
    /// for its last copies).
    pub window_s: f64,
    /// Cores that other processes on the machine kept busy meanwhile
    /// (everything but the harness and the router): noise in the figures.
    pub other_cpu_cores: f64,
}

/// The router process during a scenario's loaded phase.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Process {
    /// User + system CPU time per broadcast, in µs.
    pub cpu_us_per_broadcast: f64,
    /// CPU cores busy on average (CPU time / elapsed).
    pub cpu_cores: f64,
    /// Resident memory once ready, before any broadcast, in KiB.
    pub start_rss_kib: u64,
    /// Resident memory after the warm-up, with nothing in flight, in KiB.
    pub idle_rss_kib: u64,
    /// Peak resident memory during the loaded phase (`VmHWM`), in KiB.
    pub peak_rss_kib: u64,
    /// Resident memory at the end of the loaded phase, in KiB.
    #[serde(default)]
    pub end_rss_kib: u64,
    /// How resident memory moved over the second half of the loaded phase
    /// (least squares over samples every 100 ms), in MiB per minute: near
    /// zero when memory is flat under steady load.
    #[serde(default)]
    pub rss_slope_mib_per_min: f64,
    /// Most broadcasts in flight seen (`/metrics`, sampled every 100 ms).
    pub max_in_flight: u64,
    /// Most open file descriptors seen (mostly pooled pod connections).
    pub max_open_files: u64,
    /// (peak − start) / most in flight: an upper bound of the memory one
    /// in-flight broadcast holds, in KiB.
    pub kib_per_in_flight: f64,
    /// Deliveries the router counted as failed over the whole scenario.
    pub delivery_failures: u64,
    /// `WARN`/`ERROR` log lines over the whole scenario.
    pub warnings: usize,
    /// The router exited 0 on SIGTERM (every broadcast finished).
    pub clean_exit: bool,
}

impl Report {
    /// Writes `<stem>.json`, `<stem>.md` and `latest.md` into `dir`;
    /// returns the JSON and Markdown paths.
    pub fn write(&self, dir: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
        std::fs::create_dir_all(dir)?;
        let stamp: String = self
            .started
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == 'T')
            .collect();
        let stem = format!("{stamp}-{}", self.commit);
        let json = dir.join(format!("{stem}.json"));
        let markdown = dir.join(format!("{stem}.md"));
        std::fs::write(&json, serde_json::to_string_pretty(self)? + "\n")?;
        let page = self.markdown();
        std::fs::write(&markdown, &page)?;
        std::fs::write(dir.join("latest.md"), &page)?;
        Ok((json, markdown))
    }

    /// The run as Markdown: a header and two tables.
    pub fn markdown(&self) -> String {
        let mut page = String::new();
        let _ = writeln!(page, "# Router benchmark, {}\n", self.started);
        let _ = writeln!(
            page,
            "Commit `{}`, {} cores shared by the router, the load generator and the pods; \
             {} closed-loop clients, {} s per phase after {} s of warm-up; one-client probe {} s; \
             per-broadcast concurrency {}; router logs: {}. Load generator: {}.\n",
            self.commit,
            self.cores,
            self.clients,
            self.duration_s,
            self.warmup_s,
            self.probe_s,
            self.per_broadcast_concurrency,
            self.router_log,
            self.load_generator
        );
        let _ = writeln!(page, "```sh\n{}\n```\n", self.command);
        page.push_str(
            "Throughput and latency under load (router vs. the load generator's own fan-out \
             on the same pods):\n\n",
        );
        page.push_str(
            "The loopback limit is what the pods can take: the same load sent straight to one \
             pod answers `one pod req/s`, so P pods take at most that ÷ P broadcasts/s; \
             `share` = router bcast/s × P ÷ one pod req/s.\n\n",
        );
        page.push_str(
            "| router | pods | policy | plugins | body | router bcast/s | one pod req/s | share of loopback limit | baseline bcast/s | ratio | \
             deliveries/s | router p50 / p90 / p99 / max ms | baseline p50 ms | errors | once |\n",
        );
        page.push_str("|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---|\n");
        for s in &self.scenarios {
            let l = s.router.latency_us;
            let _ = writeln!(
                page,
                "| `{}` | {} | {} | {} | {} | {:.0} | {:.0} | **{:.0}%** | {:.0} | {:.0}% | {:.0} | {} / {} / {} / {} | {} | {} | {} |",
                s.build,
                s.pods,
                s.policy,
                s.plugins,
                size(s.body_bytes),
                s.router.broadcasts_per_s,
                s.direct_pod.broadcasts_per_s,
                s.loopback_share * 100.0,
                s.baseline.broadcasts_per_s,
                s.ratio * 100.0,
                s.router.deliveries_per_s,
                ms(l.p50),
                ms(l.p90),
                ms(l.p99),
                ms(l.max),
                ms(s.baseline.latency_us.p50),
                errors(s),
                if s.router.exactly_once && s.baseline.exactly_once {
                    "yes"
                } else {
                    "**no**"
                },
            );
        }
        page.push_str("\nUnloaded latency (one client) and the router process (loaded phase):\n\n");
        page.push_str(
            "| router | pods | policy | plugins | body | router p50 / p99 ms (1 client) | baseline p50 ms (1 client) | \
             added p50 µs | router CPU µs/bcast | router cores | peak RSS MiB | RSS slope MiB/min | \
             max in flight | KiB per in-flight bcast | clean exit | other load (cores) |\n",
        );
        page.push_str(
            "|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|\n",
        );
        for s in &self.scenarios {
            let probe = |phase: &Option<Phase>| {
                phase
                    .as_ref()
                    .map_or("—".to_owned(), |phase| ms(phase.latency_us.p50))
            };
            let probe_p99 = s.router_probe.as_ref().map_or("—".to_owned(), |phase| {
                format!(
                    "{} / {}",
                    ms(phase.latency_us.p50),
                    ms(phase.latency_us.p99)
                )
            });
            let _ = writeln!(
                page,
                "| `{}` | {} | {} | {} | {} | {} | {} | {} | {:.0} | {:.2} | {:.1} | {:+.2} | {} | {:.0} | {} | {:.2} |",
                s.build,
                s.pods,
                s.policy,
                s.plugins,
                size(s.body_bytes),
                probe_p99,
                probe(&s.baseline_probe),
                s.added_p50_us
                    .map_or("—".to_owned(), |us| format!("{us:.0}")),
                s.process.cpu_us_per_broadcast,
                s.process.cpu_cores,
                s.process.peak_rss_kib as f64 / 1024.0,
                s.process.rss_slope_mib_per_min,
                s.process.max_in_flight,
                s.process.kib_per_in_flight,
                if s.process.clean_exit {
                    "yes"
                } else {
                    "**no**"
                },
                s.baseline.other_cpu_cores.max(s.router.other_cpu_cores),
            );
        }
        page
    }
}

/// Errors of the router's phase, and its refusals if any.
fn errors(s: &Scenario) -> String {
    let errors = s.router.errors + s.process.delivery_failures;
    if s.router.refused > 0 {
        format!("{errors} (+{} refused)", s.router.refused)
    } else {
        errors.to_string()
    }
}

fn ms(us: f64) -> String {
    if us >= 100_000.0 {
        format!("{:.0}", us / 1000.0)
    } else if us >= 10_000.0 {
        format!("{:.1}", us / 1000.0)
    } else {
        format!("{:.2}", us / 1000.0)
    }
}

fn size(bytes: usize) -> String {
    if bytes >= 1024 && bytes.is_multiple_of(1024) {
        format!("{} KiB", bytes / 1024)
    } else {
        format!("{bytes} B")
    }
}

//! The router under test, as a child process: its configuration written to
//! a temporary directory, `serve --config` with JSON logs to a file, its
//! addresses read from the "Router listening." log line, and its CPU time
//! and memory read from `/proc/<pid>/`.

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// A running router process; killed when dropped.
pub struct Router {
    child: Child,
    /// The broadcast listener.
    pub addr: SocketAddr,
    /// The admin listener.
    pub admin_addr: SocketAddr,
    log: PathBuf,
    http: reqwest::Client,
}

/// The router's memory, from `/proc/<pid>/status`, in KiB.
#[derive(Debug, Clone, Copy, Default)]
pub struct Memory {
    /// Resident now (`VmRSS`).
    pub rss_kib: u64,
    /// Peak resident since start or the last [`Router::reset_peak`] (`VmHWM`).
    pub peak_kib: u64,
}

impl Router {
    /// Writes `config` to `dir/router.toml` and starts `binary serve` on it
    /// (in `dir`, logs in `dir/router.log`); returns once `/readyz` answers
    /// 200.
    pub async fn start(binary: &Path, dir: &Path, config: &str) -> anyhow::Result<Router> {
        let config_path = dir.join("router.toml");
        fs::write(&config_path, config)?;
        let log = dir.join("router.log");
        let child = Command::new(binary)
            .args(["--log-format", "json", "serve", "--config"])
            .arg(&config_path)
            .current_dir(dir)
            .env_remove("RUST_LOG")
            .env_remove("BROADCAST_ROUTER_CONFIG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log)?)
            .spawn()
            .with_context(|| format!("cannot start {}", binary.display()))?;
        let mut router = Router {
            child,
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            admin_addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            log,
            http: reqwest::Client::builder().no_proxy().build()?,
        };
        let give_up = Instant::now() + Duration::from_secs(120);
        loop {
            if let Some(status) = router.child.try_wait()? {
                bail!(
                    "the router exited at start ({status}):\n{}",
                    router.log_tail(40)
                );
            }
            if let Some((addr, admin_addr)) = listening(&router.log) {
                router.addr = addr;
                router.admin_addr = admin_addr;
                break;
            }
            if Instant::now() > give_up {
                bail!("the router did not start in time:\n{}", router.log_tail(40));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let ready = format!("http://{}/readyz", router.admin_addr);
        loop {
            if let Ok(response) = router.http.get(&ready).send().await
                && response.status().is_success()
            {
                return Ok(router);
            }
            if Instant::now() > give_up {
                bail!("the router never became ready:\n{}", router.log_tail(40));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// User plus system CPU time used so far, all threads.
    pub fn cpu_time(&self) -> Duration {
        cpu_time(self.pid()).unwrap_or_default()
    }

    /// Resident and peak memory now.
    pub fn memory(&self) -> Memory {
        let status = fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        let field = |name: &str| -> u64 {
            status
                .lines()
                .find_map(|line| line.strip_prefix(name))
                .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
                .unwrap_or(0)
        };
        Memory {
            rss_kib: field("VmRSS:"),
            peak_kib: field("VmHWM:"),
        }
    }

    /// Open file descriptors (sockets, mostly) now.
    pub fn open_files(&self) -> u64 {
        fs::read_dir(format!("/proc/{}/fd", self.pid())).map_or(0, |dir| dir.count() as u64)
    }

    /// Resets `VmHWM` to the current RSS (Linux `clear_refs` 5), so the
    /// next [`Router::memory`] shows the peak of what follows. Returns
    /// whether the kernel allowed it.
    pub fn reset_peak(&self) -> bool {
        fs::write(format!("/proc/{}/clear_refs", self.pid()), "5").is_ok()
    }

    /// A metric's value summed over its series whose labels satisfy
    /// `labels` (the text between the braces), from `/metrics`.
    pub async fn metric(&self, name: &str, labels: impl Fn(&str) -> bool) -> Option<f64> {
        let text = self
            .http
            .get(format!("http://{}/metrics", self.admin_addr))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        Some(
            text.lines()
                .filter_map(|line| {
                    let rest = line.strip_prefix(name)?;
                    let (labels_text, value) = match rest.strip_prefix('{') {
                        Some(rest) => rest.split_once("} ")?,
                        None => ("", rest.strip_prefix(' ')?),
                    };
                    labels(labels_text).then(|| value.trim().parse::<f64>().ok())?
                })
                .sum(),
        )
    }

    /// The last `lines` lines of the router's log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Log lines at `WARN` or `ERROR`, at most `limit` of them, and how
    /// many there were.
    pub fn warnings(&self, limit: usize) -> (usize, Vec<String>) {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let warnings: Vec<&str> = text
            .lines()
            .filter(|line| {
                line.contains("\"level\":\"WARN\"") || line.contains("\"level\":\"ERROR\"")
            })
            .collect();
        let first = warnings
            .iter()
            .take(limit)
            .map(|line| (*line).to_owned())
            .collect();
        (warnings.len(), first)
    }

    /// Sends SIGTERM and waits for the exit (SIGKILL after 30 s).
    pub async fn stop(mut self) -> anyhow::Result<ExitStatus> {
        let pid = libc::pid_t::try_from(self.pid())?;
        // SAFETY: `kill` has no memory-safety preconditions; the pid is our
        // own child's, not yet reaped.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
        let give_up = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > give_up {
                self.child.kill()?;
                return Ok(self.child.wait()?);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Router {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The addresses in the JSON "Router listening." log line, once written.
fn listening(log: &Path) -> Option<(SocketAddr, SocketAddr)> {
    let text = fs::read_to_string(log).ok()?;
    text.lines().find_map(|line| {
        let entry: serde_json::Value = serde_json::from_str(line).ok()?;
        let fields = &entry["fields"];
        if fields["message"] != "Router listening." {
            return None;
        }
        Some((
            fields["addr"].as_str()?.parse().ok()?,
            fields["admin_addr"].as_str()?.parse().ok()?,
        ))
    })
}

/// User plus system time of a process (`/proc/<pid>/stat` fields 14 and 15).
pub fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces; the fields start after its ')'.
    let fields: Vec<&str> = stat[stat.rfind(')')? + 2..].split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_secs_f64(ticks as f64 / clock_ticks() as f64))
}

/// CPU time the whole machine has spent busy (all cores; `/proc/stat`
/// user, nice, system, irq, softirq and steal).
pub fn busy_cpu_time() -> Duration {
    let stat = fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = stat.lines().find(|line| line.starts_with("cpu ")) else {
        return Duration::ZERO;
    };
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|field| field.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal …
    let busy: u64 = [0, 1, 2, 5, 6, 7]
        .iter()
        .filter_map(|&index| fields.get(index))
        .sum();
    Duration::from_secs_f64(busy as f64 / clock_ticks() as f64)
}

/// Clock ticks per second of `/proc` times.
fn clock_ticks() -> u64 {
    // SAFETY: `sysconf` only reads a configuration value.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(per_second)
        .ok()
        .filter(|&hz| hz > 0)
        .unwrap_or(100)
}

/// Resident memory sampled during a loaded phase, to tell a flat process
/// from one that grows.
#[derive(Debug, Default)]
pub struct RssTrend {
    started: Option<Instant>,
    /// (seconds since the first sample, KiB).
    samples: Vec<(f64, f64)>,
}

impl RssTrend {
    /// Adds one `VmRSS` reading, taken now.
    pub fn sample(&mut self, rss_kib: u64) {
        let started = *self.started.get_or_insert_with(Instant::now);
        self.samples
            .push((started.elapsed().as_secs_f64(), rss_kib as f64));
    }

    /// The least-squares slope of the second half of the samples (the
    /// first half includes pools and caches filling up), in MiB per
    /// minute; zero with fewer than four samples there.
    pub fn slope_mib_per_min(&self) -> f64 {
        let half = &self.samples[self.samples.len() / 2..];
        if half.len() < 4 {
            return 0.0;
        }
        let n = half.len() as f64;
        let mean_t = half.iter().map(|(t, _)| t).sum::<f64>() / n;
        let mean_kib = half.iter().map(|(_, kib)| kib).sum::<f64>() / n;
        let (mut covariance, mut variance) = (0.0, 0.0);
        for (t, kib) in half {
            covariance += (t - mean_t) * (kib - mean_kib);
            variance += (t - mean_t) * (t - mean_t);
        }
        if variance == 0.0 {
            return 0.0;
        }
        covariance / variance * 60.0 / 1024.0
    }
}

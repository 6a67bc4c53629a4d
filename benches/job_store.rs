//! `cargo bench --bench job_store`: how long one job store write takes,
//! the time an async broadcast's 202 waits for (`create`) and the time
//! each recorded pod outcome costs the job's writer (`update`).
//!
//! Each store gets the same sequence, one operation at a time: `create` a
//! job of 3 pods, `update` it three times (a pod outcome each), and mark
//! it done. The embedded store commits each write durably (fsync) to a
//! file in the system's temporary directory; Redis is a `redis-server`
//! (Debian's package) started on a free loopback port with persistence
//! off, so its figure is the round trip and the Lua script, not a disk.
//!
//! ```sh
//! cargo bench --bench job_store                  # 500 jobs per store
//! cargo bench --bench job_store -- --jobs 2000
//! ```
//!
//! Writes `bench/results/job-store-latest.md`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use broadcast_router::aggregate::DeliveryReport;
use broadcast_router::fanout::PodRequest;
use broadcast_router::jobs::file::FileStore;
use broadcast_router::jobs::memory::MemoryStore;
use broadcast_router::jobs::redis::RedisStore;
use broadcast_router::jobs::{Job, JobState, JobStore};
use broadcast_router::vocabulary::target::Target;
use clap::Parser;

/// Jobs per store.
#[derive(Parser)]
#[command(about)]
struct Cli {
    /// Jobs written per store.
    #[arg(long, default_value_t = 500)]
    jobs: usize,
    /// Where results are written.
    #[arg(long, default_value = "bench/results")]
    out: PathBuf,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

/// Latencies of one operation, sorted.
struct Figures {
    store: &'static str,
    create: Vec<Duration>,
    update: Vec<Duration>,
}

fn percentile(sorted: &[Duration], at: f64) -> f64 {
    let index = ((sorted.len() as f64 - 1.0) * at).round() as usize;
    sorted[index].as_secs_f64() * 1e3
}

async fn measure(store: &dyn JobStore, name: &'static str, jobs: usize) -> Figures {
    let request = Arc::new(PodRequest {
        method: http::Method::POST,
        path_and_query: "/cache-invalidation".into(),
        headers: http::HeaderMap::new(),
        body: bytes::Bytes::from_static(b"{\"keys\":[\"product:42\"]}"),
    });
    let targets: Vec<Target> = (0..3)
        .map(|index| Target {
            addr: SocketAddr::from(([10, 0, 0, 1 + index as u8], 8080)),
            service: None,
            index,
            pod: None,
        })
        .collect();
    let requests = vec![request; targets.len()];
    let retention = Duration::from_secs(3600);
    let (mut create, mut update) = (Vec::new(), Vec::new());
    for n in 0..jobs {
        let mut job = Job::new(&format!("{name}-{n}"), "purge", "all", &targets, &requests);
        job.owner = "bench".into();
        let started = Instant::now();
        store.create(&job, usize::MAX).await.expect("create");
        create.push(started.elapsed());
        job.state = JobState::Running;
        for (index, target) in targets.iter().enumerate() {
            let mut result = DeliveryReport::pending(target);
            result.pending = false;
            result.status = Some(200);
            result.attempts = 1;
            job.pods[index].result = Some(result);
            if index + 1 == targets.len() {
                job.state = JobState::Done;
            }
            let started = Instant::now();
            store.update(&job, retention).await.expect("update");
            update.push(started.elapsed());
        }
    }
    create.sort();
    update.sort();
    Figures {
        store: name,
        create,
        update,
    }
}

fn main() {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let dir = tempfile::tempdir().expect("a temporary directory");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port();
    let mut redis = Command::new("redis-server")
        .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
        .args(["--save", "", "--appendonly", "no"])
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server (Debian package redis-server) starts");
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        std::thread::sleep(Duration::from_millis(20));
    }
    let figures = runtime.block_on(async {
        let memory = MemoryStore::default();
        let file = FileStore::open(&dir.path().join("jobs.db")).expect("file store");
        let redis = RedisStore::connect(&format!("redis://127.0.0.1:{port}/0"))
            .await
            .expect("redis store");
        vec![
            measure(&memory, "memory", cli.jobs).await,
            measure(&file, "file", cli.jobs).await,
            measure(&redis, "redis", cli.jobs).await,
        ]
    });
    let _ = redis.kill();
    let _ = redis.wait();

    let mut table =
        String::from("| store | create p50 / p99 ms | update p50 / p99 ms |\n|---|---|---|\n");
    for figure in &figures {
        table.push_str(&format!(
            "| {} | {:.3} / {:.3} | {:.3} / {:.3} |\n",
            figure.store,
            percentile(&figure.create, 0.5),
            percentile(&figure.create, 0.99),
            percentile(&figure.update, 0.5),
            percentile(&figure.update, 0.99),
        ));
    }
    let report = format!(
        "# Job store write latency\n\n`cargo bench --bench job_store -- --jobs {}`: one operation at a time, \
         a job of 3 pods created, then updated once per pod outcome (the last marks it done). \
         file: redb, every commit fsynced, in {}; redis: redis-server on loopback, persistence off.\n\n{table}",
        cli.jobs,
        std::env::temp_dir().display(),
    );
    print!("{report}");
    std::fs::create_dir_all(&cli.out).expect("results directory");
    std::fs::write(cli.out.join("job-store-latest.md"), report).expect("write results");
}

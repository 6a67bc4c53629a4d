//! One suite for every job store: the same specification runs against the
//! memory store, the embedded redb file and a real Redis server, so the
//! three keep one contract (bounds, duplicates, ownership, takeover,
//! listing, retention). What only Redis does (leases between routers) is
//! specified at the end.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use broadcast_router::fanout::PodRequest;
use broadcast_router::jobs::file::FileStore;
use broadcast_router::jobs::memory::MemoryStore;
use broadcast_router::jobs::redis::RedisStore;
use broadcast_router::jobs::{Filter, Job, JobState, JobStore, StoreError};
use broadcast_router::vocabulary::target::Target;
use support::redis::RedisServer;

/// A store under test, with what keeps it alive.
struct Subject {
    store: Box<dyn JobStore>,
    _dir: Option<tempfile::TempDir>,
    _redis: Option<RedisServer>,
}

fn memory() -> Subject {
    Subject {
        store: Box::new(MemoryStore::default()),
        _dir: None,
        _redis: None,
    }
}

fn file() -> Subject {
    let dir = tempfile::tempdir().unwrap();
    let store = FileStore::open(&dir.path().join("state/jobs.db")).expect("the file store opens");
    Subject {
        store: Box::new(store),
        _dir: Some(dir),
        _redis: None,
    }
}

async fn redis() -> Subject {
    let server = RedisServer::start();
    let store = RedisStore::connect(&server.url())
        .await
        .expect("redis store");
    Subject {
        store: Box::new(store),
        _dir: None,
        _redis: Some(server),
    }
}

/// A job of `route` to two pods, owned by `owner`.
fn job(id: &str, route: &str, owner: &str) -> Job {
    let request = Arc::new(PodRequest {
        method: http::Method::POST,
        path_and_query: "/purge".into(),
        headers: http::HeaderMap::new(),
        body: bytes::Bytes::from_static(b"key"),
    });
    let targets: Vec<Target> = (0..2)
        .map(|index| Target {
            addr: SocketAddr::from(([127, 0, 0, 2 + index as u8], 80)),
            service: None,
            index,
            pod: None,
        })
        .collect();
    let mut job = Job::new(id, route, "all", &targets, &[request.clone(), request]);
    job.owner = owner.into();
    job
}

const RETAIN: Duration = Duration::from_secs(3600);

async fn finish(store: &dyn JobStore, job: &mut Job) {
    job.state = JobState::Done;
    job.finished_ms = Some(broadcast_router::jobs::now_ms());
    store.update(job, RETAIN).await.expect("update");
}

async fn a_created_job_reads_back_and_unknown_ids_are_none(subject: Subject) {
    let store = &*subject.store;
    store.create(&job("j1", "purge", "a"), 10).await.unwrap();
    let read = store.get("j1").await.unwrap().expect("the job");
    assert_eq!(read.route, "purge");
    assert_eq!(read.state, JobState::Accepted);
    assert_eq!(read.pods.len(), 2);
    assert_eq!(read.requests.len(), 1, "one request shared by both pods");
    assert_eq!(read.requests[0].request().unwrap().body.as_ref(), b"key");
    assert!(store.get("nope").await.unwrap().is_none());
}

async fn max_pending_counts_unfinished_jobs_only(subject: Subject) {
    let store = &*subject.store;
    let mut first = job("p1", "purge", "a");
    store.create(&first, 2).await.unwrap();
    store.create(&job("p2", "purge", "a"), 2).await.unwrap();
    let refused = store.create(&job("p3", "purge", "a"), 2).await;
    assert!(
        matches!(refused, Err(StoreError::TooManyPending { limit: 2 })),
        "{refused:?}"
    );
    finish(store, &mut first).await;
    store.create(&job("p3", "purge", "a"), 2).await.unwrap();
}

async fn reusing_an_id_replaces_the_job_and_fences_the_earlier_run_out(subject: Subject) {
    let store = &*subject.store;
    let mut first = job("same", "purge", "a");
    store.create(&first, 1).await.unwrap();
    let mut second = job("same", "other", "a");
    store
        .create(&second, 1)
        .await
        .expect("replacing an unfinished job takes no new place");
    assert_eq!(store.get("same").await.unwrap().unwrap().route, "other");
    first.state = JobState::Running;
    let late = store.update(&first, RETAIN).await;
    assert!(matches!(late, Err(StoreError::Superseded(_))), "{late:?}");
    finish(store, &mut second).await;
    let mut third = job("same", "third", "a");
    store.create(&third, 1).await.unwrap();
    finish(store, &mut third).await;
    assert_eq!(store.get("same").await.unwrap().unwrap().route, "third");
}

async fn a_claimed_job_belongs_to_its_new_owner(subject: Subject) {
    let store = &*subject.store;
    let mut original = job("c1", "purge", "dead-router");
    store.create(&original, 10).await.unwrap();
    let claimed = store.claim("survivor").await.unwrap();
    assert_eq!(claimed.len(), 1);
    let mut taken = claimed.into_iter().next().unwrap();
    assert_eq!(taken.owner, "survivor");
    // The old owner's writes are refused from now on; the new owner's go.
    original.state = JobState::Running;
    let late = store.update(&original, RETAIN).await;
    assert!(matches!(late, Err(StoreError::Lost(_))), "{late:?}");
    taken.state = JobState::Running;
    store.update(&taken, RETAIN).await.unwrap();
    assert!(store.claim("survivor").await.unwrap().is_empty());
    finish(store, &mut taken).await;
    assert!(store.claim("someone-else").await.unwrap().is_empty());
}

async fn listing_is_newest_first_and_filtered(subject: Subject) {
    let store = &*subject.store;
    let mut jobs = Vec::new();
    for (index, route) in ["a", "b", "a"].iter().enumerate() {
        let mut job = job(&format!("l{index}"), route, "me");
        job.created_ms += index as u64;
        store.create(&job, 10).await.unwrap();
        jobs.push(job);
    }
    finish(store, &mut jobs[0]).await;
    let ids = |found: Vec<Job>| found.into_iter().map(|job| job.id).collect::<Vec<_>>();
    let all = Filter {
        limit: 10,
        ..Filter::default()
    };
    assert_eq!(ids(store.list(&all).await.unwrap()), ["l2", "l1", "l0"]);
    let route_a = Filter {
        route: Some("a".into()),
        limit: 10,
        ..Filter::default()
    };
    assert_eq!(ids(store.list(&route_a).await.unwrap()), ["l2", "l0"]);
    let done = Filter {
        state: Some(JobState::Done),
        limit: 10,
        ..Filter::default()
    };
    assert_eq!(ids(store.list(&done).await.unwrap()), ["l0"]);
    let one = Filter {
        limit: 1,
        ..Filter::default()
    };
    assert_eq!(ids(store.list(&one).await.unwrap()), ["l2"]);
    let two = Filter {
        limit: 2,
        ..Filter::default()
    };
    assert_eq!(ids(store.list(&two).await.unwrap()), ["l2", "l1"]);
}

async fn finished_jobs_are_forgotten_after_retention(subject: Subject) {
    let store = &*subject.store;
    let retention = Duration::from_millis(200);
    let mut done = job("old", "purge", "me");
    done.created_ms -= 1000;
    store.create(&done, 10).await.unwrap();
    let mut running = job("long", "purge", "me");
    running.created_ms -= 1000;
    store.create(&running, 10).await.unwrap();
    done.state = JobState::Done;
    done.finished_ms = Some(broadcast_router::jobs::now_ms());
    store.update(&done, retention).await.unwrap();
    store.sweep(retention).await.unwrap();
    assert!(
        store.get("old").await.unwrap().is_some(),
        "kept while fresh"
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    let size = store.sweep(retention).await.unwrap();
    assert!(store.get("old").await.unwrap().is_none(), "expired");
    assert!(
        store.get("long").await.unwrap().is_some(),
        "an unfinished job never expires"
    );
    assert!(size > 0, "the store reports its size");
}

macro_rules! for_every_store {
    ($($spec:ident),* $(,)?) => {
        mod memory_store {
            $(#[tokio::test(flavor = "multi_thread")]
            async fn $spec() { super::$spec(super::memory()).await })*
        }
        mod file_store {
            $(#[tokio::test(flavor = "multi_thread")]
            async fn $spec() { super::$spec(super::file()).await })*
        }
        mod redis_store {
            $(#[tokio::test(flavor = "multi_thread")]
            async fn $spec() { super::$spec(super::redis().await).await })*
        }
    };
}

for_every_store!(
    a_created_job_reads_back_and_unknown_ids_are_none,
    max_pending_counts_unfinished_jobs_only,
    reusing_an_id_replaces_the_job_and_fences_the_earlier_run_out,
    a_claimed_job_belongs_to_its_new_owner,
    listing_is_newest_first_and_filtered,
    finished_jobs_are_forgotten_after_retention,
);

#[tokio::test(flavor = "multi_thread")]
async fn redis_jobs_of_a_router_holding_its_lease_are_not_taken_over() {
    let subject = redis().await;
    let store = &*subject.store;
    let lease = Duration::from_millis(500);
    store.heartbeat("alive", lease).await.unwrap();
    store
        .create(&job("leased", "purge", "alive"), 10)
        .await
        .unwrap();
    assert!(store.claim("other").await.unwrap().is_empty(), "lease held");
    tokio::time::sleep(Duration::from_millis(800)).await;
    let claimed = store.claim("other").await.unwrap();
    assert_eq!(claimed.len(), 1, "taken over once the lease expired");
    assert_eq!(claimed[0].owner, "other");
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_jobs_of_a_router_that_gave_its_lease_up_are_taken_over_at_once() {
    let subject = redis().await;
    let store = &*subject.store;
    store
        .heartbeat("stopping", Duration::from_secs(60))
        .await
        .unwrap();
    store
        .create(&job("handed", "purge", "stopping"), 10)
        .await
        .unwrap();
    assert!(store.claim("other").await.unwrap().is_empty(), "lease held");
    store.release("stopping").await.unwrap();
    assert_eq!(store.claim("other").await.unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_memory_store_forgets_the_oldest_finished_jobs_beyond_its_limit() {
    let mut finished = job("m0", "purge", "me");
    finished.state = JobState::Done;
    let size = finished.estimated_size();
    let store = MemoryStore::with_limit(size * 5 / 2);
    for n in 0..3 {
        let mut done = job(&format!("m{n}"), "purge", "me");
        store.create(&done, 10).await.unwrap();
        done.state = JobState::Done;
        done.finished_ms = Some(broadcast_router::jobs::now_ms() + n);
        store.update(&done, RETAIN).await.unwrap();
    }
    store
        .create(&job("running", "purge", "me"), 10)
        .await
        .unwrap();
    store.sweep(RETAIN).await.unwrap();
    assert!(store.get("m0").await.unwrap().is_none(), "oldest forgotten");
    assert!(store.get("m1").await.unwrap().is_none());
    assert!(store.get("m2").await.unwrap().is_some(), "newest kept");
    assert!(
        store.get("running").await.unwrap().is_some(),
        "unfinished kept"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_file_store_keeps_jobs_across_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jobs.db");
    {
        let store = FileStore::open(&path).unwrap();
        store
            .create(&job("kept", "purge", "first"), 10)
            .await
            .unwrap();
    }
    let store = FileStore::open(&path).unwrap();
    let claimed = store.claim("second").await.unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].id, "kept");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_redis_is_an_error_naming_the_server() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let store = RedisStore::connect(&format!("redis://127.0.0.1:{port}/0"))
        .await
        .expect("connecting is lazy");
    let error = store
        .create(&job("x", "purge", "me"), 10)
        .await
        .expect_err("nothing listens");
    assert!(matches!(error, StoreError::Redis { .. }), "{error:?}");
    assert!(
        error.to_string().contains(&format!("127.0.0.1:{port}")),
        "{error}"
    );
}

#[test]
fn a_jobs_estimated_size_stays_near_its_encoded_length() {
    use broadcast_router::aggregate::{DeliveryReport, Report};
    let mut job = job("estimate", "purge", "me");
    let targets: Vec<Target> = job.targets();
    for (pod, target) in job.pods.iter_mut().zip(&targets) {
        let mut result = DeliveryReport::pending(target);
        result.pending = false;
        result.status = Some(200);
        result.body = Some("{\"purged\":true}".into());
        pod.result = Some(result);
    }
    let results: Vec<DeliveryReport> = job
        .pods
        .iter()
        .filter_map(|pod| pod.result.clone())
        .collect();
    job.report = Some(Report {
        id: job.id.clone(),
        route: job.route.clone(),
        policy: "all".into(),
        ok: true,
        targets: results.len(),
        succeeded: results.len(),
        failed: 0,
        pending: 0,
        results,
    });
    job.state = JobState::Done;
    let encoded = serde_json::to_vec(&job).unwrap().len() as f64;
    let estimated = job.estimated_size() as f64;
    assert!(
        (0.5..=2.0).contains(&(estimated / encoded)),
        "estimated {estimated} bytes for {encoded} encoded"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_memory_store_stays_within_its_limit_between_sweeps() {
    let mut finished = job("f0", "purge", "me");
    finished.state = JobState::Done;
    let size = finished.estimated_size();
    let store = MemoryStore::with_limit(size * 3);
    for n in 0..50u64 {
        let mut done = job(&format!("f{n}"), "purge", "me");
        store.create(&done, 10).await.unwrap();
        done.state = JobState::Done;
        done.finished_ms = Some(broadcast_router::jobs::now_ms() + n);
        store.update(&done, RETAIN).await.unwrap();
    }
    // No sweep ran: writes forgot the oldest finished jobs as they went.
    let all = Filter {
        route: None,
        state: None,
        limit: 100,
    };
    let kept = store.list(&all).await.unwrap();
    // Three jobs' worth: the newest two or three (a running job counts
    // while it is written).
    let ids: Vec<&str> = kept.iter().map(|job| job.id.as_str()).collect();
    assert!((2..=3).contains(&ids.len()), "{ids:?}");
    assert!(store.get("f49").await.unwrap().is_some(), "newest kept");
    assert!(
        store.get("f46").await.unwrap().is_none(),
        "oldest beyond the limit forgotten"
    );
}

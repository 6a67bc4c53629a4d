//! The job status API and the bounds, through the real router: async
//! answers point at their job, a job reads as accepted/running/done with
//! per-pod progress and the final report, unknown ids are 404 JSON, the
//! listing filters, a broadcast whose client left still finishes and is
//! recorded, the route's tokens guard its jobs, `max_pending` is a
//! 429 before anything is sent, and a store that cannot write is a 503,
//! never a 202 that is then lost.

mod support;

use reqwest::StatusCode;
use serde_json::Value;
use support::pods::{Behaviour, Gate, Pods};
use support::{TestRouter, eventually, preamble};

fn config(pods: &Pods, route: &str, jobs: &str) -> String {
    format!(
        "{}\n{jobs}\n[[routes]]\nname = \"purge\"\npath = \"/purge\"\ntargets = {}\n{route}\n",
        preamble(None),
        pods.targets_toml()
    )
}

async fn get(router: &TestRouter, path: &str) -> (StatusCode, Value) {
    let answer = router
        .send(router.client().get(format!("{}{path}", router.url)))
        .await;
    (answer.status, answer.json)
}

#[tokio::test(flavor = "multi_thread")]
async fn an_async_broadcast_is_a_job_readable_until_done() {
    let gate = Gate::new();
    let pods = Pods::start(210, &[Behaviour::Ok, Behaviour::Gated(gate.clone())]).await;
    let router = TestRouter::start(&config(&pods, "mode = \"async\"", "")).await;

    let answer = router.post("/purge", "x").await;
    assert_eq!(answer.status, StatusCode::ACCEPTED);
    let id = answer.header("x-broadcast-id").to_owned();
    let location = answer.header("location").to_owned();
    assert_eq!(location, format!("/broadcasts/{id}"));

    let running = eventually("one pod has its outcome", || async {
        let (status, job) = get(&router, &location).await;
        assert_eq!(status, StatusCode::OK, "{job}");
        (job["progress"]["finished"] == 1).then_some(job)
    })
    .await;
    assert_eq!(running["id"], id.as_str());
    assert_eq!(running["route"], "purge");
    assert_eq!(running["state"], "running");
    assert_eq!(running["progress"]["targets"], 2);
    let pending: Vec<&Value> = running["pods"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|pod| pod["pending"] == true)
        .collect();
    assert_eq!(pending.len(), 1, "{running}");
    assert_eq!(pending[0]["target"], pods.pods[1].addr.to_string());

    gate.open();
    let done = eventually("the job is done", || async {
        let (_, job) = get(&router, &location).await;
        (job["state"] == "done").then_some(job)
    })
    .await;
    assert_eq!(done["report"]["ok"], true);
    assert_eq!(done["report"]["succeeded"], 2);
    assert_eq!(done["report"]["results"].as_array().unwrap().len(), 2);
    assert!(done["finished_at"].is_string());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_leaves_does_not_cancel_its_broadcast() {
    let gate = Gate::new();
    let pods = Pods::start(250, &[Behaviour::Ok, Behaviour::Gated(gate.clone())]).await;
    let router = TestRouter::start(&config(&pods, "", "")).await;
    let id = "client-left";

    // The client gives up while one pod holds the broadcast.
    let left = router
        .client()
        .post(format!("{}/purge", router.url))
        .header("x-broadcast-id", id)
        .body("x")
        .timeout(std::time::Duration::from_millis(300))
        .send()
        .await;
    assert!(left.is_err_and(|error| error.is_timeout()));

    let location = format!("/broadcasts/{id}");
    let running = eventually("the pod that answered is recorded", || async {
        let (_, job) = get(&router, &location).await;
        (job["progress"]["finished"] == 1).then_some(job)
    })
    .await;
    assert_eq!(running["state"], "running", "{running}");

    gate.open();
    let done = eventually("the broadcast finished without its client", || async {
        let (_, job) = get(&router, &location).await;
        (job["state"] == "done").then_some(job)
    })
    .await;
    assert_eq!(done["report"]["ok"], true, "{done}");
    assert_eq!(done["report"]["succeeded"], 2);
    for pod in &pods.pods {
        assert_eq!(pod.count(), 1, "{} got its copy once", pod.addr);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sync_broadcast_is_a_job_too_and_the_listing_filters() {
    let pods = Pods::start(213, &[Behaviour::Ok]).await;
    let router = TestRouter::start(&config(&pods, "", "")).await;
    let first = router.post("/purge", "x").await;
    assert_eq!(first.status, StatusCode::OK);
    let second = router.post("/purge", "y").await;
    let (first, second) = (
        first.header("x-broadcast-id").to_owned(),
        second.header("x-broadcast-id").to_owned(),
    );
    let listed = eventually("both jobs are done", || async {
        let (status, list) = get(&router, "/broadcasts?route=purge&state=done").await;
        assert_eq!(status, StatusCode::OK, "{list}");
        (list["broadcasts"].as_array()?.len() == 2).then_some(list)
    })
    .await;
    let ids: Vec<&str> = listed["broadcasts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|job| job["id"].as_str().unwrap())
        .collect();
    assert!(ids.contains(&first.as_str()) && ids.contains(&second.as_str()));
    let (_, one) = get(&router, "/broadcasts?limit=1").await;
    assert_eq!(one["broadcasts"].as_array().unwrap().len(), 1);
    let (_, none) = get(&router, "/broadcasts?route=other").await;
    assert_eq!(none["broadcasts"].as_array().unwrap().len(), 0);
    let (status, bad) = get(&router, "/broadcasts?state=lost").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(bad["error"].as_str().unwrap().contains("lost"), "{bad}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unknown_id_is_a_404_with_a_json_error() {
    let pods = Pods::start(215, &[Behaviour::Ok]).await;
    let router = TestRouter::start(&config(&pods, "", "")).await;
    let (status, body) = get(&router, "/broadcasts/no-such-id").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["ok"], false);
    assert!(
        body["error"].as_str().unwrap().contains("no-such-id"),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_is_shown_only_to_its_routes_tokens() {
    let pods = Pods::start(217, &[Behaviour::Ok]).await;
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, "secret-token-0123456789\n").unwrap();
    let text = config(&pods, "auth = [\"ops\"]", "").replace(
        "[[routes]]",
        &format!(
            "[tokens.ops]\nfile = \"{}\"\n\n[[routes]]",
            tokens.display()
        ),
    );
    let router = TestRouter::start(&text).await;
    let answer = router
        .send(
            router
                .client()
                .post(format!("{}/purge", router.url))
                .bearer_auth("secret-token-0123456789"),
        )
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.json);
    let id = answer.header("x-broadcast-id").to_owned();
    let (status, _) = get(&router, &format!("/broadcasts/{id}")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (_, listed) = get(&router, "/broadcasts").await;
    assert_eq!(listed["broadcasts"].as_array().unwrap().len(), 0);
    let shown = router
        .send(
            router
                .client()
                .get(format!("{}/broadcasts/{id}", router.url))
                .bearer_auth("secret-token-0123456789"),
        )
        .await;
    assert_eq!(shown.status, StatusCode::OK);
    assert_eq!(shown.json["id"], id.as_str());
}

#[tokio::test(flavor = "multi_thread")]
async fn over_max_pending_a_broadcast_is_refused_before_anything_is_sent() {
    let gate = Gate::new();
    let pods = Pods::start(219, &[Behaviour::Gated(gate.clone())]).await;
    let router = TestRouter::start(
        &config(
            &pods,
            "mode = \"async\"",
            "[jobs]\nmax_pending = 1\npath = \"PATH\"",
        )
        .replace(
            "PATH",
            &tempfile::tempdir()
                .unwrap()
                .keep()
                .join("jobs.db")
                .display()
                .to_string(),
        ),
    )
    .await;
    assert_eq!(
        router.post("/purge", "1").await.status,
        StatusCode::ACCEPTED
    );
    eventually("the first copy reached the pod", || async {
        (pods.total() == 1).then_some(())
    })
    .await;
    let refused = router.post("/purge", "2").await;
    assert_eq!(
        refused.status,
        StatusCode::TOO_MANY_REQUESTS,
        "{}",
        refused.json
    );
    assert!(
        refused.json["error"]
            .as_str()
            .unwrap()
            .contains("max_pending"),
        "{}",
        refused.json
    );
    assert_eq!(pods.total(), 1, "nothing was sent for the refused one");
    gate.open();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_store_that_cannot_write_is_a_503_and_nothing_is_sent() {
    let pods = Pods::start(221, &[Behaviour::Ok]).await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let router = TestRouter::start(&config(
        &pods,
        "mode = \"async\"",
        &format!("[jobs]\nredis = \"redis://127.0.0.1:{port}/0\""),
    ))
    .await;
    let answer = router.post("/purge", "x").await;
    assert_eq!(
        answer.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        answer.json
    );
    let error = answer.json["error"].as_str().unwrap();
    assert!(
        error.contains("redis") && error.contains(&port.to_string()),
        "{error}"
    );
    assert_eq!(answer.json["source"], "router");
    assert_eq!(pods.total(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_store_over_max_bytes_refuses_broadcasts_with_429() {
    let pods = Pods::start(223, &[Behaviour::Ok]).await;
    let dir = tempfile::tempdir().unwrap();
    let router = TestRouter::start(&config(
        &pods,
        "mode = \"async\"",
        &format!(
            "[jobs]\npath = \"{}\"\nmax_bytes = \"1B\"",
            dir.path().join("jobs.db").display()
        ),
    ))
    .await;
    // The store's size is checked by the upkeep, at start and every second.
    let refused = eventually("the store is found full", || async {
        let answer = router.post("/purge", "x").await;
        (answer.status == StatusCode::TOO_MANY_REQUESTS).then_some(answer)
    })
    .await;
    let error = refused.json["error"].as_str().unwrap();
    assert!(error.contains("max_bytes"), "{error}");
}

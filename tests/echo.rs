//! `broadcast-router echo`, the receiver of the Kubernetes example: the real
//! binary answers every request with 200 and a JSON echo naming the pod,
//! logs each request, takes its name from `--name`, `POD_NAME` or
//! `HOSTNAME`, and exits cleanly on SIGTERM.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// The body of the test broadcast.
const BODY: &str = r#"{"key":"user:42"}"#;

/// How long to wait for the child before giving up (never a measurement).
const WAIT: Duration = Duration::from_secs(15);

/// `broadcast-router echo` as a child process; killed when dropped.
struct EchoCommand {
    child: Child,
    addr: SocketAddr,
    log: mpsc::Receiver<Value>,
}

impl EchoCommand {
    /// Starts the command on a free port of 127.0.0.1 with `args` and
    /// `env` added, and waits until its log says where it listens.
    fn start(args: &[&str], env: &[(&str, &str)]) -> EchoCommand {
        let mut command = Command::new(env!("CARGO_BIN_EXE_broadcast-router"));
        command
            .args(["--log-format", "json", "echo", "--listen", "127.0.0.1:0"])
            .args(args)
            .env_remove("POD_NAME")
            .env_remove("HOSTNAME")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (name, value) in env {
            command.env(name, value);
        }
        let mut child = command.spawn().expect("the echo command starts");
        let (events, log) = mpsc::channel();
        let stderr = child.stderr.take().expect("piped stderr");
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let event = serde_json::from_str(&line).unwrap_or(Value::String(line));
                if events.send(event).is_err() {
                    break;
                }
            }
        });
        let mut echo = EchoCommand {
            child,
            addr: "127.0.0.1:0".parse().unwrap(),
            log,
        };
        let listening = echo.next_event("Echo pod listening.");
        echo.addr = listening["fields"]["local_addr"]
            .as_str()
            .expect("the log names the address")
            .parse()
            .expect("a socket address");
        echo
    }

    /// The next log event with `message`, skipping others.
    fn next_event(&self, message: &str) -> Value {
        loop {
            match self.log.recv_timeout(WAIT) {
                Ok(event) if event["fields"]["message"] == message => return event,
                Ok(_) => {}
                Err(error) => panic!("no {message:?} log line: {error}"),
            }
        }
    }

    /// Stops the command with SIGTERM and asserts it exits 0.
    fn terminate(mut self) {
        let sent = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(sent.success(), "kill -TERM failed");
        let give_up = Instant::now() + WAIT;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("the child can be polled") {
                break status;
            }
            assert!(
                Instant::now() < give_up,
                "the echo command did not exit after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(status.success(), "echo exited with {status} on SIGTERM");
    }
}

impl Drop for EchoCommand {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// The body of `response`, as JSON.
async fn json_body(response: reqwest::Response) -> Value {
    let bytes = response.bytes().await.expect("the body arrives");
    serde_json::from_slice(&bytes).expect("a JSON answer")
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("an HTTP client")
}

#[tokio::test(flavor = "multi_thread")]
async fn echo_answers_every_request_with_what_it_received_and_logs_it() {
    let echo = EchoCommand::start(&["--name", "web-7d9f-abcde"], &[]);
    let base = format!("http://{}", echo.addr);

    let answer = client()
        .post(format!("{base}/cache-invalidation"))
        .header("x-broadcast-id", "inv-1")
        .body(BODY)
        .send()
        .await
        .expect("the echo pod answers");
    assert_eq!(answer.status(), 200);
    let body = json_body(answer).await;
    assert_eq!(
        body,
        json!({
            "pod": "web-7d9f-abcde",
            "method": "POST",
            "path": "/cache-invalidation",
            "broadcast_id": "inv-1",
            "bytes": BODY.len(),
        })
    );
    let logged = echo.next_event("Echo pod received a request.");
    assert_eq!(logged["fields"]["pod"], "web-7d9f-abcde");
    assert_eq!(logged["fields"]["method"], "POST");
    assert_eq!(logged["fields"]["path"], "/cache-invalidation");
    assert_eq!(logged["fields"]["broadcast_id"], "inv-1");
    assert_eq!(logged["fields"]["bytes"], BODY.len());

    let answer = client()
        .delete(format!("{base}/any/path?x=1"))
        .send()
        .await
        .expect("the echo pod answers");
    assert_eq!(answer.status(), 200);
    let body = json_body(answer).await;
    assert_eq!(body["method"], "DELETE");
    assert_eq!(body["path"], "/any/path?x=1");
    assert_eq!(body["broadcast_id"], Value::Null);
    assert_eq!(body["bytes"], 0);

    echo.terminate();
}

#[tokio::test(flavor = "multi_thread")]
async fn echo_is_named_by_pod_name_then_host_name() {
    let named = EchoCommand::start(&[], &[("POD_NAME", "from-pod-name"), ("HOSTNAME", "other")]);
    let by_pod_name = json_body(
        client()
            .get(format!("http://{}/", named.addr))
            .send()
            .await
            .expect("the echo pod answers"),
    )
    .await;
    assert_eq!(by_pod_name["pod"], "from-pod-name");
    named.terminate();

    let hosted = EchoCommand::start(&[], &[("HOSTNAME", "from-hostname")]);
    let by_host_name = json_body(
        client()
            .get(format!("http://{}/", hosted.addr))
            .send()
            .await
            .expect("the echo pod answers"),
    )
    .await;
    assert_eq!(by_host_name["pod"], "from-hostname");
    hosted.terminate();
}

//! The UDP receiver with real sockets on loopback: each broadcast handed on
//! once however many copies arrive, malformed datagrams dropped and counted,
//! forwarding to a real HTTP server, and the `listen` command end to end.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use broadcast_router::frame;
use broadcast_router::receiver::{
    self, ForwardError, Forwarder, Message, Receiver, ReceiverOptions, Sink, Stats,
};
use bytes::Bytes;
use serde_json::Value;
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::{mpsc, oneshot};

/// How long any single wait may take before the test fails.
const WAIT: Duration = Duration::from_secs(15);

/// One broadcast as the router would send it: (sequence, id, payload).
type Broadcast<'a> = (u64, &'a str, &'a [u8]);

async fn bind_receiver() -> Receiver {
    Receiver::bind("127.0.0.1:0".parse().unwrap(), ReceiverOptions::default())
        .await
        .expect("receiver binds")
}

async fn bind_sender() -> UdpSocket {
    UdpSocket::bind("127.0.0.1:0").await.expect("sender binds")
}

/// Sends every broadcast `copies` times, copy by copy, as the router does.
async fn send(socket: &UdpSocket, to: SocketAddr, broadcasts: &[Broadcast<'_>], copies: u8) {
    for copy in 0..copies {
        for (sequence, id, payload) in broadcasts {
            let datagram = frame::encode(copy, *sequence, id, payload);
            socket.send_to(&datagram, to).await.expect("datagram sent");
        }
    }
}

async fn next(receiver: &mut Receiver) -> Message {
    tokio::time::timeout(WAIT, receiver.next())
        .await
        .expect("a message arrives within 15 s")
        .expect("the socket works")
}

/// Polls `check` every 20 ms until it returns `Some`, failing after 15 s.
async fn eventually<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let give_up = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < give_up,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_broadcast_is_delivered_once_from_three_copies() {
    let mut receiver = bind_receiver().await;
    let to = receiver.local_addr().unwrap();
    let sender = bind_sender().await;
    let from = sender.local_addr().unwrap();
    let broadcasts: Vec<(u64, String, Vec<u8>)> = (0..5)
        .map(|i| {
            (
                100 + i,
                format!("b-{i}"),
                format!("payload {i}").into_bytes(),
            )
        })
        .collect();
    let borrowed: Vec<Broadcast<'_>> = broadcasts
        .iter()
        .map(|(sequence, id, payload)| (*sequence, id.as_str(), payload.as_slice()))
        .collect();

    send(&sender, to, &borrowed, 3).await;
    // Datagrams from one socket arrive in order on loopback: once the
    // sentinel is out, every copy before it has been read.
    send(&sender, to, &[(200, "end", b"")], 3).await;

    let mut received = Vec::new();
    loop {
        let message = next(&mut receiver).await;
        if message.id == "end" {
            break;
        }
        received.push(message);
    }
    let expected: Vec<Message> = broadcasts
        .iter()
        .map(|(sequence, id, payload)| Message {
            id: id.clone(),
            sequence: *sequence,
            payload: Bytes::from(payload.clone()),
            from,
        })
        .collect();
    assert_eq!(received, expected);
    assert_eq!(
        receiver.stats(),
        Stats {
            received: 16,
            delivered: 6,
            duplicates: 10,
            malformed: 0,
        }
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_broadcast_id_from_another_sender_is_a_duplicate_too() {
    let mut receiver = bind_receiver().await;
    let to = receiver.local_addr().unwrap();
    let first = bind_sender().await;
    let second = bind_sender().await;

    send(&first, to, &[(1, "shared", b"first")], 1).await;
    let message = next(&mut receiver).await;
    assert_eq!(&message.payload[..], b"first");
    assert_eq!(message.from, first.local_addr().unwrap());

    // Another router process resends the id with its own sequence number.
    send(&second, to, &[(900, "shared", b"second")], 2).await;
    send(&second, to, &[(901, "other", b"other")], 1).await;
    let message = next(&mut receiver).await;
    assert_eq!(message.id, "other");
    assert_eq!(message.sequence, 901);
    assert_eq!(receiver.stats().duplicates, 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_datagrams_are_dropped_and_counted() {
    let mut receiver = bind_receiver().await;
    let to = receiver.local_addr().unwrap();
    let sender = bind_sender().await;

    let good = frame::encode(0, 42, "valid", b"{\"key\":\"user:42\"}");
    let with = |offset: usize, byte: u8| {
        let mut bad = good.to_vec();
        bad[offset] = byte;
        bad
    };
    let malformed: Vec<Vec<u8>> = vec![
        Vec::new(),                               // empty
        b"BRDG".to_vec(),                         // shorter than the header
        vec![0xff; 100],                          // no magic
        with(4, 9),                               // unknown version
        with(14, 0),                              // empty id
        with(14, 200),                            // id longer than the datagram
        with(15, b' '),                           // id not printable
        good[..frame::FIXED_HEADER + 2].to_vec(), // id cut short
    ];
    for datagram in &malformed {
        sender.send_to(datagram, to).await.unwrap();
    }
    sender.send_to(&good, to).await.unwrap();

    let message = next(&mut receiver).await;
    assert_eq!(message.id, "valid");
    assert_eq!(message.sequence, 42);
    assert_eq!(&message.payload[..], b"{\"key\":\"user:42\"}");
    assert_eq!(
        receiver.stats(),
        Stats {
            received: 9,
            delivered: 1,
            duplicates: 0,
            malformed: 8,
        }
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_largest_datagram_arrives_whole() {
    let mut receiver = bind_receiver().await;
    let to = receiver.local_addr().unwrap();
    let sender = bind_sender().await;
    // 65,507 bytes: the largest UDP payload over IPv4.
    let payload: Vec<u8> = (0..65_507 - frame::FIXED_HEADER - 3)
        .map(|i| (i % 251) as u8)
        .collect();

    send(&sender, to, &[(1, "big", &payload)], 1).await;

    let message = next(&mut receiver).await;
    assert_eq!(message.payload.len(), payload.len());
    assert!(message.payload[..] == payload[..], "payload changed");
}

/// What the local HTTP endpoint received, and how it answers.
#[derive(Clone, Default)]
struct Hook {
    /// Accepted POSTs: (X-Broadcast-Id, X-Broadcast-Sequence, body).
    accepted: Arc<Mutex<Vec<(String, String, Bytes)>>>,
    /// Ids to refuse with 503 this many more times.
    refuse: Arc<Mutex<HashMap<String, u32>>>,
    /// POSTs refused.
    refused: Arc<Mutex<Vec<String>>>,
}

impl Hook {
    /// Serves the hook on 127.0.0.1; returns its URL.
    async fn start(&self) -> axum::http::Uri {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = axum::Router::new()
            .route("/hook", axum::routing::post(Hook::handle))
            .with_state(self.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://{addr}/hook").parse().unwrap()
    }

    async fn handle(State(hook): State<Hook>, headers: HeaderMap, body: Bytes) -> StatusCode {
        let header = |name: &str| {
            headers
                .get(name)
                .map(|value| value.to_str().unwrap().to_owned())
                .unwrap_or_default()
        };
        let id = header("x-broadcast-id");
        if let Some(left) = hook.refuse.lock().unwrap().get_mut(&id)
            && *left > 0
        {
            *left -= 1;
            hook.refused.lock().unwrap().push(id);
            return StatusCode::SERVICE_UNAVAILABLE;
        }
        let sequence = header("x-broadcast-sequence");
        hook.accepted.lock().unwrap().push((id, sequence, body));
        StatusCode::NO_CONTENT
    }

    fn accepted_ids(&self) -> Vec<String> {
        let accepted = self.accepted.lock().unwrap();
        accepted.iter().map(|(id, _, _)| id.clone()).collect()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn forwarded_payloads_reach_the_local_url_once_each() {
    let hook = Hook::default();
    hook.refuse.lock().unwrap().insert("f-1".into(), 2);
    let url = hook.start().await;
    let forwarder = Forwarder::new(url)
        .unwrap()
        .retries(4, Duration::from_millis(20));
    let receiver = bind_receiver().await;
    let to = receiver.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let running = tokio::spawn(receiver::run(
        receiver,
        Sink::Forward(forwarder),
        async move {
            let _ = stopped.await;
        },
    ));
    let sender = bind_sender().await;

    let broadcasts: [Broadcast<'_>; 3] =
        [(7, "f-0", b"zero"), (8, "f-1", b"one"), (9, "f-2", b"two")];
    send(&sender, to, &broadcasts, 3).await;
    send(&sender, to, &[(10, "end", b"")], 3).await;

    // The sink hands messages on in order: the sentinel comes last.
    eventually("the sentinel is forwarded", || {
        hook.accepted_ids()
            .contains(&"end".to_owned())
            .then_some(())
    })
    .await;
    stop.send(()).unwrap();
    let stats = tokio::time::timeout(WAIT, running)
        .await
        .expect("run stops within 15 s")
        .unwrap()
        .expect("run ends without error");

    let accepted = hook.accepted.lock().unwrap().clone();
    let expected: Vec<(String, String, Bytes)> = broadcasts
        .iter()
        .chain(&[(10, "end", &b""[..])])
        .map(|(sequence, id, payload)| {
            (
                id.to_string(),
                sequence.to_string(),
                Bytes::copy_from_slice(payload),
            )
        })
        .collect();
    assert_eq!(accepted, expected);
    assert_eq!(*hook.refused.lock().unwrap(), ["f-1", "f-1"]);
    assert_eq!(stats.delivered, 4);
    assert_eq!(stats.malformed, 0);
    assert!(stats.duplicates >= 6, "{stats:?}");
    assert_eq!(stats.received, stats.delivered + stats.duplicates);
}

#[tokio::test(flavor = "multi_thread")]
async fn forwarding_gives_up_without_panicking() {
    let message = Message {
        id: "lost".into(),
        sequence: 1,
        payload: Bytes::from_static(b"x"),
        from: "127.0.0.1:9".parse().unwrap(),
    };

    // Nothing listens on a port that was just freed.
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let forwarder = Forwarder::new(format!("http://127.0.0.1:{port}/").parse().unwrap())
        .unwrap()
        .retries(3, Duration::from_millis(10));
    match forwarder.forward(&message).await {
        Err(ForwardError::Unreachable { attempts, .. }) => assert_eq!(attempts, 3),
        other => panic!("expected Unreachable, got {other:?}"),
    }
    Sink::Forward(forwarder)
        .deliver(&message)
        .await
        .expect("a failed POST is logged, not returned");

    // A 4xx other than 408 and 429 is final: no retry.
    let hook = Hook::default();
    let url = hook.start().await;
    let wrong_path: axum::http::Uri = format!(
        "http://{}/elsewhere",
        url.authority().expect("the hook's URL has an address")
    )
    .parse()
    .unwrap();
    let forwarder = Forwarder::new(wrong_path)
        .unwrap()
        .retries(3, Duration::from_millis(10));
    match forwarder.forward(&message).await {
        Err(ForwardError::Refused {
            status, attempts, ..
        }) => {
            assert_eq!(status, StatusCode::NOT_FOUND);
            assert_eq!(attempts, 1);
        }
        other => panic!("expected Refused, got {other:?}"),
    }
}

/// `broadcast-router listen` as a child process; killed when dropped.
struct ListenCommand {
    child: Child,
    addr: SocketAddr,
    stdout: mpsc::UnboundedReceiver<String>,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl ListenCommand {
    /// Starts the command on a free port of 127.0.0.1 and waits until its
    /// log says where it listens.
    async fn start() -> ListenCommand {
        let mut child = Command::new(env!("CARGO_BIN_EXE_broadcast-router"))
            .args(["--log-format", "json", "listen"])
            .args(["--bind", "127.0.0.1", "--port", "0"])
            .args(["--window", "100", "--window-age", "5m"])
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the listen command starts");
        let (lines, stdout) = mpsc::unbounded_channel();
        let out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if lines.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let (found, mut listening) = mpsc::unbounded_channel();
        let err = child.stderr.take().unwrap();
        let log = Arc::clone(&stderr);
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines() {
                let Ok(line) = line else { break };
                if let Ok(event) = serde_json::from_str::<Value>(&line)
                    && event["fields"]["message"] == "Listening for UDP broadcasts."
                    && let Some(addr) = event["fields"]["local_addr"].as_str()
                {
                    let _ = found.send(addr.parse::<SocketAddr>().unwrap());
                }
                log.lock().unwrap().push(line);
            }
        });
        let mut command = ListenCommand {
            child,
            addr: "127.0.0.1:0".parse().unwrap(),
            stdout,
            stderr,
        };
        match tokio::time::timeout(WAIT, listening.recv()).await {
            Ok(Some(addr)) => command.addr = addr,
            _ => panic!(
                "the listen command did not log its address; stderr:\n{}",
                command.stderr()
            ),
        }
        command
    }

    /// The next line on stdout, parsed.
    async fn next_line(&mut self) -> Value {
        match tokio::time::timeout(WAIT, self.stdout.recv()).await {
            Ok(Some(line)) => serde_json::from_str(&line)
                .unwrap_or_else(|error| panic!("stdout line {line:?} is not JSON: {error}")),
            Ok(None) => panic!("stdout closed; stderr:\n{}", self.stderr()),
            Err(_) => panic!("no stdout line within 15 s; stderr:\n{}", self.stderr()),
        }
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().join("\n")
    }

    /// Stops the command with SIGTERM where `kill` can send one, else kills
    /// it; waits until it exits. Asserts a clean exit after SIGTERM.
    async fn terminate(&mut self) {
        let signalled = cfg!(unix)
            && Command::new("kill")
                .args(["-TERM", &self.child.id().to_string()])
                .status()
                .is_ok_and(|status| status.success());
        if !signalled {
            let _ = self.child.kill();
        }
        let status = eventually("the listen command exits", || {
            self.child.try_wait().unwrap()
        })
        .await;
        if signalled {
            assert!(
                status.success(),
                "listen exited with {status} on SIGTERM; stderr:\n{}",
                self.stderr()
            );
        }
    }
}

impl Drop for ListenCommand {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_listen_command_prints_one_json_line_per_broadcast() {
    let mut listen = ListenCommand::start().await;
    let sender = bind_sender().await;
    let from = sender.local_addr().unwrap().to_string();

    let broadcasts: [Broadcast<'_>; 3] = [
        (31, "l-0", b"{\"key\":\"user:42\"}"),
        (32, "l-1", b"line one\nline two"),
        (33, "l-2", b"not utf-8: \xff"),
    ];
    send(&sender, listen.addr, &broadcasts, 3).await;
    send(&sender, listen.addr, &[(34, "end", b"done")], 3).await;

    let expected = [
        (31, "l-0", "{\"key\":\"user:42\"}"),
        (32, "l-1", "line one\nline two"),
        (33, "l-2", "not utf-8: \u{fffd}"),
        (34, "end", "done"),
    ];
    for (sequence, id, payload) in expected {
        let line = listen.next_line().await;
        assert_eq!(line["id"], id, "{line}");
        assert_eq!(line["sequence"], sequence, "{line}");
        assert_eq!(line["payload"], payload, "{line}");
        assert_eq!(line["from"], from.as_str(), "{line}");
    }

    listen.terminate().await;
    // Nothing more was printed: the repeated copies were dropped.
    let rest = tokio::time::timeout(WAIT, listen.stdout.recv())
        .await
        .expect("stdout closes when the command exits");
    assert_eq!(rest, None, "extra output");
}

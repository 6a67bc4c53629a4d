//! The `listen` command end to end: the router binary receiving real UDP
//! broadcasts on loopback and printing each one once, however many copies
//! arrive. The receiver library itself (deduplication, malformed datagrams,
//! forwarding to a local URL) is tested in its own crate,
//! `receiver/tests/udp.rs`.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use broadcast_router::frame;
use serde_json::Value;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

/// How long any single wait may take before the test fails.
const WAIT: Duration = Duration::from_secs(15);

/// One broadcast as the router would send it: (sequence, id, payload).
type Broadcast<'a> = (u64, &'a str, &'a [u8]);

async fn bind_sender() -> UdpSocket {
    UdpSocket::bind("127.0.0.1:0").await.expect("bind a sender")
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

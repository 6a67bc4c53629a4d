//! The receiver with real sockets on loopback: each broadcast handed on once
//! however many copies arrive, malformed datagrams dropped and counted, and
//! forwarding to a real HTTP server.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use broadcast_receiver::{
    self as receiver, ForwardError, Forwarder, Message, Receiver, ReceiverOptions, Sink, Stats,
    frame,
};
use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::oneshot;

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

/// One POST the hook accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Accepted {
    id: String,
    sequence: String,
    content_type: Option<String>,
    body: Bytes,
}

/// What the local HTTP endpoint received, and how it answers.
#[derive(Clone, Default)]
struct Hook {
    /// Accepted POSTs.
    accepted: Arc<Mutex<Vec<Accepted>>>,
    /// Ids to refuse with 503 this many more times.
    refuse: Arc<Mutex<HashMap<String, u32>>>,
    /// POSTs refused.
    refused: Arc<Mutex<Vec<String>>>,
}

impl Hook {
    /// Serves the hook on 127.0.0.1 with hyper; returns its address.
    /// `POST /hook` is the hook, anything else is 404.
    async fn start(&self) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hook = self.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let hook = hook.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request| {
                        let hook = hook.clone();
                        async move { Ok::<_, Infallible>(hook.handle(request).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        addr
    }

    async fn handle(&self, request: Request<Incoming>) -> Response<Full<Bytes>> {
        let answer = |status: StatusCode| {
            let mut response = Response::new(Full::new(Bytes::from_static(b"answer")));
            *response.status_mut() = status;
            response
        };
        if request.method() != http::Method::POST || request.uri().path() != "/hook" {
            return answer(StatusCode::NOT_FOUND);
        }
        let (parts, body) = request.into_parts();
        let header = |headers: &HeaderMap, name: &str| {
            headers
                .get(name)
                .map(|value| value.to_str().unwrap().to_owned())
        };
        let id = header(&parts.headers, "x-broadcast-id").unwrap_or_default();
        if let Some(left) = self.refuse.lock().unwrap().get_mut(&id)
            && *left > 0
        {
            *left -= 1;
            self.refused.lock().unwrap().push(id);
            return answer(StatusCode::SERVICE_UNAVAILABLE);
        }
        let body = body.collect().await.unwrap().to_bytes();
        self.accepted.lock().unwrap().push(Accepted {
            id,
            sequence: header(&parts.headers, "x-broadcast-sequence").unwrap_or_default(),
            content_type: header(&parts.headers, "content-type"),
            body,
        });
        answer(StatusCode::NO_CONTENT)
    }

    fn accepted_ids(&self) -> Vec<String> {
        let accepted = self.accepted.lock().unwrap();
        accepted
            .iter()
            .map(|accepted| accepted.id.clone())
            .collect()
    }
}

fn url(addr: SocketAddr, path: &str) -> Uri {
    format!("http://{addr}{path}").parse().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn forwarded_payloads_reach_the_local_url_once_each() {
    let hook = Hook::default();
    hook.refuse.lock().unwrap().insert("f-1".into(), 2);
    let addr = hook.start().await;
    let forwarder = Forwarder::new(url(addr, "/hook"))
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
    let expected: Vec<Accepted> = broadcasts
        .iter()
        .chain(&[(10, "end", &b""[..])])
        .map(|(sequence, id, payload)| Accepted {
            id: id.to_string(),
            sequence: sequence.to_string(),
            content_type: None,
            body: Bytes::copy_from_slice(payload),
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
    let closed_addr = closed.local_addr().unwrap();
    drop(closed);
    let forwarder = Forwarder::new(url(closed_addr, "/"))
        .unwrap()
        .retries(3, Duration::from_millis(10));
    match forwarder.forward(&message).await {
        Err(ForwardError::Unreachable {
            url: to,
            detail,
            attempts,
        }) => {
            assert_eq!(attempts, 3);
            assert_eq!(to, url(closed_addr, "/"));
            assert!(detail.to_lowercase().contains("refused"), "{detail}");
        }
        other => panic!("expected Unreachable, got {other:?}"),
    }
    Sink::Forward(forwarder)
        .deliver(&message)
        .await
        .expect("a failed POST is logged, not returned");

    // A 4xx other than 408 and 429 is final: no retry.
    let hook = Hook::default();
    let addr = hook.start().await;
    let forwarder = Forwarder::new(url(addr, "/elsewhere"))
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

    // 5xx is retried until the attempts run out.
    hook.refuse.lock().unwrap().insert("lost".into(), 10);
    let forwarder = Forwarder::new(url(addr, "/hook"))
        .unwrap()
        .retries(3, Duration::from_millis(10));
    match forwarder.forward(&message).await {
        Err(ForwardError::Refused {
            status, attempts, ..
        }) => {
            assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
            assert_eq!(attempts, 3);
        }
        other => panic!("expected Refused, got {other:?}"),
    }
    assert_eq!(hook.refused.lock().unwrap().len(), 3);
}

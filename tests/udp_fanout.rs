//! UDP routes through the real router to real UDP listeners on loopback
//! addresses sharing one port: every copy arrives with one id and sequence,
//! oversized payloads are refused before anything is sent, and a listener
//! that loses the first copies still gets the message.

mod support;

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use broadcast_router::frame::{self, Frame};
use reqwest::StatusCode;
use support::{TestRouter, preamble};
use tokio::net::UdpSocket;

/// UDP sockets on 127.0.0.`first`… all bound to one port.
async fn listeners(first: u8, count: u8) -> (u16, Vec<UdpSocket>) {
    'port: for _ in 0..50 {
        let ip = |i: u8| IpAddr::V4(Ipv4Addr::new(127, 0, 0, first + i));
        let head = UdpSocket::bind((ip(0), 0)).await.unwrap();
        let port = head.local_addr().unwrap().port();
        let mut sockets = vec![head];
        for i in 1..count {
            match UdpSocket::bind((ip(i), port)).await {
                Ok(socket) => sockets.push(socket),
                Err(_) => continue 'port,
            }
        }
        return (port, sockets);
    }
    panic!("no common UDP port on 127.0.0.{first}..");
}

async fn receive(socket: &UdpSocket) -> Frame {
    let mut buffer = vec![0; 65536];
    let (len, _) = tokio::time::timeout(Duration::from_secs(10), socket.recv_from(&mut buffer))
        .await
        .expect("a datagram arrives")
        .unwrap();
    frame::decode(&buffer[..len]).expect("a valid frame")
}

fn udp_route(sockets: &[UdpSocket], extra: &str) -> String {
    let targets: Vec<String> = sockets
        .iter()
        .map(|socket| format!("\"{}\"", socket.local_addr().unwrap()))
        .collect();
    format!(
        "{}\n[[routes]]\nname = \"notify\"\npath = \"/notify\"\nprotocol = \"udp\"\ntargets = [{}]\n{extra}\n",
        preamble(None),
        targets.join(", ")
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn every_listener_gets_every_copy_with_one_id_and_sequence() {
    let (_, sockets) = listeners(171, 3).await;
    let router = TestRouter::start(&udp_route(
        &sockets,
        "udp = { repeat = 3, interval = \"5ms\" }",
    ))
    .await;

    let answer = router.post("/notify", "flush user:42").await;
    assert_eq!(answer.status, StatusCode::ACCEPTED, "{}", answer.json);
    assert_eq!(answer.json["protocol"], "udp");
    assert_eq!(answer.json["ok"], true);
    assert_eq!(answer.json["targets"], 3);
    assert_eq!(answer.json["repeat"], 3);
    let id = answer.header("x-broadcast-id").to_owned();
    let sequence = answer.json["sequence"].as_u64().unwrap();
    assert_eq!(
        answer.json["datagram_bytes"],
        frame::encoded_len(&id, "flush user:42".len())
    );

    for socket in &sockets {
        let addr: SocketAddr = socket.local_addr().unwrap();
        assert_eq!(answer.result(addr)["datagrams"], 3);
        let mut copies = Vec::new();
        for _ in 0..3 {
            let frame = receive(socket).await;
            assert_eq!(frame.id, id);
            assert_eq!(frame.sequence, sequence, "copies share the sequence");
            assert_eq!(&frame.payload[..], b"flush user:42");
            copies.push(frame.copy);
        }
        copies.sort_unstable();
        assert_eq!(copies, [0, 1, 2]);
    }

    // The next broadcast carries a new id and a larger sequence number.
    let next = router.post("/notify", "again").await;
    assert!(next.json["sequence"].as_u64().unwrap() > sequence);
    assert_ne!(next.header("x-broadcast-id"), id);
}

#[tokio::test(flavor = "multi_thread")]
async fn oversized_payload_is_refused_and_nothing_is_sent() {
    let (_, sockets) = listeners(174, 2).await;
    let router = TestRouter::start(&udp_route(
        &sockets,
        "udp = { repeat = 2, interval = \"1ms\", max_datagram_bytes = \"300B\" }",
    ))
    .await;

    let answer = router.post("/notify", vec![b'x'; 300]).await;
    assert_eq!(
        answer.status,
        StatusCode::PAYLOAD_TOO_LARGE,
        "{}",
        answer.json
    );
    let message = answer.json["error"].as_str().unwrap();
    assert!(message.contains("limit of 300") && message.contains("nothing was sent"));

    // The first datagram each listener sees belongs to the next, small
    // broadcast: the refused one sent nothing.
    let small = router.post("/notify", "ok").await;
    assert_eq!(small.status, StatusCode::ACCEPTED);
    for socket in &sockets {
        let frame = receive(socket).await;
        assert_eq!(frame.id, small.header("x-broadcast-id"));
        assert_eq!(frame.copy, 0);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn listener_losing_the_first_copies_still_gets_the_message_once() {
    let (_, sockets) = listeners(176, 1).await;
    let router = TestRouter::start(&udp_route(
        &sockets,
        "udp = { repeat = 4, interval = \"2ms\" }",
    ))
    .await;
    let answer = router.post("/notify", "hello").await;
    assert_eq!(answer.status, StatusCode::ACCEPTED);

    // Simulated loss: the first 3 datagrams are dropped on arrival.
    let lost = 3;
    let mut seen = HashSet::new();
    let mut delivered = Vec::new();
    for arrival in 0..4 {
        let frame = receive(&sockets[0]).await;
        if arrival < lost {
            continue;
        }
        if seen.insert(frame.id.clone()) {
            delivered.push(frame);
        }
    }
    assert_eq!(delivered.len(), 1);
    assert_eq!(&delivered[0].payload[..], b"hello");
    assert_eq!(delivered[0].copy, 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn udp_settings_are_validated() {
    let config = format!(
        "{}\n[[routes]]\nname = \"notify\"\npath = \"/notify\"\nprotocol = \"udp\"\ntargets = [\"127.0.0.2:9\"]\n\
         mode = \"async\"\nretries = 2\nudp = {{ repeat = 0, max_datagram_bytes = \"9000B\" }}\n\
         \n[[routes]]\nname = \"web\"\npath = \"/web\"\ntargets = [\"127.0.0.2:80\"]\nudp = {{ repeat = 2 }}\n",
        preamble(None)
    );
    let problems = broadcast_router::config::Config::parse(&config)
        .unwrap_err()
        .to_string();
    for expected in [
        "`mode = \"async\"` applies to HTTP routes",
        "`udp.repeat` must be between 1 and 20",
        "set `large_datagrams = true`",
        "the `udp` table needs `protocol = \"udp\"`",
        "`retries` does not apply to UDP routes",
    ] {
        assert!(
            problems.contains(expected),
            "missing {expected:?} in:\n{problems}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn receiver_library_delivers_each_router_broadcast_exactly_once() {
    use broadcast_router::receiver::{Receiver, ReceiverOptions};

    let (_, sockets) = listeners(178, 2).await;
    let router = TestRouter::start(&udp_route(
        &sockets,
        "udp = { repeat = 3, interval = \"2ms\" }",
    ))
    .await;
    let mut receivers: Vec<Receiver> = sockets
        .into_iter()
        .map(|socket| Receiver::from_socket(socket, ReceiverOptions::default()))
        .collect();

    let mut ids = Vec::new();
    for body in ["one", "two"] {
        let answer = router.post("/notify", body).await;
        assert_eq!(answer.status, StatusCode::ACCEPTED);
        ids.push(answer.header("x-broadcast-id").to_owned());
    }
    // A final broadcast marks the end: everything before it has been read
    // once it arrives (loopback keeps one sender's datagrams in order).
    let end = router.post("/notify", "end").await;
    let end_id = end.header("x-broadcast-id").to_owned();

    for receiver in &mut receivers {
        let mut delivered = Vec::new();
        loop {
            let message = tokio::time::timeout(Duration::from_secs(10), receiver.next())
                .await
                .expect("a message arrives")
                .unwrap();
            if message.id == end_id {
                break;
            }
            delivered.push((message.id, message.payload));
        }
        assert_eq!(delivered.len(), 2, "each broadcast once, copies dropped");
        assert_eq!(delivered[0].0, ids[0]);
        assert_eq!(&delivered[0].1[..], b"one");
        assert_eq!(delivered[1].0, ids[1]);
        assert_eq!(&delivered[1].1[..], b"two");
        assert_eq!(receiver.stats().duplicates, 4);
    }
}

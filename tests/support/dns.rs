//! In-process authoritative DNS server for integration tests, built on `hickory-server`.
//!
//! [`TestDns`] serves a small mutable zone of A/AAAA records over UDP and TCP on
//! `127.0.0.1:<ephemeral port>` inside the test's tokio runtime. Tests change the zone with
//! [`TestDns::set`] and [`TestDns::remove`], count received queries with [`TestDns::queries`],
//! and simulate a DNS outage with [`TestDns::stop`] / [`TestDns::restart`] (same port, same
//! zone). Unknown names answer NXDOMAIN, known names without records of the queried type answer
//! NOERROR with an empty answer section (NODATA). Negative answers carry no SOA record, so
//! resolvers do not cache them (hickory's default negative minimum TTL is 0).
#![allow(dead_code)]

use std::collections::HashMap;
use std::iter;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hickory_server::Server;
use hickory_server::net::runtime::Time;
use hickory_server::proto::op::{
    Edns, Header, HeaderCounts, MessageType, Metadata, OpCode, ResponseCode,
};
use hickory_server::proto::rr::{Name, RData, Record, RecordType};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use tokio::net::{TcpListener, UdpSocket};

/// Idle timeout for TCP connections accepted by the test server.
const TCP_TIMEOUT: Duration = Duration::from_secs(5);
/// Per-connection buffer of outgoing TCP responses.
const TCP_RESPONSE_BUFFER: usize = 32;
/// How long [`TestDns::restart`] keeps retrying to rebind the original port.
const REBIND_DEADLINE: Duration = Duration::from_secs(5);
/// How long [`TestDns::stop`] waits for the server tasks to finish.
const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(5);

/// Zone contents: fully-qualified name → (addresses, TTL in seconds).
type Zone = HashMap<Name, (Vec<IpAddr>, u32)>;

/// Shared state of the server, cloned into every incarnation of the hickory `Server`.
#[derive(Clone, Default)]
struct ZoneHandler {
    zone: Arc<Mutex<Zone>>,
    queries: Arc<AtomicUsize>,
    serving: Arc<AtomicBool>,
    silent: Arc<AtomicBool>,
}

impl ZoneHandler {
    /// Fills `metadata` (response code, AA flag) and returns the answer records for `request`.
    fn answer(&self, request: &Request, metadata: &mut Metadata) -> Vec<Record> {
        metadata.authoritative = true;
        if request.metadata.message_type != MessageType::Query
            || request.metadata.op_code != OpCode::Query
        {
            metadata.response_code = ResponseCode::NotImp;
            return Vec::new();
        }
        let query = match request.request_info() {
            Ok(info) => info.query,
            Err(_) => {
                metadata.response_code = ResponseCode::FormErr;
                return Vec::new();
            }
        };

        let name = Name::from(query.name());
        let zone = self.zone.lock().expect("test DNS zone lock poisoned");
        let Some((ips, ttl)) = zone.get(&name) else {
            metadata.response_code = ResponseCode::NXDomain;
            return Vec::new();
        };
        metadata.response_code = ResponseCode::NoError;

        let query_type = query.query_type();
        ips.iter()
            .filter(|ip| match query_type {
                RecordType::A => ip.is_ipv4(),
                RecordType::AAAA => ip.is_ipv6(),
                RecordType::ANY => true,
                _ => false,
            })
            .map(|ip| {
                // Echo the name exactly as asked, so 0x20 case randomization keeps working.
                Record::from_rdata(query.original().name().clone(), *ttl, RData::from(*ip))
            })
            .collect()
    }
}

/// A SERVFAIL `ResponseInfo` for requests that got no (successful) response.
fn serve_failed(request: &Request) -> ResponseInfo {
    let mut metadata = Metadata::response_from_request(&request.metadata);
    metadata.response_code = ResponseCode::ServFail;
    ResponseInfo::from(Header {
        metadata,
        counts: HeaderCounts::default(),
    })
}

#[async_trait::async_trait]
impl RequestHandler for ZoneHandler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        // A connection that survived `stop()` for a moment must not answer anything.
        if !self.serving.load(Ordering::SeqCst) {
            return serve_failed(request);
        }
        self.queries.fetch_add(1, Ordering::SeqCst);
        if self.silent.load(Ordering::SeqCst) {
            // A black hole: the query is read and never answered, so the
            // client waits for its whole timeout.
            std::future::pending::<()>().await;
        }

        let response_edns = request.edns.as_ref().map(|request_edns| {
            let mut edns = Edns::new();
            edns.set_max_payload(request_edns.max_payload().max(512));
            edns.set_version(0);
            edns
        });

        let mut metadata = Metadata::response_from_request(&request.metadata);
        let answers = self.answer(request, &mut metadata);
        let response = MessageResponseBuilder::new(&request.queries, response_edns.as_ref()).build(
            metadata,
            answers.iter(),
            iter::empty(),
            iter::empty(),
            iter::empty(),
        );
        match response_handle.send_response(response).await {
            Ok(info) => info,
            Err(_) => serve_failed(request),
        }
    }
}

/// Parses `name` as a fully-qualified domain name (a trailing dot is optional).
fn fqdn(name: &str) -> Name {
    let mut parsed =
        Name::from_ascii(name).unwrap_or_else(|e| panic!("invalid DNS name {name:?}: {e}"));
    parsed.set_fqdn(true);
    parsed
}

/// A real DNS server (UDP and TCP) on `127.0.0.1:<ephemeral port>` serving a mutable zone.
///
/// Dropping it aborts the server tasks; use [`TestDns::stop`] for an orderly shutdown that
/// releases both sockets before returning.
pub struct TestDns {
    addr: SocketAddr,
    handler: ZoneHandler,
    server: Option<Server<ZoneHandler>>,
}

impl TestDns {
    /// Starts a server with an empty zone on a fresh ephemeral port (same port for UDP and TCP).
    pub async fn start() -> TestDns {
        let handler = ZoneHandler::default();
        for _ in 0..50 {
            let udp = UdpSocket::bind("127.0.0.1:0")
                .await
                .expect("bind test DNS UDP socket");
            let addr = udp.local_addr().expect("test DNS UDP local address");
            // The UDP port may be taken for TCP by someone else; then pick another one.
            let Ok(tcp) = TcpListener::bind(addr).await else {
                continue;
            };
            let server = Self::serve(&handler, udp, tcp);
            return TestDns {
                addr,
                handler,
                server: Some(server),
            };
        }
        panic!("could not find a port free for both UDP and TCP for the test DNS server");
    }

    /// The address the server listens on (UDP and TCP).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Replaces all A/AAAA records of `name` (trailing dot optional) with `ips`, each with `ttl`.
    ///
    /// A queries return the IPv4 addresses, AAAA queries the IPv6 ones; an empty `ips` makes
    /// the name exist without addresses (NODATA).
    pub async fn set(&self, name: &str, ips: &[IpAddr], ttl: u32) {
        self.handler
            .zone
            .lock()
            .expect("test DNS zone lock poisoned")
            .insert(fqdn(name), (ips.to_vec(), ttl));
    }

    /// Removes `name` from the zone, so that it answers NXDOMAIN.
    pub async fn remove(&self, name: &str) {
        self.handler
            .zone
            .lock()
            .expect("test DNS zone lock poisoned")
            .remove(&fqdn(name));
    }

    /// Makes the server read queries and never answer them (`true`), as a
    /// DNS server behind a broken network does, or answer again (`false`).
    pub fn set_silent(&self, silent: bool) {
        self.handler.silent.store(silent, Ordering::SeqCst);
    }

    /// Number of queries received so far (all types, UDP and TCP, across restarts).
    pub fn queries(&self) -> usize {
        self.handler.queries.load(Ordering::SeqCst)
    }

    /// Shuts the server down gracefully; returns once the UDP and TCP sockets are released.
    ///
    /// Afterwards the port no longer answers. Does nothing if the server is already stopped.
    pub async fn stop(&mut self) {
        let Some(mut server) = self.server.take() else {
            return;
        };
        self.handler.serving.store(false, Ordering::SeqCst);
        tokio::time::timeout(SHUTDOWN_DEADLINE, server.shutdown_gracefully())
            .await
            .expect("test DNS server did not shut down in time")
            .expect("test DNS server failed while shutting down");
        drop(server);
    }

    /// Starts the server again on the same port with the same zone.
    ///
    /// Does nothing if the server is running.
    pub async fn restart(&mut self) {
        if self.server.is_some() {
            return;
        }
        let deadline = Instant::now() + REBIND_DEADLINE;
        let (udp, tcp) = loop {
            let bound = match UdpSocket::bind(self.addr).await {
                Ok(udp) => TcpListener::bind(self.addr).await.map(|tcp| (udp, tcp)),
                Err(e) => Err(e),
            };
            match bound {
                Ok(sockets) => break sockets,
                Err(e) if Instant::now() >= deadline => {
                    panic!("test DNS server could not rebind {}: {e}", self.addr)
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        };
        self.server = Some(Self::serve(&self.handler, udp, tcp));
    }

    /// Registers both sockets with a new hickory `Server` and marks the zone as serving.
    fn serve(handler: &ZoneHandler, udp: UdpSocket, tcp: TcpListener) -> Server<ZoneHandler> {
        handler.serving.store(true, Ordering::SeqCst);
        let mut server = Server::new(handler.clone());
        server.register_socket(udp);
        server.register_listener(tcp, TCP_TIMEOUT, TCP_RESPONSE_BUFFER);
        server
    }
}

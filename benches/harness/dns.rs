//! The benchmark's name server: an in-process hickory-server that answers
//! one headless Service name with every pod's A record, over UDP and TCP
//! on `127.0.0.1:<free port>` (a large answer is truncated over UDP and
//! the router's resolver asks again over TCP, as with a real cluster DNS).
//! Every other name is NXDOMAIN.

use std::iter;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_server::Server;
use hickory_server::net::runtime::Time;
use hickory_server::proto::op::{
    Edns, Header, HeaderCounts, MessageType, Metadata, OpCode, ResponseCode,
};
use hickory_server::proto::rr::{Name, RData, Record, RecordType};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use tokio::net::{TcpListener, UdpSocket};

/// The headless Service name the router resolves.
pub const SERVICE: &str = "bench.harness.svc.cluster.local.";

/// The one name and its addresses.
#[derive(Clone)]
struct Zone {
    name: Name,
    ips: Arc<[IpAddr]>,
    ttl: u32,
}

impl Zone {
    fn answer(&self, request: &Request, metadata: &mut Metadata) -> Vec<Record> {
        metadata.authoritative = true;
        if request.metadata.message_type != MessageType::Query
            || request.metadata.op_code != OpCode::Query
        {
            metadata.response_code = ResponseCode::NotImp;
            return Vec::new();
        }
        let Ok(info) = request.request_info() else {
            metadata.response_code = ResponseCode::FormErr;
            return Vec::new();
        };
        let query = info.query;
        if Name::from(query.name()) != self.name {
            metadata.response_code = ResponseCode::NXDomain;
            return Vec::new();
        }
        metadata.response_code = ResponseCode::NoError;
        let query_type = query.query_type();
        self.ips
            .iter()
            .filter(|ip| match query_type {
                RecordType::A => ip.is_ipv4(),
                RecordType::AAAA => ip.is_ipv6(),
                _ => false,
            })
            .map(|ip| {
                Record::from_rdata(query.original().name().clone(), self.ttl, RData::from(*ip))
            })
            .collect()
    }
}

#[async_trait::async_trait]
impl RequestHandler for Zone {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        let edns = request.edns.as_ref().map(|asked| {
            let mut edns = Edns::new();
            edns.set_max_payload(asked.max_payload().max(512));
            edns.set_version(0);
            edns
        });
        let mut metadata = Metadata::response_from_request(&request.metadata);
        let answers = self.answer(request, &mut metadata);
        let response = MessageResponseBuilder::new(&request.queries, edns.as_ref()).build(
            metadata,
            answers.iter(),
            iter::empty(),
            iter::empty(),
            iter::empty(),
        );
        match response_handle.send_response(response).await {
            Ok(info) => info,
            Err(_) => {
                let mut metadata = Metadata::response_from_request(&request.metadata);
                metadata.response_code = ResponseCode::ServFail;
                ResponseInfo::from(Header {
                    metadata,
                    counts: HeaderCounts::default(),
                })
            }
        }
    }
}

/// A running name server for [`SERVICE`].
pub struct BenchDns {
    addr: SocketAddr,
    server: Server<Zone>,
}

impl BenchDns {
    /// Serves [`SERVICE`] → `ips` with records of `ttl` seconds.
    pub async fn start(ips: Vec<IpAddr>, ttl: u32) -> anyhow::Result<BenchDns> {
        let mut name = Name::from_ascii(SERVICE)?;
        name.set_fqdn(true);
        let zone = Zone {
            name,
            ips: ips.into(),
            ttl,
        };
        for _ in 0..50 {
            let udp = UdpSocket::bind("127.0.0.1:0").await?;
            let addr = udp.local_addr()?;
            let Ok(tcp) = TcpListener::bind(addr).await else {
                continue; // the port is taken for TCP: pick another
            };
            let mut server = Server::new(zone.clone());
            server.register_socket(udp);
            server.register_listener(tcp, Duration::from_secs(30), 64);
            return Ok(BenchDns { addr, server });
        }
        anyhow::bail!("no port is free for both UDP and TCP on 127.0.0.1")
    }

    /// Where it listens (UDP and TCP).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Shuts the server down.
    pub async fn stop(mut self) {
        let _ =
            tokio::time::timeout(Duration::from_secs(5), self.server.shutdown_gracefully()).await;
    }
}

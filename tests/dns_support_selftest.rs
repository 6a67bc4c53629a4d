//! Self-test of the in-process DNS server in `tests/support/dns.rs`.

mod support {
    pub mod dns;
}

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{
    ConnectionConfig, LookupIpStrategy, NameServerConfig, ResolveHosts, ResolverConfig,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::op::{Message, Query, ResponseCode};
use hickory_resolver::proto::rr::{Name, RecordType};
use support::dns::TestDns;
use tokio::net::{TcpListener, UdpSocket};

const NAME: &str = "web.default.svc.cluster.local";

/// A resolver that only talks to `addr` over UDP, ignoring the system configuration.
fn resolver(addr: SocketAddr, timeout: Duration, attempts: usize) -> TokioResolver {
    let mut udp = ConnectionConfig::udp();
    udp.port = addr.port();
    let name_server = NameServerConfig::new(addr.ip(), true, vec![udp]);
    let config = ResolverConfig::from_name_servers(vec![name_server]);
    let mut builder = TokioResolver::builder_with_config(config, TokioRuntimeProvider::default());
    let opts = builder.options_mut();
    opts.timeout = timeout;
    // Retries after the first try: 0 means exactly one try.
    opts.attempts = attempts;
    opts.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
    opts.use_hosts_file = ResolveHosts::Never;
    builder.build().expect("build resolver")
}

#[tokio::test(flavor = "multi_thread")]
async fn serves_updates_nxdomain_and_outages() {
    let mut dns = TestDns::start().await;
    let resolver = resolver(dns.addr(), Duration::from_millis(500), 0);

    let v4a = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
    let v4b = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3));
    let v6 = IpAddr::V6(Ipv6Addr::LOCALHOST);
    dns.set(NAME, &[v4a, v4b, v6], 5).await;
    assert_eq!(dns.queries(), 0);

    // A + AAAA.
    let lookup = resolver
        .lookup_ip(format!("{NAME}."))
        .await
        .expect("lookup_ip");
    let mut ips: Vec<IpAddr> = lookup.iter().collect();
    ips.sort();
    let mut expected = vec![v4a, v4b, v6];
    expected.sort();
    assert_eq!(ips, expected);
    let answers = lookup.as_lookup().answers();
    assert_eq!(answers.len(), 3);
    assert!(
        answers.iter().all(|r| r.ttl <= 5 && r.ttl >= 4),
        "{answers:?}"
    );
    assert_eq!(dns.queries(), 2, "one A and one AAAA query");

    // Name without trailing dot and mixed case, single type.
    resolver.clear_cache();
    let lookup = resolver
        .lookup("WEB.default.svc.cluster.local", RecordType::AAAA)
        .await
        .expect("AAAA lookup");
    assert_eq!(lookup.answers().len(), 1);
    assert_eq!(lookup.answers()[0].data.ip_addr(), Some(v6));

    // NODATA: name exists, no records of that type.
    dns.set(NAME, &[v4a], 5).await;
    resolver.clear_cache();
    let err = resolver
        .lookup(NAME, RecordType::AAAA)
        .await
        .expect_err("NODATA must be an error for lookup");
    assert!(err.is_no_records_found() && !err.is_nx_domain(), "{err:?}");
    let lookup = resolver.lookup_ip(NAME).await.expect("A still resolves");
    assert_eq!(lookup.iter().collect::<Vec<_>>(), vec![v4a]);

    // NXDOMAIN after removal, and for unknown names.
    dns.remove(NAME).await;
    resolver.clear_cache();
    let err = resolver.lookup_ip(NAME).await.expect_err("removed name");
    assert!(err.is_nx_domain(), "{err:?}");
    let err = resolver
        .lookup_ip("nope.default.svc.cluster.local")
        .await
        .expect_err("unknown name");
    assert!(err.is_nx_domain(), "{err:?}");

    // Raw query: NXDOMAIN is authoritative.
    let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind client");
    let mut query = Message::query();
    query.metadata.id = 4242;
    query.add_query(Query::query(
        Name::from_ascii("nope.default.svc.cluster.local.").unwrap(),
        RecordType::A,
    ));
    let bytes = query.to_vec().expect("encode query");
    socket.send_to(&bytes, dns.addr()).await.expect("send");
    let mut buf = [0u8; 512];
    let (len, _) = tokio::time::timeout(Duration::from_secs(2), socket.recv_from(&mut buf))
        .await
        .expect("raw response in time")
        .expect("recv");
    let response = Message::from_vec(&buf[..len]).expect("decode response");
    assert_eq!(response.metadata.id, 4242);
    assert_eq!(response.metadata.response_code, ResponseCode::NXDomain);
    assert!(response.metadata.authoritative);
    assert!(response.answers.is_empty());

    // Outage: the port stops answering and both sockets are released.
    dns.set(NAME, &[v4a, v6], 5).await;
    dns.stop().await;
    drop(
        UdpSocket::bind(dns.addr())
            .await
            .expect("UDP port released"),
    );
    drop(
        TcpListener::bind(dns.addr())
            .await
            .expect("TCP port released"),
    );
    resolver.clear_cache();
    let before = dns.queries();
    let err = resolver.lookup_ip(NAME).await.expect_err("server is down");
    assert!(!err.is_no_records_found(), "{err:?}");
    assert_eq!(dns.queries(), before);

    // Back on the same port with the same zone.
    let addr = dns.addr();
    dns.restart().await;
    assert_eq!(dns.addr(), addr);
    resolver.clear_cache();
    let lookup = resolver
        .lookup_ip(NAME)
        .await
        .expect("lookup after restart");
    let mut ips: Vec<IpAddr> = lookup.iter().collect();
    ips.sort();
    assert_eq!(ips, vec![v4a, v6]);

    // A fresh resolver over TCP works too.
    let mut tcp = ConnectionConfig::tcp();
    tcp.port = addr.port();
    let config =
        ResolverConfig::from_name_servers(vec![NameServerConfig::new(addr.ip(), true, vec![tcp])]);
    let mut builder = TokioResolver::builder_with_config(config, TokioRuntimeProvider::default());
    builder.options_mut().ip_strategy = LookupIpStrategy::Ipv4Only;
    builder.options_mut().use_hosts_file = ResolveHosts::Never;
    let tcp_resolver = builder.build().expect("build TCP resolver");
    let lookup = tcp_resolver.lookup_ip(NAME).await.expect("TCP lookup");
    assert_eq!(lookup.iter().collect::<Vec<_>>(), vec![v4a]);

    dns.stop().await;
}

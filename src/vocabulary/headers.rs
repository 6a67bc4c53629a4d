//! The header names the router reads and writes, and which headers it owns
//! on every pod's copy: the connection and framing headers it computes per
//! pod, the proxy credentials meant for itself, and the broadcast id and
//! `Via` marker it sets. Fan-out, the plugin bindings and the pod-side
//! receiver all follow this one list.
//!
//! `Host` is not on the list: the route's `host` decides it (the pod's
//! address, the client's `Host` or a fixed name), and a plugin may set it
//! per pod, as long as it is a valid `host[:port]` ([`valid_host`]).

use http::header::{self, HeaderMap, HeaderName};

/// The header carrying the broadcast id, to clients and to every pod (the
/// pod-side receiver's own constant, so both sides name it alike).
pub use broadcast_receiver::BROADCAST_ID;
/// Answer header: how many pods the broadcast went to.
pub const BROADCAST_TARGETS: HeaderName = HeaderName::from_static("x-broadcast-targets");
/// Answer header: how many pods answered 2xx.
pub const BROADCAST_SUCCEEDED: HeaderName = HeaderName::from_static("x-broadcast-succeeded");

/// W3C trace context.
pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
/// The pseudonym the router adds to `Via` on every forwarded request, and
/// refuses to see on an incoming one.
pub const VIA_PSEUDONYM: &str = "broadcast-router";
/// Headers that describe one connection, not the message (RFC 9110
/// §7.6.1), and the framing headers the client library computes for each
/// pod (`content-length`, `expect`): never forwarded as received, and
/// never set by a plugin.
pub const CONNECTION_AND_FRAMING: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
    "expect",
];

/// Proxy credentials: meant for the router, never forwarded to pods.
pub const PROXY_CREDENTIALS: [&str; 2] = ["proxy-authenticate", "proxy-authorization"];

/// Headers the router sets on every pod's copy itself: the broadcast id
/// receivers drop duplicates by, and the `Via` marker loop protection
/// relies on.
pub const ROUTER_SET: [&str; 2] = ["x-broadcast-id", "via"];

/// Whether a client's header is dropped rather than forwarded as is (the
/// router recomputes or replaces it). The client's `Host` is dropped too:
/// the route's `host` says what pods receive instead.
pub fn is_dropped_when_forwarding(name: &HeaderName) -> bool {
    *name == header::HOST || {
        let name = name.as_str();
        CONNECTION_AND_FRAMING.contains(&name) || PROXY_CREDENTIALS.contains(&name)
    }
}

/// Whether a header is the router's on every pod's copy, so a plugin's
/// patch may neither set nor remove it.
pub fn is_router_owned(name: &HeaderName) -> bool {
    let name = name.as_str();
    CONNECTION_AND_FRAMING.contains(&name) || ROUTER_SET.contains(&name)
}

/// Whether `text` is a valid `Host` value, `host[:port]`: a DNS name
/// (labels of 1 to 63 letters, digits, `-` and `_`, separated by dots, at
/// most 253 characters, a trailing dot allowed), an IPv4 address, or an
/// IPv6 address in brackets, optionally followed by `:` and a port
/// (1 to 65535). No user information, path, spaces or control characters.
pub fn valid_host(text: &str) -> bool {
    let (host, port) = if let Some(rest) = text.strip_prefix('[') {
        let Some((v6, after)) = rest.split_once(']') else {
            return false;
        };
        if v6.parse::<std::net::Ipv6Addr>().is_err() {
            return false;
        }
        match after {
            "" => return true,
            _ => match after.strip_prefix(':') {
                Some(port) => (None, Some(port)),
                None => return false,
            },
        }
    } else {
        match text.rsplit_once(':') {
            Some((host, port)) => (Some(host), Some(port)),
            None => (Some(text), None),
        }
    };
    let port_ok = port.is_none_or(|port| {
        !port.is_empty()
            && port.len() <= 5
            && port.bytes().all(|b| b.is_ascii_digit())
            && port.parse::<u16>().is_ok_and(|port| port > 0)
    });
    let host_ok = host.is_none_or(|host| {
        let name = host.strip_suffix('.').unwrap_or(host);
        !name.is_empty()
            && host.len() <= 253
            && name.split('.').all(|label| {
                (1..=63).contains(&label.len())
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            })
    });
    port_ok && host_ok
}

/// Whether `id` is acceptable as a client-chosen broadcast id: 1 to 128
/// characters of letters, digits and `-_.:`.
pub fn valid_broadcast_id(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

/// Whether a request already passed through a broadcast router: its `Via`
/// names the router's pseudonym. Such a request is refused, so a route
/// that (by mistake) targets the router's own pods cannot loop.
pub fn has_looped(incoming: &HeaderMap) -> bool {
    incoming
        .get_all(header::VIA)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|hop| {
            hop.split_whitespace()
                .nth(1)
                .is_some_and(|pseudonym| pseudonym.eq_ignore_ascii_case(VIA_PSEUDONYM))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broadcast_ids_are_restricted_to_safe_characters() {
        assert!(valid_broadcast_id("0b7c6a1e-2f4d-4a4b-9a51-1c2d3e4f5a6b"));
        assert!(!valid_broadcast_id(""));
        assert!(!valid_broadcast_id("has space"));
        assert!(!valid_broadcast_id(&"x".repeat(129)));
    }

    #[test]
    fn hosts_are_a_name_or_address_with_an_optional_port() {
        for good in [
            "www.example.com",
            "www.example.com:8080",
            "WWW.Example.COM.",
            "localhost",
            "10.0.0.7:80",
            "[fd00::5]",
            "[fd00::5]:443",
            "_acme.example",
            "0",
        ] {
            assert!(valid_host(good), "{good:?} must be accepted");
        }
        for bad in [
            "",
            ":80",
            "example.com:",
            "example.com:0",
            "example.com:65536",
            "example.com:+80",
            "user@example.com",
            "example.com/path",
            "exa mple.com",
            "example..com",
            ".example.com",
            "[fd00::5",
            "[not-v6]:80",
            "[fd00::5]80",
            "fd00::5",
            "a\r\nx: y",
            &"a".repeat(64),
        ] {
            assert!(!valid_host(bad), "{bad:?} must be refused");
        }
    }

    /// The WIT contract tells plugin authors which headers are the
    /// router's in prose; it must name exactly the headers a patch may not
    /// touch.
    #[test]
    fn the_wit_contract_lists_the_router_owned_headers() {
        let wit = include_str!("../../plugins/wit/plugin.wit");
        let prose: String = wit
            .lines()
            .skip_while(|line| !line.contains("the router owns ("))
            .take_while(|line| !line.contains("set-headers:"))
            .collect::<Vec<_>>()
            .join(" ");
        let listed = prose
            .split_once('(')
            .and_then(|(_, rest)| rest.split_once(')'))
            .map(|(list, _)| list)
            .expect("the WIT lists the router-owned headers in parentheses");
        let mut listed: Vec<String> = listed
            .split(',')
            .map(|name| name.replace("///", "").trim().to_owned())
            .collect();
        listed.sort();
        let mut owned: Vec<String> = CONNECTION_AND_FRAMING
            .iter()
            .chain(&ROUTER_SET)
            .map(|name| (*name).to_owned())
            .collect();
        owned.sort();
        assert_eq!(listed, owned);
    }
}

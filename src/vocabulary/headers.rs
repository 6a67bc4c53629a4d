//! The header names the router reads and writes, and which headers it owns
//! on every pod's copy: the connection and framing headers it computes per
//! pod, the proxy credentials meant for itself, and the broadcast id and
//! `Via` marker it sets. Fan-out, the plugin bindings and the pod-side
//! receiver all follow this one list.

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
/// pod (`host`, `content-length`, `expect`): never forwarded as received,
/// and never set by a plugin.
pub const CONNECTION_AND_FRAMING: [&str; 10] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
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
/// router recomputes or replaces it).
pub fn is_dropped_when_forwarding(name: &HeaderName) -> bool {
    let name = name.as_str();
    CONNECTION_AND_FRAMING.contains(&name) || PROXY_CREDENTIALS.contains(&name)
}

/// Whether a header is the router's on every pod's copy, so a plugin's
/// patch may neither set nor remove it.
pub fn is_router_owned(name: &HeaderName) -> bool {
    let name = name.as_str();
    CONNECTION_AND_FRAMING.contains(&name) || ROUTER_SET.contains(&name)
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

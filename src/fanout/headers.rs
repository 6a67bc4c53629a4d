//! The headers every pod receives: the client's, minus hop-by-hop ones,
//! plus `X-Forwarded-*`, a W3C `traceparent` and the broadcast id.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use crate::vocabulary::headers::{BROADCAST_ID, TRACEPARENT, is_dropped_when_forwarding};

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Builds the headers sent to every pod of a broadcast.
pub fn forwarded(incoming: &HeaderMap, client: IpAddr, broadcast_id: &str) -> HeaderMap {
    let listed_in_connection: Vec<String> = incoming
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(|name| name.trim().to_ascii_lowercase())
        .collect();
    let mut headers = HeaderMap::with_capacity(incoming.len() + 5);
    for (name, value) in incoming {
        let name_str = name.as_str();
        let skip = is_dropped_when_forwarding(name)
            || listed_in_connection.iter().any(|listed| listed == name_str)
            || *name == BROADCAST_ID
            || *name == TRACEPARENT
            || *name == X_FORWARDED_FOR;
        if !skip {
            headers.append(name.clone(), value.clone());
        }
    }

    let forwarded_for = incoming
        .get_all(X_FORWARDED_FOR)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .chain(std::iter::once(client.to_string().as_str()))
        .collect::<Vec<_>>()
        .join(", ");
    if let Ok(value) = HeaderValue::from_str(&forwarded_for) {
        headers.insert(X_FORWARDED_FOR, value);
    }
    if !headers.contains_key(X_FORWARDED_PROTO) {
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
    }
    if !headers.contains_key(X_FORWARDED_HOST)
        && let Some(host) = incoming.get(header::HOST)
    {
        headers.insert(X_FORWARDED_HOST, host.clone());
    }
    let traceparent = child_traceparent(
        incoming
            .get(TRACEPARENT)
            .and_then(|value| value.to_str().ok()),
    );
    headers.insert(
        TRACEPARENT,
        HeaderValue::from_str(&traceparent).expect("hex is a valid header value"),
    );
    headers.insert(
        BROADCAST_ID,
        HeaderValue::from_str(broadcast_id).expect("broadcast ids are validated"),
    );
    headers.append(
        header::VIA,
        HeaderValue::from_static("1.1 broadcast-router"),
    );
    headers
}

/// A `traceparent` for the router's hop: the client's trace id and flags
/// with a new parent id, or a new sampled trace when the client sent none
/// (or an invalid one).
fn child_traceparent(incoming: Option<&str>) -> String {
    let span_id = nonzero_hex(16);
    match incoming.and_then(parse_traceparent) {
        Some((trace_id, flags)) => format!("00-{trace_id}-{span_id}-{flags}"),
        None => format!("00-{}-{span_id}-01", nonzero_hex(32)),
    }
}

/// Returns the trace id and flags of a valid version-00 `traceparent`.
fn parse_traceparent(value: &str) -> Option<(&str, &str)> {
    let mut parts = value.trim().split('-');
    let (version, trace_id, parent_id, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let lower_hex = |s: &str, len: usize| {
        s.len() == len
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    let valid = version == "00"
        && parts.next().is_none()
        && lower_hex(trace_id, 32)
        && trace_id.bytes().any(|b| b != b'0')
        && lower_hex(parent_id, 16)
        && parent_id.bytes().any(|b| b != b'0')
        && lower_hex(flags, 2);
    valid.then_some((trace_id, flags))
}

fn nonzero_hex(len: usize) -> String {
    loop {
        let hex: String = (0..len)
            .map(|_| char::from_digit(fastrand::u32(0..16), 16).expect("digit below 16"))
            .collect();
        if hex.bytes().any(|b| b != b'0') {
            return hex;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_are_dropped_and_forwarding_headers_added() {
        let mut incoming = HeaderMap::new();
        incoming.insert(
            "connection",
            HeaderValue::from_static("keep-alive, x-secret-hop"),
        );
        incoming.insert("x-secret-hop", HeaderValue::from_static("1"));
        incoming.insert("te", HeaderValue::from_static("trailers"));
        incoming.insert("host", HeaderValue::from_static("router.example"));
        incoming.insert("x-forwarded-for", HeaderValue::from_static("10.0.0.1"));
        incoming.insert("content-type", HeaderValue::from_static("application/json"));
        let headers = forwarded(&incoming, "10.0.0.9".parse().unwrap(), "b-1");
        assert!(headers.get("x-secret-hop").is_none());
        assert!(headers.get("te").is_none());
        assert!(headers.get("host").is_none());
        assert_eq!(headers["content-type"], "application/json");
        assert_eq!(headers["x-forwarded-for"], "10.0.0.1, 10.0.0.9");
        assert_eq!(headers["x-forwarded-host"], "router.example");
        assert_eq!(headers["x-forwarded-proto"], "http");
        assert_eq!(headers["x-broadcast-id"], "b-1");
    }

    #[test]
    fn traceparent_keeps_the_clients_trace() {
        let incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let child = child_traceparent(Some(incoming));
        assert!(child.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
        assert!(child.ends_with("-01"));
        assert_ne!(child, incoming);
        let fresh = child_traceparent(Some("garbage"));
        assert!(parse_traceparent(&fresh).is_some());
        assert!(!fresh.contains("4bf92f"));
    }
}

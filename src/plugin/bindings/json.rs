//! The hooks' inputs as JSON text, for plugins of the `plugin-json` world
//! (`plugins/wit/plugin.wit` says the shape): the records of `types` with
//! the field names JavaScript bindings give them, `null` for an absent
//! option. A pod's body is text when it is UTF-8, else an array of
//! numbers (`bodyBytes`); the request's body stays bytes, outside the JSON.

use serde::Serialize;
use serde::Serializer;

use super::generated::broadcast::plugin::types::HeaderParam;
use super::v0_2::{Outcome, RequestHead, Target};
use crate::vocabulary::delivery::ErrorKind as DeliveryErrorKind;

/// `head` as JSON.
pub(crate) fn head(head: &RequestHead<'_>) -> String {
    encode(&Head::from(head))
}

/// `targets` as a JSON array.
pub(crate) fn targets(targets: &[Target<'_>]) -> String {
    encode(&targets.iter().map(TargetJson::from).collect::<Vec<_>>())
}

/// `outcomes` as a JSON array, bodies included.
pub(crate) fn outcomes(outcomes: &[Outcome<'_>]) -> String {
    encode(&outcomes.iter().map(OutcomeJson::from).collect::<Vec<_>>())
}

fn encode(value: &impl Serialize) -> String {
    // Strings, integers, booleans and finite floats: nothing can fail.
    serde_json::to_string(value).expect("hook inputs encode as JSON")
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Head<'a> {
    broadcast_id: &'a str,
    route: &'a str,
    method: &'a str,
    path: &'a str,
    headers: Headers<'a>,
}

impl<'a> From<&RequestHead<'a>> for Head<'a> {
    fn from(head: &RequestHead<'a>) -> Self {
        Head {
            broadcast_id: head.broadcast_id,
            route: head.route,
            method: head.method,
            path: head.path,
            headers: Headers(head.headers),
        }
    }
}

/// Headers as `[{"name": …, "value": …}]`.
struct Headers<'a>(&'a [HeaderParam<'a>]);

impl Serialize for Headers<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Header<'a> {
            name: &'a str,
            value: &'a str,
        }
        serializer.collect_seq(self.0.iter().map(|header| Header {
            name: header.name,
            value: header.value,
        }))
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct TargetJson<'a> {
    address: &'a str,
    port: u16,
    service: Option<&'a str>,
    index: u32,
    labels: &'a [(&'a str, &'a str)],
}

impl<'a> From<&Target<'a>> for TargetJson<'a> {
    fn from(target: &Target<'a>) -> Self {
        TargetJson {
            address: target.address,
            port: target.port,
            service: target.service,
            index: target.index,
            labels: target.labels,
        }
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct OutcomeJson<'a> {
    target: TargetJson<'a>,
    status: Option<u16>,
    headers: Headers<'a>,
    /// The body as text, if it is UTF-8…
    body: Option<&'a str>,
    /// …or else its bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    body_bytes: Option<&'a [u8]>,
    body_truncated: bool,
    error: Option<&'static str>,
    attempts: u32,
    latency_ms: f64,
}

impl<'a> From<&'a Outcome<'a>> for OutcomeJson<'a> {
    fn from(outcome: &'a Outcome<'a>) -> Self {
        let text = text(outcome.body, outcome.body_truncated);
        OutcomeJson {
            target: TargetJson::from(&outcome.target),
            status: outcome.status,
            headers: Headers(outcome.headers),
            body: text,
            body_bytes: text.is_none().then_some(outcome.body),
            body_truncated: outcome.body_truncated,
            // The names of the router's reports.
            error: outcome
                .error
                .map(|kind| DeliveryErrorKind::from(kind).as_str()),
            attempts: outcome.attempts,
            latency_ms: outcome.latency_ms,
        }
    }
}

/// `body` as text if it is UTF-8, or if it is a truncated body whose only
/// flaw is a character cut at the end (then without that character).
fn text(body: &[u8], truncated: bool) -> Option<&str> {
    match std::str::from_utf8(body) {
        Ok(text) => Some(text),
        Err(error) if truncated && error.error_len().is_none() => {
            std::str::from_utf8(&body[..error.valid_up_to()]).ok()
        }
        Err(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::super::ErrorKind;
    use super::super::generated::broadcast::plugin::types::HeaderParam;
    use super::super::v0_2::{Outcome, RequestHead, Target};

    #[test]
    fn inputs_read_as_the_wit_describes_them() {
        let headers = [HeaderParam {
            name: "content-type",
            value: "application/json",
        }];
        let head = RequestHead {
            broadcast_id: "b-1",
            route: "purge",
            method: "POST",
            path: "/x?y=\"z\"",
            headers: &headers,
        };
        assert_eq!(
            super::head(&head),
            r#"{"broadcastId":"b-1","route":"purge","method":"POST","path":"/x?y=\"z\"","headers":[{"name":"content-type","value":"application/json"}]}"#
        );
        let labels = [("app", "cache")];
        let target = Target {
            address: "10.42.0.12",
            port: 8080,
            service: None,
            index: 3,
            labels: &labels,
        };
        assert_eq!(
            super::targets(std::slice::from_ref(&target)),
            r#"[{"address":"10.42.0.12","port":8080,"service":null,"index":3,"labels":[["app","cache"]]}]"#
        );
        let outcomes = [Outcome {
            target,
            status: None,
            headers: &[],
            body: b"late",
            body_truncated: true,
            error: Some(ErrorKind::Timeout),
            attempts: 2,
            latency_ms: 1.5,
        }];
        assert_eq!(
            super::outcomes(&outcomes),
            r#"[{"target":{"address":"10.42.0.12","port":8080,"service":null,"index":3,"labels":[["app","cache"]]},"status":null,"headers":[],"body":"late","bodyTruncated":true,"error":"timeout","attempts":2,"latencyMs":1.5}]"#
        );
        // A body that is not UTF-8 comes as its bytes.
        let binary = [Outcome {
            body: &[0xff, 0x00],
            ..outcomes[0].clone()
        }];
        assert!(
            super::outcomes(&binary).contains(r#""body":null,"bodyBytes":[255,0],"bodyTruncated""#)
        );
        // A truncated body cut inside a character is still text.
        assert_eq!(super::text("né".as_bytes()[..2].as_ref(), true), Some("n"));
        assert_eq!(super::text("né".as_bytes()[..2].as_ref(), false), None);
    }
}

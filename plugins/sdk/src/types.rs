//! The WIT types under friendly names, with helpers for reading requests and
//! outcomes and for building patches and verdicts.

use std::fmt;

pub use crate::__private::bindings::broadcast::plugin::types::{
    ErrorKind, Header, Hooks, Outcome, Request, RequestHead, RequestPatch, Target, Verdict,
};

/// The value of the first header called `name` (compared case-insensitively).
fn find_header<'a>(headers: &'a [Header], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|header| header.name.eq_ignore_ascii_case(name))
        .map(|header| header.value.as_str())
}

impl Header {
    /// A header; the name is lowercased, as the router's header names are.
    pub fn new(name: &str, value: impl Into<String>) -> Self {
        Header {
            name: name.to_ascii_lowercase(),
            value: value.into(),
        }
    }
}

impl RequestHead {
    /// The value of the first header called `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }
}

impl Request {
    /// The value of the first request header called `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.header(name)
    }

    /// The body parsed as JSON.
    pub fn body_json(&self) -> Result<serde_json::Value, String> {
        serde_json::from_slice(&self.body).map_err(|error| format!("the body is not JSON: {error}"))
    }
}

impl Target {
    /// `ip:port`, with an IPv6 address in brackets (`[fd00::5]:8080`), as the
    /// router's report names pods.
    pub fn authority(&self) -> String {
        if self.address.contains(':') {
            format!("[{}]:{}", self.address, self.port)
        } else {
            format!("{}:{}", self.address, self.port)
        }
    }

    /// The value of the label called `name`, if discovery set one.
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }
}

impl Outcome {
    /// Whether the pod answered 2xx (no error).
    pub fn is_success(&self) -> bool {
        self.error.is_none()
    }

    /// The value of the first answer header called `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }
}

impl ErrorKind {
    /// The kind's name as the router's report writes it, e.g. `timeout`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Connect => "connect",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Status => "status",
            ErrorKind::Reset => "reset",
            ErrorKind::Deadline => "deadline",
            ErrorKind::Protocol => "protocol",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl RequestPatch {
    /// An empty patch: the pod gets the request unchanged.
    pub fn new() -> Self {
        RequestPatch::default()
    }

    /// Whether the patch changes nothing.
    pub fn is_empty(&self) -> bool {
        self.set_headers.is_empty()
            && self.remove_headers.is_empty()
            && self.path.is_none()
            && self.body.is_none()
    }

    /// Sets header `name` (lowercased) to `value`, replacing any earlier
    /// setting or removal of the same name in this patch.
    pub fn set_header(mut self, name: &str, value: impl Into<String>) -> Self {
        let header = Header::new(name, value);
        self.set_headers.retain(|set| set.name != header.name);
        self.remove_headers
            .retain(|removed| *removed != header.name);
        self.set_headers.push(header);
        self
    }

    /// Removes header `name` (lowercased), undoing any earlier setting of it
    /// in this patch.
    pub fn remove_header(mut self, name: &str) -> Self {
        let name = name.to_ascii_lowercase();
        self.set_headers.retain(|set| set.name != name);
        if !self.remove_headers.contains(&name) {
            self.remove_headers.push(name);
        }
        self
    }

    /// Sends the pod a different path and query (must start with `/`).
    pub fn with_path(mut self, path: impl Into<String>) -> Self {
        self.path = Some(path.into());
        self
    }

    /// Sends the pod a different body.
    pub fn with_body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = Some(body.into());
        self
    }
}

impl Verdict {
    /// A verdict with any body and content type.
    pub fn new(
        ok: bool,
        status: u16,
        content_type: impl Into<String>,
        body: impl Into<Vec<u8>>,
    ) -> Self {
        Verdict {
            ok,
            status,
            content_type: Some(content_type.into()),
            body: body.into(),
        }
    }

    /// A verdict whose body is `body` as JSON (`application/json`).
    pub fn json(ok: bool, status: u16, body: &serde_json::Value) -> Self {
        Verdict::new(ok, status, "application/json", body.to_string())
    }

    /// A verdict with a plain-text body (`text/plain; charset=utf-8`).
    pub fn text(ok: bool, status: u16, body: impl Into<String>) -> Self {
        Verdict::new(ok, status, "text/plain; charset=utf-8", body.into())
    }

    /// The body as text (lossy), for tests and logs.
    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing;

    #[test]
    fn patch_builders_keep_the_last_word_per_header() {
        let patch = RequestPatch::new()
            .set_header("X-A", "1")
            .remove_header("x-b")
            .set_header("x-a", "2")
            .set_header("X-B", "3")
            .remove_header("x-c")
            .remove_header("X-C")
            .with_path("/v2")
            .with_body("hi");
        assert_eq!(
            patch.set_headers,
            vec![Header::new("x-a", "2"), Header::new("x-b", "3")]
        );
        assert_eq!(patch.remove_headers, vec!["x-c".to_string()]);
        assert_eq!(patch.path.as_deref(), Some("/v2"));
        assert_eq!(patch.body.as_deref(), Some(&b"hi"[..]));
        assert!(!patch.is_empty());
        assert!(RequestPatch::new().is_empty());
        let undone = RequestPatch::new()
            .set_header("x-a", "1")
            .remove_header("X-A");
        assert!(undone.set_headers.is_empty());
        assert_eq!(undone.remove_headers, vec!["x-a".to_string()]);
    }

    #[test]
    fn verdicts_carry_their_content_type() {
        let verdict = Verdict::json(true, 200, &serde_json::json!({"a": 1}));
        assert_eq!(verdict.content_type.as_deref(), Some("application/json"));
        assert_eq!(verdict.body_text(), r#"{"a":1}"#);
        let text = Verdict::text(false, 502, "no");
        assert_eq!(
            text.content_type.as_deref(),
            Some("text/plain; charset=utf-8")
        );
        assert!(!text.ok);
        assert_eq!(text.status, 502);
    }

    #[test]
    fn reading_helpers() {
        let mut head = testing::head("b");
        head.headers.push(Header::new("X-Key", "k1"));
        assert_eq!(head.header("x-key"), Some("k1"));
        assert_eq!(head.header("X-KEY"), Some("k1"));
        assert_eq!(head.header("x-other"), None);
        assert_eq!(
            testing::target(0, "10.0.0.1", 80).authority(),
            "10.0.0.1:80"
        );
        assert_eq!(
            testing::target(0, "fd00::5", 8080).authority(),
            "[fd00::5]:8080"
        );
        let failed = testing::failure(testing::target(0, "10.0.0.1", 80), ErrorKind::Timeout);
        assert!(!failed.is_success());
        assert_eq!(failed.error.unwrap().to_string(), "timeout");
        let request = testing::request("b", br#"{"x":1}"#);
        assert_eq!(request.body_json().unwrap()["x"], 1);
        assert!(testing::request("b", b"nope").body_json().is_err());
    }
}

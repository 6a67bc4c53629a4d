//! Builders for the values the router passes to hooks, for native unit
//! tests of plugin logic.
//!
//! ```
//! use broadcast_plugin_sdk::testing;
//!
//! let targets = testing::targets(&["10.0.0.1", "10.0.0.2"], 8080);
//! let head = testing::head("b-1").with_header("x-shard-key", "user:42");
//! assert_eq!(targets[1].index, 1);
//! assert_eq!(head.header("x-shard-key"), Some("user:42"));
//! ```

use crate::{ErrorKind, Header, Outcome, Request, RequestHead, Target};

/// A `POST /` head on route `test` with broadcast id `broadcast_id` and no
/// headers.
pub fn head(broadcast_id: &str) -> RequestHead {
    RequestHead {
        broadcast_id: broadcast_id.to_string(),
        route: "test".to_string(),
        method: "POST".to_string(),
        path: "/".to_string(),
        headers: Vec::new(),
    }
}

impl RequestHead {
    /// Adds a header (name lowercased); for building test values.
    pub fn with_header(mut self, name: &str, value: &str) -> Self {
        self.headers.push(Header::new(name, value));
        self
    }
}

/// A request with [`head`]`(broadcast_id)` and `body`.
pub fn request(broadcast_id: &str, body: &[u8]) -> Request {
    Request {
        head: head(broadcast_id),
        body: body.to_vec(),
    }
}

/// A statically configured target (no Service, no labels).
pub fn target(index: u32, address: &str, port: u16) -> Target {
    Target {
        address: address.to_string(),
        port,
        service: None,
        index,
        labels: Vec::new(),
    }
}

/// One target per address, all on `port`, indexed in order.
pub fn targets(addresses: &[&str], port: u16) -> Vec<Target> {
    addresses
        .iter()
        .zip(0..)
        .map(|(address, index)| target(index, address, port))
        .collect()
}

/// A pod that answered `status` with `body` after one attempt; statuses
/// outside 2xx get the error kind `status`.
pub fn answered(target: Target, status: u16, body: &[u8]) -> Outcome {
    Outcome {
        target,
        status: Some(status),
        headers: Vec::new(),
        body: body.to_vec(),
        body_truncated: false,
        error: (!(200..300).contains(&status)).then_some(ErrorKind::Status),
        attempts: 1,
        latency_ms: 1.0,
    }
}

/// A pod that never answered, failing with `error`.
pub fn failure(target: Target, error: ErrorKind) -> Outcome {
    Outcome {
        target,
        status: None,
        headers: Vec::new(),
        body: Vec::new(),
        body_truncated: false,
        error: Some(error),
        attempts: 1,
        latency_ms: 1.0,
    }
}

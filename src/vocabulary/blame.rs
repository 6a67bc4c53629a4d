//! Who is to blame for an error, in the spirit of Pingora's `ErrorSource`:
//! every error a client receives says whether the client, a pod, a
//! plugin, DNS, the Kubernetes API, the configuration or the router itself failed.

use std::fmt;

use serde::Serialize;

/// The party whose failure an error reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Blame {
    /// The request itself is unusable or not allowed (4xx).
    Client,
    /// A pod failed to answer as the route's policy requires.
    Pod,
    /// A plugin failed, or chose no pod.
    Plugin,
    /// DNS could not say which pods exist, or said there are none.
    Dns,
    /// The Kubernetes API could not say which pods exist, or said there
    /// are none the route may broadcast to.
    Kubernetes,
    /// The route's configuration rules the request out (e.g. more pods
    /// than `max_targets`).
    Config,
    /// The router is overloaded or could not do its own part.
    Router,
}

impl Blame {
    /// The name used in answers and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Blame::Client => "client",
            Blame::Pod => "pod",
            Blame::Plugin => "plugin",
            Blame::Dns => "dns",
            Blame::Kubernetes => "kubernetes",
            Blame::Config => "config",
            Blame::Router => "router",
        }
    }

    /// Whether sending the same request again later could succeed: the
    /// client's own mistakes and configuration refusals repeat, the rest
    /// may pass.
    pub fn retry_may_help(self) -> bool {
        !matches!(self, Blame::Client | Blame::Config)
    }
}

impl fmt::Display for Blame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

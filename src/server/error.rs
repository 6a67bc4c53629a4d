//! Errors answered to clients: each says who failed (the client, DNS, the
//! configuration) with a clear message; details stay in the log.

use axum::Json;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::broadcast::StartError;
use crate::discovery::DiscoveryError;
use crate::fanout::headers::BROADCAST_ID;
use crate::plugin::PluginFailure;
use crate::route::{ServiceRefused, UnsafePath};

/// Why a request was answered without a broadcast.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The client's `X-Broadcast-Id` is unusable.
    #[error("X-Broadcast-Id must be 1 to 128 characters of letters, digits and `-_.:`")]
    BadBroadcastId,
    /// The path named a service the route does not allow.
    #[error(transparent)]
    ServiceRefused(#[from] ServiceRefused),
    /// The body is larger than `max_body_bytes`.
    #[error("the request body is larger than the limit of {limit} bytes")]
    TooLarge {
        /// The configured limit.
        limit: usize,
    },
    /// A UDP route's datagram would exceed `max_datagram_bytes`.
    #[error(
        "the datagram would be {size} bytes (header included), above the route's limit of {limit}; nothing was sent"
    )]
    DatagramTooLarge {
        /// Header plus payload.
        size: usize,
        /// The route's `udp.max_datagram_bytes`.
        limit: usize,
    },
    /// A captured path value would climb out of `upstream_path`.
    #[error(transparent)]
    UnsafePath(#[from] UnsafePath),
    /// The body could not be read from the client.
    #[error("the request body could not be read: {0}")]
    BodyRead(String),
    /// No pods to deliver to.
    #[error(transparent)]
    Discovery(#[from] DiscoveryError),
    /// A plugin failed closed before anything was sent.
    #[error(transparent)]
    Plugin(#[from] PluginFailure),
    /// The plugins selected none of the pods.
    #[error("{0}")]
    NoneSelected(String),
    /// No route has this path.
    #[error("no broadcast route matches this path")]
    NoRoute,
}

impl ApiError {
    /// The HTTP status for this error.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadBroadcastId | ApiError::BodyRead(_) | ApiError::UnsafePath(_) => {
                StatusCode::BAD_REQUEST
            }
            ApiError::ServiceRefused(_) => StatusCode::FORBIDDEN,
            ApiError::TooLarge { .. } | ApiError::DatagramTooLarge { .. } => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            ApiError::Discovery(_) | ApiError::NoneSelected(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Plugin(_) => StatusCode::BAD_GATEWAY,
            ApiError::NoRoute => StatusCode::NOT_FOUND,
        }
    }

    /// The metrics label of the rejected broadcast.
    pub fn outcome(&self) -> &'static str {
        match self {
            ApiError::BadBroadcastId | ApiError::BodyRead(_) | ApiError::UnsafePath(_) => {
                "bad_request"
            }
            ApiError::ServiceRefused(_) => "refused",
            ApiError::TooLarge { .. } | ApiError::DatagramTooLarge { .. } => "too_large",
            ApiError::Discovery(DiscoveryError::NoPods { .. }) => "no_targets",
            ApiError::Discovery(DiscoveryError::Dns { .. }) => "dns_error",
            ApiError::Plugin(_) => "plugin_error",
            ApiError::NoneSelected(_) => "none_selected",
            ApiError::NoRoute => "no_route",
        }
    }

    /// The answer for a request on `route` with broadcast id `id`.
    pub fn into_answer(self, route: &str, id: Option<&str>) -> Response {
        let status = self.status();
        let mut body = json!({
            "route": route,
            "ok": false,
            "error": self.to_string(),
        });
        if let Some(id) = id {
            body["id"] = id.into();
        }
        if matches!(self, ApiError::Discovery(_) | ApiError::NoneSelected(_)) {
            body["targets"] = 0.into();
        }
        let mut response = (status, Json(body)).into_response();
        if let Some(value) = id.and_then(|id| HeaderValue::from_str(id).ok()) {
            response.headers_mut().insert(BROADCAST_ID, value);
        }
        response
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        (
            status,
            Json(json!({ "ok": false, "error": self.to_string() })),
        )
            .into_response()
    }
}

impl From<StartError> for ApiError {
    fn from(error: StartError) -> Self {
        match error {
            StartError::Discovery(error) => ApiError::Discovery(error),
            StartError::Plugin(failure) => ApiError::Plugin(failure),
            StartError::DatagramTooLarge { size, limit } => {
                ApiError::DatagramTooLarge { size, limit }
            }
            StartError::NoneSelected { .. } => ApiError::NoneSelected(error.to_string()),
        }
    }
}

//! Errors answered to clients: each says who failed (the client, DNS, the
//! configuration) with a clear message; details stay in the log.

use axum::Json;
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::auth::Denied;
use crate::broadcast::StartError;
use crate::discovery::DiscoveryError;
use crate::fanout::headers::BROADCAST_ID;
use crate::limit::Refused;
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
    /// The request already went through a broadcast router: broadcasting
    /// it again could loop forever.
    #[error(
        "the request already passed through a broadcast router (Via: broadcast-router); refusing to broadcast it again"
    )]
    Loop,
    /// The bearer token is missing, unknown (401) or not for this route
    /// (403).
    #[error(transparent)]
    Denied(#[from] Denied),
    /// A rate, concurrency or delivery limit was hit (429).
    #[error(transparent)]
    Refused(#[from] Refused),
    /// Discovery found more pods than the route's `max_targets`.
    #[error("{0}")]
    TooManyTargets(String),
    /// The client took longer than `client_timeout` to send the body.
    #[error("the request body did not arrive within {0:?}")]
    ClientTimeout(std::time::Duration),
}

impl ApiError {
    /// The HTTP status for this error.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadBroadcastId | ApiError::BodyRead(_) | ApiError::UnsafePath(_) => {
                StatusCode::BAD_REQUEST
            }
            ApiError::ServiceRefused(_) | ApiError::Denied(Denied::NotAllowed) => {
                StatusCode::FORBIDDEN
            }
            ApiError::Denied(_) => StatusCode::UNAUTHORIZED,
            ApiError::Loop => StatusCode::LOOP_DETECTED,
            ApiError::Refused(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::TooManyTargets(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::ClientTimeout(_) => StatusCode::REQUEST_TIMEOUT,
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
            ApiError::Denied(Denied::NotAllowed) => "forbidden",
            ApiError::Denied(_) => "unauthorized",
            ApiError::Loop => "loop",
            ApiError::Refused(Refused::RateLimited { .. }) => "rate_limited",
            ApiError::Refused(Refused::Busy { .. }) => "busy",
            ApiError::Refused(Refused::Overloaded { .. }) => "overloaded",
            ApiError::TooManyTargets(_) => "too_many_targets",
            ApiError::ClientTimeout(_) => "client_timeout",
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
        let extra = self.extra_header();
        let mut response = (status, Json(body)).into_response();
        if let Some((name, value)) = extra {
            response.headers_mut().insert(name, value);
        }
        if let Some(value) = id.and_then(|id| HeaderValue::from_str(id).ok()) {
            response.headers_mut().insert(BROADCAST_ID, value);
        }
        response
    }
}

impl ApiError {
    /// `WWW-Authenticate` for 401, `Retry-After` (whole seconds, at least
    /// 1) for 429.
    fn extra_header(&self) -> Option<(HeaderName, HeaderValue)> {
        match self {
            ApiError::Denied(Denied::Missing | Denied::Invalid) => {
                Some((header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer")))
            }
            ApiError::Refused(refused) => {
                let seconds = refused.retry_after().as_secs_f64().ceil().max(1.0) as u64;
                Some((header::RETRY_AFTER, seconds.into()))
            }
            _ => None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let extra = self.extra_header();
        let mut response = (
            status,
            Json(json!({ "ok": false, "error": self.to_string() })),
        )
            .into_response();
        if let Some((name, value)) = extra {
            response.headers_mut().insert(name, value);
        }
        response
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
            StartError::TooManyTargets { .. } => ApiError::TooManyTargets(error.to_string()),
            StartError::Refused(refused) => ApiError::Refused(refused),
        }
    }
}

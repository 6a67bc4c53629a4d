//! Errors answered to clients: each says who failed ([`Blame`]: the
//! client, a plugin, DNS, the configuration, the router) with a clear
//! message, in the answer's `error` and `source`; details stay in the log.

use axum::Json;
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::auth::Denied;
use crate::broadcast::NotStarted;
use crate::discovery::DiscoveryError;
use crate::jobs::StoreError;
use crate::limit::Refused;
use crate::route::{ClientHost, ServiceRefused, UnsafePath};
use crate::vocabulary::blame::Blame;
use crate::vocabulary::headers::BROADCAST_ID;

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
    /// A captured path value would climb out of `upstream_path`.
    #[error(transparent)]
    UnsafePath(#[from] UnsafePath),
    /// A `host = "client"` route's request has no usable `Host`.
    #[error(transparent)]
    ClientHost(#[from] ClientHost),
    /// The coalesced broadcast this request joined ended without an
    /// answer (its task failed).
    #[error("the shared broadcast this request joined ended without an answer")]
    CoalescedLost,
    /// The body could not be read from the client.
    #[error("the request body could not be read: {0}")]
    BodyRead(String),
    /// The broadcast could not start; nothing was sent.
    #[error(transparent)]
    NotStarted(#[from] NotStarted),
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
    /// The request head has more header fields, or more bytes, than the
    /// listener's `max_header_count` or `max_header_bytes` (431).
    #[error(
        "the request has {count} header fields and a {bytes}-byte head; the limits are {max_count} fields and {max_bytes} bytes"
    )]
    HeadersTooLarge {
        /// Header fields received.
        count: usize,
        /// Bytes of request line and headers.
        bytes: usize,
        /// `max_header_count`.
        max_count: usize,
        /// `max_header_bytes` (at least 8 KiB).
        max_bytes: usize,
    },
    /// `/admin/config` was asked for on an admin listener reachable from
    /// other hosts, with no `admin_auth` to guard it (403).
    #[error(
        "/admin/config shows file paths, route names and reload errors: it needs [server] admin_auth when admin_listen is not a loopback address"
    )]
    AdminConfigClosed,
    /// `GET /broadcasts/{id}`: no such job (or it expired).
    #[error(
        "no broadcast with id \"{0}\" is known (unknown, or finished longer ago than [jobs] retention)"
    )]
    UnknownJob(String),
    /// `GET /broadcasts`: a query parameter is unusable.
    #[error("bad query: {0}")]
    BadQuery(String),
    /// The job store could not be read for the status API.
    #[error(transparent)]
    Jobs(StoreError),
    /// The client took longer than `client_timeout` to send the body.
    #[error("the request body did not arrive within {0:?}")]
    ClientTimeout(std::time::Duration),
}

impl ApiError {
    /// The HTTP status for this error.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadBroadcastId
            | ApiError::BodyRead(_)
            | ApiError::UnsafePath(_)
            | ApiError::ClientHost(_)
            | ApiError::BadQuery(_) => StatusCode::BAD_REQUEST,
            ApiError::UnknownJob(_) => StatusCode::NOT_FOUND,
            ApiError::NotStarted(NotStarted::Store(error)) | ApiError::Jobs(error)
                if error.is_bound() =>
            {
                StatusCode::TOO_MANY_REQUESTS
            }
            ApiError::NotStarted(NotStarted::Store(_)) | ApiError::Jobs(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ApiError::CoalescedLost => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::ServiceRefused(_)
            | ApiError::Denied(Denied::NotAllowed)
            | ApiError::AdminConfigClosed => StatusCode::FORBIDDEN,
            ApiError::Denied(_) => StatusCode::UNAUTHORIZED,
            ApiError::Loop => StatusCode::LOOP_DETECTED,
            ApiError::Refused(_) | ApiError::NotStarted(NotStarted::Refused(_)) => {
                StatusCode::TOO_MANY_REQUESTS
            }
            ApiError::ClientTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::HeadersTooLarge { .. } => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ApiError::TooLarge { .. }
            | ApiError::NotStarted(NotStarted::DatagramTooLarge { .. }) => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            ApiError::NotStarted(
                NotStarted::Discovery(_)
                | NotStarted::NoneSelected { .. }
                | NotStarted::TooManyTargets { .. },
            ) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::NotStarted(NotStarted::Plugin(_)) => StatusCode::BAD_GATEWAY,
            ApiError::NoRoute => StatusCode::NOT_FOUND,
        }
    }

    /// Who is to blame for the refusal.
    pub fn blame(&self) -> Blame {
        match self {
            ApiError::NotStarted(not_started) => not_started.blame(),
            ApiError::AdminConfigClosed => Blame::Config,
            ApiError::CoalescedLost | ApiError::Jobs(_) => Blame::Router,
            _ => Blame::Client,
        }
    }

    /// The metrics label of the rejected broadcast.
    pub fn outcome(&self) -> &'static str {
        match self {
            ApiError::BadBroadcastId
            | ApiError::BodyRead(_)
            | ApiError::UnsafePath(_)
            | ApiError::ClientHost(_)
            | ApiError::BadQuery(_) => "bad_request",
            ApiError::UnknownJob(_) => "unknown_job",
            ApiError::NotStarted(NotStarted::Store(error)) | ApiError::Jobs(error)
                if error.is_bound() =>
            {
                "jobs_full"
            }
            ApiError::NotStarted(NotStarted::Store(_)) | ApiError::Jobs(_) => "job_store_error",
            ApiError::CoalescedLost => "lost",
            ApiError::ServiceRefused(_) => "refused",
            ApiError::Denied(Denied::NotAllowed) | ApiError::AdminConfigClosed => "forbidden",
            ApiError::Denied(_) => "unauthorized",
            ApiError::Loop => "loop",
            ApiError::Refused(refused) | ApiError::NotStarted(NotStarted::Refused(refused)) => {
                match refused {
                    Refused::RateLimited { .. } => "rate_limited",
                    Refused::PodRateLimited { .. } => "pod_rate_limited",
                    Refused::Busy { .. } => "busy",
                    Refused::Overloaded { .. } => "overloaded",
                }
            }
            ApiError::ClientTimeout(_) => "client_timeout",
            ApiError::HeadersTooLarge { .. } => "headers_too_large",
            ApiError::TooLarge { .. }
            | ApiError::NotStarted(NotStarted::DatagramTooLarge { .. }) => "too_large",
            ApiError::NotStarted(NotStarted::TooManyTargets { .. }) => "too_many_targets",
            ApiError::NotStarted(NotStarted::Discovery(error)) => match error {
                DiscoveryError::NoPods { .. } | DiscoveryError::NoEndpoints { .. } => "no_targets",
                DiscoveryError::Dns { .. } => "dns_error",
                DiscoveryError::Kubernetes { .. } => "kubernetes_error",
            },
            ApiError::NotStarted(NotStarted::Plugin(_)) => "plugin_error",
            ApiError::NotStarted(NotStarted::NoneSelected { .. }) => "none_selected",
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
            "source": self.blame(),
        });
        if let Some(id) = id {
            body["id"] = id.into();
        }
        if matches!(
            self,
            ApiError::NotStarted(NotStarted::Discovery(_) | NotStarted::NoneSelected { .. })
        ) {
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
            ApiError::Refused(refused) | ApiError::NotStarted(NotStarted::Refused(refused)) => {
                let seconds = refused.retry_after().as_secs_f64().ceil().max(1.0) as u64;
                Some((header::RETRY_AFTER, seconds.into()))
            }
            ApiError::NotStarted(NotStarted::Store(_)) | ApiError::Jobs(_) => {
                Some((header::RETRY_AFTER, HeaderValue::from_static("1")))
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
            Json(json!({ "ok": false, "error": self.to_string(), "source": self.blame() })),
        )
            .into_response();
        if let Some((name, value)) = extra {
            response.headers_mut().insert(name, value);
        }
        response
    }
}

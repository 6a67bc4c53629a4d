//! The request handler: one axum route per configured route, and the
//! checks a request passes before its broadcast starts, in this order:
//! loop marker (508) → bearer token (401/403) → broadcast id (400) →
//! rate and concurrency limits (429, before the body is read) → a
//! templated service's allow-list (403, before any DNS query) → the body
//! within `max_body_bytes` (413) and `client_timeout` (408) → the path
//! pods receive (400) → the broadcast, answered by [`super::answer`].

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{ConnectInfo, RawPathParams, Request, State};
use axum::http::{HeaderValue, header};
use axum::response::Response;
use axum::routing::{MethodFilter, MethodRouter};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use tower::ServiceExt;

use super::answer::{self, Answered};
use super::error::ApiError;
use super::state::{AppState, Generation};
use crate::config::Protocol;
use crate::fanout::PodRequest;
use crate::fanout::headers;
use crate::load::Endpoint;
use crate::telemetry;
use crate::vocabulary::headers::{
    BROADCAST_ID, BROADCAST_SUCCEEDED, BROADCAST_TARGETS, has_looped, valid_broadcast_id,
};

/// The broadcast listener as an axum router: every request goes to the
/// routes of the configuration active when it arrives. Serve it with
/// `into_make_service_with_connect_info::<SocketAddr>()`.
pub fn app(state: Arc<AppState>) -> axum::Router {
    axum::Router::new()
        .fallback(
            |State(state): State<Arc<AppState>>, request: Request| async move {
                let router = state.active().router;
                match router.oneshot(request).await {
                    Ok(response) => response,
                    Err(never) => match never {},
                }
            },
        )
        .with_state(state)
}

/// One generation's routes as an axum router.
pub(super) fn routes(generation: &Arc<Generation>) -> axum::Router {
    let mut by_path: BTreeMap<&str, MethodRouter<Arc<Generation>>> = BTreeMap::new();
    for endpoint in &generation.endpoints {
        let path = endpoint.route.path.as_str();
        let mut methods = by_path.remove(path).unwrap_or_default();
        for method in &endpoint.route.methods {
            let filter = MethodFilter::try_from(method.clone()).expect("validated method");
            let endpoint = Arc::clone(endpoint);
            methods = methods.on(
                filter,
                move |State(generation): State<Arc<Generation>>,
                      ConnectInfo(peer): ConnectInfo<SocketAddr>,
                      params: RawPathParams,
                      request: Request| async move {
                    handle(generation, endpoint, peer, params, request).await
                },
            );
        }
        by_path.insert(path, methods);
    }
    let mut router = axum::Router::new();
    for (path, methods) in by_path {
        router = router.route(path, methods);
    }
    router
        .fallback(|| async { ApiError::NoRoute })
        .with_state(Arc::clone(generation))
}

async fn handle(
    state: Arc<Generation>,
    endpoint: Arc<Endpoint>,
    peer: SocketAddr,
    params: RawPathParams,
    request: Request,
) -> Response {
    let route = &endpoint.route;
    let (parts, body) = request.into_parts();
    if has_looped(&parts.headers) {
        return reject(&route.name, None, ApiError::Loop);
    }
    if let Err(denied) = endpoint.auth.check(&parts.headers) {
        return reject(&route.name, None, denied.into());
    }
    let id = match parts.headers.get(BROADCAST_ID).map(HeaderValue::to_str) {
        None => uuid::Uuid::new_v4().to_string(),
        Some(Ok(id)) if valid_broadcast_id(id) => id.to_owned(),
        Some(_) => return reject(&route.name, None, ApiError::BadBroadcastId),
    };
    // Over a limit, the request is refused before its body is read.
    let admitted = match endpoint.admission.admit() {
        Ok(admitted) => admitted,
        Err(refused) => return reject(&route.name, Some(&id), refused.into()),
    };
    let params: Vec<(String, String)> = params
        .iter()
        .map(|(name, value)| (name.to_owned(), value.to_owned()))
        .collect();
    let requested = params
        .iter()
        .find(|(name, _)| name == "service")
        .map(|(_, value)| value.as_str());
    let service = match route.service_name(requested) {
        Ok(service) => service,
        Err(refused) => return reject(&route.name, Some(&id), refused.into()),
    };
    let reading = read_body(body, &parts.headers, state.max_body_bytes);
    let body = match tokio::time::timeout(state.client_timeout, reading).await {
        Ok(Ok(body)) => body,
        Ok(Err(error)) => return reject(&route.name, Some(&id), error),
        Err(_) => {
            let error = ApiError::ClientTimeout(state.client_timeout);
            return reject(&route.name, Some(&id), error);
        }
    };
    let path_and_query = match route.upstream_path_and_query(&parts.uri, &params) {
        Ok(path) => path,
        Err(unsafe_path) => return reject(&route.name, Some(&id), unsafe_path.into()),
    };
    let mut forwarded = headers::forwarded(&parts.headers, peer.ip(), &id);
    if endpoint.auth.is_required() {
        // The token was for the router; pods never see it.
        forwarded.remove(header::AUTHORIZATION);
    }
    let request = PodRequest {
        path_and_query,
        headers: forwarded,
        method: parts.method,
        body,
    };
    let broadcaster = &state.broadcaster;
    let answered = match route.protocol {
        Protocol::Udp => answer::udp(broadcaster, &endpoint, service, &id, request, admitted).await,
        Protocol::Http => {
            answer::http(broadcaster, &endpoint, service, &id, request, admitted).await
        }
    };
    match answered {
        Ok(Answered {
            mut response,
            targets,
            succeeded,
        }) => {
            let headers = response.headers_mut();
            headers.insert(
                BROADCAST_ID,
                HeaderValue::from_str(&id).expect("validated id"),
            );
            headers.insert(BROADCAST_TARGETS, targets.into());
            if let Some(succeeded) = succeeded {
                headers.insert(BROADCAST_SUCCEEDED, succeeded.into());
            }
            response
        }
        Err(error) => reject(&route.name, Some(&id), error.into()),
    }
}

/// Answers a refused request, counting it and logging it without
/// flooding the log (see [`telemetry::refused`]).
fn reject(route: &str, id: Option<&str>, error: ApiError) -> Response {
    telemetry::broadcast_rejected(route, error.outcome());
    telemetry::refused(route, error.outcome(), id, &error);
    error.into_answer(route, id)
}

/// Reads the whole body once, refusing it (413) past `limit` bytes, before
/// reading anything when `Content-Length` already says so.
async fn read_body(
    body: Body,
    headers: &axum::http::HeaderMap,
    limit: usize,
) -> Result<bytes::Bytes, ApiError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    if declared.is_some_and(|length| length > limit as u64) {
        return Err(ApiError::TooLarge { limit });
    }
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error) if error.downcast_ref::<LengthLimitError>().is_some() => {
            Err(ApiError::TooLarge { limit })
        }
        Err(error) => Err(ApiError::BodyRead(error.to_string())),
    }
}

//! The request handler: one axum route per configured path, dispatching by
//! method to the route that accepts it (405 otherwise), and the checks a
//! request passes before its broadcast starts, in this order: loop marker
//! (508) → bearer token (401/403) → broadcast id (400) → rate and
//! concurrency limits (429, before the body is read) → a templated
//! service's allow-list (403, before any DNS query) → the client's `Host`
//! on a `host = "client"` route (400) → the body within `max_body_bytes`
//! (413) and `client_timeout` (408) → the path pods receive (400) → on a
//! route with `coalesce`, joining an identical waiting broadcast
//! ([`super::coalesce`]) → the broadcast, answered by [`super::answer`].

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{ConnectInfo, RawPathParams, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use tower::ServiceExt;

use super::answer::{self, Answered};
use super::coalesce::{Coalescer, Key};
use super::error::ApiError;
use super::state::{AppState, Generation};
use crate::config::{Methods, Protocol};
use crate::fanout::PodRequest;
use crate::fanout::headers;
use crate::limit::Admitted;
use crate::load::Endpoint;
use crate::telemetry;
use crate::vocabulary::headers::{
    BROADCAST_ID, BROADCAST_SUCCEEDED, BROADCAST_TARGETS, has_looped, valid_broadcast_id,
};

/// The broadcast listener as an axum router: the job status API
/// (`/broadcasts`, [`super::status`]), and every other request to the
/// routes of the configuration active when it arrives. Serve it with
/// `into_make_service_with_connect_info::<SocketAddr>()`.
pub fn app(state: Arc<AppState>) -> axum::Router {
    axum::Router::new()
        .route("/broadcasts", get(super::status::list))
        .route("/broadcasts/{id}", get(super::status::one))
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

/// One generation's routes as an axum router: one handler per path, which
/// picks the route by method (any method token, `"*"` for any).
pub(super) fn routes(generation: &Arc<Generation>) -> axum::Router {
    let mut by_path: BTreeMap<&str, Vec<Served>> = BTreeMap::new();
    for endpoint in &generation.endpoints {
        let route = &endpoint.route;
        let coalescer = route
            .coalesce
            .filter(|_| route.protocol == Protocol::Http)
            .map(|window| Arc::new(Coalescer::new(route.name.clone(), window)));
        by_path.entry(&route.path).or_default().push(Served {
            endpoint: Arc::clone(endpoint),
            coalescer,
        });
    }
    let mut router = axum::Router::new();
    for (path, served) in by_path {
        let served = Arc::new(served);
        router = router.route(
            path,
            any(
                move |State(generation): State<Arc<Generation>>,
                      ConnectInfo(peer): ConnectInfo<SocketAddr>,
                      params: RawPathParams,
                      request: Request| async move {
                    match pick(&served, request.method()) {
                        Some(served) => handle(generation, served, peer, params, request).await,
                        None => method_not_allowed(&served),
                    }
                },
            ),
        );
    }
    router
        .fallback(|| async { ApiError::NoRoute })
        .with_state(Arc::clone(generation))
}

/// A route served on a path, with its coalescing windows.
struct Served {
    endpoint: Arc<Endpoint>,
    coalescer: Option<Arc<Coalescer>>,
}

/// The route of a path that serves `method`: the one listing it, or the
/// one accepting any method; for `HEAD`, else the one serving `GET`.
fn pick<'a>(served: &'a [Served], method: &Method) -> Option<&'a Served> {
    let listed = |method: &Method| {
        served
            .iter()
            .find(|served| served.endpoint.route.methods.accepts(method))
    };
    listed(method).or_else(|| (*method == Method::HEAD).then(|| listed(&Method::GET))?)
}

/// 405 with the path's methods in `Allow` (a `GET` route answers `HEAD`).
fn method_not_allowed(served: &[Served]) -> Response {
    let mut allowed: Vec<&str> = Vec::new();
    for served in served {
        if let Methods::Listed(methods) = &served.endpoint.route.methods {
            allowed.extend(methods.iter().map(Method::as_str));
        }
    }
    if allowed.contains(&"GET") && !allowed.contains(&"HEAD") {
        allowed.push("HEAD");
    }
    let mut response = StatusCode::METHOD_NOT_ALLOWED.into_response();
    if let Ok(allow) = HeaderValue::from_str(&allowed.join(",")) {
        response.headers_mut().insert(header::ALLOW, allow);
    }
    response
}

async fn handle(
    state: Arc<Generation>,
    served: &Served,
    peer: SocketAddr,
    params: RawPathParams,
    request: Request,
) -> Response {
    let endpoint = &served.endpoint;
    let route = &endpoint.route;
    let (parts, body) = request.into_parts();
    if has_looped(&parts.headers) {
        return reject(&route.name, None, ApiError::Loop);
    }
    if let Err(denied) = endpoint.auth.check(&parts.headers) {
        return reject(&route.name, None, denied.into());
    }
    let client_id = parts.headers.get(BROADCAST_ID);
    let id = match client_id.map(HeaderValue::to_str) {
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
    let host = match route.pod_host(&parts.headers) {
        Ok(host) => host,
        Err(error) => return reject(&route.name, Some(&id), error.into()),
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
    if let Some(host) = host {
        forwarded.insert(header::HOST, host);
    }
    let request = PodRequest {
        path_and_query,
        headers: forwarded,
        method: parts.method,
        body,
    };
    let Some(coalescer) = &served.coalescer else {
        return broadcast(state, Arc::clone(endpoint), service, id, request, admitted).await;
    };
    let key = Key::new(&request, service.as_deref(), client_id);
    let endpoint = Arc::clone(endpoint);
    coalescer
        .answer(key, move || {
            broadcast(state, endpoint, service, id, request, admitted)
        })
        .await
}

/// Broadcasts `request` and answers with the outcome (or the refusal).
async fn broadcast(
    state: Arc<Generation>,
    endpoint: Arc<Endpoint>,
    service: Option<String>,
    id: String,
    request: PodRequest,
    admitted: Admitted,
) -> Response {
    let route = &endpoint.route;
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

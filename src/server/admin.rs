//! The admin listener: liveness, readiness, Prometheus metrics and the
//! active configuration, on their own port so they are never mixed with
//! broadcast routes.

use std::sync::Arc;

use axum::Json;
use axum::extract::Request;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::{ApiError, AppState};
use crate::telemetry;

/// The admin endpoints as an axum router.
/// `/healthz` and `/readyz` are always open; `/metrics` and `/admin/*`
/// need a token when `[server] admin_auth` names token sets.
pub fn app(state: Arc<AppState>) -> axum::Router {
    let protected = axum::Router::new()
        .route("/metrics", get(metrics))
        .route("/admin/config", get(config))
        .route_layer(middleware::from_fn_with_state(
            Arc::clone(&state),
            require_token,
        ));
    axum::Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .merge(protected)
        .with_state(state)
}

async fn require_token(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    match state.admin_guard().check(request.headers()) {
        Ok(()) => next.run(request).await,
        Err(denied) => {
            let error = ApiError::Denied(denied);
            telemetry::refused("admin", error.outcome(), None, &error);
            error.into_response()
        }
    }
}

/// 200 while the configuration is loaded and broadcasts are accepted; 503
/// before that and while draining for shutdown.
async fn readyz(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    if state.is_ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}

async fn metrics() -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        telemetry::metrics().render(),
    )
}

/// The active configuration's version, digest, load time, routes and
/// plugins, and the last rejected reload (until one succeeds). Without
/// `admin_auth`, only an admin listener on a loopback address serves it.
async fn config(State(state): State<Arc<AppState>>) -> Response {
    if !state.admin_guard().is_required() && !state.admin_config_is_open() {
        let error = ApiError::AdminConfigClosed;
        telemetry::refused("admin", error.outcome(), None, &error);
        return error.into_response();
    }
    Json(serde_json::json!({
        "active": state.config_info(),
        "last_reload_failure": state.last_reload_failure(),
    }))
    .into_response()
}

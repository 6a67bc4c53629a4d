//! The job status API on the broadcast listener: `GET /broadcasts/{id}`
//! (one job: its state, per-pod progress and, once done, the report a
//! sync answer carries) and `GET /broadcasts?route=&state=&limit=` (recent
//! jobs, newest first). A job is shown to the tokens of the route that ran
//! it (the admin tokens once that route is gone); an unknown or expired id
//! is a 404 with a JSON body.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, RawQuery, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use percent_encoding::percent_decode_str;

use super::error::ApiError;
use super::state::{AppState, Generation};
use crate::auth::Guard;
use crate::jobs::{Filter, JobState};

/// Jobs listed when `limit` is not given.
const DEFAULT_LIMIT: usize = 50;
/// Most jobs one listing returns.
const MAX_LIMIT: usize = 1000;

/// The tokens that may read `route`'s jobs.
fn guard(state: &AppState, generation: &Generation, route: &str) -> Guard {
    generation
        .endpoints
        .iter()
        .find(|endpoint| *endpoint.route.name == *route)
        .map_or_else(|| state.admin_guard(), |endpoint| endpoint.auth.clone())
}

/// `GET /broadcasts/{id}`.
pub(super) async fn one(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let generation = state.active().generation;
    let job = match generation.broadcaster.jobs().get(&id).await {
        Ok(Some(job)) => job,
        Ok(None) => return ApiError::UnknownJob(id).into_response(),
        Err(error) => return ApiError::Jobs(error).into_response(),
    };
    if let Err(denied) = guard(&state, &generation, &job.route).check(&headers) {
        return ApiError::Denied(denied).into_response();
    }
    Json(job.view()).into_response()
}

/// `GET /broadcasts?route=&state=&limit=`: only the jobs of routes whose
/// tokens the request carries.
pub(super) async fn list(
    State(state): State<Arc<AppState>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let filter = match parse_query(query.as_deref().unwrap_or("")) {
        Ok(filter) => filter,
        Err(problem) => return ApiError::BadQuery(problem).into_response(),
    };
    let generation = state.active().generation;
    if let Some(route) = &filter.route
        && let Err(denied) = guard(&state, &generation, route).check(&headers)
    {
        return ApiError::Denied(denied).into_response();
    }
    let jobs = match generation.broadcaster.jobs().list(&filter).await {
        Ok(jobs) => jobs,
        Err(error) => return ApiError::Jobs(error).into_response(),
    };
    let views: Vec<_> = jobs
        .iter()
        .filter(|job| {
            guard(&state, &generation, &job.route)
                .check(&headers)
                .is_ok()
        })
        .map(|job| job.view())
        .collect();
    Json(serde_json::json!({ "broadcasts": views })).into_response()
}

/// The listing's filter from `route=`, `state=` and `limit=`.
fn parse_query(query: &str) -> Result<Filter, String> {
    let mut filter = Filter {
        limit: DEFAULT_LIMIT,
        ..Filter::default()
    };
    for pair in query.split('&').filter(|pair| !pair.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let value = percent_decode_str(&value.replace('+', " "))
            .decode_utf8()
            .map_err(|_| format!("`{name}` is not UTF-8"))?
            .into_owned();
        match name {
            "route" => filter.route = Some(value),
            "state" => filter.state = Some(value.parse::<JobState>()?),
            "limit" => {
                filter.limit = value
                    .parse::<usize>()
                    .ok()
                    .filter(|limit| (1..=MAX_LIMIT).contains(limit))
                    .ok_or_else(|| format!("`limit` must be 1 to {MAX_LIMIT}, got `{value}`"))?;
            }
            other => {
                return Err(format!(
                    "unknown parameter `{other}`; expected route, state or limit"
                ));
            }
        }
    }
    Ok(filter)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_sets_route_state_and_limit() {
        let filter = parse_query("route=purge%20all&state=done&limit=5").unwrap();
        assert_eq!(filter.route.as_deref(), Some("purge all"));
        assert_eq!(filter.state, Some(JobState::Done));
        assert_eq!(filter.limit, 5);
        assert_eq!(parse_query("").unwrap().limit, DEFAULT_LIMIT);
        assert!(parse_query("state=lost").is_err());
        assert!(parse_query("limit=0").is_err());
        assert!(parse_query("colour=red").is_err());
    }
}

//! Answer rendering: how a started broadcast becomes the client's
//! response. UDP routes answer 202 with what was sent; `async` HTTP routes
//! answer 202 at once, once the job is stored, with `Location:
//! /broadcasts/{id}`; other HTTP routes answer with the [`Verdict`]'s
//! status and body, decided by [`crate::aggregate`].
//!
//! [`Verdict`]: crate::aggregate::Verdict

use std::sync::Arc;

use axum::Json;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::aggregate::Accepted;
use crate::broadcast::{Broadcaster, NotStarted};
use crate::config::Mode;
use crate::fanout::PodRequest;
use crate::limit::Admitted;
use crate::load::Endpoint;

/// A broadcast's answer before the `X-Broadcast-*` headers are added.
pub(super) struct Answered {
    /// The response, status and body set.
    pub(super) response: Response,
    /// How many pods the broadcast goes to.
    pub(super) targets: usize,
    /// Pods that answered 2xx (HTTP routes answered after delivery).
    pub(super) succeeded: Option<usize>,
}

/// UDP: 202 once every copy is sent, with what went to each pod.
pub(super) async fn udp(
    broadcaster: &Arc<Broadcaster>,
    endpoint: &Arc<Endpoint>,
    service: Option<String>,
    id: &str,
    request: PodRequest,
    admitted: Admitted,
) -> Result<Answered, NotStarted> {
    let report = broadcaster
        .send_udp(
            Arc::clone(endpoint),
            service,
            id.to_owned(),
            request,
            admitted,
        )
        .await?;
    Ok(Answered {
        targets: report.targets,
        succeeded: None,
        response: (StatusCode::ACCEPTED, Json(report)).into_response(),
    })
}

/// HTTP: 202 at once for `async` routes; otherwise the verdict's status
/// and body.
pub(super) async fn http(
    broadcaster: &Arc<Broadcaster>,
    endpoint: &Arc<Endpoint>,
    service: Option<String>,
    id: &str,
    request: PodRequest,
    admitted: Admitted,
) -> Result<Answered, NotStarted> {
    let route = &endpoint.route;
    let started = broadcaster
        .start(
            Arc::clone(endpoint),
            service,
            id.to_owned(),
            request,
            admitted,
        )
        .await?;
    if route.mode == Mode::Async {
        let targets = started.targets;
        started.detach();
        let accepted = Accepted {
            id: id.to_owned(),
            route: route.name.to_string(),
            mode: "async",
            targets,
        };
        let location = format!("/broadcasts/{id}");
        return Ok(Answered {
            response: (
                StatusCode::ACCEPTED,
                [(header::LOCATION, location)],
                Json(accepted),
            )
                .into_response(),
            targets,
            succeeded: None,
        });
    }
    let verdict = started.verdict().await;
    let (targets, succeeded) = (verdict.report.targets, Some(verdict.report.succeeded));
    let status = verdict.status();
    let (content_type, body) = verdict.into_body();
    Ok(Answered {
        response: (status, [(header::CONTENT_TYPE, content_type)], body).into_response(),
        targets,
        succeeded,
    })
}

//! `report_to`: POSTing each finished broadcast's report to the route's
//! collector, so one service is the single writer of outcomes.
//!
//! The report is retried with exponential backoff (100 ms doubling to 5 s)
//! for the route's `report_retry_for`, after a connection error, a timeout,
//! a 5xx, 408 or 429. Other 4xx answers mean the collector refuses the
//! document: retrying would not help, so the failure is logged. A job's
//! report that is not acknowledged yet is sent again after a restart,
//! until `report_retry_for` from the broadcast's end has run out (see
//! `docs/jobs.md`). Every
//! attempt carries the broadcast id in `X-Broadcast-Id`, so a collector can
//! drop the duplicate that a retry after a lost answer produces.

use std::time::Duration;

use axum::http::StatusCode;
use bytes::Bytes;
use tokio::time::Instant;

use crate::route::ReportTo;
use crate::telemetry;
use crate::vocabulary::headers::BROADCAST_ID;

/// Timeout of one POST to the collector.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);

/// Sends `report` (JSON) to the collector, retrying until `give_up`; logs
/// and counts the outcome. Returns whether the collector acknowledged it.
pub async fn send(
    client: &reqwest::Client,
    to: &ReportTo,
    route: &str,
    id: &str,
    report: Bytes,
    give_up: Instant,
) -> bool {
    let mut delay = Duration::from_millis(100);
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        let result = client
            .post(to.url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(BROADCAST_ID, id)
            .timeout(ATTEMPT_TIMEOUT)
            .body(report.clone())
            .send()
            .await;
        let (retry, problem) = match result {
            Ok(response) if response.status().is_success() => {
                telemetry::report_sent(route, "delivered");
                tracing::debug!(collector = %to.url, attempts, "Report delivered.");
                return true;
            }
            Ok(response) => {
                let status = response.status();
                let retry = status.is_server_error()
                    || status == StatusCode::REQUEST_TIMEOUT
                    || status == StatusCode::TOO_MANY_REQUESTS;
                (retry, format!("the collector answered {status}"))
            }
            Err(error) => (true, error.to_string()),
        };
        if !retry || Instant::now() + delay > give_up {
            telemetry::report_sent(route, "failed");
            tracing::error!(
                collector = %to.url,
                attempts,
                error = %problem,
                "Report could not be delivered; the broadcast's outcome is only in this log and its job."
            );
            return false;
        }
        telemetry::report_retry(route);
        tracing::warn!(collector = %to.url, attempts, error = %problem, retry_in = ?delay, "Report delivery failed; retrying.");
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

//! Logging refused requests without letting them fill the disk.
//!
//! Every refusal (a missing token, a rate limit, a malformed request…) is
//! counted in `broadcast_router_broadcasts_total` and logged at debug. At
//! warn, each route and reason gets at most one line per
//! [`SUMMARY_INTERVAL`]: the first refusal at once, then, at the first
//! refusal after the interval, how many there were since. A flood of
//! refused requests therefore writes a few lines a minute, not one line
//! per request, while a single refusal is still visible at the default
//! level.

use std::collections::HashMap;
use std::fmt::Display;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How often one route and reason may write a warning.
pub const SUMMARY_INTERVAL: Duration = Duration::from_secs(10);

/// Most (route, reason) pairs remembered; beyond it the oldest windows are
/// forgotten (route names come from the configuration, reasons from a
/// fixed set, so this is only a safety net).
const MAX_KEYS: usize = 4096;

/// Refusals since the last warning of one route and reason.
struct Window {
    started: Instant,
    suppressed: u64,
}

fn windows() -> &'static Mutex<HashMap<(String, &'static str), Window>> {
    static WINDOWS: OnceLock<Mutex<HashMap<(String, &'static str), Window>>> = OnceLock::new();
    WINDOWS.get_or_init(Mutex::default)
}

/// Logs one refused request on `route` for `reason` (a metrics outcome)
/// with its `error`: at debug always, at warn at most once per interval,
/// with how many refusals the interval held.
pub fn refused(route: &str, reason: &'static str, id: Option<&str>, error: &dyn Display) {
    tracing::debug!(route, reason, id, %error, "Request refused.");
    let now = Instant::now();
    let mut windows = windows().lock().expect("refusal log lock");
    if windows.len() >= MAX_KEYS && !windows.contains_key(&(route.to_owned(), reason)) {
        windows.retain(|_, window| now.duration_since(window.started) < SUMMARY_INTERVAL);
        if windows.len() >= MAX_KEYS {
            windows.clear();
        }
    }
    match windows.get_mut(&(route.to_owned(), reason)) {
        Some(window) if now.duration_since(window.started) < SUMMARY_INTERVAL => {
            window.suppressed += 1;
        }
        Some(window) => {
            let earlier = window.suppressed;
            *window = Window {
                started: now,
                suppressed: 0,
            };
            drop(windows);
            tracing::warn!(
                route,
                reason,
                refused = earlier + 1,
                %error,
                "Requests refused since the last warning (each one is logged at debug)."
            );
        }
        None => {
            windows.insert(
                (route.to_owned(), reason),
                Window {
                    started: now,
                    suppressed: 0,
                },
            );
            drop(windows);
            tracing::warn!(
                route,
                reason,
                refused = 1,
                %error,
                "Request refused; more refusals for this route and reason are summarised every 10s (each one is logged at debug)."
            );
        }
    }
}

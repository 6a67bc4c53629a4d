//! Coalescing (a route's `coalesce` window): identical broadcasts that
//! arrive while one such broadcast waits to start share it.
//!
//! The first request of its kind opens a window and becomes the leader;
//! its broadcast starts when the window closes. Identical requests that
//! arrive before then join it: they start nothing, and every one of them
//! gets the leader's answer, byte for byte (its status, headers, report
//! and `X-Broadcast-Id`). A request arriving once the broadcast has
//! started opens a new window. So a storm of one purge becomes at most one
//! broadcast per window.
//!
//! Identical means the same [`Key`]: the method, path and query, service,
//! body, and the headers pods receive (the `Host` included), except those
//! that differ per request by construction (`X-Forwarded-For`,
//! `traceparent`, `Via` and a generated broadcast id). A broadcast id the
//! client chose is part of the key: requests naming different ids are
//! never merged.
//!
//! The leader's window and broadcast run in a task of their own, so a
//! leader whose client goes away still answers the clients that joined.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use tokio::sync::watch;

use super::error::ApiError;
use crate::fanout::PodRequest;
use crate::telemetry;
use crate::vocabulary::headers::{BROADCAST_ID, TRACEPARENT};

/// Headers that differ between otherwise identical requests by
/// construction, left out of the [`Key`].
const PER_REQUEST: [HeaderName; 4] = [
    BROADCAST_ID,
    TRACEPARENT,
    HeaderName::from_static("x-forwarded-for"),
    header::VIA,
];

/// What makes two broadcasts of one route identical.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct Key {
    method: Method,
    path_and_query: String,
    service: Option<String>,
    /// The headers pods receive, sorted by name, without [`PER_REQUEST`].
    headers: Vec<(HeaderName, HeaderValue)>,
    /// The `X-Broadcast-Id` the client sent, if any.
    client_id: Option<HeaderValue>,
    body: Bytes,
}

impl Key {
    /// The key of `request` to `service`, whose client sent `client_id`.
    pub(super) fn new(
        request: &PodRequest,
        service: Option<&str>,
        client_id: Option<&HeaderValue>,
    ) -> Self {
        let mut headers: Vec<(HeaderName, HeaderValue)> = request
            .headers
            .iter()
            .filter(|(name, _)| !PER_REQUEST.contains(name))
            .map(|(name, value)| (name.clone(), value.clone()))
            .collect();
        // Stable: the values of one name keep their order.
        headers.sort_by(|a, b| a.0.as_str().cmp(b.0.as_str()));
        Self {
            method: request.method.clone(),
            path_and_query: request.path_and_query.clone(),
            service: service.map(str::to_owned),
            headers,
            client_id: client_id.cloned(),
            body: request.body.clone(),
        }
    }
}

/// A finished answer, kept so that every client of a shared broadcast
/// gets a copy.
#[derive(Debug, Clone)]
struct Shared {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Shared {
    /// Collects `response` (a fully buffered answer).
    async fn collect(response: Response) -> Self {
        let (parts, body) = response.into_parts();
        let body = axum::body::to_bytes(body, usize::MAX)
            .await
            .unwrap_or_default();
        Self {
            status: parts.status,
            headers: parts.headers,
            body,
        }
    }

    fn response(&self) -> Response {
        let mut response = Response::new(Body::from(self.body.clone()));
        *response.status_mut() = self.status;
        *response.headers_mut() = self.headers.clone();
        response
    }
}

/// One route's coalescing windows.
pub(super) struct Coalescer {
    route: Arc<str>,
    window: Duration,
    waiting: Mutex<HashMap<Key, watch::Receiver<Option<Shared>>>>,
}

impl Coalescer {
    /// The windows of `route`, each `window` long.
    pub(super) fn new(route: Arc<str>, window: Duration) -> Self {
        Self {
            route,
            window,
            waiting: Mutex::default(),
        }
    }

    /// The answer for a request with `key`: the answer of the identical
    /// broadcast waiting to start, if there is one; otherwise, after the
    /// window, the answer of `lead`, shared with every request that joined.
    pub(super) async fn answer<F, Fut>(self: &Arc<Self>, key: Key, lead: F) -> Response
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Response> + Send + 'static,
    {
        let mut answered = {
            let mut waiting = self.waiting.lock().expect("coalescing lock");
            match waiting.get(&key) {
                Some(answered) => {
                    // Nothing of this request runs: what `lead` holds (its
                    // admission among them) is released now.
                    drop(lead);
                    telemetry::broadcast_coalesced(&self.route);
                    tracing::debug!(route = %self.route, "Request joined a waiting broadcast.");
                    answered.clone()
                }
                None => {
                    let (answer, answered) = watch::channel(None);
                    waiting.insert(key.clone(), answered.clone());
                    let this = Arc::clone(self);
                    tokio::spawn(async move {
                        tokio::time::sleep(this.window).await;
                        // From now on, identical requests open a new window.
                        this.waiting.lock().expect("coalescing lock").remove(&key);
                        let shared = Shared::collect(lead().await).await;
                        let _ = answer.send(Some(shared));
                    });
                    answered
                }
            }
        };
        match answered.wait_for(Option::is_some).await {
            Ok(shared) => shared.as_ref().expect("waited for an answer").response(),
            Err(_) => ApiError::CoalescedLost.into_answer(&self.route, None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(headers: &[(&str, &str)], body: &'static [u8]) -> PodRequest {
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        PodRequest {
            method: Method::from_bytes(b"PURGE").unwrap(),
            path_and_query: "/page?x=1".to_owned(),
            headers: map,
            body: Bytes::from_static(body),
        }
    }

    #[test]
    fn keys_ignore_what_differs_per_request_by_construction() {
        let one = request(
            &[
                ("host", "www.example.com"),
                ("x-forwarded-for", "10.0.0.1"),
                ("x-broadcast-id", "a"),
                ("traceparent", "00-1-2-01"),
                ("x-a", "1"),
                ("x-b", "2"),
            ],
            b"",
        );
        let two = request(
            &[
                ("x-b", "2"),
                ("x-broadcast-id", "b"),
                ("x-forwarded-for", "10.0.0.2"),
                ("x-a", "1"),
                ("host", "www.example.com"),
            ],
            b"",
        );
        assert_eq!(Key::new(&one, None, None), Key::new(&two, None, None));
        let other_host = request(&[("host", "api.example.com")], b"");
        let same_host = request(&[("host", "www.example.com")], b"");
        assert_ne!(
            Key::new(&other_host, None, None),
            Key::new(&same_host, None, None)
        );
        let body = request(&[("host", "www.example.com")], b"x");
        assert_ne!(
            Key::new(&body, None, None),
            Key::new(&same_host, None, None)
        );
        let chosen = HeaderValue::from_static("mine");
        assert_ne!(
            Key::new(&same_host, None, Some(&chosen)),
            Key::new(&same_host, None, None)
        );
        assert_ne!(
            Key::new(&same_host, Some("web"), None),
            Key::new(&same_host, Some("api"), None)
        );
    }
}

//! Where received messages go: JSON lines on stdout, or a POST to a local
//! URL with retries.

use std::fmt;
use std::io::{self, Write};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::uri::Scheme;
use http::{HeaderValue, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use super::Message;
use crate::{BROADCAST_ID, BROADCAST_SEQUENCE};

/// POST attempts per message by default, the first included.
const FORWARD_ATTEMPTS: u32 = 4;
/// The pause after the first failed POST; it doubles after each attempt.
const FORWARD_BACKOFF: Duration = Duration::from_millis(200);
/// Timeout of one POST, from sending the request to the end of the answer.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(10);
/// How much of an answer's body is read (and discarded), so that the
/// connection can be reused; a longer body closes it.
const DRAIN_LIMIT: usize = 64 * 1024;

/// Why a message could not be forwarded, or a [`Forwarder`] not built.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    /// Only plain HTTP is built in: the URL must be absolute, `http://`,
    /// and have a host and no user info.
    #[error("cannot forward to {0}: only http:// URLs are supported")]
    UnsupportedUrl(Uri),
    /// The message's id cannot be sent as a header value. Never the case
    /// for a message from a [`Receiver`](crate::Receiver): frames carry
    /// printable ASCII ids only.
    #[error("cannot forward broadcast {0:?}: the id is not a valid header value")]
    InvalidId(String),
    /// The last answer was not 2xx.
    #[error("{url} answered {status} (attempts: {attempts})")]
    Refused {
        /// Where the message went.
        url: Uri,
        /// The last answer's status.
        status: StatusCode,
        /// POSTs made.
        attempts: u32,
    },
    /// The last attempt got no answer.
    #[error("cannot POST to {url}: {detail} (attempts: {attempts})")]
    Unreachable {
        /// Where the message went.
        url: Uri,
        /// The innermost cause, e.g. "Connection refused (os error 111)",
        /// or "operation timed out".
        detail: String,
        /// POSTs made.
        attempts: u32,
    },
}

/// POSTs each message's payload to one URL, with `X-Broadcast-Id` and
/// `X-Broadcast-Sequence` headers and no content type (the datagram does not
/// carry one). A connection error, a timeout, a 5xx, 408 or 429 is retried
/// with exponential backoff; another answer that is not 2xx is final.
///
/// HTTP/1.1 only, over a pool of kept-alive connections; cloning a
/// forwarder shares the pool.
#[derive(Debug, Clone)]
pub struct Forwarder {
    /// Behind an `Arc` only to keep [`Sink`] small: a client is large.
    client: Arc<Client<HttpConnector, Full<Bytes>>>,
    url: Uri,
    attempts: u32,
    first_backoff: Duration,
    timeout: Duration,
}

impl Forwarder {
    /// Forwards to `url` (an absolute `http://` URL with a host and no user
    /// info; anything else is [`ForwardError::UnsupportedUrl`]), 4 attempts, 200 ms
    /// backoff doubling, 10 s timeout per attempt. No proxy is used: the URL
    /// is meant to be local.
    pub fn new(url: Uri) -> Result<Forwarder, ForwardError> {
        let supported = url.scheme() == Some(&Scheme::HTTP)
            && url.authority().is_some_and(|authority| {
                !authority.host().is_empty() && !authority.as_str().contains('@')
            });
        if !supported {
            return Err(ForwardError::UnsupportedUrl(url));
        }
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .build(connector);
        let client = Arc::new(client);
        Ok(Forwarder {
            client,
            url,
            attempts: FORWARD_ATTEMPTS,
            first_backoff: FORWARD_BACKOFF,
            timeout: FORWARD_TIMEOUT,
        })
    }

    /// Sets the attempts per message (at least 1) and the pause after the
    /// first failure, which doubles after each further one.
    pub fn retries(mut self, attempts: u32, first_backoff: Duration) -> Forwarder {
        self.attempts = attempts.max(1);
        self.first_backoff = first_backoff;
        self
    }

    /// The URL messages are POSTed to.
    pub fn url(&self) -> &Uri {
        &self.url
    }

    /// POSTs `message`'s payload; returns the attempts it took.
    pub async fn forward(&self, message: &Message) -> Result<u32, ForwardError> {
        let id = HeaderValue::from_str(&message.id)
            .map_err(|_| ForwardError::InvalidId(message.id.clone()))?;
        let sequence = HeaderValue::from(message.sequence);
        let mut backoff = self.first_backoff;
        let mut attempts = 0;
        loop {
            attempts += 1;
            let request = self.request(&id, &sequence, &message.payload);
            let (retry, error) = match self.attempt(request).await {
                Ok(status) if status.is_success() => return Ok(attempts),
                Ok(status) => {
                    let retry = status.is_server_error()
                        || status == StatusCode::REQUEST_TIMEOUT
                        || status == StatusCode::TOO_MANY_REQUESTS;
                    let error = ForwardError::Refused {
                        url: self.url.clone(),
                        status,
                        attempts,
                    };
                    (retry, error)
                }
                Err(detail) => {
                    let error = ForwardError::Unreachable {
                        url: self.url.clone(),
                        detail,
                        attempts,
                    };
                    (true, error)
                }
            };
            if !retry || attempts >= self.attempts {
                return Err(error);
            }
            tracing::debug!(id = %message.id, attempts, %error, retry_in = ?backoff, "Forwarding failed; retrying.");
            tokio::time::sleep(backoff).await;
            backoff = backoff.saturating_mul(2);
        }
    }

    /// The POST of one attempt.
    fn request(
        &self,
        id: &HeaderValue,
        sequence: &HeaderValue,
        payload: &Bytes,
    ) -> Request<Full<Bytes>> {
        let mut request = Request::new(Full::new(payload.clone()));
        *request.method_mut() = Method::POST;
        *request.uri_mut() = self.url.clone();
        let headers = request.headers_mut();
        headers.insert(BROADCAST_ID, id.clone());
        headers.insert(BROADCAST_SEQUENCE, sequence.clone());
        request
    }

    /// Sends `request` within the timeout; returns the answer's status, or
    /// the innermost cause of the failure.
    async fn attempt(&self, request: Request<Full<Bytes>>) -> Result<StatusCode, String> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        let response = match tokio::time::timeout_at(deadline, self.client.request(request)).await {
            Ok(Ok(response)) => response,
            Ok(Err(error)) => return Err(innermost_cause(&error)),
            Err(_) => return Err("operation timed out".to_owned()),
        };
        let status = response.status();
        // The status decides; the body is read only so that the connection
        // goes back to the pool, and a failure to read it only closes it.
        let body = Limited::new(response.into_body(), DRAIN_LIMIT);
        let _ = tokio::time::timeout_at(deadline, body.collect()).await;
        Ok(status)
    }
}

/// The most specific text in an error's chain.
fn innermost_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut innermost = error;
    while let Some(cause) = innermost.source() {
        innermost = cause;
    }
    innermost.to_string()
}

/// Where [`run`](super::run) hands messages on.
#[derive(Debug, Clone)]
pub enum Sink {
    /// One line per message on stdout, see [`Message::json_line`].
    Stdout,
    /// POST each payload to a URL; a message that cannot be forwarded is
    /// logged and dropped.
    Forward(Forwarder),
}

impl Sink {
    /// Hands `message` on. Only writing to stdout fails; a failed POST is
    /// logged at error level and the message dropped.
    pub async fn deliver(&self, message: &Message) -> io::Result<()> {
        match self {
            Sink::Stdout => print_line(message),
            Sink::Forward(forwarder) => {
                match forwarder.forward(message).await {
                    Ok(attempts) => {
                        tracing::debug!(id = %message.id, attempts, "Forwarded a broadcast.");
                    }
                    Err(error) => tracing::error!(
                        id = %message.id,
                        sequence = message.sequence,
                        %error,
                        "Could not forward a broadcast; it is dropped."
                    ),
                }
                Ok(())
            }
        }
    }
}

impl fmt::Display for Sink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Sink::Stdout => f.write_str("stdout"),
            Sink::Forward(forwarder) => write!(f, "POST {}", forwarder.url),
        }
    }
}

fn print_line(message: &Message) -> io::Result<()> {
    let mut line = message.json_line();
    line.push('\n');
    let mut stdout = io::stdout().lock();
    stdout.write_all(line.as_bytes())?;
    stdout.flush()
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    use super::*;

    fn message(id: &str) -> Message {
        Message {
            id: id.into(),
            sequence: 1,
            payload: Bytes::from_static(b"x"),
            from: "127.0.0.1:9".parse().unwrap(),
        }
    }

    #[test]
    fn forwarding_needs_an_http_url() {
        let url = |text: &str| text.parse::<Uri>().unwrap();
        for good in ["http://127.0.0.1:8080/hook", "http://localhost"] {
            let forwarder = Forwarder::new(url(good)).unwrap();
            assert_eq!(forwarder.url(), &url(good));
        }
        for bad in [
            "https://127.0.0.1/hook",
            "ftp://127.0.0.1/hook",
            "/hook",
            "127.0.0.1:8080",
            "*",
            "http://:80/",
            "http://user:secret@127.0.0.1/hook",
        ] {
            assert!(
                matches!(
                    Forwarder::new(url(bad)),
                    Err(ForwardError::UnsupportedUrl(_))
                ),
                "{bad}"
            );
        }
        // Not even URIs: `--forward-to` refuses them when parsing.
        for bad in ["file:///tmp/x", "unix:/run/x", "http://", ""] {
            assert!(bad.parse::<Uri>().is_err(), "{bad}");
        }
    }

    #[test]
    fn sinks_display_where_they_go() {
        assert_eq!(Sink::Stdout.to_string(), "stdout");
        let forwarder = Forwarder::new("http://127.0.0.1:8080/hook".parse().unwrap()).unwrap();
        assert_eq!(
            Sink::Forward(forwarder).to_string(),
            "POST http://127.0.0.1:8080/hook"
        );
    }

    #[tokio::test]
    async fn an_id_that_is_no_header_value_is_refused_before_any_attempt() {
        let forwarder = Forwarder::new("http://127.0.0.1:9/".parse().unwrap()).unwrap();
        match forwarder.forward(&message("a\nb")).await {
            Err(ForwardError::InvalidId(id)) => assert_eq!(id, "a\nb"),
            other => panic!("expected InvalidId, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn an_attempt_without_an_answer_times_out_and_is_retried() {
        // Accepts connections and reads requests, never answers.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let mut connections = Vec::new();
            loop {
                let (mut stream, _) = listener.accept().await.unwrap();
                let mut buffer = [0; 1024];
                let _ = stream.read(&mut buffer).await;
                connections.push(stream);
            }
        });
        let mut forwarder = Forwarder::new(format!("http://{addr}/").parse().unwrap())
            .unwrap()
            .retries(2, Duration::from_millis(10));
        forwarder.timeout = Duration::from_millis(200);
        match forwarder.forward(&message("slow")).await {
            Err(ForwardError::Unreachable {
                detail, attempts, ..
            }) => {
                assert_eq!(detail, "operation timed out");
                assert_eq!(attempts, 2);
            }
            other => panic!("expected Unreachable, got {other:?}"),
        }
        server.abort();
    }
}

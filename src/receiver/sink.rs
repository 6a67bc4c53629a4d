//! Where received messages go: JSON lines on stdout, or a POST to a local
//! URL with retries.

use std::fmt;
use std::io::{self, Write};
use std::time::Duration;

use reqwest::{StatusCode, Url};

use super::{BROADCAST_SEQUENCE, Message};
use crate::fanout::headers::BROADCAST_ID;

/// POST attempts per message by default, the first included.
const FORWARD_ATTEMPTS: u32 = 4;
/// The pause after the first failed POST; it doubles after each attempt.
const FORWARD_BACKOFF: Duration = Duration::from_millis(200);
/// Timeout of one POST.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a message could not be forwarded, or a [`Forwarder`] not built.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    /// Only plain HTTP is built in.
    #[error("cannot forward to {0}: only http:// URLs are supported")]
    UnsupportedUrl(Url),
    /// The HTTP client could not be built.
    #[error("cannot build the HTTP client: {0}")]
    Client(reqwest::Error),
    /// The last answer was not 2xx.
    #[error("{url} answered {status} (attempts: {attempts})")]
    Refused {
        /// Where the message went.
        url: Url,
        /// The last answer's status.
        status: StatusCode,
        /// POSTs made.
        attempts: u32,
    },
    /// The last attempt got no answer.
    #[error("cannot POST to {url}: {detail} (attempts: {attempts})")]
    Unreachable {
        /// Where the message went.
        url: Url,
        /// The innermost cause, e.g. "Connection refused (os error 111)".
        detail: String,
        /// POSTs made.
        attempts: u32,
    },
}

/// POSTs each message's payload to one URL, with `X-Broadcast-Id` and
/// `X-Broadcast-Sequence` headers and no content type (the datagram does not
/// carry one). A connection error, a timeout, a 5xx, 408 or 429 is retried
/// with exponential backoff; another answer that is not 2xx is final.
#[derive(Debug, Clone)]
pub struct Forwarder {
    client: reqwest::Client,
    url: Url,
    attempts: u32,
    first_backoff: Duration,
}

impl Forwarder {
    /// Forwards to `url` (http only), 4 attempts, 200 ms backoff doubling,
    /// 10 s timeout per attempt. Proxy settings from the environment are
    /// ignored: the URL is meant to be local.
    pub fn new(url: Url) -> Result<Forwarder, ForwardError> {
        if url.scheme() != "http" || url.host().is_none() {
            return Err(ForwardError::UnsupportedUrl(url));
        }
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(FORWARD_TIMEOUT)
            .build()
            .map_err(ForwardError::Client)?;
        Ok(Forwarder {
            client,
            url,
            attempts: FORWARD_ATTEMPTS,
            first_backoff: FORWARD_BACKOFF,
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
    pub fn url(&self) -> &Url {
        &self.url
    }

    /// POSTs `message`'s payload; returns the attempts it took.
    pub async fn forward(&self, message: &Message) -> Result<u32, ForwardError> {
        let mut backoff = self.first_backoff;
        let mut attempts = 0;
        loop {
            attempts += 1;
            let result = self
                .client
                .post(self.url.clone())
                .header(BROADCAST_ID, &message.id)
                .header(BROADCAST_SEQUENCE, message.sequence)
                .body(message.payload.clone())
                .send()
                .await;
            let (retry, error) = match result {
                Ok(response) if response.status().is_success() => return Ok(attempts),
                Ok(response) => {
                    let status = response.status();
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
                Err(error) => {
                    let error = ForwardError::Unreachable {
                        url: self.url.clone(),
                        detail: innermost_cause(&error),
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
    use super::*;

    #[test]
    fn forwarding_needs_an_http_url() {
        let url = |text: &str| Url::parse(text).unwrap();
        assert!(Forwarder::new(url("http://127.0.0.1:8080/hook")).is_ok());
        for bad in ["https://127.0.0.1/hook", "file:///tmp/x", "unix:/run/x"] {
            assert!(
                matches!(
                    Forwarder::new(url(bad)),
                    Err(ForwardError::UnsupportedUrl(_))
                ),
                "{bad}"
            );
        }
    }
}

//! The receiving side of UDP broadcasts, so a pod does not have to write
//! one: [`Receiver`] reads datagrams from a socket, decodes them
//! ([`crate::frame`]), drops malformed ones and the repeated copies
//! ([`Dedup`], by broadcast id), and yields every broadcast once as a
//! [`Message`]. A [`Sink`] hands messages on, as JSON lines on stdout or
//! POSTed to a local URL, and [`run`] joins the two until shutdown; that is
//! what `broadcast-router listen` does.
//!
//! Duplicates are recognised by broadcast id alone, as the router sends
//! every copy of one broadcast, to every pod, with the same id and sequence.
//! A client that reuses an id within the window therefore sees its later
//! broadcasts dropped here, which is what makes a retried broadcast
//! idempotent.

use std::borrow::Cow;
use std::collections::{HashSet, VecDeque};
use std::fmt;
use std::future::Future;
use std::io::{self, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use reqwest::header::HeaderName;
use reqwest::{StatusCode, Url};
use serde::Serialize;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use crate::fanout::headers::BROADCAST_ID;
use crate::frame;

/// How many broadcast ids a [`Dedup`] remembers by default.
pub const DEFAULT_WINDOW: usize = 4096;
/// How long a [`Dedup`] remembers a broadcast id by default.
pub const DEFAULT_WINDOW_AGE: Duration = Duration::from_secs(10 * 60);
/// The header carrying a forwarded message's sequence number.
pub const BROADCAST_SEQUENCE: HeaderName = HeaderName::from_static("x-broadcast-sequence");

/// The receive buffer: the largest UDP payload fits.
const MAX_DATAGRAM: usize = 65_535;
/// Messages received but not yet handed on by the sink, before [`run`]
/// stops reading the socket (the kernel's buffer then takes the overflow).
const QUEUE: usize = 1024;
/// How long [`run`] lets the sink finish queued messages after shutdown.
const DRAIN_GRACE: Duration = Duration::from_secs(10);
/// POST attempts per message by default, the first included.
const FORWARD_ATTEMPTS: u32 = 4;
/// The pause after the first failed POST; it doubles after each attempt.
const FORWARD_BACKOFF: Duration = Duration::from_millis(200);
/// Timeout of one POST.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(10);

/// Remembers the broadcast ids seen within a window, bounded both by count
/// and by age; the oldest ids are forgotten first. Every check is O(1)
/// (amortised: the ids it forgets were each inserted once).
///
/// An id's age counts from its first sighting; later copies do not extend
/// it.
#[derive(Debug)]
pub struct Dedup {
    max_ids: usize,
    max_age: Duration,
    seen: HashSet<Arc<str>>,
    /// Ids in the order first seen, with when.
    order: VecDeque<(Instant, Arc<str>)>,
}

impl Dedup {
    /// Remembers up to `max_ids` ids (at least 1), each for less than
    /// `max_age`. A zero `max_age` remembers nothing.
    pub fn new(max_ids: usize, max_age: Duration) -> Dedup {
        let max_ids = max_ids.max(1);
        let capacity = max_ids.min(DEFAULT_WINDOW);
        Dedup {
            max_ids,
            max_age,
            seen: HashSet::with_capacity(capacity),
            order: VecDeque::with_capacity(capacity),
        }
    }

    /// Whether `id` is new within the window; it is remembered from now on.
    pub fn first_time(&mut self, id: &str) -> bool {
        self.first_time_at(id, Instant::now())
    }

    /// [`Dedup::first_time`] with the clock passed in. `now` must not go
    /// backwards between calls (an earlier `now` forgets nothing).
    pub fn first_time_at(&mut self, id: &str, now: Instant) -> bool {
        self.forget_expired(now);
        if self.seen.contains(id) {
            return false;
        }
        if self.order.len() >= self.max_ids
            && let Some((_, oldest)) = self.order.pop_front()
        {
            self.seen.remove(&oldest);
        }
        let id: Arc<str> = Arc::from(id);
        self.seen.insert(Arc::clone(&id));
        self.order.push_back((now, id));
        true
    }

    /// How many ids are remembered.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// Whether no id is remembered.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    fn forget_expired(&mut self, now: Instant) {
        while let Some((seen_at, _)) = self.order.front() {
            if now.saturating_duration_since(*seen_at) < self.max_age {
                break;
            }
            if let Some((_, id)) = self.order.pop_front() {
                self.seen.remove(&id);
            }
        }
    }
}

impl Default for Dedup {
    /// [`DEFAULT_WINDOW`] ids for [`DEFAULT_WINDOW_AGE`].
    fn default() -> Dedup {
        Dedup::new(DEFAULT_WINDOW, DEFAULT_WINDOW_AGE)
    }
}

/// How a [`Receiver`] drops duplicates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReceiverOptions {
    /// How many broadcast ids to remember (at least 1).
    pub window: usize,
    /// How long to remember a broadcast id.
    pub window_age: Duration,
}

impl Default for ReceiverOptions {
    /// [`DEFAULT_WINDOW`] ids for [`DEFAULT_WINDOW_AGE`].
    fn default() -> ReceiverOptions {
        ReceiverOptions {
            window: DEFAULT_WINDOW,
            window_age: DEFAULT_WINDOW_AGE,
        }
    }
}

/// One broadcast, yielded once however many copies arrived.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The broadcast id (the broadcast's `X-Broadcast-Id`).
    pub id: String,
    /// The sending router's sequence number for this broadcast.
    pub sequence: u64,
    /// The payload: the body of the request the router received.
    pub payload: Bytes,
    /// Where the first copy came from (the router pod).
    pub from: SocketAddr,
}

impl Message {
    /// The message as one line of JSON (without the newline):
    /// `{"id":…,"sequence":…,"from":"ip:port","payload":…}`, the payload as
    /// text, invalid UTF-8 replaced by U+FFFD.
    pub fn json_line(&self) -> String {
        #[derive(Serialize)]
        struct Line<'a> {
            id: &'a str,
            sequence: u64,
            from: String,
            payload: Cow<'a, str>,
        }
        let line = Line {
            id: &self.id,
            sequence: self.sequence,
            from: self.from.to_string(),
            payload: String::from_utf8_lossy(&self.payload),
        };
        serde_json::to_string(&line).expect("strings and numbers serialize")
    }
}

/// What a [`Receiver`] has read so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Datagrams read from the socket.
    pub received: u64,
    /// Messages yielded: one per broadcast id within the window.
    pub delivered: u64,
    /// Datagrams dropped as copies of a broadcast already yielded.
    pub duplicates: u64,
    /// Datagrams dropped because they are not valid frames.
    pub malformed: u64,
}

/// A UDP socket yielding each broadcast once.
#[derive(Debug)]
pub struct Receiver {
    socket: UdpSocket,
    dedup: Dedup,
    buffer: Vec<u8>,
    stats: Stats,
}

impl Receiver {
    /// Binds a UDP socket on `addr` (port 0 picks a free one; see
    /// [`Receiver::local_addr`]).
    pub async fn bind(addr: SocketAddr, options: ReceiverOptions) -> io::Result<Receiver> {
        let socket = UdpSocket::bind(addr).await?;
        Ok(Receiver::from_socket(socket, options))
    }

    /// Receives on a socket the caller bound and configured.
    pub fn from_socket(socket: UdpSocket, options: ReceiverOptions) -> Receiver {
        Receiver {
            socket,
            dedup: Dedup::new(options.window, options.window_age),
            buffer: vec![0; MAX_DATAGRAM],
            stats: Stats::default(),
        }
    }

    /// The address the socket is bound to.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    /// The counters so far.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// Waits for the next broadcast not seen before within the window,
    /// dropping (and counting) malformed datagrams and repeated copies on
    /// the way. Cancel-safe: dropping the future loses no datagram.
    ///
    /// Errors are the socket's; the ICMP errors some platforms report on a
    /// UDP socket (connection reset or refused) are skipped.
    pub async fn next(&mut self) -> io::Result<Message> {
        loop {
            let (len, from) = match self.socket.recv_from(&mut self.buffer).await {
                Ok(received) => received,
                Err(error)
                    if matches!(
                        error.kind(),
                        io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionRefused
                    ) =>
                {
                    tracing::debug!(%error, "Skipped an ICMP error reported on the UDP socket.");
                    continue;
                }
                Err(error) => return Err(error),
            };
            if let Some(message) = self.accept(len, from) {
                return Ok(message);
            }
        }
    }

    /// Decodes and checks the datagram of `len` bytes in the buffer.
    fn accept(&mut self, len: usize, from: SocketAddr) -> Option<Message> {
        self.stats.received += 1;
        let frame = match frame::decode(&self.buffer[..len]) {
            Ok(frame) => frame,
            Err(error) => {
                self.stats.malformed += 1;
                tracing::debug!(%from, bytes = len, %error, "Dropped a malformed datagram.");
                return None;
            }
        };
        if !self.dedup.first_time(&frame.id) {
            self.stats.duplicates += 1;
            tracing::trace!(%from, id = %frame.id, copy = frame.copy, "Dropped a repeated copy.");
            return None;
        }
        self.stats.delivered += 1;
        tracing::debug!(
            %from,
            id = %frame.id,
            sequence = frame.sequence,
            copy = frame.copy,
            bytes = frame.payload.len(),
            "Received a broadcast."
        );
        Some(Message {
            id: frame.id,
            sequence: frame.sequence,
            payload: frame.payload,
            from,
        })
    }
}

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

/// Where [`run`] hands messages on.
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

/// Why [`run`] stopped before shutdown.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The socket failed.
    #[error("cannot receive datagrams: {0}")]
    Receive(io::Error),
    /// Stdout was closed or failed.
    #[error("cannot write to stdout: {0}")]
    Output(io::Error),
}

/// Receives until `shutdown` completes, handing each message to `sink` in
/// the order received; returns the final counters.
///
/// The sink runs in its own task behind a queue of 1024 messages, so a slow
/// sink does not stall the socket at once. After shutdown the queued
/// messages get up to 10 s to be handed on.
pub async fn run(
    mut receiver: Receiver,
    sink: Sink,
    shutdown: impl Future<Output = ()>,
) -> Result<Stats, RunError> {
    let local_addr = receiver.local_addr().map_err(RunError::Receive)?;
    tracing::info!(%local_addr, %sink, "Listening for UDP broadcasts.");
    let (queue, mut queued) = mpsc::channel::<Message>(QUEUE);
    let mut handing_on = tokio::spawn(async move {
        while let Some(message) = queued.recv().await {
            sink.deliver(&message).await?;
        }
        Ok::<(), io::Error>(())
    });
    let mut shutdown = std::pin::pin!(shutdown);
    let received = loop {
        let message = tokio::select! {
            () = &mut shutdown => break Ok(()),
            message = receiver.next() => match message {
                Ok(message) => message,
                Err(error) => break Err(RunError::Receive(error)),
            },
        };
        tokio::select! {
            () = &mut shutdown => break Ok(()),
            // An error means the sink stopped; its own error is below.
            sent = queue.send(message) => if sent.is_err() { break Ok(()) },
        }
    };
    drop(queue);
    let handed_on = match tokio::time::timeout(DRAIN_GRACE, &mut handing_on).await {
        Ok(Ok(result)) => result.map_err(RunError::Output),
        Ok(Err(join)) => std::panic::resume_unwind(join.into_panic()),
        Err(_) => {
            handing_on.abort();
            tracing::warn!(grace = ?DRAIN_GRACE, "Stopped before handing on every received broadcast.");
            Ok(())
        }
    };
    let stats = receiver.stats();
    tracing::info!(
        received = stats.received,
        delivered = stats.delivered,
        duplicates = stats.duplicates,
        malformed = stats.malformed,
        "Stopped listening for UDP broadcasts."
    );
    received.and(handed_on).map(|()| stats)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicates_are_dropped() {
        let mut dedup = Dedup::default();
        let now = Instant::now();
        assert!(dedup.first_time_at("a", now));
        assert!(dedup.first_time_at("b", now));
        assert!(!dedup.first_time_at("a", now));
        assert!(!dedup.first_time_at("b", now + Duration::from_secs(1)));
        assert!(!dedup.first_time("a"));
        assert_eq!(dedup.len(), 2);
    }

    #[test]
    fn the_oldest_ids_are_forgotten_beyond_the_count() {
        let mut dedup = Dedup::new(3, DEFAULT_WINDOW_AGE);
        let now = Instant::now();
        for id in ["a", "b", "c"] {
            assert!(dedup.first_time_at(id, now));
        }
        // A repeat neither counts as new nor refreshes "a".
        assert!(!dedup.first_time_at("a", now));
        assert!(dedup.first_time_at("d", now));
        assert_eq!(dedup.len(), 3);
        assert!(dedup.first_time_at("a", now), "a was the oldest");
        // Remembering "a" again forgot "b", the oldest then.
        assert!(!dedup.first_time_at("c", now));
        assert!(!dedup.first_time_at("d", now));
        assert!(dedup.first_time_at("b", now));
    }

    #[test]
    fn ids_are_forgotten_at_the_maximum_age() {
        let mut dedup = Dedup::new(DEFAULT_WINDOW, Duration::from_secs(60));
        let start = Instant::now();
        assert!(dedup.first_time_at("old", start));
        assert!(dedup.first_time_at("new", start + Duration::from_secs(30)));
        let almost = start + Duration::from_secs(59);
        assert!(!dedup.first_time_at("old", almost));
        // A repeat does not extend the window: "old" goes at 60 s.
        let expired = start + Duration::from_secs(60);
        assert!(dedup.first_time_at("old", expired));
        assert!(!dedup.first_time_at("new", expired));
        assert_eq!(dedup.len(), 2);
        // Much later, everything seen before is forgotten.
        let later = start + Duration::from_secs(3600);
        assert!(dedup.first_time_at("new", later));
        assert_eq!(dedup.len(), 1);
    }

    #[test]
    fn a_clock_going_backwards_forgets_nothing() {
        let mut dedup = Dedup::new(10, Duration::from_secs(1));
        let now = Instant::now() + Duration::from_secs(10);
        assert!(dedup.first_time_at("a", now));
        assert!(!dedup.first_time_at("a", now - Duration::from_secs(5)));
    }

    #[test]
    fn a_window_of_zero_ids_still_remembers_the_last_one() {
        let mut dedup = Dedup::new(0, DEFAULT_WINDOW_AGE);
        let now = Instant::now();
        assert!(dedup.first_time_at("a", now));
        assert!(!dedup.first_time_at("a", now));
        assert!(dedup.first_time_at("b", now));
        assert!(dedup.first_time_at("a", now));
    }

    #[test]
    fn json_lines_carry_the_payload_as_text() {
        let message = Message {
            id: "b-1".into(),
            sequence: 7,
            payload: Bytes::from_static(b"{\"key\":\"user:42\"}\n\xff"),
            from: "127.0.0.1:5000".parse().unwrap(),
        };
        let line = message.json_line();
        assert!(!line.contains('\n'), "{line}");
        assert_eq!(
            line,
            r#"{"id":"b-1","sequence":7,"from":"127.0.0.1:5000","payload":"{\"key\":\"user:42\"}\n�"}"#
        );
    }

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

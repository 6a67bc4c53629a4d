//! The receiving side of UDP broadcasts: [`Receiver`] reads datagrams from
//! a socket, decodes them ([`crate::frame`]), drops malformed ones and the
//! repeated copies ([`Dedup`], by broadcast id), and yields every broadcast
//! once as a [`Message`]. A [`Sink`] hands messages on, as JSON lines on
//! stdout or POSTed to a local URL, and [`run`] joins the two until
//! shutdown.

use std::borrow::Cow;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use serde::Serialize;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use crate::frame;

mod dedup;
mod sink;

pub use dedup::Dedup;
pub use sink::{ForwardError, Forwarder, Sink};

/// How many broadcast ids a [`Dedup`] remembers by default.
pub const DEFAULT_WINDOW: usize = 4096;
/// How long a [`Dedup`] remembers a broadcast id by default.
pub const DEFAULT_WINDOW_AGE: Duration = Duration::from_secs(10 * 60);

/// The receive buffer: the largest UDP payload fits.
const MAX_DATAGRAM: usize = 65_535;
/// Messages received but not yet handed on by the sink, before [`run`]
/// stops reading the socket (the kernel's buffer then takes the overflow).
const QUEUE: usize = 1024;
/// How long [`run`] lets the sink finish queued messages after shutdown.
const DRAIN_GRACE: Duration = Duration::from_secs(10);

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
}

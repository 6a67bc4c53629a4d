//! The pod side of broadcast-router's UDP routes.
//!
//! A UDP route sends the body of each request it receives to every pod as
//! datagrams, each broadcast several times (the copies) because UDP may lose
//! any one of them. This crate is what a pod needs to take them in:
//!
//! - [`frame`] is the wire format: a 15-byte header, the broadcast id and the
//!   payload. The router encodes with [`frame::encode`]; [`frame::decode`]
//!   reads a datagram back.
//! - [`Receiver`] reads datagrams from a UDP socket, drops malformed ones
//!   and repeated copies ([`Dedup`], by broadcast id), and yields every
//!   broadcast once as a [`Message`].
//! - [`Sink`] hands messages on, as JSON lines on stdout or POSTed to a local
//!   `http://` URL by a [`Forwarder`] (with retries), and [`run`] joins a
//!   receiver and a sink until shutdown. That is all
//!   `broadcast-router listen` does.
//!
//! Duplicates are recognised by broadcast id alone, as the router sends
//! every copy of one broadcast, to every pod, with the same id and sequence.
//! A client that reuses an id within the window therefore sees its later
//! broadcasts dropped here, which is what makes a retried broadcast
//! idempotent.
//!
//! A pod's own service can use [`Receiver`] directly:
//!
//! ```no_run
//! use broadcast_receiver::{Receiver, ReceiverOptions};
//!
//! # async fn serve() -> std::io::Result<()> {
//! let addr = "0.0.0.0:12000".parse().unwrap();
//! let mut receiver = Receiver::bind(addr, ReceiverOptions::default()).await?;
//! loop {
//!     // Malformed datagrams and repeated copies never come out of `next`.
//!     let message = receiver.next().await?;
//!     println!("broadcast {} ({} bytes)", message.id, message.payload.len());
//! }
//! # }
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

use http::HeaderName;

pub mod frame;
mod receive;

pub use receive::{
    DEFAULT_WINDOW, DEFAULT_WINDOW_AGE, Dedup, ForwardError, Forwarder, Message, Receiver,
    ReceiverOptions, RunError, Sink, Stats, run,
};

/// The header carrying the broadcast id: sent by the router to every pod
/// (HTTP routes) and by a [`Forwarder`] with every message it POSTs. The
/// frame carries the same id.
pub const BROADCAST_ID: HeaderName = HeaderName::from_static("x-broadcast-id");
/// The header carrying a forwarded message's sequence number.
pub const BROADCAST_SEQUENCE: HeaderName = HeaderName::from_static("x-broadcast-sequence");

/// The README's examples, compiled as doc-tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

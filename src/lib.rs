//! broadcast-router delivers one HTTP request to every replica of a
//! Kubernetes workload and answers with every pod's outcome.
//!
//! A request flows through the modules in this order:
//!
//! 1. [`server`] receives it on a configured route, refuses loops, checks
//!    the bearer token ([`auth`]), the route's rate and concurrency limits
//!    ([`limit`]), the broadcast id, a templated service's allow-list
//!    ([`route`]) and the body size;
//! 2. [`discovery`] turns the route's headless Service (or static list)
//!    into targets, from a TTL-honouring DNS cache that serves stale
//!    answers while DNS fails, or from the Service's EndpointSlices,
//!    watched through the Kubernetes API (more than the route's
//!    `max_targets` are refused);
//! 3. [`plugin`] runs the route's Wasm plugins: they may narrow the targets
//!    and change each pod's copy of the request;
//! 4. [`broadcast`] runs the broadcast in the handler's task up to the
//!    answer, and in a task of its own after it or once the client
//!    leaves, while [`fanout`]
//!    delivers to every pod concurrently with timeouts, retries, a
//!    concurrency cap and a deadline ([`tls`] for `scheme = "https"` pods);
//! 5. [`aggregate`] judges the outcomes, by the route's policy or its
//!    aggregate plugin, into the verdict: the report and the answer's
//!    status and body.
//!
//! Underneath, [`vocabulary`] holds the words every stage shares,
//! [`config`] the TOML schema and its validation, and [`load`] the one
//! loader that turns a validated configuration and the files it names
//! (plugins, tokens, certificates) into routes ready to serve, for
//! `serve`, live [`reload`] and `check` alike. [`telemetry`] holds logging
//! and metrics; [`demo`] runs a self-contained demo on loopback addresses.
//! Which module may import which is written down in
//! `docs/architecture.md`.
//!
//! The pod side of UDP broadcasts (the frame format and a receiver) is its
//! own crate, `broadcast-receiver`.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod aggregate;
pub mod auth;
pub mod broadcast;
pub mod config;
pub mod demo;
pub mod discovery;
pub mod fanout;
pub mod jobs;
pub mod limit;
pub mod load;
pub mod plugin;
pub mod reload;
pub mod route;
pub mod server;
pub mod telemetry;
pub mod tls;
pub mod vocabulary;

// The pod side, under the paths the router has always used for it.
pub use broadcast_receiver as receiver;
pub use broadcast_receiver::frame;

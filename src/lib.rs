//! broadcast-router delivers one HTTP request to every replica of a
//! Kubernetes workload and answers with every pod's outcome.
//!
//! A request flows through the modules in this order:
//!
//! 1. [`server`] receives it on a configured route ([`config`], compiled
//!    into a [`route::Route`]), refuses loops, checks the bearer token
//!    ([`auth`]), the route's rate and concurrency limits ([`limit`]), the
//!    broadcast id, a templated service's allow-list and the body size;
//! 2. [`discovery`] turns the route's headless Service (or static list) into
//!    targets, from a TTL-honouring DNS cache that serves stale answers
//!    while DNS fails (more than the route's `max_targets` are refused);
//! 3. [`plugin`] runs the route's Wasm plugins: they may narrow the targets
//!    and change each pod's copy of the request;
//! 4. [`broadcast`] runs the broadcast in its own task, where [`fanout`]
//!    delivers to every pod concurrently with timeouts, retries, a
//!    concurrency cap and a deadline;
//! 5. [`aggregate`] (or the route's aggregate plugin) judges the outcomes by the route's policy and builds the
//!    report the client receives.
//!
//! [`reload`] swaps in a changed configuration file or plugin without a
//! restart. [`tls`] serves the listener over TLS (optionally mTLS) and
//! reaches `scheme = "https"` pods. [`telemetry`] holds logging and metrics; [`demo`] runs a self-contained
//! demo on loopback addresses.
//!
//! [`receiver`] runs on pods: it hands each UDP broadcast ([`frame`]) on once.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod aggregate;
pub mod auth;
pub mod broadcast;
pub mod config;
pub mod demo;
pub mod discovery;
pub mod fanout;
pub mod frame;
pub mod limit;
pub mod plugin;
pub mod receiver;
pub mod reload;
pub mod route;
pub mod server;
pub mod telemetry;
pub mod tls;

//! One broadcast's plugin instances, and the failure policy around every
//! hook call.
//!
//! Instances are created lazily, on the first hook a plugin implements, so
//! a chain whose plugins only select targets never instantiates anything
//! after selection. After any failure the plugin is out of the broadcast:
//! `fail-closed` ends the broadcast with 502, `fail-open` carries on as if
//! the plugin were absent. `transform` runs each plugin over the groups of
//! pods that share a copy of the request (its own file, `transform`).

mod transform;

use std::sync::Arc;

use tokio::time::Instant;
use wasmtime::Store;

use super::Link;
use super::bindings::{self, Hooks, InvalidOutput, LentHeaders, RequestHead};
use super::host::{HostState, ticks};
use super::output::CallOutput;
use crate::aggregate::PluginVerdict;
use crate::config::{Instances, OnError};
use crate::telemetry;
use crate::vocabulary::blame::Blame;
use crate::vocabulary::delivery::Delivery;
use crate::vocabulary::target::{Target, ip_text};

/// A plugin failed and its policy is `fail-closed`: the broadcast answers
/// 502 with this message.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "route \"{route}\": plugin \"{plugin}\" {cause} in {hook} (policy fail-closed, answering 502)"
)]
pub struct PluginFailure {
    /// The route.
    pub route: Arc<str>,
    /// The plugin.
    pub plugin: Arc<str>,
    /// The hook that failed.
    pub hook: &'static str,
    /// What happened.
    pub cause: Cause,
}

impl PluginFailure {
    /// Who is to blame: the plugin.
    pub fn blame(&self) -> Blame {
        Blame::Plugin
    }
}

/// Why a plugin call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Cause {
    /// It ran past its `hook_timeout` (or the broadcast's deadline).
    #[error("ran out of time")]
    Timeout,
    /// It hit its `memory` cap.
    #[error("hit its memory limit")]
    Memory,
    /// It trapped (a panic, `unreachable`, an out-of-bounds access…).
    #[error("trapped: {0}")]
    Trap(String),
    /// It returned an error.
    #[error("returned an error: {0}")]
    Returned(String),
    /// It returned something the router cannot use.
    #[error("returned invalid output: {0}")]
    Invalid(String),
}

impl Cause {
    /// A metrics label.
    pub fn label(&self) -> &'static str {
        match self {
            Cause::Timeout => "timeout",
            Cause::Memory => "memory",
            Cause::Trap(_) => "trap",
            Cause::Returned(_) => "error",
            Cause::Invalid(_) => "invalid_output",
        }
    }
}

/// The plugin instances of one broadcast.
pub struct Session {
    members: Vec<Member>,
    route: Arc<str>,
    broadcast_id: Arc<str>,
    deadline: Instant,
    /// Each pod's IP address as text, by its place in the discovered list:
    /// written once per broadcast, not once per hook call.
    addresses: Vec<Option<String>>,
}

struct Member {
    link: Link,
    state: State,
}

/// A plugin instance with its store, `init` done.
pub(super) type Running = Box<(Store<HostState>, bindings::Plugin)>;

enum State {
    NotStarted,
    Running(Running),
    /// Failed earlier in this broadcast (fail-open): skipped from now on.
    Out,
}

/// Instances of one chain link kept between broadcasts
/// (`instances = "reuse"`), `init` done, none of them failed.
#[derive(Default)]
pub(super) struct Idle {
    instances: std::sync::Mutex<Vec<Running>>,
}

/// Idle instances kept per chain link at most; more are dropped.
const IDLE_CAP: usize = 32;

impl Idle {
    fn take(&self) -> Option<Running> {
        self.instances
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .pop()
    }

    fn put(&self, running: Running) {
        let mut instances = self
            .instances
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if instances.len() < IDLE_CAP {
            instances.push(running);
        }
    }
}

impl Drop for Session {
    /// Instances of `instances = "reuse"` plugins that did not fail go
    /// back to their link's idle list, unless their memory grew past half
    /// of its headroom; the others are dropped.
    fn drop(&mut self) {
        for member in &mut self.members {
            if member.link.plugin.instances == Instances::Reuse
                && let State::Running(running) = std::mem::replace(&mut member.state, State::Out)
            {
                if running.0.data().limiter.past_half() {
                    tracing::debug!(
                        route = %self.route,
                        plugin = %member.link.plugin.name,
                        "Reused plugin instance retired: it used more than half of its memory headroom."
                    );
                } else {
                    member.link.idle.put(running);
                }
            }
        }
    }
}

impl Session {
    pub(super) fn new(
        links: Vec<Link>,
        route: Arc<str>,
        broadcast_id: Arc<str>,
        deadline: Instant,
    ) -> Self {
        Self {
            members: links
                .into_iter()
                .map(|link| Member {
                    link,
                    state: State::NotStarted,
                })
                .collect(),
            route,
            broadcast_id,
            deadline,
            addresses: Vec::new(),
        }
    }

    /// The session's addresses, with those of `targets` written: taken out
    /// of the session so that hook calls can borrow them (put them back
    /// after the call).
    fn take_addresses(&mut self, targets: &[Target]) -> Vec<Option<String>> {
        let mut addresses = std::mem::take(&mut self.addresses);
        for target in targets {
            if addresses.len() <= target.index {
                addresses.resize(target.index + 1, None);
            }
            addresses[target.index].get_or_insert_with(|| ip_text(target.addr.ip()));
        }
        addresses
    }

    /// Runs every `select-targets` hook in chain order; each sees the pods
    /// the previous one kept.
    pub fn select(
        &mut self,
        head: &RequestHead,
        mut targets: Vec<Target>,
    ) -> Result<Vec<Target>, PluginFailure> {
        for index in 0..self.members.len() {
            if !self.members[index]
                .link
                .plugin
                .hooks
                .contains(Hooks::SELECT_TARGETS)
            {
                continue;
            }
            let addresses = self.take_addresses(&targets);
            let count = targets.len();
            let chosen = {
                let labels: Vec<_> = targets.iter().map(Target::labels).collect();
                let records = lend_targets(&targets, &addresses, &labels);
                let headers = head.headers();
                let head = head.lend(&headers);
                self.call(
                    index,
                    Hooks::SELECT_TARGETS,
                    "select-targets",
                    |plugin, store| plugin.call_select_targets(store, head, &records),
                    |indices: Vec<u32>| {
                        let mut seen = vec![false; count];
                        for &i in &indices {
                            let i = i as usize;
                            if i >= count {
                                return Err(InvalidOutput(format!(
                                    "index {i} is out of range for {count} targets"
                                )));
                            }
                            if std::mem::replace(&mut seen[i], true) {
                                return Err(InvalidOutput(format!("index {i} is listed twice")));
                            }
                        }
                        Ok(indices)
                    },
                )
            };
            self.addresses = addresses;
            let chosen = chosen?;
            if let Some(indices) = chosen {
                targets = indices
                    .into_iter()
                    .map(|i| targets[i as usize].clone())
                    .collect();
            }
        }
        Ok(targets)
    }

    /// Runs the chain's `aggregate` hook, if any: `Ok(None)` means the
    /// route's built-in policy decides.
    pub fn aggregate(
        &mut self,
        head: &RequestHead,
        targets: &[Target],
        outcomes: &[Option<Delivery>],
    ) -> Result<Option<PluginVerdict>, PluginFailure> {
        let Some(index) = self
            .members
            .iter()
            .position(|member| member.link.plugin.hooks.contains(Hooks::AGGREGATE))
        else {
            return Ok(None);
        };
        let addresses = self.take_addresses(targets);
        let result = {
            let delivered: Vec<(&Target, &Delivery)> = targets
                .iter()
                .zip(outcomes)
                .filter_map(|(target, outcome)| Some((target, outcome.as_ref()?)))
                .collect();
            let lent: Vec<LentHeaders> = delivered
                .iter()
                .map(|(_, delivery)| LentHeaders::new(&delivery.headers))
                .collect();
            let headers: Vec<_> = lent.iter().map(LentHeaders::lend).collect();
            let labels: Vec<_> = delivered
                .iter()
                .map(|(target, _)| target.labels())
                .collect();
            let records: Vec<_> = delivered
                .iter()
                .zip(&headers)
                .zip(&labels)
                .map(|(((target, delivery), headers), labels)| {
                    let record = bindings::target(target, address_of(&addresses, target), labels);
                    bindings::outcome(record, delivery, headers)
                })
                .collect();
            let head_headers = head.headers();
            let head = head.lend(&head_headers);
            self.call(
                index,
                Hooks::AGGREGATE,
                "aggregate",
                |plugin, store| plugin.call_aggregate(store, head, &records),
                bindings::check_verdict,
            )
        };
        self.addresses = addresses;
        result
    }

    /// Calls one hook of member `index` under its limits and failure policy.
    /// `Ok(None)`: the member does not implement the hook, or failed open.
    fn call<R, T>(
        &mut self,
        index: usize,
        hook: Hooks,
        hook_name: &'static str,
        invoke: impl FnOnce(
            &bindings::Plugin,
            &mut Store<HostState>,
        ) -> wasmtime::Result<Result<R, String>>,
        check: impl FnOnce(R) -> Result<T, InvalidOutput>,
    ) -> Result<Option<T>, PluginFailure> {
        let (route, broadcast_id, deadline) =
            (self.route.clone(), self.broadcast_id.clone(), self.deadline);
        let member = &mut self.members[index];
        let plugin = Arc::clone(&member.link.plugin);
        if !plugin.hooks.contains(hook) {
            return Ok(None);
        }
        let result = (|| {
            if matches!(member.state, State::NotStarted) {
                let reused = match plugin.instances {
                    Instances::Reuse => member.link.idle.take(),
                    Instances::Fresh => None,
                };
                let running = match reused {
                    Some(mut running) => {
                        running.0.data_mut().broadcast_id = broadcast_id.clone();
                        running
                    }
                    None => {
                        let (mut store, instance) =
                            plugin.instantiate(&route, &broadcast_id).map_err(|error| {
                                Cause::Trap(format!("cannot be instantiated: {error:#}"))
                            })?;
                        let init = instance.call_init(&mut store, &member.link.config);
                        let output = store.data().output.take();
                        output.log(&plugin.name, &route, &broadcast_id, "init");
                        match init {
                            Ok(Ok(())) => {}
                            Ok(Err(message)) => return Err(Cause::Returned(message)),
                            Err(error) => return Err(classify(&store, &error, &output)),
                        }
                        Box::new((store, instance))
                    }
                };
                member.state = State::Running(running);
            }
            let State::Running(running) = &mut member.state else {
                return Ok(None);
            };
            let (store, instance) = &mut **running;
            let remaining = deadline.saturating_duration_since(Instant::now());
            store.set_epoch_deadline(ticks(plugin.hook_timeout.min(remaining)));
            let result = invoke(instance, store);
            let output = store.data().output.take();
            output.log(&plugin.name, &route, &broadcast_id, hook_name);
            match result {
                Ok(Ok(value)) => check(value)
                    .map(Some)
                    .map_err(|invalid| Cause::Invalid(invalid.0)),
                Ok(Err(message)) => Err(Cause::Returned(message)),
                Err(error) => Err(classify(store, &error, &output)),
            }
        })();
        match result {
            Ok(value) => Ok(value),
            Err(cause) => {
                member.state = State::Out;
                telemetry::plugin_failure(&route, &plugin.name, cause.label());
                let failure = PluginFailure {
                    route,
                    plugin: plugin.name.clone(),
                    hook: hook_name,
                    cause,
                };
                match plugin.on_error {
                    OnError::FailClosed => {
                        tracing::error!(id = %broadcast_id, error = %failure, "Plugin failed; the broadcast fails.");
                        Err(failure)
                    }
                    OnError::FailOpen => {
                        tracing::warn!(id = %broadcast_id, error = %failure, "Plugin failed; continuing without it (fail-open).");
                        Ok(None)
                    }
                }
            }
        }
    }
}

/// `targets` lent to a hook call, each with its address from
/// [`Session::take_addresses`] and its labels from `labels` (what
/// [`Target::labels`] lists for each, in order).
pub(super) fn lend_targets<'a>(
    targets: &'a [Target],
    addresses: &'a [Option<String>],
    labels: &'a [Vec<(&'a str, &'a str)>],
) -> Vec<bindings::v0_2::Target<'a>> {
    targets
        .iter()
        .zip(labels)
        .map(|(target, labels)| bindings::target(target, address_of(addresses, target), labels))
        .collect()
}

/// `target`'s address from [`Session::take_addresses`].
pub(super) fn address_of<'a>(addresses: &'a [Option<String>], target: &Target) -> &'a str {
    addresses
        .get(target.index)
        .and_then(Option::as_deref)
        .expect("take_addresses wrote every target's address")
}

fn classify(store: &Store<HostState>, error: &wasmtime::Error, output: &CallOutput) -> Cause {
    if store.data().limiter.exceeded {
        return Cause::Memory;
    }
    let trap = match error.downcast_ref::<wasmtime::Trap>() {
        Some(wasmtime::Trap::Interrupt) => return Cause::Timeout,
        Some(trap) => trap.to_string(),
        None => format!("{error:#}"),
    };
    // The guest's own words: a Python traceback, a JavaScript error.
    match output.quote() {
        Some(quote) => Cause::Trap(format!("{trap}; the plugin wrote:\n{quote}")),
        None => Cause::Trap(trap),
    }
}

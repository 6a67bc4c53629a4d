//! The Wasm plugin host: loading user plugins (components of the
//! `broadcast:plugin` world in `plugins/wit/`, version 0.2.0, or of the
//! frozen 0.1.0 in `plugins/wit/v0.1.0/`) and running them with hard
//! limits.
//!
//! - One wasmtime `Engine` per configuration, with the pooling allocator
//!   and copy-on-write memory images. Each plugin is compiled once at load
//!   (compiled code is cached on disk, keyed by the file's hash and the
//!   engine's version and settings) into a `PluginPre`.
//! - Every broadcast gets a fresh instance of each plugin it uses (a
//!   [`Session`]), shared by that broadcast's hooks and dropped after it:
//!   no state leaks between requests, and a trap never poisons later ones.
//! - Each instance's memory is capped (`memory`), each hook call's CPU time
//!   is cut by epoch interruption (`hook_timeout`, and never past the
//!   broadcast's deadline).
//! - A failing plugin (trap, timeout, memory cap, `Err` result, invalid
//!   output) either fails the broadcast (`fail-closed`: 502, nothing sent) or
//!   is skipped (`fail-open`), as its `on_error` says; every failure is
//!   logged with its cause and counted.
//!
//! Plugins get logging (with route, plugin and broadcast id added), clocks
//! and random numbers; no filesystem, no network, no environment.
//!
//! This module loads a configuration's plugins and builds each route's
//! [`Chain`]; `host` is the wasmtime host underneath (engine, limits,
//! host state, imports), `session` one broadcast's instances and the
//! failure policy, and [`bindings`] the contract's types and the checks
//! on everything a plugin returns.

pub mod bindings;
mod host;
pub mod inspect;
mod output;
mod session;
pub mod tryout;

pub use host::LoadedPlugin;
pub use session::{Cause, PluginFailure, Session};

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::config::{Config, Location, Problems};
use bindings::Hooks;
use host::PluginHost;

/// A route's ordered plugin chain.
#[derive(Clone, Default)]
pub struct Chain {
    links: Vec<Link>,
}

/// One plugin in a chain, with the route's config for it.
#[derive(Clone)]
struct Link {
    plugin: Arc<LoadedPlugin>,
    config: Arc<str>,
    /// Instances kept between broadcasts (`instances = "reuse"`).
    idle: Arc<session::Idle>,
}

impl Chain {
    /// Whether the chain is empty.
    pub fn is_empty(&self) -> bool {
        self.links.is_empty()
    }

    /// The plugins' names, in chain order.
    pub fn names(&self) -> Vec<&str> {
        self.links.iter().map(|link| &*link.plugin.name).collect()
    }

    /// Whether some plugin transforms requests.
    pub fn transforms(&self) -> bool {
        self.links
            .iter()
            .any(|link| link.plugin.hooks.contains(Hooks::TRANSFORM))
    }

    /// The hooks of the chain's first plugin, by their WIT names.
    pub fn hooks_of_first(&self) -> Vec<&'static str> {
        let Some(link) = self.links.first() else {
            return Vec::new();
        };
        [
            (Hooks::SELECT_TARGETS, "select-targets"),
            (Hooks::TRANSFORM, "transform"),
            (Hooks::AGGREGATE, "aggregate"),
        ]
        .into_iter()
        .filter(|(hook, _)| link.plugin.hooks.contains(*hook))
        .map(|(_, name)| name)
        .collect()
    }

    /// Whether a plugin decides the verdict.
    pub fn aggregates(&self) -> bool {
        self.links
            .iter()
            .any(|link| link.plugin.hooks.contains(Hooks::AGGREGATE))
    }

    /// A fresh session for one broadcast.
    pub fn session(
        &self,
        route: &Arc<str>,
        broadcast_id: &str,
        deadline: tokio::time::Instant,
    ) -> Session {
        Session::new(
            self.links.clone(),
            route.clone(),
            broadcast_id.into(),
            deadline,
        )
    }
}

/// The plugins of one configuration, and each route's chain.
pub struct Plugins {
    chains: BTreeMap<String, Chain>,
}

impl Plugins {
    /// Loads every plugin the configuration defines, checks it against the
    /// contract and runs its `init` with each route's config. Every problem
    /// is reported, with the location of the table or route entry.
    pub fn load(config: &Config) -> Result<Self, Problems> {
        if config.plugins.is_empty() {
            return Ok(Self {
                chains: BTreeMap::new(),
            });
        }
        let host = PluginHost::new(config)
            .map_err(|message| Problems(vec![Location::default().problem(message)]))?;
        let mut problems = Vec::new();
        let mut loaded = BTreeMap::new();
        for (name, plugin) in &config.plugins {
            match host.load(name, plugin) {
                Ok(plugin) => {
                    loaded.insert(name.clone(), Arc::new(plugin));
                }
                Err(message) => problems.push(
                    plugin
                        .location
                        .problem(format!("plugin \"{name}\": {message}")),
                ),
            }
        }
        let mut chains = BTreeMap::new();
        for route in config.routes.iter().map(|route| &route.table) {
            let mut chain = Chain::default();
            let mut aggregators = Vec::new();
            for entry in &route.plugins {
                let Some(plugin) = loaded.get(&entry.plugin) else {
                    continue; // reported above, or by validation
                };
                let config_json: Arc<str> = serde_json::to_string(&entry.config)
                    .unwrap_or_else(|_| "{}".to_owned())
                    .into();
                let problem = |message: String| {
                    entry.location.problem(format!(
                        "route \"{}\": plugin \"{}\" {message}",
                        route.name, entry.plugin
                    ))
                };
                if let Err(message) = plugin.check_init(&config_json) {
                    problems.push(problem(message));
                }
                if plugin.hooks.contains(Hooks::AGGREGATE) {
                    aggregators.push(entry.plugin.clone());
                    if aggregators.len() > 1 {
                        problems.push(problem(format!(
                            "also decides the verdict, like \"{}\": at most one plugin per route may implement aggregate",
                            aggregators[0]
                        )));
                    }
                }
                chain.links.push(Link {
                    plugin: Arc::clone(plugin),
                    config: config_json,
                    idle: Arc::default(),
                });
            }
            chains.insert(route.name.clone(), chain);
        }
        if problems.is_empty() {
            Ok(Self { chains })
        } else {
            problems.sort_by_key(|problem| (problem.line, problem.column));
            Err(Problems(problems))
        }
    }

    /// The chain of route `name` (empty when it uses no plugins).
    pub fn chain(&self, route: &str) -> Chain {
        self.chains.get(route).cloned().unwrap_or_default()
    }
}

/// Runs plugin code (loading, `init`, hooks) where WASI may block.
///
/// wasmtime-wasi's synchronous bindings block on tokio internally (a
/// plugin writing to stdout, or dropping its stdout stream, goes through
/// `Handle::block_on`), which panics on a thread that runs async tasks
/// ("Cannot start a runtime from within a runtime"). On a multi-threaded
/// runtime, `block_in_place` hands the worker's other tasks to another
/// thread for the duration; on a current-thread runtime the work runs on
/// a short-lived thread of its own; outside any runtime (benchmarks,
/// tools) it simply runs.
pub fn run_plugins<R: Send>(work: impl FnOnce() -> R + Send) -> R {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current().map(|handle| handle.runtime_flavor()) {
        Ok(RuntimeFlavor::MultiThread) => tokio::task::block_in_place(work),
        Ok(_) => std::thread::scope(|scope| {
            std::thread::Builder::new()
                .name("plugin".into())
                .spawn_scoped(scope, work)
                .expect("a plugin thread starts")
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        }),
        Err(_) => work(),
    }
}

impl std::fmt::Debug for Chain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.links.iter().map(|link| &*link.plugin.name))
            .finish()
    }
}

//! Write broadcast-router WebAssembly plugins in Rust.
//!
//! A plugin is a `wasm32-wasip2` component that exports the `plugin` world of
//! `plugins/wit/plugin.wit` (`broadcast:plugin@0.2.0`, whose `transform`
//! takes many pods in one call). This crate hides the generated bindings: you
//! implement [`Plugin`] for a type built from a typed, serde-deserialised
//! config, override the hooks you declare in [`Plugin::HOOKS`], and call
//! [`export_plugin!`] once. The router creates a fresh instance for every
//! broadcast, calls `init` with the route's `config` table as JSON text (`{}`
//! when the route gives none), then the declared hooks.
//!
//! ```
//! use broadcast_plugin_sdk::{Hooks, Plugin, RequestHead, Target};
//! use serde::Deserialize;
//!
//! /// Drops the pods on one port.
//! struct SkipPort(u16);
//!
//! #[derive(Deserialize)]
//! #[serde(deny_unknown_fields)]
//! struct Config {
//!     port: u16,
//! }
//!
//! impl Plugin for SkipPort {
//!     type Config = Config;
//!     const HOOKS: Hooks = Hooks::SELECT_TARGETS;
//!
//!     fn new(config: Config) -> Result<Self, String> {
//!         Ok(SkipPort(config.port))
//!     }
//!
//!     fn select_targets(&self, _head: &RequestHead, targets: &[Target]) -> Result<Vec<u32>, String> {
//!         Ok(broadcast_plugin_sdk::keep_where(targets, |target| target.port != self.0))
//!     }
//! }
//!
//! broadcast_plugin_sdk::export_plugin!(SkipPort);
//! # fn main() {}
//! ```
//!
//! Everything also compiles for the host target, where the export macro only
//! checks its argument: unit-test the logic natively with `cargo test`, using
//! [`instantiate`] (the same config parsing as `init`) and the builders in
//! [`testing`].
//!
//! In WebAssembly the SDK sets the plugin's global allocator (size-class
//! free lists over the default one, which makes passing hook arguments
//! cheaper) and exports the canonical ABI's `cabi_realloc` through it: a
//! plugin crate must not declare its own `#[global_allocator]`.

#![deny(unsafe_code)]
#![warn(missing_docs)]

// The generated bindings and the export macro name this crate by its
// absolute path, which must also resolve inside the crate itself.
extern crate self as broadcast_plugin_sdk;

// Only WebAssembly plugins use the allocator; native builds test it.
#[cfg(any(all(target_arch = "wasm32", not(target_feature = "atomics")), test))]
mod alloc;
pub mod log;
pub mod testing;
mod types;

/// Plugins allocate through size-class free lists over the default
/// allocator (see `alloc.rs`): hook arguments come in a dozen small
/// allocations per call.
#[cfg(all(target_arch = "wasm32", not(target_feature = "atomics")))]
#[global_allocator]
static ALLOCATOR: alloc::SizeClasses<std::alloc::System> =
    alloc::SizeClasses::new(std::alloc::System);

use std::any::Any;
use std::cell::OnceCell;

pub use types::{
    ErrorKind, Header, Hooks, Outcome, Request, RequestHead, RequestPatch, Target, Verdict,
};

/// A broadcast-router plugin.
///
/// The router calls only the hooks named in [`HOOKS`](Plugin::HOOKS); the
/// others keep their default bodies. Every hook returns `Err(message)` to fail
/// the broadcast, which the route's `on_error` then handles (`fail-closed`
/// answers 502 without sending anything, `fail-open` carries on as if the
/// plugin were absent). A panic traps the instance and counts as an error;
/// its message goes to the router's log (at `error`, as `plugin panicked`).
pub trait Plugin: Sized + 'static {
    /// The plugin's typed `config` table, deserialised from the route's JSON.
    ///
    /// Use [`NoConfig`] for a plugin without settings. Consider
    /// `#[serde(deny_unknown_fields)]` so that a misspelt key is an error.
    type Config: serde::de::DeserializeOwned;

    /// Which hooks this plugin implements (only these are ever called).
    ///
    /// Combine flags in a constant with `union`, e.g.
    /// `Hooks::SELECT_TARGETS.union(Hooks::AGGREGATE)`.
    const HOOKS: Hooks;

    /// Builds the plugin from its config; an error rejects the configuration.
    fn new(config: Self::Config) -> Result<Self, String>;

    /// Returns the pods to deliver to, in order, as positions in `targets`
    /// (0-based, each at most once). The default keeps every pod.
    ///
    /// Positions, not [`Target::index`]: after an earlier plugin in the
    /// route's chain, `targets` holds only the pods it kept, while `index`
    /// is still each pod's place in the discovered list. [`keep_where`]
    /// returns positions.
    fn select_targets(&self, head: &RequestHead, targets: &[Target]) -> Result<Vec<u32>, String> {
        let _ = head;
        Ok((0..targets.len() as u32).collect())
    }

    /// Changes the pods' copies of the request: returns one patch per
    /// element of `targets`, in the same order, or one patch for all of
    /// them (another count fails the broadcast as invalid output). The default asks
    /// [`transform_target`](Plugin::transform_target) for each target.
    ///
    /// Every pod of `targets` gets `request` as it is: the router makes one
    /// call for all the selected pods, and one per distinct copy when an
    /// earlier plugin of the route's chain gave pods different copies.
    /// Pods given equal patches keep sharing one copy, so a later plugin
    /// still gets them in one call: return the same patch for pods that
    /// need no difference. When every patch is the same, the export sends
    /// the router that one patch for all the pods. Override this hook for
    /// work that is the same for every pod, done once (parsing the body, a
    /// signature's key…).
    fn transform(
        &self,
        request: &Request,
        targets: &[Target],
    ) -> Result<Vec<RequestPatch>, String> {
        targets
            .iter()
            .map(|target| self.transform_target(request, target))
            .collect()
    }

    /// Changes one pod's copy of the request, for the default
    /// [`transform`](Plugin::transform). The default changes nothing.
    fn transform_target(&self, request: &Request, target: &Target) -> Result<RequestPatch, String> {
        let _ = (request, target);
        Ok(RequestPatch::default())
    }

    /// Decides the broadcast's answer from every pod's outcome.
    ///
    /// There is no default verdict: a plugin that declares
    /// [`Hooks::AGGREGATE`] must implement this.
    fn aggregate(&self, head: &RequestHead, outcomes: &[Outcome]) -> Result<Verdict, String> {
        let _ = (head, outcomes);
        Err("aggregate is not implemented".into())
    }
}

/// The positions in `targets` of the pods `keep` accepts, in order: the
/// answer of a filtering [`Plugin::select_targets`].
pub fn keep_where(targets: &[Target], mut keep: impl FnMut(&Target) -> bool) -> Vec<u32> {
    (0..)
        .zip(targets)
        .filter(|(_, target)| keep(target))
        .map(|(position, _)| position)
        .collect()
}

/// `patches` as the exported `transform` returns them: a single patch
/// when they are all equal (the router applies it to every target, and
/// one patch crosses into the router instead of one per pod).
fn one_patch_when_equal(mut patches: Vec<RequestPatch>) -> Vec<RequestPatch> {
    if patches.len() > 1 && patches.iter().all(|patch| *patch == patches[0]) {
        patches.truncate(1);
    }
    patches
}

/// The config of a plugin without settings: accepts only `{}`.
#[derive(Debug, Clone, Copy, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoConfig {}

/// Parses `config_json` into `P::Config` and builds the plugin, exactly as
/// the exported `init` does.
///
/// An empty string counts as `{}`. Errors start with `invalid config: `,
/// then name the offending key (as a path such as `limits.max`) and give
/// serde's reason, e.g. ``invalid config: `shards`: invalid type: string
/// "x", expected u32``; or carry the plugin's own message from
/// [`Plugin::new`].
pub fn instantiate<P: Plugin>(config_json: &str) -> Result<P, String> {
    let text = if config_json.trim().is_empty() {
        "{}"
    } else {
        config_json
    };
    let deserializer = &mut serde_json::Deserializer::from_str(text);
    let config: P::Config = serde_path_to_error::deserialize(deserializer)
        .map_err(|error| format!("invalid config: {}", describe(&error)))?;
    P::new(config).map_err(|error| format!("invalid config: {error}"))
}

/// A config error: the key's path (unless the problem is the whole table)
/// and serde's reason, without serde_json's line and column (the JSON is
/// the router's rendering of a TOML table, so they would mislead).
fn describe(error: &serde_path_to_error::Error<serde_json::Error>) -> String {
    let inner = error.inner();
    let mut reason = inner.to_string();
    let position = format!(" at line {} column {}", inner.line(), inner.column());
    if let Some(stripped) = reason.strip_suffix(&position) {
        reason.truncate(stripped.len());
    }
    let path = error.path().to_string();
    if matches!(path.as_str(), "" | "." | "?") {
        reason
    } else {
        format!("`{path}`: {reason}")
    }
}

/// Exports a [`Plugin`] as the component's `plugin` world.
///
/// Call it once, at the root of the plugin crate:
///
/// ```ignore
/// broadcast_plugin_sdk::export_plugin!(MyPlugin);
/// ```
///
/// The exports are only generated when compiling for WebAssembly; on other
/// targets the macro just checks that its argument implements [`Plugin`], so
/// the crate builds and unit-tests natively. The crate must depend on the SDK
/// under its own name, `broadcast-plugin-sdk`.
#[macro_export]
macro_rules! export_plugin {
    ($plugin:ty) => {
        const _: () = {
            #[cfg(target_arch = "wasm32")]
            type BroadcastPluginExports = $crate::__private::Exports<$plugin>;
            #[cfg(target_arch = "wasm32")]
            $crate::__private::bindings::__export_plugin_world!(
                BroadcastPluginExports with_types_in $crate::__private::bindings
            );
            let _ = $crate::__private::assert_plugin::<$plugin>;
        };
    };
}

/// The machinery behind [`export_plugin!`]; not a stable API.
#[doc(hidden)]
pub mod __private {
    use std::marker::PhantomData;

    use crate::{Outcome, Plugin, Request, RequestHead, RequestPatch, Target, Verdict};

    pub use wit_bindgen;

    /// The bindings generated from `plugins/wit/plugin.wit`.
    #[allow(unsafe_code, missing_docs, clippy::all)]
    pub mod bindings {
        wit_bindgen::generate!({
            path: "../wit",
            world: "plugin",
            pub_export_macro: true,
            export_macro_name: "__export_plugin_world",
            default_bindings_module: "::broadcast_plugin_sdk::__private::bindings",
            runtime_path: "::broadcast_plugin_sdk::__private::wit_bindgen::rt",
            additional_derives: [PartialEq],
            additional_type_attributes: {
                "broadcast:plugin/types@0.2.0/request-patch": [#[derive(Default)]],
            },
            additional_member_attributes: {
                "broadcast:plugin/types@0.2.0/header.name": [#[doc = " The header's name, lowercase."]],
                "broadcast:plugin/types@0.2.0/header.value": [#[doc = " The header's value."]],
                "broadcast:plugin/types@0.2.0/request.head": [#[doc = " The method, path, headers and broadcast id."]],
                "broadcast:plugin/types@0.2.0/request.body": [#[doc = " The request body, the same for every pod."]],
                "broadcast:plugin/types@0.2.0/error-kind.connect": [#[doc = " No connection could be made (refused, unreachable)."]],
                "broadcast:plugin/types@0.2.0/error-kind.timeout": [#[doc = " An attempt took longer than the route's `timeout`."]],
                "broadcast:plugin/types@0.2.0/error-kind.status": [#[doc = " The pod answered with a non-2xx status."]],
                "broadcast:plugin/types@0.2.0/error-kind.reset": [#[doc = " The connection broke mid-exchange."]],
                "broadcast:plugin/types@0.2.0/error-kind.deadline": [#[doc = " The broadcast's `deadline` passed before the pod answered."]],
                "broadcast:plugin/types@0.2.0/error-kind.protocol": [#[doc = " The pod's answer was not valid HTTP."]],
                "broadcast:plugin/log@0.2.0/level.trace": [#[doc = " Very detailed tracing."]],
                "broadcast:plugin/log@0.2.0/level.debug": [#[doc = " Details for debugging."]],
                "broadcast:plugin/log@0.2.0/level.info": [#[doc = " Normal operation."]],
                "broadcast:plugin/log@0.2.0/level.warn": [#[doc = " Something unexpected that the plugin handled."]],
                "broadcast:plugin/log@0.2.0/level.error": [#[doc = " A failure."]],
            },
        });
    }

    /// Implements the world's exports for a [`Plugin`].
    pub struct Exports<P>(PhantomData<P>);

    /// Compile-time check that `P` implements [`Plugin`].
    pub fn assert_plugin<P: Plugin>() {}

    impl<P: Plugin> bindings::Guest for Exports<P> {
        fn hooks() -> bindings::Hooks {
            P::HOOKS
        }

        fn init(config: String) -> Result<(), String> {
            super::log_panics();
            super::init::<P>(&config)
        }

        fn select_targets(head: RequestHead, targets: Vec<Target>) -> Result<Vec<u32>, String> {
            super::with_instance("select-targets", |plugin: &P| {
                plugin.select_targets(&head, &targets)
            })
        }

        fn transform(request: Request, targets: Vec<Target>) -> Result<Vec<RequestPatch>, String> {
            super::with_instance("transform", |plugin: &P| {
                plugin
                    .transform(&request, &targets)
                    .map(super::one_patch_when_equal)
            })
        }

        fn aggregate(head: RequestHead, outcomes: Vec<Outcome>) -> Result<Verdict, String> {
            super::with_instance("aggregate", |plugin: &P| plugin.aggregate(&head, &outcomes))
        }
    }
}

thread_local! {
    // The instance `init` built. Wasm components are single-threaded and the
    // router makes a fresh instance per broadcast, so one slot is enough.
    static INSTANCE: OnceCell<Box<dyn Any>> = const { OnceCell::new() };
}

/// The exported `init`: builds the plugin and keeps it for the hooks.
fn init<P: Plugin>(config_json: &str) -> Result<(), String> {
    if INSTANCE.with(|slot| slot.get().is_some()) {
        return Err("init was already called on this instance".into());
    }
    let plugin = instantiate::<P>(config_json)?;
    INSTANCE.with(|slot| {
        slot.set(Box::new(plugin))
            .map_err(|_| "init was already called on this instance".to_string())
    })
}

/// Sends panic messages to the router's log instead of standard error: the
/// router shows them with the route, plugin and broadcast id, and the
/// plugin needs no stdio. The panic still traps the instance.
fn log_panics() {
    #[cfg(target_arch = "wasm32")]
    std::panic::set_hook(Box::new(|info| {
        let message = match info.payload().downcast_ref::<&str>() {
            Some(message) => (*message).to_string(),
            None => match info.payload().downcast_ref::<String>() {
                Some(message) => message.clone(),
                None => "(no message)".to_string(),
            },
        };
        let location = info
            .location()
            .map(|location| location.to_string())
            .unwrap_or_default();
        log::error(
            "plugin panicked",
            &[("panic", &message), ("location", &location)],
        );
    }));
}

/// Runs a hook on the instance `init` built.
fn with_instance<P: Plugin, R>(
    hook: &str,
    call: impl FnOnce(&P) -> Result<R, String>,
) -> Result<R, String> {
    INSTANCE.with(|slot| {
        let plugin = slot
            .get()
            .ok_or_else(|| format!("{hook} was called before init"))?
            .downcast_ref::<P>()
            .ok_or_else(|| format!("{hook} found an instance of another plugin type"))?;
        call(plugin)
    })
}

#[cfg(test)]
// Inside the SDK itself the export macro's unsafe expansion counts as local
// code; in plugin crates it comes from an external macro and passes
// `forbid(unsafe_code)`.
#[allow(unsafe_code)]
mod tests {
    use super::__private::Exports;
    use super::__private::bindings::Guest;
    use super::*;
    use serde::Deserialize;

    struct Every {
        step: u32,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct EveryConfig {
        step: u32,
    }

    impl Plugin for Every {
        type Config = EveryConfig;
        const HOOKS: Hooks = Hooks::SELECT_TARGETS.union(Hooks::TRANSFORM);

        fn new(config: EveryConfig) -> Result<Self, String> {
            if config.step == 0 {
                return Err("step must be at least 1".into());
            }
            Ok(Every { step: config.step })
        }

        fn select_targets(&self, _: &RequestHead, targets: &[Target]) -> Result<Vec<u32>, String> {
            let mut position = 0;
            Ok(keep_where(targets, |_| {
                position += 1;
                (position - 1) % self.step == 0
            }))
        }
    }

    export_plugin!(Every);

    struct Defaults;

    impl Plugin for Defaults {
        type Config = NoConfig;
        const HOOKS: Hooks = Hooks::empty();

        fn new(_: NoConfig) -> Result<Self, String> {
            Ok(Defaults)
        }
    }

    #[test]
    fn config_errors_name_the_problem() {
        let missing = instantiate::<Every>("{}").err().unwrap();
        assert_eq!(missing, "invalid config: missing field `step`");
        let unknown = instantiate::<Every>(r#"{"step": 1, "stp": 2}"#)
            .err()
            .unwrap();
        assert!(unknown.contains("unknown field `stp`"), "{unknown}");
        let bad_type = instantiate::<Every>(r#"{"step": "two"}"#).err().unwrap();
        assert_eq!(
            bad_type,
            "invalid config: `step`: invalid type: string \"two\", expected u32"
        );
        let syntax = instantiate::<Every>("{").err().unwrap();
        assert!(
            syntax.starts_with("invalid config: EOF while parsing"),
            "{syntax}"
        );
        let rejected = instantiate::<Every>(r#"{"step": 0}"#).err().unwrap();
        assert_eq!(rejected, "invalid config: step must be at least 1");
        assert!(instantiate::<Defaults>("").is_ok());
        assert!(instantiate::<Defaults>(r#"{"x": 1}"#).is_err());
    }

    #[test]
    fn hooks_reach_the_instance_init_built() {
        // Each test runs on its own thread, so it has its own instance slot.
        let targets: Vec<Target> = (0..5)
            .map(|index| testing::target(index, &format!("10.0.0.{index}"), 80))
            .collect();
        let head = testing::head("b-1");
        assert_eq!(
            Exports::<Every>::hooks(),
            Hooks::SELECT_TARGETS | Hooks::TRANSFORM
        );
        let early = Exports::<Every>::select_targets(head.clone(), targets.clone());
        assert_eq!(early, Err("select-targets was called before init".into()));
        Exports::<Every>::init(r#"{"step": 2}"#.into()).unwrap();
        assert_eq!(
            Exports::<Every>::init(r#"{"step": 2}"#.into()),
            Err("init was already called on this instance".into())
        );
        assert_eq!(
            Exports::<Every>::select_targets(head.clone(), targets.clone()),
            Ok(vec![0, 2, 4])
        );
        let request = testing::request("b-1", b"{}");
        // Two equal patches cross into the router as one, for both pods.
        assert_eq!(
            Exports::<Every>::transform(request, targets[1..3].to_vec()),
            Ok(vec![RequestPatch::default()])
        );
        assert_eq!(
            Exports::<Every>::aggregate(head, Vec::new()),
            Err("aggregate is not implemented".into())
        );
    }

    #[test]
    fn default_hooks_keep_everything() {
        let plugin = instantiate::<Defaults>("{}").unwrap();
        let targets = vec![
            testing::target(0, "10.0.0.1", 80),
            testing::target(1, "10.0.0.2", 80),
        ];
        let head = testing::head("b-2");
        assert_eq!(plugin.select_targets(&head, &targets), Ok(vec![0, 1]));
        let patches = plugin
            .transform(&testing::request("b-2", b""), &targets)
            .unwrap();
        assert_eq!(patches.len(), 2);
        assert!(patches.iter().all(RequestPatch::is_empty));
    }
}

//! The versions of the contract this router loads, and which one a
//! component was built for.
//!
//! A world's exports are plain functions, named alike in every version,
//! so the version shows in a component's imports: the `types` (and `log`)
//! interface of `broadcast:plugin@X`. [`Contract::of`] reads it before the
//! component is linked, so that a component built for another version is
//! refused with that version's name rather than with a missing import.
//! [`PluginPre`] and [`Plugin`] hold either version's generated bindings
//! and call a hook of either alike; the only hook whose shape changed is
//! `transform` (0.1.0: one pod per call; 0.2.0: many). A 0.2.0 component
//! exports one of two worlds: `plugin`, or `plugin-json`, which takes the
//! same inputs as JSON text ([`super::json`] writes it).

use std::fmt;

use wasmtime::component::{Component, HasSelf, InstancePre, Linker};
use wasmtime::{AsContextMut, Engine};

use super::v0_2::broadcast::plugin::{log, types};
use super::{Hooks, RequestPatch, Verdict, json, v0_1, v0_2, v0_2_json};

/// The package every version of the contract belongs to.
const PACKAGE: &str = "broadcast:plugin";

/// A version of the contract (`broadcast:plugin@X`) this router loads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Contract {
    /// `broadcast:plugin@0.1.0`: `transform` takes one pod per call.
    V0_1,
    /// `broadcast:plugin@0.2.0`, the current one: `transform` takes every
    /// pod that shares a copy of the request in one call.
    V0_2,
}

/// Why a component is not a plugin of a contract this router loads.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ContractError {
    /// It was built for a version this router does not load.
    #[error(
        "is built for broadcast:plugin@{0}; this router loads 0.1.0 and 0.2.0 (rebuild it against plugins/wit, broadcast:plugin@0.2.0)"
    )]
    Unsupported(String),
    /// It imports interfaces of more than one version.
    #[error(
        "imports broadcast:plugin interfaces of several versions ({}); a plugin is built for one",
        .0.join(", ")
    )]
    Mixed(Vec<String>),
    /// It imports nothing of the contract: it is not a plugin at all.
    #[error(
        "is not a broadcast:plugin component: it imports no broadcast:plugin interface (a plugin exports the `plugin` world of broadcast:plugin@0.2.0, or of 0.1.0)"
    )]
    Neither,
}

impl Contract {
    /// Every version this router loads, oldest first.
    pub const ALL: [Contract; 2] = [Contract::V0_1, Contract::V0_2];

    /// The version new plugins are built for.
    pub const CURRENT: Contract = Contract::V0_2;

    /// The version, e.g. `0.2.0`.
    pub fn version(self) -> &'static str {
        match self {
            Contract::V0_1 => "0.1.0",
            Contract::V0_2 => "0.2.0",
        }
    }

    /// The version `text` names, if this router loads it.
    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|contract| contract.version() == text)
    }

    /// The versions of `broadcast:plugin` that `component` imports an
    /// interface of (e.g. `broadcast:plugin/types@0.1.0`), sorted.
    pub fn imported_versions(component: &Component, engine: &Engine) -> Vec<String> {
        let mut versions: Vec<String> = component
            .component_type()
            .imports(engine)
            .filter_map(|(name, _)| {
                let interface = name.strip_prefix(PACKAGE)?.strip_prefix('/')?;
                let (_, version) = interface.split_once('@')?;
                Some(version.to_owned())
            })
            .collect();
        versions.sort();
        versions.dedup();
        versions
    }

    /// The version `component` was built for, read from its imports.
    pub fn of(component: &Component, engine: &Engine) -> Result<Self, ContractError> {
        match Self::imported_versions(component, engine).as_slice() {
            [] => Err(ContractError::Neither),
            [version] => {
                Self::parse(version).ok_or_else(|| ContractError::Unsupported(version.clone()))
            }
            versions => Err(ContractError::Mixed(versions.to_vec())),
        }
    }
}

impl fmt::Display for Contract {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{PACKAGE}@{}", self.version())
    }
}

/// Links the imports of every version: `types` and `log` of 0.2.0 as
/// generated, and the same host under the 0.1.0 names (0.1.0's bindings
/// reuse 0.2.0's interfaces, whose generated linking names 0.2.0 only).
pub fn add_to_linker<T>(linker: &mut Linker<T>) -> wasmtime::Result<()>
where
    T: log::Host + types::Host + 'static,
{
    v0_2::Plugin::add_to_linker::<T, HasSelf<T>>(linker, |state| state)?;
    let old = Contract::V0_1.version();
    types::add_to_linker_instance::<T, HasSelf<T>>(
        &mut linker.instance(&format!("{PACKAGE}/types@{old}"))?,
        |state| state,
    )?;
    log::add_to_linker_instance::<T, HasSelf<T>>(
        &mut linker.instance(&format!("{PACKAGE}/log@{old}"))?,
        |state| state,
    )?;
    Ok(())
}

/// A plugin linked and type-checked against its version of the world,
/// ready to instantiate.
pub enum PluginPre<T: 'static> {
    /// Built for 0.1.0.
    V0_1(v0_1::PluginPre<T>),
    /// Built for 0.2.0.
    V0_2(v0_2::PluginPre<T>),
    /// Built for 0.2.0's `plugin-json` world.
    V0_2Json(v0_2_json::PluginJsonPre<T>),
}

impl<T: 'static> PluginPre<T> {
    /// Checks that `instance_pre` exports the world of `contract` (for
    /// 0.2.0, `plugin` or `plugin-json`).
    pub fn new(contract: Contract, instance_pre: InstancePre<T>) -> wasmtime::Result<Self> {
        Ok(match contract {
            Contract::V0_1 => PluginPre::V0_1(v0_1::PluginPre::new(instance_pre)?),
            Contract::V0_2 => match v0_2::PluginPre::new(instance_pre.clone()) {
                Ok(pre) => PluginPre::V0_2(pre),
                Err(error) => match v0_2_json::PluginJsonPre::new(instance_pre) {
                    Ok(pre) => PluginPre::V0_2Json(pre),
                    Err(json_error) => {
                        return Err(wasmtime::format_err!(
                            "as `plugin`: {error:#}; as `plugin-json`: {json_error:#}"
                        ));
                    }
                },
            },
        })
    }

    /// The name of the world the component exports.
    pub fn world(&self) -> &'static str {
        match self {
            PluginPre::V0_1(_) | PluginPre::V0_2(_) => "plugin",
            PluginPre::V0_2Json(_) => "plugin-json",
        }
    }

    /// A new instance in `store`.
    pub fn instantiate(&self, store: impl AsContextMut<Data = T>) -> wasmtime::Result<Plugin> {
        Ok(match self {
            PluginPre::V0_1(pre) => Plugin::V0_1(pre.instantiate_prechecked(store)?),
            PluginPre::V0_2(pre) => Plugin::V0_2(pre.instantiate_prechecked(store)?),
            PluginPre::V0_2Json(pre) => Plugin::V0_2Json(pre.instantiate_prechecked(store)?),
        })
    }
}

/// A plugin instance, of either version.
pub enum Plugin {
    /// Built for 0.1.0.
    V0_1(v0_1::Plugin),
    /// Built for 0.2.0.
    V0_2(v0_2::Plugin),
    /// Built for 0.2.0's `plugin-json` world.
    V0_2Json(v0_2_json::PluginJson),
}

impl Plugin {
    /// The version its exports follow.
    pub fn contract(&self) -> Contract {
        match self {
            Plugin::V0_1(_) => Contract::V0_1,
            Plugin::V0_2(_) | Plugin::V0_2Json(_) => Contract::V0_2,
        }
    }

    /// Calls `hooks`.
    pub fn call_hooks<S: AsContextMut>(&self, store: S) -> wasmtime::Result<Hooks>
    where
        S::Data: Send,
    {
        match self {
            Plugin::V0_1(plugin) => plugin.call_hooks(store),
            Plugin::V0_2(plugin) => plugin.call_hooks(store),
            Plugin::V0_2Json(plugin) => plugin.call_hooks(store),
        }
    }

    /// Calls `init` with the route's config as JSON.
    pub fn call_init<S: AsContextMut>(
        &self,
        store: S,
        config: &str,
    ) -> wasmtime::Result<Result<(), String>>
    where
        S::Data: Send,
    {
        match self {
            Plugin::V0_1(plugin) => plugin.call_init(store, config),
            Plugin::V0_2(plugin) => plugin.call_init(store, config),
            Plugin::V0_2Json(plugin) => plugin.call_init(store, config),
        }
    }

    /// Calls `select-targets`.
    pub fn call_select_targets<S: AsContextMut>(
        &self,
        store: S,
        head: v0_2::RequestHead<'_>,
        targets: &[v0_2::Target<'_>],
    ) -> wasmtime::Result<Result<Vec<u32>, String>>
    where
        S::Data: Send,
    {
        match self {
            Plugin::V0_1(plugin) => plugin.call_select_targets(store, head, targets),
            Plugin::V0_2(plugin) => plugin.call_select_targets(store, head, targets),
            Plugin::V0_2Json(plugin) => {
                plugin.call_select_targets(store, &json::head(&head), &json::targets(targets))
            }
        }
    }

    /// Calls `transform` for `targets`, which share `request`: one call
    /// for all of them (0.2.0), or for a 0.1.0 plugin, whose `transform`
    /// takes one pod, a call for the one target `targets` must then hold.
    /// The result has the plugin's patches, unchecked.
    pub fn call_transform<S: AsContextMut>(
        &self,
        store: S,
        request: v0_2::Request<'_>,
        targets: &[v0_2::Target<'_>],
    ) -> wasmtime::Result<Result<Vec<RequestPatch>, String>>
    where
        S::Data: Send,
    {
        match self {
            Plugin::V0_2(plugin) => plugin.call_transform(store, request, targets),
            Plugin::V0_2Json(plugin) => plugin.call_transform(
                store,
                &json::head(&request.head),
                request.body,
                &json::targets(targets),
            ),
            Plugin::V0_1(plugin) => match targets {
                [target] => Ok(plugin
                    .call_transform(store, request, target.clone())?
                    .map(|patch| vec![patch])),
                _ => Err(wasmtime::format_err!(
                    "a broadcast:plugin@0.1.0 transform takes one pod per call, not {}",
                    targets.len()
                )),
            },
        }
    }

    /// Calls `aggregate`.
    pub fn call_aggregate<S: AsContextMut>(
        &self,
        store: S,
        head: v0_2::RequestHead<'_>,
        outcomes: &[v0_2::Outcome<'_>],
    ) -> wasmtime::Result<Result<Verdict, String>>
    where
        S::Data: Send,
    {
        match self {
            Plugin::V0_1(plugin) => plugin.call_aggregate(store, head, outcomes),
            Plugin::V0_2(plugin) => plugin.call_aggregate(store, head, outcomes),
            Plugin::V0_2Json(plugin) => {
                plugin.call_aggregate(store, &json::head(&head), &json::outcomes(outcomes))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Contract, ContractError};

    #[test]
    fn versions_read_and_print_as_the_wit_names_them() {
        assert_eq!(Contract::parse("0.1.0"), Some(Contract::V0_1));
        assert_eq!(Contract::parse("0.2.0"), Some(Contract::V0_2));
        assert_eq!(Contract::parse("0.3.0"), None);
        assert_eq!(Contract::CURRENT.to_string(), "broadcast:plugin@0.2.0");
        assert_eq!(
            ContractError::Unsupported("0.3.0".into()).to_string(),
            "is built for broadcast:plugin@0.3.0; this router loads 0.1.0 and 0.2.0 (rebuild it against plugins/wit, broadcast:plugin@0.2.0)"
        );
    }
}

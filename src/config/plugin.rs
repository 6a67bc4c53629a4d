//! The plugin tables: `[plugins.NAME]` (a Wasm component and its limits)
//! and the entries of a route's `plugins` chain.

use std::path::PathBuf;
use std::time::Duration;

use bytesize::ByteSize;
use serde::Deserialize;

use crate::vocabulary::problem::Location;

/// One `[plugins.NAME]` table: a Wasm component and its limits.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginConfig {
    /// The `.wasm` component. Relative paths start at the configuration
    /// file's directory (with [`Config::load`](crate::config::Config::load); `Config::parse` keeps them
    /// relative to the working directory).
    pub path: PathBuf,
    /// What a failing plugin means for the broadcast.
    #[serde(default)]
    pub on_error: OnError,
    /// Most linear memory one instance may use.
    #[serde(default = "default_plugin_memory")]
    pub memory: ByteSize,
    /// Most CPU time one hook call may take.
    #[serde(default = "default_hook_timeout", with = "humantime_serde")]
    pub hook_timeout: Duration,
    /// Whether each broadcast gets a fresh instance or reuses one.
    #[serde(default)]
    pub instances: Instances,
    /// Where the table is in the file (set while loading).
    #[serde(skip)]
    pub location: Location,
}

/// A plugin's failure policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnError {
    /// Answer 502 with the plugin's error; nothing is sent to pods.
    #[default]
    FailClosed,
    /// Carry on as if the plugin were absent.
    FailOpen,
}

/// Whether a plugin's instances live for one broadcast or many.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Instances {
    /// A fresh instance per broadcast, `init` run on it: no state survives
    /// from one broadcast to the next.
    #[default]
    Fresh,
    /// Instances are kept between broadcasts, `init` run once per
    /// instance: state survives from one broadcast to the next (a broadcast
    /// gets any idle instance of the route's entry). An instance that traps
    /// or returns an error is discarded.
    Reuse,
}

/// One entry of a route's `plugins` chain.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginUse {
    /// The name of a `[plugins.NAME]` table.
    #[serde(rename = "use")]
    pub plugin: String,
    /// The plugin's config table, handed to its `init` as JSON.
    #[serde(default)]
    pub config: toml::Table,
    /// Where the entry is in the file (set while loading).
    #[serde(skip)]
    pub location: Location,
}

fn default_plugin_memory() -> ByteSize {
    ByteSize::mib(16)
}

fn default_hook_timeout() -> Duration {
    Duration::from_millis(10)
}

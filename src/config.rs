//! The router's configuration: the TOML schema users write, and loading it.
//!
//! Loading happens in three steps, each of which collects every problem it
//! finds instead of stopping at the first:
//!
//! 1. `load::parse` reads the TOML syntax (recovering after errors);
//! 2. each section and each `[[routes]]` entry is deserialized on its own, so
//!    an unknown key in one route does not hide a bad value in the next;
//! 3. `validate` checks what types cannot (unique names, conflicting paths,
//!    `service` xor `targets`, templated services with an `allow_services`
//!    guard, and so on) and parses each route's methods, targets, globs and
//!    URLs once, into the typed [`RouteConfig`] everything else is built
//!    from.
//!
//! Every problem carries the line and column it refers to (see [`Problem`]).
//! The schema is split by table: [`server`] (`[server]`, `[dns]`,
//! `[kubernetes]`, `[tokens.NAME]`), [`route`] (`[[routes]]`), [`plugin`]
//! (`[plugins.NAME]`) and [`jobs`] (`[jobs]`).

pub mod jobs;
mod load;
pub mod plugin;
pub mod route;
pub mod server;
mod validate;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub use crate::vocabulary::problem::{Location, Problem, Problems};
pub use jobs::JobsConfig;
pub use plugin::{Instances, OnError, PluginConfig, PluginUse};
pub use route::{
    Methods, Mode, PodHost, Protocol, RateLimitConfig, RouteConfig, RouteTable, Scheme, UdpConfig,
};
pub use server::{
    DnsConfig, KubernetesConfig, NameServer, ServerConfig, ServerTlsConfig, TokenSetConfig,
};

/// A whole router configuration file, after successful validation.
#[derive(Debug, Clone, Default)]
pub struct Config {
    /// The `[server]` table: listeners and request limits.
    pub server: ServerConfig,
    /// The `[dns]` table: how headless Services are resolved.
    pub dns: DnsConfig,
    /// The `[kubernetes]` table: how `kubernetes` routes reach the API.
    pub kubernetes: KubernetesConfig,
    /// The `[[routes]]` array: one entry per broadcast endpoint.
    pub routes: Vec<RouteConfig>,
    /// The `[plugins.NAME]` tables: Wasm plugins routes can use.
    pub plugins: BTreeMap<String, PluginConfig>,
    /// The `[tokens.NAME]` tables: bearer token sets routes and the admin
    /// endpoints can require.
    pub tokens: BTreeMap<String, TokenSetConfig>,
    /// The `[jobs]` table: where broadcast jobs are kept; absent, in
    /// memory only.
    pub jobs: Option<JobsConfig>,
}

impl Config {
    /// Reads, parses and validates the configuration file at `path`.
    ///
    /// Relative paths in the file (each plugin's `path` and `[server]
    /// plugin_cache_dir`) are resolved against the directory `path` names,
    /// so a file and its plugins can move together: `plugins/x.wasm` in
    /// `/etc/broadcast-router/router.toml` is
    /// `/etc/broadcast-router/plugins/x.wasm`, whatever the working
    /// directory. The directory is taken as written, without following
    /// symbolic links (a Kubernetes ConfigMap volume links each file into a
    /// hidden subdirectory).
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let mut config = Self::parse(&text).map_err(|problems| ConfigError::Invalid {
            path: path.display().to_string(),
            problems,
        })?;
        if let Some(dir) = path.parent() {
            config.resolve_relative_paths(dir);
        }
        Ok(config)
    }

    /// Parses and validates configuration text, reporting every problem.
    /// Relative paths are kept as written (so they start at the working
    /// directory); [`Config::load`] resolves them against the file's
    /// directory.
    pub fn parse(text: &str) -> Result<Self, Problems> {
        load::parse(text)
    }

    /// Prefixes every relative path of the configuration with `dir`.
    fn resolve_relative_paths(&mut self, dir: &Path) {
        let resolve = |path: &mut PathBuf| {
            if path.is_relative() {
                *path = dir.join(&*path);
            }
        };
        for plugin in self.plugins.values_mut() {
            resolve(&mut plugin.path);
        }
        for file in self.tokens.values_mut().filter_map(|set| set.file.as_mut()) {
            resolve(file);
        }
        if let Some(path) = self.jobs.as_mut().and_then(|jobs| jobs.path.as_mut()) {
            resolve(path);
        }
        if let Some(kubeconfig) = self.kubernetes.kubeconfig.as_mut() {
            resolve(kubeconfig);
        }
        if let Some(cache_dir) = self.server.plugin_cache_dir.as_mut() {
            resolve(cache_dir);
        }
        if let Some(tls) = self.server.tls.as_mut() {
            resolve(&mut tls.cert);
            resolve(&mut tls.key);
            if let Some(client_ca) = tls.client_ca.as_mut() {
                resolve(client_ca);
            }
        }
        for ca_file in self
            .routes
            .iter_mut()
            .filter_map(|route| route.table.ca_file.as_mut())
        {
            resolve(ca_file);
        }
    }

    /// Looks a route up by name.
    pub fn route(&self, name: &str) -> Option<&RouteConfig> {
        self.routes.iter().find(|route| route.name() == name)
    }
}

/// Why a configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("config {path}: cannot read the file: {source}")]
    Read {
        /// The file's path.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file was read but has problems; all of them are listed.
    #[error("config {path}: {problems}")]
    Invalid {
        /// The file's path.
        path: String,
        /// Every problem found.
        problems: Problems,
    },
}

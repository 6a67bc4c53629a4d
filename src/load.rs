//! The one loader: a validated [`Config`] plus the files it names (plugin
//! components, token files, certificates) become [`Loaded`], every route
//! ready to serve as an [`Endpoint`]. `serve`, live reload and `check` all
//! call [`Loaded::load`], so they can never disagree about a file.
//!
//! Loading reads every file and reports every problem at once, each at the
//! location of the table or route entry that names the file, in file
//! order.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use crate::auth::{Guard, Tokens};
use crate::config::{Config, Problems, Protocol};
use crate::discovery::TargetSource;
use crate::discovery::kubernetes::WatchKey;
use crate::limit::Admission;
use crate::plugin::{Chain, Plugins};
use crate::route::Route;
use crate::telemetry::RouteMetrics;
use crate::tls::{PodTls, TlsFiles};

/// A configuration with everything its files hold, ready to serve.
#[derive(Debug)]
pub struct Loaded {
    /// The configuration it was loaded from.
    pub config: Config,
    /// Every route, ready to serve, in configuration order.
    pub endpoints: Vec<Arc<Endpoint>>,
    /// What `/metrics` and `/admin/*` require (`[server] admin_auth`).
    pub admin_auth: Guard,
    /// The broadcast listener's TLS settings (`[server.tls]`).
    pub listener_tls: Option<Arc<rustls::ServerConfig>>,
}

/// One route with everything loaded for it: complete when built.
#[derive(Debug)]
pub struct Endpoint {
    /// The route's settings.
    pub route: Route,
    /// Its plugin chain (empty without plugins).
    pub plugins: Chain,
    /// The token a request must carry (open without `auth`).
    pub auth: Guard,
    /// Its per-second and at-once limits.
    pub admission: Admission,
    /// The HTTPS client of a `scheme = "https"` route; `None`: plain HTTP.
    pub tls: Option<PodTls>,
    /// Its broadcast and delivery metrics.
    pub metrics: RouteMetrics,
}

impl Loaded {
    /// Loads every plugin (checked against the contract, `init` run with
    /// each route's config), every token set and every certificate, key
    /// and CA file of `config`, and builds its endpoints. Every problem is
    /// reported, in file order.
    pub fn load(config: &Config) -> Result<Self, Problems> {
        let plugins = Plugins::load(config);
        let tokens = Tokens::load(config);
        let tls = TlsFiles::load(config);
        let (plugins, tokens, mut tls) = match (plugins, tokens, tls) {
            (Ok(plugins), Ok(tokens), Ok(tls)) => (plugins, tokens, tls),
            (plugins, tokens, tls) => {
                let problems = [plugins.err(), tokens.err(), tls.err()]
                    .into_iter()
                    .flatten()
                    .flat_map(|problems| problems.0)
                    .collect();
                return Err(Problems(problems).sorted());
            }
        };
        let endpoints = config
            .routes
            .iter()
            .map(|route| {
                Arc::new(Endpoint {
                    route: Route::from_config(route),
                    plugins: plugins.chain(route.name()),
                    auth: tokens.guard(&route.table.auth),
                    admission: Admission::from_config(route),
                    tls: tls.routes.remove(route.name()),
                    metrics: RouteMetrics::new(route.name()),
                })
            })
            .collect();
        Ok(Self {
            config: config.clone(),
            endpoints,
            admin_auth: tokens.guard(&config.server.admin_auth),
            listener_tls: tls.listener,
        })
    }

    /// The plugins by name, with the file each was loaded from.
    pub fn plugin_files(&self) -> BTreeMap<String, PathBuf> {
        self.config
            .plugins
            .iter()
            .map(|(name, plugin)| (name.clone(), plugin.path.clone()))
            .collect()
    }

    /// The Services `kubernetes` routes name outright (not templated),
    /// each once.
    pub fn kubernetes_services(&self) -> Vec<WatchKey> {
        let mut keys: Vec<WatchKey> = self
            .endpoints
            .iter()
            .filter_map(|endpoint| match &endpoint.route.source {
                TargetSource::Kubernetes(source)
                    if !source.service.contains(crate::route::SERVICE_PLACEHOLDER) =>
                {
                    Some(WatchKey {
                        namespace: source.namespace.clone(),
                        service: source.service.clone(),
                    })
                }
                _ => None,
            })
            .collect();
        keys.sort_by(|a, b| (&a.namespace, &a.service).cmp(&(&b.namespace, &b.service)));
        keys.dedup();
        keys
    }

    /// Whether some route finds its pods through DNS.
    pub fn uses_dns(&self) -> bool {
        self.config
            .routes
            .iter()
            .any(|route| route.table.service.is_some())
    }
}

/// One line per route for `check`: methods, path, pods, how the verdict
/// is reached and the plugin chain, e.g.
/// `invalidate (POST /cache/invalidate -> web.default.svc:8080, policy all)`.
impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let route = &self.route;
        write!(
            f,
            "{} ({} {} -> {}, ",
            route.name, route.methods, route.path, route.source
        )?;
        match route.protocol {
            Protocol::Http => write!(f, "policy {}", route.policy)?,
            Protocol::Udp => write!(f, "udp x{}", route.udp.repeat)?,
        }
        if !self.plugins.is_empty() {
            write!(f, ", plugins {}", self.plugins.names().join(" > "))?;
        }
        f.write_str(")")
    }
}

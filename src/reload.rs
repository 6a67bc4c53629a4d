//! Live reload: noticing that the configuration file or a plugin it names
//! changed (or that SIGHUP arrived), and handing the new configuration to
//! [`AppState::reload`], which builds it off to the side and swaps it in.
//!
//! The watcher watches the *directories* holding the configuration file and
//! each plugin, not the files. Kubernetes updates a mounted ConfigMap by
//! writing a new hidden directory and renaming a `..data` symlink over the
//! old one; the files themselves are never written, so a watch on a file
//! misses the change. Every event in a watched directory leads, after a
//! short quiet period, to a re-read: the configuration and plugin files are
//! hashed (with token and TLS files), and the router reloads only when the
//! digest differs from the active one. SIGHUP reloads unconditionally.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::config::{Config, ConfigError};
use crate::server::{AppState, ConfigInfo, Origin, ReloadError};

/// How long the watched directories must stay quiet before a re-read, so
/// an editor's or Kubernetes' several renames count as one change.
const QUIET: Duration = Duration::from_millis(200);

/// A configuration read from disk, with the digest of everything it was
/// built from.
#[derive(Debug)]
pub struct Snapshot {
    /// The parsed and validated configuration.
    pub config: Config,
    /// The file and the SHA-256 over it and its plugin files.
    pub origin: Origin,
}

impl Snapshot {
    /// Reads and validates the configuration at `path` and hashes it
    /// together with every plugin and token file it names (a file that
    /// cannot be read is left to plugin or token loading to report).
    pub fn read(path: &Path) -> Result<Self, ConfigError> {
        let config = Config::load(path)?;
        let mut digest = Sha256::new();
        let text = std::fs::read(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        digest.update((text.len() as u64).to_le_bytes());
        digest.update(&text);
        let plugins = config
            .plugins
            .iter()
            .map(|(name, plugin)| (name, &plugin.path));
        let token_files = config
            .tokens
            .iter()
            .filter_map(|(name, set)| Some((name, set.file.as_ref()?)));
        let tls_files = crate::tls::files(&config);
        let tls_files = tls_files.iter().map(|(name, file)| (name, file));
        for (name, file) in plugins.chain(token_files).chain(tls_files) {
            digest.update(name.as_bytes());
            match std::fs::read(file) {
                Ok(bytes) => {
                    digest.update((bytes.len() as u64).to_le_bytes());
                    digest.update(&bytes);
                }
                Err(_) => digest.update(u64::MAX.to_le_bytes()),
            }
        }
        let sha256 = digest
            .finalize()
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect();
        Ok(Self {
            config,
            origin: Origin {
                source: Some(path.to_owned()),
                sha256: Some(sha256),
            },
        })
    }

    /// The directories to watch: the configuration file's and every
    /// plugin, token and TLS file's.
    fn directories(&self, path: &Path) -> BTreeSet<PathBuf> {
        let tls_files = crate::tls::files(&self.config);
        std::iter::once(path)
            .chain(
                self.config
                    .plugins
                    .values()
                    .map(|plugin| plugin.path.as_path()),
            )
            .chain(
                self.config
                    .tokens
                    .values()
                    .filter_map(|set| set.file.as_deref()),
            )
            .chain(tls_files.iter().map(|(_, file)| file.as_path()))
            .map(directory_of)
            .collect()
    }
}

fn directory_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_owned(),
        _ => PathBuf::from("."),
    }
}

/// What started a reload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// A change in a watched directory: reload only if the digest changed.
    Watch,
    /// SIGHUP (or an explicit request): reload even if nothing changed.
    Signal,
}

/// What a reload did.
#[derive(Debug)]
pub enum Outcome {
    /// The new configuration is active.
    Reloaded(ConfigInfo),
    /// The files hash to the active configuration's digest; nothing to do.
    Unchanged,
}

/// Reloads one router from one configuration file; reloads never overlap.
pub struct Reloader {
    state: Arc<AppState>,
    path: PathBuf,
    /// Held for the whole of a reload.
    serial: tokio::sync::Mutex<()>,
    /// The directories to watch for the active configuration.
    directories: std::sync::Mutex<BTreeSet<PathBuf>>,
}

impl Reloader {
    /// A reloader for the router `state`, which was started from
    /// `snapshot` of the file at `path`.
    pub fn new(state: Arc<AppState>, path: PathBuf, snapshot: &Snapshot) -> Self {
        let directories = snapshot.directories(&path);
        Self {
            state,
            path,
            serial: tokio::sync::Mutex::new(()),
            directories: std::sync::Mutex::new(directories),
        }
    }

    /// Re-reads the configuration file and its plugins and swaps them in
    /// (for [`Trigger::Watch`], only if they changed). On error the active
    /// configuration keeps serving; the error is logged, counted and shown
    /// by `/admin/config`.
    pub async fn reload(&self, trigger: Trigger) -> Result<Outcome, ReloadError> {
        let _serial = self.serial.lock().await;
        let path = self.path.clone();
        let read = tokio::task::spawn_blocking(move || Snapshot::read(&path))
            .await
            .map_err(|error| ReloadError::Panicked(error.to_string()));
        let snapshot = match read {
            Ok(Ok(snapshot)) => snapshot,
            Ok(Err(error)) => return Err(self.state.reject(error.into())),
            Err(error) => return Err(self.state.reject(error)),
        };
        if trigger == Trigger::Watch && snapshot.origin.sha256 == self.state.config_info().sha256 {
            // The files are the active configuration again (e.g. a bad
            // edit was undone): an earlier rejection no longer applies.
            self.state.clear_reload_failure();
            return Ok(Outcome::Unchanged);
        }
        let directories = snapshot.directories(&self.path);
        let info = self.state.reload(snapshot.config, snapshot.origin).await?;
        *self.directories.lock().expect("directories lock") = directories;
        Ok(Outcome::Reloaded(info))
    }

    fn directories(&self) -> BTreeSet<PathBuf> {
        self.directories.lock().expect("directories lock").clone()
    }
}

/// Watches the configuration's directories (and, with `sighup`, the
/// SIGHUP signal) and reloads on every change, until the task is aborted.
/// The watches and the signal handler are in place when this returns.
/// Call it within a Tokio runtime.
pub fn watch(reloader: Arc<Reloader>, sighup: bool) -> JoinHandle<()> {
    let (events, mut changed) = mpsc::unbounded_channel();
    let mut hangups = sighup.then(hangup_signal).flatten();
    let mut directories = reloader.directories();
    let mut watcher = watch_directories(&directories, events.clone());
    tokio::spawn(async move {
        loop {
            let trigger = tokio::select! {
                Some(()) = changed.recv() => {
                    // Wait for a quiet moment, then re-read once.
                    while let Ok(Some(())) = tokio::time::timeout(QUIET, changed.recv()).await {}
                    Trigger::Watch
                }
                Some(()) = next_hangup(&mut hangups) => Trigger::Signal,
            };
            let outcome = reloader.reload(trigger).await;
            log(trigger, &outcome);
            // A reload may have named plugins in other folders: watch the
            // new set before letting go of the old watcher, so no change
            // slips between the two.
            let now = reloader.directories();
            if now != directories {
                let replacement = watch_directories(&now, events.clone());
                watcher = replacement.or(watcher);
                directories = now;
            }
        }
    })
}

fn log(trigger: Trigger, outcome: &Result<Outcome, ReloadError>) {
    match outcome {
        Ok(Outcome::Reloaded(info)) => tracing::info!(
            ?trigger,
            version = info.version,
            sha256 = info.sha256.as_deref().unwrap_or_default(),
            routes = info.routes.len(),
            "Configuration reloaded; new broadcasts use it, running ones finish on the previous one."
        ),
        Ok(Outcome::Unchanged) => {
            tracing::debug!(
                ?trigger,
                "Configuration files unchanged; nothing to reload."
            );
        }
        Err(error) => tracing::error!(
            ?trigger,
            %error,
            "Configuration reload rejected; the previous configuration keeps serving."
        ),
    }
}

/// A watcher sending `()` on every event in `directories`. A directory
/// that cannot be watched is logged; SIGHUP still reloads.
fn watch_directories(
    directories: &BTreeSet<PathBuf>,
    events: mpsc::UnboundedSender<()>,
) -> Option<notify::RecommendedWatcher> {
    let handler = move |event: notify::Result<notify::Event>| match event {
        Ok(event) if event.kind.is_access() => {}
        Ok(_) => {
            let _ = events.send(());
        }
        Err(error) => tracing::warn!(%error, "File watching reported an error."),
    };
    let mut watcher = match notify::recommended_watcher(handler) {
        Ok(watcher) => watcher,
        Err(error) => {
            tracing::error!(%error, "Cannot watch the configuration; only SIGHUP reloads it.");
            return None;
        }
    };
    for directory in directories {
        if let Err(error) = watcher.watch(directory, RecursiveMode::NonRecursive) {
            tracing::error!(
                directory = %directory.display(),
                %error,
                "Cannot watch this directory; changes in it are seen only after SIGHUP."
            );
        }
    }
    Some(watcher)
}

#[cfg(unix)]
fn hangup_signal() -> Option<tokio::signal::unix::Signal> {
    use tokio::signal::unix::{SignalKind, signal};
    signal(SignalKind::hangup())
        .inspect_err(|error| tracing::error!(%error, "Cannot handle SIGHUP."))
        .ok()
}

#[cfg(not(unix))]
fn hangup_signal() -> Option<()> {
    None
}

#[cfg(unix)]
async fn next_hangup(signal: &mut Option<tokio::signal::unix::Signal>) -> Option<()> {
    match signal {
        Some(signal) => signal.recv().await,
        None => std::future::pending().await,
    }
}

#[cfg(not(unix))]
async fn next_hangup(_: &mut Option<()>) -> Option<()> {
    std::future::pending().await
}

//! Live reload: noticing that the configuration file or a plugin it names
//! changed (or that SIGHUP arrived), and handing the new configuration to
//! [`AppState::reload`], which builds it off to the side and swaps it in.
//!
//! The watcher watches the *directories* holding the configuration file and
//! each plugin, token and TLS file, not the files. Kubernetes updates a
//! mounted ConfigMap by writing a new hidden directory and renaming a
//! `..data` symlink over the old one; the files themselves are never
//! written, so a watch on a file misses the change. Only events that name
//! one of those files, or a hidden `..` entry of a ConfigMap volume, count:
//! a log file or an editor's backup in the same directory never triggers a
//! reload. After a short quiet period the files are re-read and hashed,
//! and the router reloads only when the digest differs from the active
//! one, and from the last one it rejected: a rejected configuration is
//! reported once, not again at every event, until its content changes.
//! SIGHUP reloads unconditionally.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
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
        let sha256 = hex(&digest.finalize());
        Ok(Self {
            config,
            origin: Origin {
                source: Some(path.to_owned()),
                sha256: Some(sha256),
            },
        })
    }

    /// The files whose change calls for a reload, each as its directory
    /// and name: the configuration file and every plugin, token and TLS
    /// file.
    fn files(&self, path: &Path) -> BTreeSet<(PathBuf, OsString)> {
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
            .map(|file| {
                let name = file.file_name().unwrap_or_default().to_owned();
                (directory_of(file), name)
            })
            .collect()
    }
}

/// SHA-256 of the configuration file's bytes alone, in hex: what a
/// configuration that cannot be parsed is remembered by.
fn text_digest(path: &Path) -> Option<String> {
    std::fs::read(path)
        .ok()
        .map(|bytes| hex(&Sha256::digest(bytes)))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
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
    /// The files hash to the configuration rejected last; it was reported
    /// then and is not checked again until it changes.
    StillRejected,
}

/// Reloads one router from one configuration file; reloads never overlap.
pub struct Reloader {
    state: Arc<AppState>,
    path: PathBuf,
    /// Held for the whole of a reload.
    serial: tokio::sync::Mutex<()>,
    /// The files to watch for the active configuration, shared with the
    /// watcher's event filter.
    files: Arc<Mutex<BTreeSet<(PathBuf, OsString)>>>,
    /// The digest of the configuration rejected last (of its text alone
    /// when it could not be parsed).
    rejected: Mutex<Option<String>>,
}

impl Reloader {
    /// A reloader for the router `state`, which was started from
    /// `snapshot` of the file at `path`.
    pub fn new(state: Arc<AppState>, path: PathBuf, snapshot: &Snapshot) -> Self {
        let files = snapshot.files(&path);
        Self {
            state,
            path,
            serial: tokio::sync::Mutex::new(()),
            files: Arc::new(Mutex::new(files)),
            rejected: Mutex::new(None),
        }
    }

    /// Re-reads the configuration file and its plugins and swaps them in
    /// (for [`Trigger::Watch`], only if they changed, and differ from the
    /// configuration rejected last). On error the active configuration
    /// keeps serving; the error is logged, counted and shown by
    /// `/admin/config`.
    pub async fn reload(&self, trigger: Trigger) -> Result<Outcome, ReloadError> {
        let _serial = self.serial.lock().await;
        let path = self.path.clone();
        let read = tokio::task::spawn_blocking(move || {
            Snapshot::read(&path).map_err(|error| (error, text_digest(&path)))
        })
        .await
        .map_err(|error| ReloadError::Panicked(error.to_string()));
        let snapshot = match read {
            Ok(Ok(snapshot)) => snapshot,
            Ok(Err((error, digest))) => {
                if trigger == Trigger::Watch && self.was_rejected(digest.as_ref()) {
                    return Ok(Outcome::StillRejected);
                }
                *self.rejected.lock().expect("rejected lock") = digest;
                return Err(self.state.reject(error.into()));
            }
            Err(error) => return Err(self.state.reject(error)),
        };
        if trigger == Trigger::Watch && snapshot.origin.sha256 == self.state.config_info().sha256 {
            // The files are the active configuration again (e.g. a bad
            // edit was undone): an earlier rejection no longer applies.
            self.state.clear_reload_failure();
            *self.rejected.lock().expect("rejected lock") = None;
            return Ok(Outcome::Unchanged);
        }
        if trigger == Trigger::Watch && self.was_rejected(snapshot.origin.sha256.as_ref()) {
            return Ok(Outcome::StillRejected);
        }
        let files = snapshot.files(&self.path);
        let digest = snapshot.origin.sha256.clone();
        match self.state.reload(snapshot.config, snapshot.origin).await {
            Ok(info) => {
                *self.files.lock().expect("files lock") = files;
                *self.rejected.lock().expect("rejected lock") = None;
                Ok(Outcome::Reloaded(info))
            }
            Err(error) => {
                *self.rejected.lock().expect("rejected lock") = digest;
                Err(error)
            }
        }
    }

    /// Whether `digest` is the configuration rejected last.
    fn was_rejected(&self, digest: Option<&String>) -> bool {
        digest.is_some() && self.rejected.lock().expect("rejected lock").as_ref() == digest
    }

    fn directories(&self) -> BTreeSet<PathBuf> {
        let files = self.files.lock().expect("files lock");
        files
            .iter()
            .map(|(directory, _)| directory.clone())
            .collect()
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
    let files = Arc::clone(&reloader.files);
    let mut watcher = watch_directories(&directories, Arc::clone(&files), events.clone());
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
                let replacement = watch_directories(&now, Arc::clone(&files), events.clone());
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
        Ok(Outcome::StillRejected) => {
            tracing::debug!(
                ?trigger,
                "Configuration files are the ones rejected last; not checked again."
            );
        }
        Err(error) => tracing::error!(
            ?trigger,
            %error,
            "Configuration reload rejected; the previous configuration keeps serving."
        ),
    }
}

/// A watcher sending `()` on every event in `directories` that names one
/// of `files` or a ConfigMap's hidden `..` entries. A directory that cannot
/// be watched is logged; SIGHUP still reloads.
fn watch_directories(
    directories: &BTreeSet<PathBuf>,
    files: Arc<Mutex<BTreeSet<(PathBuf, OsString)>>>,
    events: mpsc::UnboundedSender<()>,
) -> Option<notify::RecommendedWatcher> {
    let handler = move |event: notify::Result<notify::Event>| match event {
        Ok(event) if event.kind.is_access() => {}
        Ok(event) => {
            let files = files.lock().expect("files lock");
            if event.paths.iter().any(|path| concerns(&files, path)) {
                let _ = events.send(());
            }
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

/// Whether an event on `path` may change the configuration: it names one
/// of `files`, or a hidden `..` entry (a ConfigMap volume swaps its files
/// in through `..data` and timestamped `..` directories).
fn concerns(files: &BTreeSet<(PathBuf, OsString)>, path: &Path) -> bool {
    let Some(name) = path.file_name() else {
        return true;
    };
    name.to_string_lossy().starts_with("..")
        || files.contains(&(directory_of(path), name.to_owned()))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_named_files_and_configmap_entries_concern_the_watcher() {
        let files: BTreeSet<(PathBuf, OsString)> = [
            (PathBuf::from("/etc/br"), OsString::from("router.toml")),
            (
                PathBuf::from("/etc/br/plugins"),
                OsString::from("shard.wasm"),
            ),
        ]
        .into();
        assert!(concerns(&files, Path::new("/etc/br/router.toml")));
        assert!(concerns(&files, Path::new("/etc/br/plugins/shard.wasm")));
        assert!(concerns(&files, Path::new("/etc/br/..data")));
        assert!(concerns(&files, Path::new("/etc/br/..data_tmp")));
        assert!(concerns(&files, Path::new("/etc/br/..2026_12_07_01")));
        assert!(!concerns(&files, Path::new("/etc/br/router.log")));
        assert!(!concerns(&files, Path::new("/etc/br/.router.toml.swp")));
        assert!(!concerns(&files, Path::new("/etc/br/plugins/router.toml")));
    }
}

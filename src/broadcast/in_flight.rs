//! The registry of running broadcasts, so shutdown can name those that
//! did not finish in time.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Running broadcasts by key: their id and route.
pub(super) type Registry = Mutex<HashMap<u64, (String, Arc<str>)>>;

/// Keeps a broadcast listed as running until dropped.
pub(super) struct InFlight<'a> {
    registry: &'a Registry,
    key: u64,
}

impl<'a> InFlight<'a> {
    pub(super) fn register(registry: &'a Registry, key: u64, id: &str, route: &Arc<str>) -> Self {
        registry
            .lock()
            .expect("in-flight lock")
            .insert(key, (id.to_owned(), route.clone()));
        Self { registry, key }
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if let Ok(mut registry) = self.registry.lock() {
            registry.remove(&self.key);
        }
    }
}

//! Structured logging through the router.
//!
//! Each call becomes one line in the router's log, with the route, the
//! plugin's name and the broadcast id added by the router. Fields are
//! key/value pairs:
//!
//! ```
//! use broadcast_plugin_sdk::log;
//!
//! log::info("dropped pods", &[("kept", "3"), ("dropped", "1")]);
//! ```
//!
//! Outside WebAssembly (in native unit tests) lines go to standard error.

pub use crate::__private::bindings::broadcast::plugin::log::Level;

/// Logs `message` with `fields` at `level`.
pub fn log(level: Level, message: &str, fields: &[(&str, &str)]) {
    #[cfg(target_arch = "wasm32")]
    {
        let fields: Vec<(String, String)> = fields
            .iter()
            .map(|(key, value)| (key.to_string(), value.to_string()))
            .collect();
        crate::__private::bindings::broadcast::plugin::log::log(level, message, &fields);
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        let mut line = format!("[plugin {}] {message}", level_name(level));
        for (key, value) in fields {
            line.push_str(&format!(" {key}={value:?}"));
        }
        eprintln!("{line}");
    }
}

#[cfg(not(target_arch = "wasm32"))]
fn level_name(level: Level) -> &'static str {
    match level {
        Level::Trace => "trace",
        Level::Debug => "debug",
        Level::Info => "info",
        Level::Warn => "warn",
        Level::Error => "error",
    }
}

/// Logs at [`Level::Trace`].
pub fn trace(message: &str, fields: &[(&str, &str)]) {
    log(Level::Trace, message, fields);
}

/// Logs at [`Level::Debug`].
pub fn debug(message: &str, fields: &[(&str, &str)]) {
    log(Level::Debug, message, fields);
}

/// Logs at [`Level::Info`].
pub fn info(message: &str, fields: &[(&str, &str)]) {
    log(Level::Info, message, fields);
}

/// Logs at [`Level::Warn`].
pub fn warn(message: &str, fields: &[(&str, &str)]) {
    log(Level::Warn, message, fields);
}

/// Logs at [`Level::Error`].
pub fn error(message: &str, fields: &[(&str, &str)]) {
    log(Level::Error, message, fields);
}

#[cfg(test)]
mod tests {
    #[test]
    fn logging_works_natively() {
        super::info("hello", &[("k", "v")]);
        super::error("no fields", &[]);
    }
}

//! Builds the repository's plugins from source, once per test binary, so
//! tests never load stale `.wasm` files, and writes plugin configuration.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

/// Builds every plugin (`plugins/build.sh`) and returns the folder holding
/// the fresh `.wasm` files.
pub fn built() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| build(&[], "plugins/build.sh failed"))
        .clone()
}

/// Runs `plugins/build.sh` with `languages` (none: Rust), failing with
/// `failure` and the script's output; returns the folder of the `.wasm`
/// files.
fn build(languages: &[&str], failure: &str) -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let output = Command::new("bash")
        .arg(root.join("plugins/build.sh"))
        .args(languages)
        .current_dir(&root)
        .output()
        .expect("bash runs plugins/build.sh");
    assert!(
        output.status.success(),
        "{failure}:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    root.join("plugins/build")
}

/// A `[plugins.NAME]` table for the freshly built `file` (e.g.
/// `stress.wasm`) with extra keys.
pub fn table(name: &str, file: &str, extra: &str) -> String {
    let path = built().join(file);
    format!(
        "\n[plugins.{name}]\npath = \"{}\"\n{extra}\n",
        path.display()
    )
}

/// The memory cap of every plugin table in tests that load Python or
/// JavaScript plugins. One value for all: the compiled-code cache is keyed
/// by the engine's settings, which the largest cap sets, so every such test
/// reuses what [`guests`] compiled.
pub const GUEST_MEMORY: &str = "64MiB";

/// Builds the Python and JavaScript plugins from source with the pinned
/// tools (`plugins/build.sh python javascript`; `bash scripts/test`
/// installs the tools, and a missing tool fails here with the command
/// that installs it), then compiles each once into the compiled-code
/// cache, so that tests running in parallel do not all compile the same
/// 12-18MB components at once. Returns the folder of the `.wasm` files.
pub fn guests() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let dir = build(
                &["python", "javascript"],
                "building the Python and JavaScript plugins failed (their tools are \
                 installed by `bash scripts/test`)",
            );
            let mut text = String::new();
            for file in GUEST_FILES {
                text.push_str(&format!(
                    "\n[plugins.{}]\npath = \"{}\"\nmemory = \"{GUEST_MEMORY}\"\n",
                    file.trim_end_matches(".wasm"),
                    dir.join(file).display()
                ));
            }
            let config = broadcast_router::config::Config::parse(&text)
                .unwrap_or_else(|problems| panic!("{problems}"));
            if let Err(problems) = broadcast_router::plugin::Plugins::load(&config) {
                panic!("the Python and JavaScript plugins do not load:\n{problems}");
            }
            dir
        })
        .clone()
}

/// Every component [`guests`] builds.
pub const GUEST_FILES: &[&str] = &[
    "template_python.wasm",
    "template_javascript.wasm",
    "shard_filter_python.wasm",
    "shard_filter_javascript.wasm",
    "probe_python.wasm",
    "probe_javascript.wasm",
];

/// A `[plugins.NAME]` table for the freshly built Python or JavaScript
/// `file`, with [`GUEST_MEMORY`], a generous `hook_timeout` and extra keys.
pub fn guest_table(name: &str, file: &str, extra: &str) -> String {
    let path = guests().join(file);
    format!(
        "\n[plugins.{name}]\npath = \"{}\"\nmemory = \"{GUEST_MEMORY}\"\nhook_timeout = \"1s\"\n{extra}\n",
        path.display()
    )
}

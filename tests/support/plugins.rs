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
        .get_or_init(|| {
            let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
            let output = Command::new("bash")
                .arg(root.join("plugins/build.sh"))
                .current_dir(&root)
                .output()
                .expect("bash runs plugins/build.sh");
            assert!(
                output.status.success(),
                "plugins/build.sh failed:\n{}\n{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
            root.join("plugins/build")
        })
        .clone()
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

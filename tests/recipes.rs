//! The recipes of `docs/recipes/` stay true: each page shows its
//! configuration and cache snippet exactly as the files the tests run
//! (`tests/caches.rs`, `tests/purge_routes.rs`), and every recipe's router
//! configuration passes the real `broadcast-router check`.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The real binary, built by cargo for these tests.
const BINARY: &str = env!("CARGO_BIN_EXE_broadcast-router");

/// Each recipe page with the files it must show verbatim, fenced.
const RECIPES: [(&str, &[(&str, &str)]); 3] = [
    (
        "varnish.md",
        &[
            ("toml", "varnish/router.toml"),
            ("vcl", "varnish/purge.vcl"),
        ],
    ),
    (
        "nginx.md",
        &[("toml", "nginx/router.toml"), ("nginx", "nginx/purge.conf")],
    ),
    ("in-process.md", &[("toml", "in-process/router.toml")]),
];

fn recipes() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/recipes")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_else(|error| panic!("cannot read {}: {error}", path.display()))
}

#[test]
fn every_recipe_page_shows_the_files_the_tests_run_verbatim() {
    for (page, files) in RECIPES {
        let text = read(&recipes().join(page));
        for (language, file) in files {
            let fenced = format!("```{language}\n{}```\n", read(&recipes().join(file)));
            assert!(
                text.contains(&fenced),
                "docs/recipes/{page} must show docs/recipes/{file} verbatim in a ```{language} block"
            );
        }
    }
}

#[test]
fn every_recipe_configuration_passes_check() {
    let mut checked = 0;
    for entry in std::fs::read_dir(recipes()).expect("docs/recipes") {
        let config = entry.expect("directory entry").path().join("router.toml");
        if !config.is_file() {
            continue;
        }
        let output = Command::new(BINARY)
            .args(["check", "--config"])
            .arg(&config)
            .env_remove("BROADCAST_ROUTER_CONFIG")
            .env("RUST_LOG", "off")
            .output()
            .expect("the broadcast-router binary runs");
        assert!(
            output.status.success(),
            "check {} failed:\n{}{}",
            config.display(),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        checked += 1;
    }
    assert_eq!(checked, RECIPES.len(), "one router.toml per recipe");
}

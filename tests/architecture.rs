//! The module map of `docs/architecture.md`, enforced: every top-level
//! module of `src/` sits on a floor, and imports only modules on lower
//! floors (plus the few sideways imports listed here), so no module imports
//! one that imports it back. No source file grows past the size where it
//! stops having one job.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The floors, lowest first. A module may import the modules of the
/// floors below its own.
const FLOORS: &[&[&str]] = &[
    &["vocabulary", "telemetry"],
    &["config"],
    &["route"],
    &[
        "discovery",
        "plugin",
        "fanout",
        "aggregate",
        "auth",
        "limit",
        "tls",
    ],
    &["load", "jobs"],
    &["broadcast"],
    &["server"],
    &["reload", "demo"],
];

/// Imports between modules of the same floor: a stage using another
/// stage's type. They must not form a cycle.
const SIDEWAYS: &[(&str, &str)] = &[
    // Pods reached over HTTPS go through the TLS client.
    ("fanout", "tls"),
    // The aggregate hook returns the verdict type aggregation owns.
    ("plugin", "aggregate"),
];

/// Longest source file, in lines.
const MAX_LINES: usize = 600;

fn floor_of(module: &str) -> usize {
    FLOORS
        .iter()
        .position(|floor| floor.contains(&module))
        .unwrap_or_else(|| {
            panic!("module `{module}` is on no floor; add it to FLOORS and docs/architecture.md")
        })
}

/// Every `.rs` file under `dir`.
fn sources(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).expect("src/ lists") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            files.extend(sources(&path));
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            files.push(path);
        }
    }
    files.sort();
    files
}

/// The top-level module a file of `src/` belongs to (`None` for the crate
/// roots).
fn module_of(src: &Path, file: &Path) -> Option<String> {
    let relative = file.strip_prefix(src).expect("under src/");
    let first = relative.components().next()?.as_os_str().to_str()?;
    let name = first.strip_suffix(".rs").unwrap_or(first);
    (!matches!(name, "lib" | "main")).then(|| name.to_owned())
}

/// The top-level modules a file names through `crate::`, outside comments.
fn imports(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut in_use_group = false;
    for line in text.lines() {
        let code = line.split("//").next().unwrap_or_default();
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            rest = &rest[at + "crate::".len()..];
            if rest.starts_with('{') {
                in_use_group = true;
                rest = &rest[1..];
                found.extend(group_members(rest));
                continue;
            }
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            found.push(name);
        }
        if in_use_group {
            if !code.contains("crate::{") {
                found.extend(group_members(code));
            }
            if code.contains("};") {
                in_use_group = false;
            }
        }
    }
    found.sort();
    found.dedup();
    found
}

/// The first path segments listed in a `use crate::{…}` group's line.
fn group_members(line: &str) -> Vec<String> {
    line.split(',')
        .map(|item| item.trim().trim_start_matches('{'))
        .filter_map(|item| {
            let name: String = item
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            (!name.is_empty() && name.chars().next().is_some_and(char::is_lowercase))
                .then_some(name)
        })
        .collect()
}

#[test]
fn modules_import_only_lower_floors() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut edges: BTreeMap<(String, String), PathBuf> = BTreeMap::new();
    for file in sources(&src) {
        let Some(module) = module_of(&src, &file) else {
            continue;
        };
        let text = std::fs::read_to_string(&file).expect("source reads");
        for imported in imports(&text) {
            if imported != module && imported != "self" {
                edges
                    .entry((module.clone(), imported))
                    .or_insert(file.clone());
            }
        }
    }
    let mut wrong = Vec::new();
    for ((from, to), file) in &edges {
        let (from_floor, to_floor) = (floor_of(from), floor_of(to));
        let allowed = to_floor < from_floor
            || (to_floor == from_floor && SIDEWAYS.contains(&(from.as_str(), to.as_str())));
        if !allowed {
            wrong.push(format!(
                "{from} (floor {from_floor}) imports {to} (floor {to_floor}) in {}",
                file.display()
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "imports against the floors:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn sideways_imports_form_no_cycle() {
    for (from, to) in SIDEWAYS {
        assert_eq!(
            floor_of(from),
            floor_of(to),
            "{from} -> {to} is not sideways"
        );
        assert!(
            !SIDEWAYS.contains(&(to, from)),
            "{from} and {to} import each other"
        );
    }
}

#[test]
fn no_source_file_outgrows_one_job() {
    for root in ["src", "receiver/src"] {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(root);
        for file in sources(&dir) {
            let lines = std::fs::read_to_string(&file)
                .expect("source reads")
                .lines()
                .count();
            assert!(
                lines <= MAX_LINES,
                "{} has {lines} lines, more than {MAX_LINES}: split it by concern",
                file.display()
            );
        }
    }
}

#[test]
fn the_import_scanner_sees_groups_and_paths() {
    let text = "use crate::config::Config;\nuse crate::{\n    auth::Guard,\n    limit::Admission,\n};\n// crate::server in a comment\nlet x = crate::telemetry::metrics();\n";
    assert_eq!(imports(text), ["auth", "config", "limit", "telemetry"]);
}

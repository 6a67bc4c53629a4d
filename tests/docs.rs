//! The configuration examples of the documentation stay true: every fenced
//! ` ```toml ` block in `README.md` and in `docs/**/*.md` is checked
//! against the real configuration parser, so an example cannot drift from
//! what the router accepts. The fence's info string says what kind of
//! example a block is (the convention is also described in
//! `docs/development.md`, "Tests"):
//!
//! | Fence                | The block is                                  | It must                                       |
//! |----------------------|-----------------------------------------------|-----------------------------------------------|
//! | ` ```toml `          | a whole configuration file                    | pass `Config::parse`                          |
//! | ` ```toml route `    | the keys of one `[[routes]]` entry, no header | pass `Config::parse` once completed (below)   |
//! | ` ```toml fragment ` | a piece of a file, not valid on its own       | be valid TOML                                 |
//! | ` ```toml invalid `  | a mistake, shown as one                       | fail `Config::parse`                          |
//!
//! A `route` block is completed with a `[[routes]]` header and, where it has
//! none, a `name`, a `path`, and (without `targets` or `kubernetes`) a
//! `service` and a
//! `port`. Any other word after `toml` is an error, so a misspelt kind cannot skip
//! a block. `Config::parse` reads no files, so examples may name plugin,
//! token and certificate files that do not exist. A failure names the
//! Markdown file and the line of the block's opening fence.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use broadcast_router::config::Config;

/// What a ` ```toml ` block is meant to be, from its fence's info string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// ` ```toml `: a whole configuration file.
    Complete,
    /// ` ```toml route `: the keys of one `[[routes]]` entry.
    Route,
    /// ` ```toml fragment `: valid TOML, not a configuration on its own.
    Fragment,
    /// ` ```toml invalid `: a configuration the parser must refuse.
    Invalid,
}

/// One ` ```toml ` block found in a Markdown file.
#[derive(Debug)]
struct Block {
    /// The Markdown file, relative to the repository root.
    file: String,
    /// 1-based line of the opening fence.
    line: usize,
    /// The info string after `toml`, when it names no known kind.
    unknown_kind: Option<String>,
    /// What the block is meant to be (`Complete` when `unknown_kind` is set).
    kind: Kind,
    /// The block's text, without the fences and without the indentation of
    /// the opening fence.
    text: String,
}

impl Block {
    /// `FILE:LINE` of the opening fence, for failure messages.
    fn location(&self) -> String {
        format!("{}:{}", self.file, self.line)
    }
}

/// The repository root.
fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `README.md` and every `*.md` file under `docs/`, recursively, sorted.
fn markdown_files() -> Vec<PathBuf> {
    fn walk(dir: &Path, files: &mut Vec<PathBuf>) {
        let entries = std::fs::read_dir(dir)
            .unwrap_or_else(|error| panic!("cannot list {}: {error}", dir.display()));
        for entry in entries {
            let path = entry.expect("directory entry").path();
            if path.is_dir() {
                walk(&path, files);
            } else if path.extension().is_some_and(|ext| ext == "md") {
                files.push(path);
            }
        }
    }
    let root = root();
    let mut files = vec![root.join("README.md")];
    walk(&root.join("docs"), &mut files);
    files.sort();
    files
}

/// Every ` ```toml ` block of the Markdown `text`, read from `file`.
///
/// Fences are lines of three or more backticks, possibly indented (inside
/// list items); a block ends at a line of at least as many backticks and
/// nothing else. Blocks of other languages are skipped whole, so TOML
/// shown inside them is not mistaken for a block.
fn toml_blocks(file: &str, text: &str) -> Vec<Block> {
    let lines: Vec<&str> = text.lines().collect();
    let mut blocks = Vec::new();
    let mut index = 0;
    while index < lines.len() {
        let line = lines[index];
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        let ticks = trimmed.chars().take_while(|&c| c == '`').count();
        if ticks < 3 {
            index += 1;
            continue;
        }
        let info = trimmed[ticks..].trim();
        let opening = index;
        let mut body = Vec::new();
        index += 1;
        while index < lines.len() {
            let candidate = lines[index].trim();
            let closing = candidate.chars().take_while(|&c| c == '`').count();
            if closing >= ticks && closing == candidate.len() {
                break;
            }
            let content = lines[index];
            let strip = content
                .char_indices()
                .take_while(|&(at, c)| at < indent && c == ' ')
                .count();
            body.push(&content[strip..]);
            index += 1;
        }
        index += 1; // the closing fence
        let mut words = info.split_whitespace();
        if words.next() != Some("toml") {
            continue;
        }
        let rest: Vec<&str> = words.collect();
        let (kind, unknown_kind) = match rest.as_slice() {
            [] => (Kind::Complete, None),
            ["route"] => (Kind::Route, None),
            ["fragment"] => (Kind::Fragment, None),
            ["invalid"] => (Kind::Invalid, None),
            other => (Kind::Complete, Some(other.join(" "))),
        };
        let mut text = body.join("\n");
        text.push('\n');
        blocks.push(Block {
            file: file.to_string(),
            line: opening + 1,
            unknown_kind,
            kind,
            text,
        });
    }
    blocks
}

/// Every ` ```toml ` block of the documentation, in file order.
fn all_blocks() -> Vec<Block> {
    let root = root();
    let mut blocks = Vec::new();
    for path in markdown_files() {
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|error| panic!("cannot read {}: {error}", path.display()));
        let name = path
            .strip_prefix(&root)
            .unwrap_or(path.as_path())
            .display()
            .to_string();
        blocks.extend(toml_blocks(&name, &text));
    }
    blocks
}

/// The blocks of one kind, for the test that checks that kind.
fn blocks_of(kind: Kind) -> Vec<Block> {
    all_blocks()
        .into_iter()
        .filter(|block| block.kind == kind && block.unknown_kind.is_none())
        .collect()
}

/// A whole configuration made of a ` ```toml route ` block: a `[[routes]]`
/// header and, where the block has none, a `name`, a `path`, and (without
/// `targets` or `kubernetes`) a `service` and a `port`, put before the block's keys so
/// that a sub-table in the block (`[routes.udp]`) stays last.
fn complete_route(block: &Block) -> Result<String, String> {
    let keys: toml::Table =
        toml::from_str(&block.text).map_err(|error| format!("not valid TOML: {error}"))?;
    let mut text = String::from("[[routes]]\n");
    if !keys.contains_key("name") {
        text.push_str("name = \"docs-example\"\n");
    }
    if !keys.contains_key("path") {
        text.push_str("path = \"/docs/example\"\n");
    }
    if !keys.contains_key("targets") && !keys.contains_key("kubernetes") {
        if !keys.contains_key("service") {
            text.push_str("service = \"web.default.svc.cluster.local\"\n");
        }
        if !keys.contains_key("port") {
            text.push_str("port = 8080\n");
        }
    }
    text.push_str(&block.text);
    Ok(text)
}

/// Panics with every failure, one per block, if there are any.
fn report(what: &str, failures: Vec<String>) {
    if failures.is_empty() {
        return;
    }
    let mut message = format!("{} {what}:\n", failures.len());
    for failure in failures {
        let _ = writeln!(message, "\n{failure}");
    }
    panic!("{message}");
}

/// The documentation has configuration examples to check, at least one of
/// each kind the pages use, and every fence names a known kind: a typo
/// such as ` ```toml fragmnet ` fails here instead of skipping a block.
#[test]
fn every_toml_fence_names_a_known_kind() {
    let blocks = all_blocks();
    assert!(
        blocks.iter().any(|block| block.file == "README.md"),
        "README.md has no ```toml block; the scan looks for fences starting with ```toml"
    );
    assert!(
        blocks.iter().any(|block| block.file.starts_with("docs")),
        "docs/ has no ```toml block; the scan looks for fences starting with ```toml"
    );
    let failures = blocks
        .iter()
        .filter_map(|block| {
            block.unknown_kind.as_ref().map(|kind| {
                format!(
                    "{}: unknown kind `{kind}` after ```toml; use nothing, `route`, `fragment` or `invalid`",
                    block.location()
                )
            })
        })
        .collect();
    report("toml fences with an unknown kind", failures);
}

/// Every ` ```toml ` block is a whole configuration that `Config::parse`
/// accepts.
#[test]
fn complete_examples_are_valid_configurations() {
    let blocks = blocks_of(Kind::Complete);
    assert!(!blocks.is_empty(), "no complete ```toml example found");
    let failures = blocks
        .iter()
        .filter_map(|block| {
            Config::parse(&block.text).err().map(|problems| {
                format!(
                    "{}: this ```toml block is not a valid configuration (lines count from the line after the fence): {problems}",
                    block.location()
                )
            })
        })
        .collect();
    report("invalid configuration examples", failures);
}

/// Every ` ```toml route ` block, completed into a file with one route,
/// is accepted by `Config::parse`.
#[test]
fn route_examples_are_valid_in_a_route() {
    let failures = blocks_of(Kind::Route)
        .iter()
        .filter_map(|block| match complete_route(block) {
            Err(error) => Some(format!(
                "{}: this ```toml route block is {error}",
                block.location()
            )),
            Ok(text) => Config::parse(&text).err().map(|problems| {
                format!(
                    "{}: this ```toml route block is not a valid route: {problems}\nThe completed file:\n{text}",
                    block.location()
                )
            }),
        })
        .collect();
    report("invalid route examples", failures);
}

/// Every ` ```toml fragment ` block is at least valid TOML.
#[test]
fn fragments_are_valid_toml() {
    let failures = blocks_of(Kind::Fragment)
        .iter()
        .filter_map(|block| {
            toml::from_str::<toml::Table>(&block.text)
                .err()
                .map(|error| {
                    format!(
                        "{}: this ```toml fragment block is not valid TOML: {error}",
                        block.location()
                    )
                })
        })
        .collect();
    report("fragments that are not valid TOML", failures);
}

/// Every ` ```toml invalid ` block is refused by `Config::parse`: an
/// example of a mistake must stay a mistake.
#[test]
fn invalid_examples_are_refused() {
    let failures = blocks_of(Kind::Invalid)
        .iter()
        .filter(|block| Config::parse(&block.text).is_ok())
        .map(|block| {
            format!(
                "{}: this ```toml invalid block is accepted by Config::parse; fix the example or its fence",
                block.location()
            )
        })
        .collect();
    report("invalid examples that parse", failures);
}

/// The block scanner itself: kinds, indentation, the line of the fence,
/// and blocks of other languages skipped whole.
#[test]
fn the_scanner_finds_toml_blocks_and_their_lines() {
    let text = "\
# Title

```toml
a = 1
```

- item

  ```toml route
  policy = \"all\"
  ```

````markdown
```toml
not = \"a block\"
```
````

```toml invalid
b = 2
```
";
    let blocks = toml_blocks("x.md", text);
    let found: Vec<(usize, Kind, &str)> = blocks
        .iter()
        .map(|block| (block.line, block.kind, block.text.as_str()))
        .collect();
    assert_eq!(
        found,
        vec![
            (3, Kind::Complete, "a = 1\n"),
            (9, Kind::Route, "policy = \"all\"\n"),
            (19, Kind::Invalid, "b = 2\n"),
        ]
    );
    assert_eq!(blocks[1].location(), "x.md:9");
}

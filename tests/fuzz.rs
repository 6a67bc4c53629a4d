//! Fuzzing, as property tests that run on stable Rust in the normal test
//! suite: every input the router takes from outside is thrown at the code
//! that reads it, and a panic — or an answer that breaks the property —
//! fails the test.
//!
//! | target | code | property |
//! |---|---|---|
//! | `config` | [`Config::parse`] | never panics; gives a `Config`, or problems that all point inside the text; the same text always gives the same problems |
//! | `frame`, `frame_round_trip` | [`frame::decode`], [`frame::encode`] | never panics; accepts exactly the well-formed datagrams, and those re-encode to the same bytes; encode → decode round-trips |
//! | `route` | [`Route::service_name`], [`Route::upstream_path_and_query`] | the allow-list guard lets through exactly the labels docs/configuration.md allows, and the name is the template filled in; the forwarded path stays under `upstream_path`, keeps the query, and is refused exactly for `.`/`..` segments (also `..;`) and backslashes |
//! | `plugin_patch` | [`bindings::apply`] | never panics; a patch that is not valid HTTP is refused; an accepted one gives a request whose URL stays on the pod and whose headers are what the patch said |
//! | `plugin_verdict` | [`bindings::check_verdict`] | never panics; accepts exactly the statuses 200–599 with a valid content type, unchanged |
//!
//! Each target first runs its seeds, `tests/fuzz/corpus/<target>/` (and
//! for `config`, every `config/*.toml` of the repository), then random
//! cases: arbitrary input, input built from the format's own pieces, and
//! structured mutations of the seeds. A failing case is shrunk, and its
//! seed is saved to `proptest-regressions/fuzz/<target>.txt`, which every
//! later run replays first; commit that file with the fix, and add the
//! shrunk input to the corpus, which outlives changes to the generators.
//!
//! How long: at most `PROPTEST_CASES` cases (default 256) and at most
//! `FUZZ_SECONDS` seconds (default 5) per target. Setting `FUZZ_SECONDS`
//! alone runs for that long, whatever the number of cases:
//!
//! ```sh
//! FUZZ_SECONDS=60 cargo test --test fuzz
//! ```

use std::fmt::Debug;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, HeaderName, HeaderValue, Method};
use broadcast_router::config::Config;
use broadcast_router::fanout::PodRequest;
use broadcast_router::frame::{self, FIXED_HEADER, MAGIC, MAX_ID_LEN, VERSION};
use broadcast_router::plugin::bindings::{self, Header, RequestPatch, Verdict};
use broadcast_router::route::Route;
use proptest::prelude::*;
use proptest::test_runner::{
    Config as RunnerConfig, FileFailurePersistence, RngSeed, TestCaseError, TestRunner,
};

// ---------------------------------------------------------------------------
// The runner: seeds first, then bounded random cases.
// ---------------------------------------------------------------------------

/// Cases per target when `PROPTEST_CASES` is not set.
const DEFAULT_CASES: u32 = 256;
/// Seconds per target when `FUZZ_SECONDS` is not set.
const DEFAULT_SECONDS: u64 = 5;
/// Cases per runner; between runners the time budget is checked.
const BATCH: u32 = 64;

/// How much one target may run.
struct Budget {
    cases: u64,
    time: Duration,
}

fn budget() -> Budget {
    let number = |name: &str| {
        std::env::var(name).ok().map(|value| {
            value
                .trim()
                .parse::<u64>()
                .unwrap_or_else(|_| panic!("{name}={value:?} is not a whole number"))
        })
    };
    let cases = number("PROPTEST_CASES");
    match number("FUZZ_SECONDS") {
        Some(seconds) => Budget {
            cases: cases.unwrap_or(u64::MAX),
            time: Duration::from_secs(seconds),
        },
        None => Budget {
            cases: cases.unwrap_or(u64::from(DEFAULT_CASES)),
            time: Duration::from_secs(DEFAULT_SECONDS),
        },
    }
}

/// Runs `test` on cases from `strategy` within the budget; panics with
/// the shrunk failing case if one is found.
fn fuzz<S>(target: &'static str, strategy: S, test: impl Fn(S::Value) -> Result<(), TestCaseError>)
where
    S: Strategy,
    S::Value: Debug,
{
    let budget = budget();
    let regressions: &'static str = Box::leak(
        format!(
            "{}/proptest-regressions/fuzz/{target}.txt",
            env!("CARGO_MANIFEST_DIR")
        )
        .into_boxed_str(),
    );
    let started = Instant::now();
    let mut ran = 0u64;
    while ran < budget.cases {
        let batch = u32::try_from((budget.cases - ran).min(u64::from(BATCH))).expect("small");
        let defaults = RunnerConfig::default();
        let fixed_seed = !matches!(defaults.rng_seed, RngSeed::Random);
        let config = RunnerConfig {
            // A fixed PROPTEST_RNG_SEED (to reproduce a run) would repeat
            // the same batch: run once, at most 16 default runs' worth.
            cases: if fixed_seed {
                u32::try_from(budget.cases.min(u64::from(DEFAULT_CASES) * 16)).expect("small")
            } else {
                batch
            },
            failure_persistence: Some(Box::new(FileFailurePersistence::Direct(regressions))),
            source_file: Some(file!()),
            max_shrink_time: 60_000,
            ..defaults
        };
        let cases = config.cases;
        let mut runner = TestRunner::new(config);
        if let Err(failure) = runner.run(&strategy, &test) {
            panic!("fuzz target {target}: {failure}");
        }
        ran += u64::from(cases);
        if fixed_seed || started.elapsed() >= budget.time {
            break;
        }
    }
    eprintln!(
        "fuzz target {target}: {ran} random cases in {:.1?}",
        started.elapsed()
    );
}

/// The seed files of `target` with extension `ext`, sorted by name.
fn corpus(target: &str, ext: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fuzz/corpus")
        .join(target);
    let mut files: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap_or_else(|error| panic!("{}: {error}", dir.display()))
        .map(|entry| entry.expect("corpus entry").path())
        .filter(|path| path.extension().is_some_and(|e| e == ext))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no *.{ext} seeds in {}", dir.display());
    files
}

/// Runs `test` on every seed, naming the seed in a failure.
fn run_seeds<T>(seeds: &[(String, T)], test: impl Fn(&T) -> Result<(), TestCaseError>) {
    for (name, seed) in seeds {
        if let Err(error) = test(seed) {
            panic!("seed {name}: {error}");
        }
    }
}

/// Decodes a seed's escapes: `\r`, `\n`, `\t`, `\0`, `\\`, `\xNN` (one
/// byte) and `\u{…}` (a character as UTF-8).
fn unescape(text: &str) -> Vec<u8> {
    let mut bytes = Vec::new();
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            bytes.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes());
            continue;
        }
        match chars.next() {
            Some('r') => bytes.push(b'\r'),
            Some('n') => bytes.push(b'\n'),
            Some('t') => bytes.push(b'\t'),
            Some('0') => bytes.push(0),
            Some('\\') => bytes.push(b'\\'),
            Some('x') => {
                let hex: String = chars.by_ref().take(2).collect();
                bytes.push(u8::from_str_radix(&hex, 16).expect("\\xNN"));
            }
            Some('u') => {
                let code: String = chars.by_ref().skip(1).take_while(|&c| c != '}').collect();
                let c = char::from_u32(u32::from_str_radix(&code, 16).expect("\\u{hex}"))
                    .expect("a character");
                bytes.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes());
            }
            other => panic!("unknown escape \\{other:?} in {text:?}"),
        }
    }
    bytes
}

fn unescape_str(text: &str) -> String {
    String::from_utf8(unescape(text)).expect("escapes make UTF-8")
}

/// The lines of a seed file that are not comments or blank.
fn seed_lines(path: &Path) -> Vec<(String, String)> {
    let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .map(|line| {
            let (keyword, rest) = line.split_once(' ').unwrap_or((line, ""));
            (keyword.to_owned(), rest.to_owned())
        })
        .collect()
}

fn file_name(path: &Path) -> String {
    path.file_name().unwrap().to_string_lossy().into_owned()
}

// ---------------------------------------------------------------------------
// config: Config::parse
// ---------------------------------------------------------------------------

/// Every configuration the repository ships, then the corpus seeds.
fn config_seeds() -> Vec<(String, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files: Vec<PathBuf> = fs::read_dir(root.join("config"))
        .expect("config/")
        .map(|entry| entry.expect("config entry").path())
        .filter(|path| path.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    files.extend(corpus("config", "toml"));
    files
        .iter()
        .map(|path| {
            let bytes = fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            (
                file_name(path),
                String::from_utf8_lossy(&bytes).into_owned(),
            )
        })
        .collect()
}

/// Parsing never panics, gives the same answer twice, and every problem
/// has a message and points at a line and column inside `text`.
fn check_config(text: &str) -> Result<(), TestCaseError> {
    let first = Config::parse(text);
    match &first {
        Ok(config) => {
            // Compiling the routes must not panic either, nor must asking a
            // templated route for a name.
            for route in &config.routes {
                let route = Route::from_config(route);
                for name in ["web", "WEB", "web.evil", "", "a"] {
                    let _ = route.service_name(Some(name));
                }
            }
        }
        Err(problems) => {
            prop_assert!(!problems.0.is_empty(), "an error without problems");
            let lines: Vec<&str> = text.split('\n').collect();
            for problem in &problems.0 {
                prop_assert!(!problem.message.trim().is_empty(), "{problem}: no message");
                prop_assert!(
                    (1..=lines.len()).contains(&problem.line),
                    "{problem}: line outside the {} line(s) of the text",
                    lines.len()
                );
                let width = lines[problem.line - 1].chars().count();
                prop_assert!(
                    (1..=width + 1).contains(&problem.column),
                    "{problem}: column outside line {} ({width} characters)",
                    problem.line
                );
            }
        }
    }
    let second = Config::parse(text);
    match (&first, &second) {
        (Ok(_), Ok(_)) => {}
        (Err(a), Err(b)) => prop_assert_eq!(a, b, "the same text gave different problems"),
        _ => prop_assert!(false, "the same text was accepted once and refused once"),
    }
    Ok(())
}

/// Pieces of the configuration language, to build text the parser gets
/// past its syntax check with.
const CONFIG_TOKENS: &[&str] = &[
    "[server]",
    "[dns]",
    "[[routes]]",
    "[plugins.p]",
    "[routes.udp]",
    "\n",
    "\n",
    "\n",
    " = ",
    "=",
    " ",
    "\"",
    "'",
    "\"\"\"",
    "[",
    "]",
    "{",
    "}",
    ",",
    ".",
    "#",
    "\r\n",
    "\t",
    "listen",
    "admin_listen",
    "max_body_bytes",
    "shutdown_grace",
    "plugin_cache_dir",
    "nameservers",
    "min_ttl",
    "max_ttl",
    "serve_stale_for",
    "timeout",
    "attempts",
    "name",
    "path",
    "methods",
    "service",
    "targets",
    "port",
    "upstream_path",
    "allow_services",
    "retries",
    "retry_backoff",
    "concurrency",
    "deadline",
    "policy",
    "max_pod_body_bytes",
    "mode",
    "report_to",
    "report_retry_for",
    "protocol",
    "udp",
    "repeat",
    "interval",
    "max_datagram_bytes",
    "plugins",
    "plugin",
    "config",
    "on_error",
    "memory",
    "hook_timeout",
    "quorum",
    "\"127.0.0.1:8080\"",
    "\"[::1]:0\"",
    "\"127.0.0.2\"",
    "\"1s\"",
    "\"0s\"",
    "\"2 parsecs\"",
    "\"1MiB\"",
    "\"0B\"",
    "0",
    "1",
    "-1",
    "65536",
    "18446744073709551616",
    "1e400",
    "nan",
    "true",
    "\"POST\"",
    "\"get\"",
    "\"/x\"",
    "\"/{service}/{*rest}\"",
    "\"/{a}/{a}\"",
    "\"{service}\"",
    "\"{service}.default.svc.cluster.local\"",
    "\"web\"",
    "\"cache-*\"",
    "\"[\"",
    "\"all\"",
    "\"any\"",
    "\"first\"",
    "\"collect\"",
    "\"udp\"",
    "\"async\"",
    "\"http://127.0.0.1:9/r\"",
    "\"fail-open\"",
    "\"é\"",
    "\"\\u0000\"",
    "\"\\\"",
    "é",
    "\u{0}",
    "\u{feff}",
    "\u{10ffff}",
];

/// Text made of the language's pieces.
fn config_token_text() -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(CONFIG_TOKENS), 0..80)
        .prop_map(|tokens| tokens.concat())
}

/// Values that stress one key's type and range checks.
const CONFIG_VALUES: &[&str] = &[
    "\"\"",
    "0",
    "-1",
    "1.5",
    "4294967296",
    "18446744073709551616",
    "1e400",
    "inf",
    "nan",
    "true",
    "[]",
    "[[]]",
    "{}",
    "{ quorum = 0 }",
    "{ quorum = 4294967296 }",
    "\"0s\"",
    "\"1ns\"",
    "\"18446744073709551615s\"",
    "\"99999999999 TiB\"",
    "\"1é\"",
    "\"{service}\"",
    "\"{service}{service}\"",
    "\"/{a}/{a}\"",
    "\"/{*a}/b\"",
    "\"/:old\"",
    "\"*\"",
    "\"[::1]:0\"",
    "\"256.0.0.1:1\"",
    "\"\\u0000\"",
    "\"\\uD800\"",
    "\"\u{0}\"",
    "'''\n'''",
    "\"web.\"",
    "[\"**\", \"[!\", \"\"]",
    "1979-05-27T07:32:00Z",
];

/// Lines worth inserting anywhere.
const CONFIG_LINES: &[&str] = &[
    "[[routes]]",
    "[server]",
    "[dns]",
    "[plugins.x]",
    "name = \"dup\"",
    "path = \"/dup\"",
    "targets = [\"127.0.0.2:80\"]",
    "service = \"{service}.ns\"",
    "allow_services = [\"*\"]",
    "protocol = \"udp\"",
    "udp = { repeat = 0 }",
    "plugins = [\"x\"]",
    "policy = { quorum = 2 }",
    "mode = \"async\"",
    "unknown_key = 1",
    "[routes]",
    "routes = 1",
    "x.y.z = 1",
    "= 1",
];

/// One structured change to a configuration text.
#[derive(Debug, Clone)]
enum Edit {
    /// Insert text at a character position.
    Insert(usize, String),
    /// Delete up to `len` characters from a position.
    Delete(usize, usize),
    /// Replace one character.
    Replace(usize, char),
    /// Repeat a line right after itself.
    DuplicateLine(usize),
    /// Remove a line.
    DeleteLine(usize),
    /// Exchange two lines.
    SwapLines(usize, usize),
    /// Exchange the values of two `key = value` lines.
    SwapValues(usize, usize),
    /// Give a `key = value` line another value.
    SetValue(usize, String),
    /// Insert a line.
    InsertLine(usize, String),
}

fn edit() -> impl Strategy<Value = Edit> {
    let fragment = prop_oneof![
        prop::sample::select(CONFIG_TOKENS).prop_map(str::to_owned),
        any::<char>().prop_map(String::from),
        "[ -~]{0,8}",
    ];
    // Character edits mostly break the TOML syntax; line and value edits
    // keep it and reach the validation, so they come more often.
    prop_oneof![
        1 => (any::<usize>(), fragment).prop_map(|(at, text)| Edit::Insert(at, text)),
        1 => (any::<usize>(), 1..20usize).prop_map(|(at, len)| Edit::Delete(at, len)),
        1 => (any::<usize>(), any::<char>()).prop_map(|(at, c)| Edit::Replace(at, c)),
        2 => any::<usize>().prop_map(Edit::DuplicateLine),
        2 => any::<usize>().prop_map(Edit::DeleteLine),
        2 => (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Edit::SwapLines(a, b)),
        3 => (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Edit::SwapValues(a, b)),
        4 => (any::<usize>(), prop::sample::select(CONFIG_VALUES))
            .prop_map(|(line, value)| Edit::SetValue(line, value.to_owned())),
        2 => (any::<usize>(), prop::sample::select(CONFIG_LINES))
            .prop_map(|(line, text)| Edit::InsertLine(line, text.to_owned())),
    ]
}

/// Applies `edit` to `text`; positions wrap around the text's length.
fn apply_edit(text: &str, edit: &Edit) -> String {
    let mut chars: Vec<char> = text.chars().collect();
    let mut lines: Vec<String> = text.split('\n').map(str::to_owned).collect();
    let line = |i: usize| i % lines.len();
    // The lines of the form `key = value`, by index.
    let assignments: Vec<usize> = (0..lines.len())
        .filter(|&i| lines[i].contains(" = ") && !lines[i].trim_start().starts_with('#'))
        .collect();
    match edit {
        Edit::Insert(at, fragment) => {
            let at = at % (chars.len() + 1);
            chars.splice(at..at, fragment.chars());
            return chars.into_iter().collect();
        }
        Edit::Delete(at, len) => {
            let at = at % (chars.len() + 1);
            let end = (at + len).min(chars.len());
            chars.drain(at..end);
            return chars.into_iter().collect();
        }
        Edit::Replace(at, c) => {
            if !chars.is_empty() {
                let at = at % chars.len();
                chars[at] = *c;
            }
            return chars.into_iter().collect();
        }
        Edit::DuplicateLine(i) => {
            let i = line(*i);
            let copy = lines[i].clone();
            lines.insert(i + 1, copy);
        }
        Edit::DeleteLine(i) => {
            if lines.len() > 1 {
                lines.remove(line(*i));
            }
        }
        Edit::SwapLines(a, b) => {
            let (a, b) = (line(*a), line(*b));
            lines.swap(a, b);
        }
        Edit::SwapValues(a, b) => {
            if !assignments.is_empty() {
                let a = assignments[a % assignments.len()];
                let b = assignments[b % assignments.len()];
                let (key_a, value_a) = lines[a].split_once(" = ").expect("assignment");
                let (key_b, value_b) = lines[b].split_once(" = ").expect("assignment");
                let (new_a, new_b) = (
                    format!("{key_a} = {value_b}"),
                    format!("{key_b} = {value_a}"),
                );
                lines[a] = new_a;
                lines[b] = new_b;
            }
        }
        Edit::SetValue(i, value) => {
            if !assignments.is_empty() {
                let i = assignments[i % assignments.len()];
                let key = lines[i].split_once(" = ").expect("assignment").0.to_owned();
                lines[i] = format!("{key} = {value}");
            }
        }
        Edit::InsertLine(i, text) => {
            let i = i % (lines.len() + 1);
            lines.insert(i, text.clone());
        }
    }
    lines.join("\n")
}

#[test]
fn config_parser_never_panics_and_locates_every_problem() {
    let seeds = config_seeds();
    run_seeds(&seeds, |text| check_config(text));
    let texts: Vec<String> = seeds.into_iter().map(|(_, text)| text).collect();
    let mutated = (
        prop::sample::select(texts),
        prop::collection::vec(edit(), 1..6),
    )
        .prop_map(|(text, edits)| edits.iter().fold(text, |text, e| apply_edit(&text, e)));
    let strategy = prop_oneof![
        3 => mutated,
        1 => config_token_text(),
        1 => any::<String>(),
    ];
    fuzz("config", strategy, |text| check_config(&text));
}

// ---------------------------------------------------------------------------
// frame: the UDP datagram format
// ---------------------------------------------------------------------------

/// Whether `datagram` is a well-formed frame, by the format's description
/// (written independently of `frame::decode`).
fn well_formed(datagram: &[u8]) -> bool {
    if datagram.len() < FIXED_HEADER || datagram[..4] != MAGIC || datagram[4] != VERSION {
        return false;
    }
    let id_len = usize::from(datagram[14]);
    (1..=MAX_ID_LEN).contains(&id_len)
        && datagram.len() >= FIXED_HEADER + id_len
        && datagram[FIXED_HEADER..FIXED_HEADER + id_len]
            .iter()
            .all(|&b| (0x21..=0x7e).contains(&b))
}

/// Decoding never panics, accepts exactly the well-formed datagrams, and
/// what it accepts encodes back to the same bytes.
fn check_datagram(datagram: &[u8]) -> Result<(), TestCaseError> {
    match frame::decode(datagram) {
        Ok(decoded) => {
            prop_assert!(well_formed(datagram), "accepted a malformed datagram");
            let again = frame::encode(
                decoded.copy,
                decoded.sequence,
                &decoded.id,
                &decoded.payload,
            );
            prop_assert_eq!(&again[..], datagram, "decode then encode changed the bytes");
        }
        Err(error) => {
            prop_assert!(
                !well_formed(datagram),
                "refused a well-formed datagram: {}",
                error
            );
            prop_assert!(!error.to_string().is_empty());
        }
    }
    Ok(())
}

/// A hex seed: whitespace and `#` comment lines are ignored.
fn hex_seed(path: &Path) -> Vec<u8> {
    let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let digits: String = text
        .lines()
        .filter(|line| !line.starts_with('#'))
        .flat_map(|line| line.chars().filter(|c| !c.is_whitespace()))
        .collect();
    assert!(
        digits.len().is_multiple_of(2),
        "{}: odd number of digits",
        path.display()
    );
    (0..digits.len())
        .step_by(2)
        .map(|i| {
            u8::from_str_radix(&digits[i..i + 2], 16)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        })
        .collect()
}

/// Broadcast ids a frame can carry: 1 to 128 printable ASCII characters.
fn frame_id() -> impl Strategy<Value = String> {
    "[!-~]{1,128}"
}

/// One change to a datagram's bytes.
#[derive(Debug, Clone)]
enum ByteEdit {
    Flip(usize, u8),
    Set(usize, u8),
    Truncate(usize),
    Extend(Vec<u8>),
    /// Sets the id length byte, the field with the most arithmetic.
    IdLength(u8),
}

fn byte_edit() -> impl Strategy<Value = ByteEdit> {
    prop_oneof![
        (any::<usize>(), 1..=255u8).prop_map(|(at, mask)| ByteEdit::Flip(at, mask)),
        (any::<usize>(), any::<u8>()).prop_map(|(at, byte)| ByteEdit::Set(at, byte)),
        any::<usize>().prop_map(ByteEdit::Truncate),
        prop::collection::vec(any::<u8>(), 1..16).prop_map(ByteEdit::Extend),
        any::<u8>().prop_map(ByteEdit::IdLength),
    ]
}

fn apply_byte_edit(mut datagram: Vec<u8>, edit: &ByteEdit) -> Vec<u8> {
    let len = datagram.len();
    match edit {
        ByteEdit::Flip(at, mask) if len > 0 => datagram[at % len] ^= *mask,
        ByteEdit::Set(at, byte) if len > 0 => datagram[at % len] = *byte,
        ByteEdit::Truncate(at) => datagram.truncate(at % (len + 1)),
        ByteEdit::Extend(bytes) => datagram.extend_from_slice(bytes),
        ByteEdit::IdLength(byte) if len > 14 => datagram[14] = *byte,
        _ => {}
    }
    datagram
}

#[test]
fn frame_decoder_accepts_exactly_well_formed_datagrams() {
    let seeds: Vec<(String, Vec<u8>)> = corpus("frame", "hex")
        .iter()
        .map(|path| (file_name(path), hex_seed(path)))
        .collect();
    run_seeds(&seeds, |datagram| check_datagram(datagram));
    let seed_bytes: Vec<Vec<u8>> = seeds.into_iter().map(|(_, bytes)| bytes).collect();
    let valid = (
        any::<u8>(),
        any::<u64>(),
        frame_id(),
        prop::collection::vec(any::<u8>(), 0..64),
    )
        .prop_map(|(copy, sequence, id, payload)| {
            frame::encode(copy, sequence, &id, &payload).to_vec()
        });
    let base = prop_oneof![valid, prop::sample::select(seed_bytes)];
    let mutated = (base, prop::collection::vec(byte_edit(), 0..6))
        .prop_map(|(datagram, edits)| edits.iter().fold(datagram, apply_byte_edit));
    let strategy = prop_oneof![
        3 => mutated,
        1 => prop::collection::vec(any::<u8>(), 0..300),
    ];
    fuzz("frame", strategy, |datagram| check_datagram(&datagram));
}

#[test]
fn frames_round_trip_for_every_id_sequence_and_payload() {
    let strategy = (
        any::<u8>(),
        any::<u64>(),
        frame_id(),
        prop::collection::vec(any::<u8>(), 0..2048),
    );
    fuzz(
        "frame_round_trip",
        strategy,
        |(copy, sequence, id, payload)| {
            let datagram = frame::encode(copy, sequence, &id, &payload);
            prop_assert_eq!(datagram.len(), frame::encoded_len(&id, payload.len()));
            let decoded =
                frame::decode(&datagram).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(decoded.copy, copy);
            prop_assert_eq!(decoded.sequence, sequence);
            prop_assert_eq!(decoded.id, id);
            prop_assert_eq!(&decoded.payload[..], &payload[..]);
            Ok(())
        },
    );
}

// ---------------------------------------------------------------------------
// route: the service name and the path taken from a request
// ---------------------------------------------------------------------------

/// Two templated routes: `narrow` allows `web` and `cache-*` under the
/// cluster suffix, `open` allows every name and has no suffix.
fn templated_routes() -> (Route, Route) {
    let config = Config::parse(
        r#"
[[routes]]
name = "narrow"
path = "/n/{service}/{*rest}"
service = "{service}.default.svc.cluster.local"
port = 8080
allow_services = ["web", "cache-*"]
upstream_path = "/api/{service}/{rest}"

[[routes]]
name = "open"
path = "/o/{service}/{*rest}"
service = "{service}"
port = 8080
allow_services = ["*"]
"#,
    )
    .unwrap_or_else(|problems| panic!("{problems}"));
    let narrow = Route::from_config(&config.routes[0]);
    let open = Route::from_config(&config.routes[1]);
    (narrow, open)
}

/// Whether `label` may fill a template, by the rules of docs/configuration.md, written
/// independently of `route.rs`.
fn allowed_label(label: &str) -> bool {
    let lower_ldh = label
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    let numeric = label.chars().all(|c| c.is_ascii_digit())
        || label
            .strip_prefix("0x")
            .is_some_and(|hex| hex.chars().all(|c| c.is_ascii_hexdigit()));
    (1..=63).contains(&label.len())
        && lower_ldh
        && !label.starts_with('-')
        && !label.ends_with('-')
        && !label.starts_with("xn--")
        && !numeric
        && label != "localhost"
}

/// The guard lets through exactly the allowed labels, and the name it
/// gives is the template with that label.
fn check_service_name(routes: &(Route, Route), requested: &str) -> Result<(), TestCaseError> {
    let (narrow, open) = routes;
    let listed = requested == "web" || requested.starts_with("cache-");
    for (route, suffix, allowed) in [
        (
            narrow,
            ".default.svc.cluster.local",
            allowed_label(requested) && listed,
        ),
        (open, "", allowed_label(requested)),
    ] {
        match route.service_name(Some(requested)) {
            Ok(name) => {
                prop_assert!(allowed, "{}: {:?} let through", route.name, requested);
                prop_assert_eq!(name, Some(format!("{requested}{suffix}")));
            }
            Err(refused) => {
                prop_assert!(
                    !allowed,
                    "{}: {:?} refused: {}",
                    route.name,
                    requested,
                    refused
                );
                prop_assert!(refused.to_string().contains("service"));
            }
        }
    }
    Ok(())
}

/// The forwarded path stays under `upstream_path`, is a valid request
/// target, keeps the client's query, and refuses exactly the captured
/// values with a `.` or `..` segment (also with `;parameters`, which
/// Tomcat strips) or a backslash (a `/` to some servers).
fn check_upstream_path(route: &Route, rest: &str) -> Result<(), TestCaseError> {
    let params = [
        ("service".to_owned(), "web".to_owned()),
        ("rest".to_owned(), rest.to_owned()),
    ];
    let uri: axum::http::Uri = "/n/web/x?q=1".parse().expect("uri");
    let dot_segment = rest.split('/').any(|segment| {
        let decoded = percent_encoding::percent_decode_str(segment).decode_utf8_lossy();
        let name = decoded.split(';').next().unwrap_or_default();
        name == "." || name == ".." || decoded.contains('\\')
    });
    match route.upstream_path_and_query(&uri, &params) {
        Err(_) => prop_assert!(dot_segment, "{:?} refused", rest),
        Ok(forwarded) => {
            prop_assert!(!dot_segment, "{:?} forwarded as {:?}", rest, forwarded);
            let (path, query) = forwarded.split_once('?').expect("the query is kept");
            prop_assert_eq!(query, "q=1", "{:?} changed the query", rest);
            prop_assert!(
                path.starts_with("/api/web/"),
                "{:?} left the template",
                forwarded
            );
            let parsed = forwarded.parse::<axum::http::uri::PathAndQuery>();
            prop_assert!(parsed.is_ok(), "{:?} is not a request target", forwarded);
            let parsed = parsed.expect("checked");
            prop_assert_eq!(parsed.as_str(), forwarded.as_str());
            // Segment by segment, decoding gives back what was captured.
            let decoded: Vec<String> = path["/api/web/".len()..]
                .split('/')
                .map(|segment| {
                    percent_encoding::percent_decode_str(segment)
                        .decode_utf8_lossy()
                        .into_owned()
                })
                .collect();
            prop_assert_eq!(decoded.join("/"), rest);
        }
    }
    Ok(())
}

/// Names worth trying first: the hostile names of `tests/service_guard.rs`.
const HOSTILE_NAMES: &[&str] = &[
    "",
    "web",
    "cache-eu",
    "WEB",
    "Web",
    "web.evil",
    "web.",
    ".web",
    "..",
    "10.0.0.1",
    "[::1]",
    "::1",
    "0x7f000001",
    "0X7F000001",
    "2130706433",
    "0x",
    "0xcafe-api",
    "localhost",
    "localhost.",
    "xn--80ak6aa92e",
    "wéb",
    "ｗｅｂ",
    "-web",
    "web-",
    "cache-",
    "web/evil",
    "web%2eevil",
    "web\0",
    "web ",
    " web",
    "web\n",
    "cache-*",
    "*",
    "cache-[a-z]",
];

#[test]
fn route_guard_and_forwarded_path_hold_for_any_capture() {
    let routes = templated_routes();
    let seeds: Vec<(String, String)> = HOSTILE_NAMES
        .iter()
        .map(|name| ((*name).to_owned(), unescape_str(name)))
        .collect();
    run_seeds(&seeds, |name| check_service_name(&routes, name));
    let name = prop_oneof![
        3 => "(cache-|web|xn--|0x|localhost)?[a-z0-9.-]{0,66}",
        1 => r"[a-zA-Z0-9._:%/\\\[\] -]{0,16}",
        1 => ".{0,70}",
    ];
    let rest = prop_oneof![
        3 => r"[a-z./%?#{}\\ -]{0,24}",
        1 => r"(\.|\.\.|%2e|%2E%2e)(/[a-z.]{0,4}){0,3}",
        1 => ".{0,24}",
    ];
    fuzz("route", (name, rest), |(name, rest)| {
        check_service_name(&routes, &name)?;
        check_upstream_path(&routes.0, &rest)
    });
}

// ---------------------------------------------------------------------------
// plugin output: request patches and verdicts
// ---------------------------------------------------------------------------

/// Whether patches are refused when they set or remove headers that frame
/// the message (`content-length`, `transfer-encoding`, …), the broadcast
/// id or the `Via` loop marker. (`host` is not among them: a patch may set
/// it to a valid `host[:port]`, see [`surely_bad_host`].)
const FRAMING_HEADERS_REFUSED: bool = true;

/// Headers a patch may not touch although they do reach pods: the
/// router sets them on every request.
const ROUTER_SET_HEADERS: &[&str] = &["x-broadcast-id", "via"];

/// Headers the router computes for each pod itself (docs/requests.md, "The forwarded
/// request").
const FRAMING_HEADERS: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
    "expect",
];

/// A patch as the strategies build it (the contract's type has no `Debug`
/// worth shrinking on).
#[derive(Debug, Clone, Default)]
struct Patch {
    set: Vec<(String, String)>,
    remove: Vec<String>,
    path: Option<String>,
    body: Option<Vec<u8>>,
}

impl Patch {
    fn to_contract(&self) -> RequestPatch {
        RequestPatch {
            set_headers: self
                .set
                .iter()
                .map(|(name, value)| Header {
                    name: name.clone(),
                    value: value.clone(),
                })
                .collect(),
            remove_headers: self.remove.clone(),
            path: self.path.clone(),
            body: self.body.clone(),
        }
    }
}

/// RFC 9110 `token` characters: what a header name is made of.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Whether `name` is a header name by RFC 9110 (upper case is accepted
/// and lowercased).
fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(is_tchar)
}

/// Whether `value` can go on a header line (RFC 9110 `field-value`):
/// visible ASCII, space, tab and `obs-text` (bytes from 0x80, here UTF-8);
/// no control characters, so no line breaks.
fn valid_value(value: &str) -> bool {
    value
        .bytes()
        .all(|b| b == b'\t' || (b >= 0x20 && b != 0x7f))
}

/// Whether `value` certainly cannot be a `Host`: empty, or with a byte
/// no `host[:port]` has (space, `/`, `@`, `?`, `#`, controls, non-ASCII).
fn surely_bad_host(value: &str) -> bool {
    value.is_empty()
        || value
            .bytes()
            .any(|b| b <= b' ' || b >= 0x7f || b"/@?#\\,;\"".contains(&b))
}

/// Whether `value` is certainly a fine `Host`: lowercase DNS labels and an
/// optional port from 1 to 9999.
fn surely_good_host(value: &str) -> bool {
    let (name, port) = value.split_once(':').unwrap_or((value, "1"));
    let port_ok = (1..=4).contains(&port.len())
        && port.bytes().all(|b| b.is_ascii_digit())
        && !port.starts_with('0');
    let name_ok = !name.is_empty()
        && name.len() <= 200
        && name.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        });
    port_ok && name_ok
}

/// Whether `path` certainly cannot be a request target: no leading slash,
/// or a byte that would break the request line or start a fragment.
fn surely_bad_path(path: &str) -> bool {
    !path.starts_with('/') || path.bytes().any(|b| b <= b' ' || b == 0x7f || b == b'#')
}

/// Whether `path` is certainly a fine request target: a slash, then only
/// RFC 3986 path and query characters with well-formed escapes.
fn surely_good_path(path: &str) -> bool {
    let bytes = path.as_bytes();
    let allowed = |b: u8| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/?".contains(&b);
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                if !(i + 2 < bytes.len()
                    && bytes[i + 1].is_ascii_hexdigit()
                    && bytes[i + 2].is_ascii_hexdigit())
                {
                    return false;
                }
                i += 3;
            }
            b if allowed(b) => i += 1,
            _ => return false,
        }
    }
    path.starts_with('/')
}

/// The request a pod would get before any plugin runs.
fn original_request() -> Arc<PodRequest> {
    let mut headers = HeaderMap::new();
    headers.insert("x-client", HeaderValue::from_static("1"));
    headers.insert("x-broadcast-id", HeaderValue::from_static("b-1"));
    headers.insert("content-type", HeaderValue::from_static("application/json"));
    Arc::new(PodRequest {
        method: Method::POST,
        path_and_query: "/cache-invalidation?key=1".to_owned(),
        headers,
        body: bytes::Bytes::from_static(b"{\"key\":\"user:42\"}"),
    })
}

/// What `apply` must do with `patch`: refuse what is not valid HTTP, and
/// otherwise give exactly the patched request, on the same pod.
fn check_patch(patch: &Patch, expect: Option<bool>) -> Result<(), TestCaseError> {
    let original = original_request();
    let result = bindings::apply(&original, patch.to_contract());
    let names_ok = patch.remove.iter().all(|name| valid_name(name))
        && patch.set.iter().all(|(name, _)| valid_name(name));
    let values_ok = patch.set.iter().all(|(_, value)| valid_value(value));
    let touches_framing = patch
        .set
        .iter()
        .map(|(name, _)| name)
        .chain(&patch.remove)
        .any(|name| {
            let name = name.to_ascii_lowercase();
            FRAMING_HEADERS.contains(&name.as_str()) || ROUTER_SET_HEADERS.contains(&name.as_str())
        });
    let path_bad = patch.path.as_deref().is_some_and(surely_bad_path);
    let path_good = patch.path.as_deref().is_none_or(surely_good_path);
    let hosts = || {
        patch
            .set
            .iter()
            .filter(|(name, _)| name.eq_ignore_ascii_case("host"))
            .map(|(_, value)| value.as_str())
    };
    let host_bad = hosts().any(surely_bad_host);
    let host_good = hosts().all(surely_good_host);
    let must_refuse = !names_ok
        || !values_ok
        || path_bad
        || host_bad
        || (FRAMING_HEADERS_REFUSED && touches_framing);
    let must_accept = names_ok
        && values_ok
        && path_good
        && host_good
        && !(FRAMING_HEADERS_REFUSED && touches_framing);
    match result {
        Err(reason) => {
            prop_assert!(!must_accept, "refused a valid patch: {}", reason);
            prop_assert!(!reason.0.trim().is_empty(), "refused without a reason");
            if let Some(expected) = expect {
                prop_assert!(
                    !expected,
                    "refused ({}), the seed expects acceptance",
                    reason
                );
            }
        }
        Ok(patched) => {
            prop_assert!(!must_refuse, "accepted an invalid patch: {:?}", patched);
            if let Some(expected) = expect {
                prop_assert!(expected, "accepted, the seed expects a refusal");
            }
            check_patched(patch, &original, &patched)?;
        }
    }
    Ok(())
}

/// An accepted patch gives a request that is valid HTTP, goes to the same
/// pod, and carries what the patch set.
fn check_patched(
    patch: &Patch,
    original: &PodRequest,
    patched: &PodRequest,
) -> Result<(), TestCaseError> {
    prop_assert_eq!(&patched.method, &original.method);
    let expected_path = patch.path.as_ref().unwrap_or(&original.path_and_query);
    prop_assert_eq!(&patched.path_and_query, expected_path);
    let expected_body: &[u8] = patch.body.as_deref().unwrap_or(&original.body);
    prop_assert_eq!(&patched.body[..], expected_body);

    // The fan-out joins the pod's address and the path into a URL: the
    // path must not be able to move the request to another host or port.
    let url = format!("http://127.0.0.1:8080{}", patched.path_and_query);
    let parsed = reqwest::Url::parse(&url);
    prop_assert!(parsed.is_ok(), "{:?} is not a URL: {:?}", url, parsed);
    let parsed = parsed.unwrap();
    prop_assert_eq!(parsed.host_str(), Some("127.0.0.1"), "{}", url);
    prop_assert_eq!(parsed.port(), Some(8080), "{}", url);
    let request = axum::http::Request::builder()
        .method(patched.method.clone())
        .uri(&url)
        .body(());
    prop_assert!(request.is_ok(), "{:?} is not a request URI", url);

    // Removals happen first, then sets (the last of a name wins).
    for name in &patch.remove {
        let name = HeaderName::from_bytes(name.as_bytes()).expect("checked name");
        if !patch
            .set
            .iter()
            .any(|(set, _)| set.eq_ignore_ascii_case(name.as_str()))
        {
            prop_assert!(!patched.headers.contains_key(&name), "{} not removed", name);
        }
    }
    for (name, _) in &patch.set {
        let name = HeaderName::from_bytes(name.as_bytes()).expect("checked name");
        let last = patch
            .set
            .iter()
            .rev()
            .find(|(set, _)| set.eq_ignore_ascii_case(name.as_str()))
            .map(|(_, value)| value.as_str())
            .expect("set");
        let values: Vec<&HeaderValue> = patched.headers.get_all(&name).iter().collect();
        prop_assert_eq!(values.len(), 1, "{} has {} values", name, values.len());
        prop_assert_eq!(values[0].as_bytes(), last.as_bytes(), "value of {}", name);
    }
    if FRAMING_HEADERS_REFUSED {
        for name in FRAMING_HEADERS {
            prop_assert!(
                !patched.headers.contains_key(*name),
                "{} reached a pod",
                name
            );
        }
    }
    Ok(())
}

/// Header names: valid tokens, the ones that matter most, and anything.
fn header_name() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[a-zA-Z0-9!#$%&'*+.^_`|~-]{1,24}",
        2 => prop::sample::select(
            [
                "x-broadcast-id",
                "x-signature",
                "content-type",
                "X-Client",
                "x-client",
                "traceparent",
                "host",
                "Host",
            ]
            .as_slice()
        )
        .prop_map(str::to_owned),
        1 => prop::sample::select(FRAMING_HEADERS).prop_map(str::to_owned),
        1 => ".{0,12}",
        1 => "[a-z]{1,6}[\\x00-\\x20:\"(),/;<=>?@\\[\\\\\\]{}\\x7f][a-z]{0,6}",
    ]
}

/// Header values: visible ASCII, and values with line breaks, NUL,
/// DEL or non-ASCII.
fn header_value() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[ -~\\t]{0,40}",
        1 => "[a-z0-9]{1,8}(\\.[a-z0-9]{1,6}){0,2}(:[0-9]{1,5})?",
        1 => "[a-z]{0,6}(\r\n|\n|\r|\u{0}|\u{7f}|é)[ -~]{0,10}",
        1 => ".{0,12}",
    ]
}

/// Paths: RFC 3986 paths, paths with one odd character, and anything.
fn patch_path() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "/[a-zA-Z0-9._~!$&'()*+,;=:@/?-]{0,30}",
        2 => "/[a-z/]{0,8}[ \"#%<>\\\\^`{|}\\[\\]\\x00-\\x1f\\x7f\u{80}-\u{10ffff}][a-z/?=]{0,8}",
        1 => "(//|/\\.\\./|https?://|\\*|)[a-z.:@/]{0,16}",
        1 => ".{0,16}",
    ]
}

fn patch() -> impl Strategy<Value = Patch> {
    (
        prop::collection::vec((header_name(), header_value()), 0..4),
        prop::collection::vec(header_name(), 0..3),
        prop::option::of(patch_path()),
        prop::option::of(prop::collection::vec(any::<u8>(), 0..64)),
    )
        .prop_map(|(set, remove, path, body)| Patch {
            set,
            remove,
            path,
            body,
        })
}

/// A patch seed: `expect ok|err`, then `set NAME: VALUE`, `remove NAME`,
/// `path PATH` and `body BYTES` lines, with escapes (see [`unescape`]).
fn patch_seed(path: &Path) -> (bool, Patch) {
    let mut expect = None;
    let mut patch = Patch::default();
    for (keyword, rest) in seed_lines(path) {
        match keyword.as_str() {
            "expect" => expect = Some(rest == "ok"),
            "set" => {
                let (name, value) = rest.split_once(": ").unwrap_or((&rest, ""));
                patch.set.push((unescape_str(name), unescape_str(value)));
            }
            "remove" => patch.remove.push(unescape_str(&rest)),
            "path" => patch.path = Some(unescape_str(&rest)),
            "body" => patch.body = Some(unescape(&rest)),
            other => panic!("{}: unknown line {other:?}", path.display()),
        }
    }
    let expect = expect.unwrap_or_else(|| panic!("{}: no `expect` line", path.display()));
    (expect, patch)
}

#[test]
fn plugin_patches_are_checked_before_they_reach_a_pod() {
    let seeds: Vec<(String, (bool, Patch))> = corpus("patch", "patch")
        .iter()
        .map(|path| (file_name(path), patch_seed(path)))
        .collect();
    run_seeds(&seeds, |(expect, patch)| check_patch(patch, Some(*expect)));
    fuzz("plugin_patch", patch(), |patch| check_patch(&patch, None));
}

/// A verdict as the strategies build it.
#[derive(Debug, Clone)]
struct VerdictCase {
    ok: bool,
    status: u16,
    content_type: Option<String>,
    body: Vec<u8>,
}

/// What `check_verdict` must do: accept exactly the statuses 200–599 with
/// a content type that can be a header value, and change nothing.
fn check_verdict_case(case: &VerdictCase, expect: Option<bool>) -> Result<(), TestCaseError> {
    let valid =
        (200..=599).contains(&case.status) && case.content_type.as_deref().is_none_or(valid_value);
    let checked = bindings::check_verdict(Verdict {
        ok: case.ok,
        status: case.status,
        content_type: case.content_type.clone(),
        body: case.body.clone(),
    });
    if let Some(expected) = expect {
        prop_assert_eq!(checked.is_ok(), expected, "{:?}", checked.as_ref().err());
    }
    match checked {
        Err(reason) => {
            prop_assert!(!valid, "refused a valid verdict: {}", reason);
            prop_assert!(!reason.0.trim().is_empty());
        }
        Ok(checked) => {
            prop_assert!(valid, "accepted an invalid verdict");
            prop_assert_eq!(checked.ok, case.ok);
            prop_assert_eq!(checked.status.as_u16(), case.status);
            let content_type = case.content_type.as_deref().unwrap_or("application/json");
            prop_assert_eq!(checked.content_type.as_bytes(), content_type.as_bytes());
            prop_assert_eq!(&checked.body[..], &case.body[..]);
            let response = axum::http::Response::builder()
                .status(checked.status)
                .header("content-type", checked.content_type)
                .body(checked.body);
            prop_assert!(response.is_ok());
        }
    }
    Ok(())
}

/// A verdict seed: `expect ok|err`, `ok true|false`, `status N`, and
/// optional `content-type TEXT` and `body BYTES` lines.
fn verdict_seed(path: &Path) -> (bool, VerdictCase) {
    let mut expect = None;
    let mut case = VerdictCase {
        ok: true,
        status: 200,
        content_type: None,
        body: Vec::new(),
    };
    for (keyword, rest) in seed_lines(path) {
        match keyword.as_str() {
            "expect" => expect = Some(rest == "ok"),
            "ok" => case.ok = rest == "true",
            "status" => case.status = rest.parse().expect("status is a u16"),
            "content-type" => case.content_type = Some(unescape_str(&rest)),
            "body" => case.body = unescape(&rest),
            other => panic!("{}: unknown line {other:?}", path.display()),
        }
    }
    let expect = expect.unwrap_or_else(|| panic!("{}: no `expect` line", path.display()));
    (expect, case)
}

#[test]
fn plugin_verdicts_are_checked_before_they_reach_the_client() {
    let seeds: Vec<(String, (bool, VerdictCase))> = corpus("verdict", "verdict")
        .iter()
        .map(|path| (file_name(path), verdict_seed(path)))
        .collect();
    run_seeds(&seeds, |(expect, case)| {
        check_verdict_case(case, Some(*expect))
    });
    let status = prop_oneof![3 => 150..=650u16, 1 => any::<u16>()];
    let strategy = (
        any::<bool>(),
        status,
        prop::option::of(header_value()),
        prop::collection::vec(any::<u8>(), 0..32),
    )
        .prop_map(|(ok, status, content_type, body)| VerdictCase {
            ok,
            status,
            content_type,
            body,
        });
    fuzz("plugin_verdict", strategy, |case| {
        check_verdict_case(&case, None)
    });
}

/// A patch may not set the headers the router computes itself: with
/// `content-length: 0` the pod would get no body at all, with a larger one
/// it would wait for bytes that never come, and `transfer-encoding: gzip`
/// would make it try to unzip a plain body. (docs/requests.md, "The
/// forwarded request": Content-Length is recomputed.)
#[test]
fn plugin_patches_cannot_set_framing_headers() {
    for name in FRAMING_HEADERS.iter().chain(ROUTER_SET_HEADERS) {
        let patch = Patch {
            set: vec![((*name).to_owned(), "0".to_owned())],
            body: Some(b"HELLO".to_vec()),
            ..Patch::default()
        };
        let result = bindings::apply(&original_request(), patch.to_contract());
        assert!(result.is_err(), "a patch setting {name} was accepted");
    }
}

/// `host` is the plugin's to set, per pod (e.g. the virtual host a cache
/// keys objects on), but only to a valid `host[:port]`; removing it sends
/// the pod's own address.
#[test]
fn plugin_patches_may_set_host_to_a_host_and_port_only() {
    for host in [
        "www.example.com",
        "www.example.com:8080",
        "10.0.0.7",
        "[fd00::5]:80",
    ] {
        let patch = Patch {
            set: vec![("host".to_owned(), host.to_owned())],
            ..Patch::default()
        };
        let patched = bindings::apply(&original_request(), patch.to_contract())
            .unwrap_or_else(|reason| panic!("host {host:?} refused: {reason}"));
        assert_eq!(patched.headers["host"], host);
    }
    for host in [
        "",
        "a b",
        "example.com/x",
        "user@example.com",
        "example.com:0",
        "x:99999",
    ] {
        let patch = Patch {
            set: vec![("host".to_owned(), host.to_owned())],
            ..Patch::default()
        };
        let result = bindings::apply(&original_request(), patch.to_contract());
        assert!(result.is_err(), "host {host:?} was accepted");
    }
    let remove = Patch {
        remove: vec!["host".to_owned()],
        ..Patch::default()
    };
    bindings::apply(&original_request(), remove.to_contract()).expect("host may be removed");
}

//! `stress`: a test-only plugin whose behaviour its config chooses, so that
//! the router's tests can load the same component as a well-behaved plugin
//! or a hostile one (spinning forever, allocating until memory runs out,
//! panicking, failing, or answering out of contract).
//!
//! With `{}` it implements all three hooks harmlessly: every target is
//! selected, every patch is empty, and the verdict is `ok` with status 200
//! and body `{"stress":"ok"}`. See README.md for the config keys.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

use std::cell::Cell;
use std::fmt;
use std::hint::black_box;

use broadcast_plugin_sdk::{
    Hooks, Outcome, Plugin, Request, RequestHead, RequestPatch, Target, Verdict,
};
use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};

/// The size of each chunk `allocate` asks for.
const CHUNK: usize = 1 << 20;

/// Where the plugin misbehaves: `init` or one of the hooks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Stage {
    /// The exported `init` (building the plugin from its config).
    Init,
    /// The `select-targets` hook.
    #[default]
    SelectTargets,
    /// The `transform` hook.
    Transform,
    /// The `aggregate` hook.
    Aggregate,
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Stage::Init => "init",
            Stage::SelectTargets => "select-targets",
            Stage::Transform => "transform",
            Stage::Aggregate => "aggregate",
        })
    }
}

/// How much work to do: a bounded amount, or `"forever"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Amount {
    /// This many iterations or bytes, then carry on normally.
    Bounded(u64),
    /// Never stop (spin), or stop only when allocation fails (allocate).
    Forever,
}

impl<'de> Deserialize<'de> for Amount {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(AmountVisitor)
    }
}

struct AmountVisitor;

impl Visitor<'_> for AmountVisitor {
    type Value = Amount;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(r#"a non-negative integer or "forever""#)
    }

    fn visit_u64<E: de::Error>(self, amount: u64) -> Result<Amount, E> {
        Ok(Amount::Bounded(amount))
    }

    fn visit_i64<E: de::Error>(self, amount: i64) -> Result<Amount, E> {
        u64::try_from(amount)
            .map(Amount::Bounded)
            .map_err(|_| E::invalid_value(de::Unexpected::Signed(amount), &self))
    }

    fn visit_str<E: de::Error>(self, word: &str) -> Result<Amount, E> {
        match word {
            "forever" => Ok(Amount::Forever),
            _ => Err(E::invalid_value(de::Unexpected::Str(word), &self)),
        }
    }
}

/// The plugin's config; every key is optional.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Busy-loop this many iterations, or forever, in [`Config::stage`].
    #[serde(default)]
    pub spin: Option<Amount>,
    /// Allocate and write this many bytes (in 1 MiB chunks), or forever
    /// until an allocation fails and the instance traps, in
    /// [`Config::stage`].
    #[serde(default)]
    pub allocate: Option<Amount>,
    /// Panic (trap) in this stage.
    #[serde(default)]
    pub panic: Option<Stage>,
    /// Return `Err("stress: asked to fail")` from this stage.
    #[serde(default)]
    pub fail: Option<Stage>,
    /// `select-targets` also returns an index one past the last target.
    #[serde(default)]
    pub bad_index: bool,
    /// `transform` sets a header named `"bad header\n"`.
    #[serde(default)]
    pub bad_header: bool,
    /// `transform` sets `x-target-labels` to the target's labels, as
    /// `key=value` pairs joined by `,`.
    #[serde(default)]
    pub echo_labels: bool,
    /// `transform` sets `x-stress-call` to how many `transform` calls this
    /// instance has had (this one included) and `x-stress-targets` to how
    /// many targets this call has: what the router's grouping did.
    #[serde(default)]
    pub count_calls: bool,
    /// `transform` sets `x-stress-target` to the pod's `ip:port`: a
    /// different patch for every pod.
    #[serde(default)]
    pub stamp_target: bool,
    /// `transform` sets `x-stress-echo` to the value of this request
    /// header in the copy it was given (`-` when absent).
    #[serde(default)]
    pub echo_header: Option<String>,
    /// `transform` returns this many patches, whatever the number of
    /// targets (copies of its usual first patch, or empty ones).
    #[serde(default)]
    pub patch_count: Option<usize>,
    /// Where `spin` and `allocate` happen; default `select-targets`.
    #[serde(default, rename = "where")]
    pub stage: Stage,
    /// `aggregate` answers with what the sandbox let the plugin see:
    /// environment variables, a file, a directory listing, a TCP connection,
    /// and whether the clock works.
    #[serde(default)]
    pub probe: bool,
}

/// Tries what a sandboxed plugin must not be able to do, and reports the
/// outcome of each attempt as text.
fn probe() -> serde_json::Value {
    let outcome = |result: std::io::Result<String>| match result {
        Ok(what) => format!("allowed: {what}"),
        Err(error) => format!("denied: {error}"),
    };
    let env: Vec<String> = std::env::vars().map(|(name, _)| name).collect();
    let file =
        outcome(std::fs::read("/etc/hostname").map(|bytes| format!("{} bytes", bytes.len())));
    let dir = outcome(std::fs::read_dir("/").map(|entries| format!("{} entries", entries.count())));
    let socket =
        outcome(std::net::TcpStream::connect("127.0.0.1:9").map(|_| "connected".to_owned()));
    let clock = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .is_ok_and(|since| since.as_secs() > 0);
    serde_json::json!({ "env": env, "file": file, "dir": dir, "socket": socket, "clock": clock })
}

/// The plugin: its config, checked.
#[derive(Debug)]
pub struct Stress {
    config: Config,
    /// `transform` calls so far.
    transforms: Cell<u32>,
}

impl Stress {
    /// Runs the misbehaviour the config asks of `stage`, in the order spin,
    /// allocate, panic, fail.
    fn act(config: &Config, stage: Stage) -> Result<(), String> {
        if config.stage == stage {
            if let Some(spin) = config.spin {
                spin_for(spin);
            }
            if let Some(allocate) = config.allocate {
                allocate_for(allocate);
            }
        }
        if config.panic == Some(stage) {
            panic!("stress: asked to panic in {stage}");
        }
        if config.fail == Some(stage) {
            return Err("stress: asked to fail".into());
        }
        Ok(())
    }
}

/// Busy-loops; `Forever` never returns.
fn spin_for(amount: Amount) {
    match amount {
        Amount::Bounded(iterations) => {
            for iteration in 0..iterations {
                black_box(iteration);
            }
        }
        Amount::Forever => {
            let mut counter = 0u64;
            loop {
                counter = black_box(counter.wrapping_add(1));
            }
        }
    }
}

/// Allocates `amount` bytes in 1 MiB chunks, writing every byte, and frees
/// them again; `Forever` keeps going until an allocation fails. A failed
/// allocation aborts, as it does in any Rust program: the instance traps.
fn allocate_for(amount: Amount) -> u64 {
    let limit = match amount {
        Amount::Bounded(bytes) => bytes,
        Amount::Forever => u64::MAX,
    };
    let mut chunks: Vec<Vec<u8>> = Vec::new();
    let mut total = 0u64;
    while total < limit {
        let size = usize::try_from(limit - total).map_or(CHUNK, |left| left.min(CHUNK));
        let mut chunk = Vec::with_capacity(size);
        chunk.resize(size, 0xa5);
        chunks.push(black_box(chunk));
        total += size as u64;
    }
    black_box(&chunks);
    total
}

impl Plugin for Stress {
    type Config = Config;
    const HOOKS: Hooks = Hooks::all();

    fn new(config: Config) -> Result<Self, String> {
        Stress::act(&config, Stage::Init)?;
        Ok(Stress {
            config,
            transforms: Cell::new(0),
        })
    }

    fn select_targets(&self, _head: &RequestHead, targets: &[Target]) -> Result<Vec<u32>, String> {
        Stress::act(&self.config, Stage::SelectTargets)?;
        let mut indices: Vec<u32> = (0..targets.len() as u32).collect();
        if self.config.bad_index {
            indices.push(targets.len() as u32);
        }
        Ok(indices)
    }

    fn transform(
        &self,
        request: &Request,
        targets: &[Target],
    ) -> Result<Vec<RequestPatch>, String> {
        Stress::act(&self.config, Stage::Transform)?;
        let call = self.transforms.get() + 1;
        self.transforms.set(call);
        let mut patches = targets
            .iter()
            .map(|target| self.patch(request, target, call, targets.len()))
            .collect::<Vec<_>>();
        if let Some(count) = self.config.patch_count {
            let first = patches.first().cloned().unwrap_or_default();
            patches.resize(count, first);
        }
        Ok(patches)
    }

    fn aggregate(&self, _head: &RequestHead, _outcomes: &[Outcome]) -> Result<Verdict, String> {
        Stress::act(&self.config, Stage::Aggregate)?;
        if self.config.probe {
            return Ok(Verdict::json(true, 200, &probe()));
        }
        Ok(Verdict::json(
            true,
            200,
            &serde_json::json!({"stress": "ok"}),
        ))
    }
}

impl Stress {
    /// The patch of one pod, in `transform` call number `call` of `count`
    /// targets.
    fn patch(&self, request: &Request, target: &Target, call: u32, count: usize) -> RequestPatch {
        let mut patch = RequestPatch::new();
        if self.config.count_calls {
            patch = patch
                .set_header("x-stress-call", call.to_string())
                .set_header("x-stress-targets", count.to_string());
        }
        if self.config.stamp_target {
            patch = patch.set_header("x-stress-target", target.authority());
        }
        if let Some(name) = &self.config.echo_header {
            patch = patch.set_header("x-stress-echo", request.header(name).unwrap_or("-"));
        }
        if self.config.echo_labels {
            let labels: Vec<String> = target
                .labels
                .iter()
                .map(|(key, value)| format!("{key}={value}"))
                .collect();
            patch.set_headers.push(broadcast_plugin_sdk::Header {
                name: "x-target-labels".into(),
                value: labels.join(","),
            });
        }
        if self.config.bad_header {
            patch.set_headers.push(broadcast_plugin_sdk::Header {
                name: "bad header\n".into(),
                value: "stress".into(),
            });
        }
        patch
    }
}

broadcast_plugin_sdk::export_plugin!(Stress);

#[cfg(test)]
mod tests {
    use super::*;
    use broadcast_plugin_sdk::{instantiate, testing};

    fn stress(config: &str) -> Result<Stress, String> {
        instantiate::<Stress>(config)
    }

    #[test]
    fn empty_config_is_well_behaved() {
        let plugin = stress("{}").unwrap();
        let targets = testing::targets(&["10.0.0.1", "10.0.0.2"], 80);
        let head = testing::head("b");
        assert_eq!(plugin.select_targets(&head, &targets), Ok(vec![0, 1]));
        let patches = plugin
            .transform(&testing::request("b", b""), &targets)
            .unwrap();
        assert_eq!(patches, vec![RequestPatch::new(); 2]);
        let verdict = plugin.aggregate(&head, &[]).unwrap();
        assert!(verdict.ok);
        assert_eq!(verdict.status, 200);
        assert_eq!(verdict.body_text(), r#"{"stress":"ok"}"#);
        assert_eq!(
            Stress::HOOKS,
            Hooks::SELECT_TARGETS | Hooks::TRANSFORM | Hooks::AGGREGATE
        );
    }

    #[test]
    fn bounded_work_completes() {
        let plugin =
            stress(r#"{"spin": 100000, "allocate": 3000000, "where": "transform"}"#).unwrap();
        let targets = testing::targets(&["10.0.0.1"], 80);
        assert!(
            plugin
                .transform(&testing::request("b", b""), &targets)
                .is_ok()
        );
        assert_eq!(
            allocate_for(Amount::Bounded(3 * CHUNK as u64 + 5)),
            3 * CHUNK as u64 + 5
        );
        assert_eq!(allocate_for(Amount::Bounded(0)), 0);
    }

    #[test]
    fn failures_and_contract_breaches_happen_where_asked() {
        let targets = testing::targets(&["10.0.0.1", "10.0.0.2"], 80);
        let head = testing::head("b");
        let failing = stress(r#"{"fail": "aggregate"}"#).unwrap();
        assert!(failing.select_targets(&head, &targets).is_ok());
        assert_eq!(
            failing.aggregate(&head, &[]),
            Err("stress: asked to fail".into())
        );
        assert_eq!(
            stress(r#"{"fail": "init"}"#).err(),
            Some("invalid config: stress: asked to fail".into())
        );
        let bad_index = stress(r#"{"bad_index": true}"#).unwrap();
        assert_eq!(bad_index.select_targets(&head, &targets), Ok(vec![0, 1, 2]));
        let bad_header = stress(r#"{"bad_header": true}"#).unwrap();
        let patches = bad_header
            .transform(&testing::request("b", b""), &targets)
            .unwrap();
        assert_eq!(patches[0].set_headers[0].name, "bad header\n");
        let miscounted = stress(r#"{"patch_count": 3}"#).unwrap();
        let patches = miscounted
            .transform(&testing::request("b", b""), &targets)
            .unwrap();
        assert_eq!(patches.len(), 3);
    }

    #[test]
    fn transform_reports_calls_targets_and_what_it_saw() {
        let plugin =
            stress(r#"{"count_calls": true, "stamp_target": true, "echo_header": "x-seen"}"#)
                .unwrap();
        let targets = testing::targets(&["10.0.0.1", "10.0.0.2"], 80);
        let mut request = testing::request("b", b"");
        request
            .head
            .headers
            .push(broadcast_plugin_sdk::Header::new("x-seen", "yes"));
        let header = |patch: &RequestPatch, name: &str| {
            patch
                .set_headers
                .iter()
                .find(|header| header.name == name)
                .map(|header| header.value.clone())
        };
        let first = plugin.transform(&request, &targets).unwrap();
        assert_eq!(header(&first[1], "x-stress-call").as_deref(), Some("1"));
        assert_eq!(header(&first[1], "x-stress-targets").as_deref(), Some("2"));
        assert_eq!(
            header(&first[1], "x-stress-target").as_deref(),
            Some("10.0.0.2:80")
        );
        assert_eq!(header(&first[0], "x-stress-echo").as_deref(), Some("yes"));
        let second = plugin
            .transform(&testing::request("b", b""), &targets[..1])
            .unwrap();
        assert_eq!(header(&second[0], "x-stress-call").as_deref(), Some("2"));
        assert_eq!(header(&second[0], "x-stress-echo").as_deref(), Some("-"));
    }

    #[test]
    #[should_panic(expected = "stress: asked to panic in transform")]
    fn panics_where_asked() {
        let plugin = stress(r#"{"panic": "transform"}"#).unwrap();
        let target = testing::target(0, "10.0.0.1", 80);
        let _ = plugin.transform(&testing::request("b", b""), &[target]);
    }

    #[test]
    fn config_errors_are_clear() {
        let error = stress(r#"{"spin": "always"}"#).unwrap_err();
        assert!(
            error.contains(r#"expected a non-negative integer or "forever""#),
            "{error}"
        );
        let error = stress(r#"{"where": "everywhere"}"#).unwrap_err();
        assert!(error.contains("unknown variant `everywhere`"), "{error}");
        let error = stress(r#"{"spinn": 1}"#).unwrap_err();
        assert!(error.contains("unknown field `spinn`"), "{error}");
        assert_eq!(
            stress(r#"{"spin": "forever", "allocate": "forever"}"#)
                .unwrap()
                .config
                .spin,
            Some(Amount::Forever)
        );
    }
}

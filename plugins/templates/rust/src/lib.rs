//! template-rust: a complete minimal plugin to copy — all three hooks,
//! a typed config, native unit tests.
//!
//! - `select-targets`: every pod except those listed in `skip`;
//! - `transform`: sets `x-plugin-tag` on each pod's copy when `tag` is set
//!   (one call for many pods: one patch per pod);
//! - `aggregate`: `ok` when every pod answered 2xx (200, else 502), with a
//!   JSON summary as the body.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

use broadcast_plugin_sdk::{
    Hooks, Outcome, Plugin, Request, RequestHead, RequestPatch, Target, Verdict, keep_where,
};
use serde::Deserialize;

/// The route's `config = { ... }` table; `deny_unknown_fields` turns typos
/// into `init` errors, which `broadcast-router check` reports.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Pod addresses to leave out.
    #[serde(default)]
    skip: Vec<String>,
    /// A value for the `x-plugin-tag` header of every pod's copy.
    #[serde(default)]
    tag: Option<String>,
}

/// The plugin, built from its config on every instance.
pub struct Template {
    config: Config,
}

impl Plugin for Template {
    type Config = Config;
    const HOOKS: Hooks = Hooks::all();

    fn new(config: Config) -> Result<Self, String> {
        Ok(Template { config })
    }

    fn select_targets(&self, _head: &RequestHead, targets: &[Target]) -> Result<Vec<u32>, String> {
        Ok(keep_where(targets, |target| {
            !self.config.skip.contains(&target.address)
        }))
    }

    /// One patch per target, in order. The tag is the same for every pod,
    /// so every pod gets the same patch (the pods keep sharing one copy,
    /// and the SDK hands the router that one patch for all). For a patch that depends on the pod, implement
    /// `transform_target(request, target)` instead and let the SDK's
    /// `transform` call it for each target.
    fn transform(
        &self,
        _request: &Request,
        targets: &[Target],
    ) -> Result<Vec<RequestPatch>, String> {
        let patch = match &self.config.tag {
            Some(tag) => RequestPatch::new().set_header("x-plugin-tag", tag.clone()),
            None => RequestPatch::new(),
        };
        Ok(vec![patch; targets.len()])
    }

    fn aggregate(&self, _head: &RequestHead, outcomes: &[Outcome]) -> Result<Verdict, String> {
        let answered = outcomes
            .iter()
            .filter(|outcome| outcome.is_success())
            .count();
        let ok = answered == outcomes.len();
        let body = serde_json::json!({ "ok": ok, "answered": answered, "pods": outcomes.len() });
        Ok(Verdict::json(ok, if ok { 200 } else { 502 }, &body))
    }
}

broadcast_plugin_sdk::export_plugin!(Template);

#[cfg(test)]
mod tests {
    use super::*;
    use broadcast_plugin_sdk::{ErrorKind, instantiate, testing};

    #[test]
    fn skips_tags_and_judges() {
        let plugin = instantiate::<Template>(r#"{"skip": ["10.0.0.2"], "tag": "t"}"#).unwrap();
        let targets = testing::targets(&["10.0.0.1", "10.0.0.2", "10.0.0.3"], 8080);
        let head = testing::head("b-1");
        assert_eq!(plugin.select_targets(&head, &targets), Ok(vec![0, 2]));
        let patches = plugin
            .transform(&testing::request("b-1", b"{}"), &targets[..2])
            .unwrap();
        assert_eq!(patches.len(), 2);
        assert!(!patches[0].is_empty());
        let outcomes = [
            testing::answered(targets[0].clone(), 200, b"{}"),
            testing::failure(targets[2].clone(), ErrorKind::Timeout),
        ];
        let verdict = plugin.aggregate(&head, &outcomes).unwrap();
        assert!(!verdict.ok);
        assert_eq!(verdict.status, 502);
        assert!(instantiate::<Template>(r#"{"skipp": []}"#).is_err());
    }
}

//! `noop`: a benchmark-only plugin that implements all three hooks and
//! does as little as the contract allows — every pod selected, every patch
//! empty, a fixed verdict — so that what it costs is the router's own
//! per-broadcast overhead: a fresh instance, `init`, and passing each hook
//! its arguments and results.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

use broadcast_plugin_sdk::{
    Hooks, NoConfig, Outcome, Plugin, Request, RequestHead, RequestPatch, Target, Verdict,
};

/// The plugin; it has no settings.
pub struct Noop;

impl Plugin for Noop {
    type Config = NoConfig;
    const HOOKS: Hooks = Hooks::all();

    fn new(_: NoConfig) -> Result<Self, String> {
        Ok(Noop)
    }

    fn select_targets(&self, _head: &RequestHead, targets: &[Target]) -> Result<Vec<u32>, String> {
        Ok((0..targets.len() as u32).collect())
    }

    fn transform(
        &self,
        _request: &Request,
        targets: &[Target],
    ) -> Result<Vec<RequestPatch>, String> {
        Ok(vec![RequestPatch::new(); targets.len()])
    }

    fn aggregate(&self, _head: &RequestHead, outcomes: &[Outcome]) -> Result<Verdict, String> {
        let ok = outcomes.iter().all(Outcome::is_success);
        Ok(Verdict::new(ok, 200, "text/plain", "noop"))
    }
}

broadcast_plugin_sdk::export_plugin!(Noop);

#[cfg(test)]
mod tests {
    use super::*;
    use broadcast_plugin_sdk::{instantiate, testing};

    #[test]
    fn changes_nothing() {
        let plugin = instantiate::<Noop>("{}").unwrap();
        let targets = testing::targets(&["10.0.0.1", "10.0.0.2"], 80);
        let head = testing::head("b");
        assert_eq!(plugin.select_targets(&head, &targets), Ok(vec![0, 1]));
        let patches = plugin
            .transform(&testing::request("b", b""), &targets)
            .unwrap();
        assert_eq!(patches.len(), 2);
        assert!(patches.iter().all(RequestPatch::is_empty));
        let verdict = plugin.aggregate(&head, &[]).unwrap();
        assert!(verdict.ok);
        assert_eq!(verdict.body_text(), "noop");
        assert!(instantiate::<Noop>(r#"{"x": 1}"#).is_err());
    }
}

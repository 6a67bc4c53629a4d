"""A complete minimal broadcast-router plugin in Python: copy this folder.

- select-targets: every pod except those listed in the config's `skip`;
- transform: sets `x-plugin-tag` on each pod's copy when `tag` is set
  (one call for many pods: one patch for all of them here; one per pod,
  in order, when they differ);
- aggregate: ok when every pod answered 2xx (200, else 502), with a JSON
  summary as the body.

Errors: `raise Err("message")` (from componentize_py_types) makes a hook
return that message as its error; any other exception traps, and the
router logs its traceback.
"""

import json
from typing import List

import wit_world
from componentize_py_types import Err
from wit_world.imports import log, types

# The route's `config` table, parsed once per instance in init.
config = {}


class WitWorld(wit_world.WitWorld):
    def hooks(self) -> types.Hooks:
        return types.Hooks.SELECT_TARGETS | types.Hooks.TRANSFORM | types.Hooks.AGGREGATE

    def init(self, text: str) -> None:
        global config
        config = json.loads(text)
        unknown = set(config) - {"skip", "tag"}
        if unknown:
            raise Err(f"unknown config keys: {', '.join(sorted(unknown))}")

    def select_targets(self, head: types.RequestHead, targets: List[types.Target]) -> List[int]:
        skip = config.get("skip", [])
        kept = [position for position, target in enumerate(targets) if target.address not in skip]
        log.log(log.Level.DEBUG, "selected", [("kept", str(len(kept)))])
        return kept

    def transform(self, request: types.Request, targets: List[types.Target]) -> List[types.RequestPatch]:
        # One patch per target, in order, or a single patch for all of
        # them. The tag is the same for every pod, so one patch does (and
        # the pods keep sharing one copy). For a patch that depends on the
        # pod, return [patch_for(target) for target in targets].
        headers = []
        if "tag" in config:
            headers.append(types.Header(name="x-plugin-tag", value=str(config["tag"])))
        return [types.RequestPatch(set_headers=headers, remove_headers=[], path=None, body=None)]

    def aggregate(self, head: types.RequestHead, outcomes: List[types.Outcome]) -> types.Verdict:
        answered = sum(1 for outcome in outcomes if outcome.error is None)
        ok = answered == len(outcomes)
        body = {"ok": ok, "answered": answered, "pods": len(outcomes)}
        return types.Verdict(
            ok=ok,
            status=200 if ok else 502,
            content_type="application/json",
            body=json.dumps(body).encode(),
        )

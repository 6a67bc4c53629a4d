"""probe-python: for the router's tests only. A plugin that does, on
demand, what a Python plugin author may do: print, return an error,
raise, filter, transform, aggregate, keep state between broadcasts.
Its verdict's body counts its `transform` calls (`transform_calls`) and
the targets they had (`transformed`), since the instance started,
and the pods' answers (`bodies`), in order.

Config (all optional):
  say        text printed in init and every hook
  fail_in    a hook ("init", "select-targets", "transform", "aggregate")
             that returns an error (raises componentize_py_types.Err)
  raise_in   a hook that raises ValueError (a trap, with a traceback)
  exclude    pod addresses select-targets leaves out
and, per request, the header `x-probe-fail: HOOK` makes HOOK return an
error.
"""

import json
from typing import List, Optional

import wit_world
from componentize_py_types import Err
from wit_world.imports import log, types

config = {}
# Broadcasts this instance has seen: above 1 only with instances = "reuse".
broadcasts = 0
# Calls of transform this instance has had, and the targets they had.
transform_calls = 0
transformed = 0


def act(hook: str, head: Optional[types.RequestHead] = None) -> None:
    if "say" in config:
        print(f"{config['say']} ({hook})")
    if config.get("fail_in") == hook:
        raise Err(f"probe-python: asked to fail in {hook}")
    if config.get("raise_in") == hook:
        raise ValueError(f"probe-python: raised in {hook}")
    if head is not None and any(h.name == "x-probe-fail" and h.value == hook for h in head.headers):
        raise Err(f"probe-python: asked by the request to fail in {hook}")


class WitWorld(wit_world.WitWorld):
    def hooks(self) -> types.Hooks:
        return types.Hooks.SELECT_TARGETS | types.Hooks.TRANSFORM | types.Hooks.AGGREGATE

    def init(self, text: str) -> None:
        global config
        config = json.loads(text)
        act("init")

    def select_targets(self, head: types.RequestHead, targets: List[types.Target]) -> List[int]:
        global broadcasts
        broadcasts += 1
        act("select-targets", head)
        log.log(log.Level.DEBUG, "selecting", [("targets", str(len(targets)))])
        exclude = config.get("exclude", [])
        return [position for position, target in enumerate(targets) if target.address not in exclude]

    def transform(self, request: types.Request, targets: List[types.Target]) -> List[types.RequestPatch]:
        global transform_calls, transformed
        transform_calls += 1
        transformed += len(targets)
        act("transform", request.head)
        return [
            types.RequestPatch(
                set_headers=[types.Header(name="x-probe", value=f"python {target.address}")],
                remove_headers=[],
                path=None,
                body=None,
            )
            for target in targets
        ]

    def aggregate(self, head: types.RequestHead, outcomes: List[types.Outcome]) -> types.Verdict:
        act("aggregate", head)
        answered = sum(1 for outcome in outcomes if outcome.error is None)
        body = {
            "probe": "python",
            "answered": answered,
            "pods": len(outcomes),
            "broadcasts": broadcasts,
            "transform_calls": transform_calls,
            "transformed": transformed,
            "bodies": [outcome.body.decode(errors="replace") for outcome in outcomes],
        }
        return types.Verdict(
            ok=answered == len(outcomes),
            status=200,
            content_type="application/json",
            body=json.dumps(body).encode(),
        )

// probe-javascript: for the router's tests only. A plugin that does, on
// demand, what a JavaScript plugin author may do: print, return an error,
// throw, filter, transform, aggregate, keep state between broadcasts.
// Its verdict's body counts its transform calls (`transform_calls`) and
// the targets they had (`transformed`), since the instance started,
// and the pods' answers (`bodies`), in order.
//
// Config (all optional):
//   say          text written with console.log in init and every hook
//   fail_in      a hook ("init", "select-targets", "transform", "aggregate")
//                that returns an error (throws a string)
//   throw_in     a hook that throws an Error; the hooks are wrapped as the
//                template's are, so it becomes the hook's error, with the
//                Error's message
//   raw_throw_in a hook whose Error is let through unwrapped: componentize-js
//                traps, writing what it can to stderr
//   exclude      pod addresses select-targets leaves out
// and, per request, the header `x-probe-fail: HOOK` makes HOOK return an
// error.
import { log } from "broadcast:plugin/log@0.2.0";

let config = {};
// Broadcasts this instance has seen: above 1 only with instances = "reuse".
let broadcasts = 0;
// Calls of transform this instance has had, and the targets they had.
let transformCalls = 0;
let transformed = 0;

function act(hook, head) {
  if (config.say !== undefined) {
    console.log(`${config.say} (${hook})`);
  }
  if (config.fail_in === hook) {
    throw `probe-javascript: asked to fail in ${hook}`;
  }
  if (config.throw_in === hook || config.raw_throw_in === hook) {
    throw new Error(`probe-javascript: thrown in ${hook}`);
  }
  const fail = head?.headers.find((header) => header.name === "x-probe-fail");
  if (fail?.value === hook) {
    throw `probe-javascript: asked by the request to fail in ${hook}`;
  }
}

export function hooks() {
  return { selectTargets: true, transform: true, aggregate: true };
}

export const init = hook("init", (text) => {
  config = JSON.parse(text);
  act("init");
});

// The plugin-json world: the hooks' records come as JSON text.
export const selectTargets = hook("select-targets", (headJson, targetsJson) => {
  const head = JSON.parse(headJson);
  const targets = JSON.parse(targetsJson);
  broadcasts += 1;
  act("select-targets", head);
  log("debug", "selecting", [["targets", String(targets.length)]]);
  const exclude = config.exclude ?? [];
  const kept = [];
  targets.forEach((target, position) => {
    if (!exclude.includes(target.address)) {
      kept.push(position);
    }
  });
  return kept;
});

export const transform = hook("transform", (headJson, body, targetsJson) => {
  const head = JSON.parse(headJson);
  const targets = JSON.parse(targetsJson);
  transformCalls += 1;
  transformed += targets.length;
  act("transform", head);
  return targets.map((target) => ({
    setHeaders: [{ name: "x-probe", value: `javascript ${target.address}` }],
    removeHeaders: [],
    path: undefined,
    body: undefined,
  }));
});

export const aggregate = hook("aggregate", (headJson, outcomesJson) => {
  const head = JSON.parse(headJson);
  const outcomes = JSON.parse(outcomesJson);
  act("aggregate", head);
  const answered = outcomes.filter((outcome) => outcome.error === null).length;
  const body = JSON.stringify({
    probe: "javascript",
    answered,
    pods: outcomes.length,
    broadcasts,
    transform_calls: transformCalls,
    transformed,
    bodies: outcomes.map((outcome) => outcome.body),
  });
  return {
    ok: answered === outcomes.length,
    status: 200,
    contentType: "application/json",
    body: new TextEncoder().encode(body),
  };
});

// As in the template: anything a hook throws becomes its error message,
// unless the config asks for the raw behaviour.
function hook(name, body) {
  return (...args) => {
    try {
      return body(...args);
    } catch (error) {
      if (typeof error === "string" || config.raw_throw_in === name) throw error;
      throw String(error?.message ?? error);
    }
  };
}

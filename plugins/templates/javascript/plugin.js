// A complete minimal broadcast-router plugin in JavaScript: copy this folder.
//
// - select-targets: every pod except those listed in the config's `skip`;
// - transform: sets `x-plugin-tag` on each pod's copy when `tag` is set
//   (one call for many pods: one patch for all of them here; one per pod,
//   in order, when they differ);
// - aggregate: ok when every pod answered 2xx (200, else 502), with a JSON
//   summary as the body.
//
// World: plugin-json (build.sh). The hooks get the records of the contract
// as JSON text (camelCase fields, null for an absent option, a pod's body
// as text): parse what you use. The request's body comes as a Uint8Array;
// results are plain objects.
//
// Errors: throw a string or an Error from a hook wrapped in `hook(...)`: it
// becomes the hook's error, with the message. (componentize-js itself can
// only return a thrown string; an Error thrown outside `hook` traps, and
// its message is lost.)
import { log } from "broadcast:plugin/log@0.2.0";

// The route's `config` table, parsed once per instance in init.
let config = {};

export function hooks() {
  return { selectTargets: true, transform: true, aggregate: true };
}

export const init = hook((text) => {
  config = JSON.parse(text);
  const unknown = Object.keys(config).filter((key) => !["skip", "tag"].includes(key));
  if (unknown.length > 0) {
    throw new Error(`unknown config keys: ${unknown.join(", ")}`);
  }
  // Each log call crosses into the router: log what helps, not every call.
  log("debug", "template plugin ready", [["skip", String((config.skip ?? []).length)]]);
});

export const selectTargets = hook((headJson, targetsJson) => {
  const targets = JSON.parse(targetsJson);
  const skip = config.skip ?? [];
  const kept = [];
  targets.forEach((target, position) => {
    if (!skip.includes(target.address)) {
      kept.push(position);
    }
  });
  // A Uint32Array crosses into the router in one copy; an array of
  // numbers is checked and copied one element at a time.
  return Uint32Array.from(kept);
});

export const transform = hook((headJson, body, targetsJson) => {
  // One patch per target, in order, or a single patch for all of them.
  // The tag is the same for every pod, so one patch does (and the pods
  // keep sharing one copy); it is also cheaper: every patch returned
  // crosses into the router. For a patch that depends on the pod, return
  // targets.map((target) => patchFor(target)).
  const setHeaders = [];
  if (config.tag !== undefined) {
    setHeaders.push({ name: "x-plugin-tag", value: String(config.tag) });
  }
  return [{ setHeaders, removeHeaders: [], path: undefined, body: undefined }];
});

export const aggregate = hook((headJson, outcomesJson) => {
  const outcomes = JSON.parse(outcomesJson);
  const answered = outcomes.filter((outcome) => outcome.error === null).length;
  const ok = answered === outcomes.length;
  const body = JSON.stringify({ ok, answered, pods: outcomes.length });
  return {
    ok,
    status: ok ? 200 : 502,
    contentType: "application/json",
    body: new TextEncoder().encode(body),
  };
});

// Turns anything a hook throws into the hook's error message.
function hook(body) {
  return (...args) => {
    try {
      return body(...args);
    } catch (error) {
      throw typeof error === "string" ? error : String(error?.message ?? error);
    }
  };
}

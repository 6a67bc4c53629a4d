// shard-filter in JavaScript: the same plugin as plugins/examples/shard-filter
// (Rust), with the same config and the same arithmetic, so a keyed broadcast
// reaches the same pods whichever of the three a route loads. See that
// plugin's README for the config keys and the hash.
//
// `exclude` compares addresses as the router writes them (IPv6 in its
// shortest form, e.g. "fd00::5").
import { log } from "broadcast:plugin/log@0.2.0";

const MASK = (1n << 64n) - 1n;
const KEYS = ["key_header", "replicas", "shards", "missing_key", "exclude", "sample_percent", "key_json_field"];
const encoder = new TextEncoder();

// 64-bit FNV-1a, then MurmurHash3's fmix64.
function hash(text) {
  let state = 0xcbf29ce484222325n;
  for (const byte of encoder.encode(text)) {
    state ^= BigInt(byte);
    state = (state * 0x100000001b3n) & MASK;
  }
  state ^= state >> 33n;
  state = (state * 0xff51afd7ed558ccdn) & MASK;
  state ^= state >> 33n;
  state = (state * 0xc4ceb9fe1a85ec53n) & MASK;
  return state ^ (state >> 33n);
}

function authority(target) {
  return target.address.includes(":") ? `[${target.address}]:${target.port}` : `${target.address}:${target.port}`;
}

function parseExcluded(text) {
  const bracketed = /^\[([^\]]+)\]:(\d+)$/.exec(text);
  if (bracketed) return { address: bracketed[1], port: Number(bracketed[2]) };
  const plain = /^([0-9.]+):(\d+)$/.exec(text);
  if (plain) return { address: plain[1], port: Number(plain[2]) };
  if (/^[0-9.]+$/.test(text) || text.includes(":")) return { address: text, port: undefined };
  throw `exclude: \`${text}\` is neither an IP address nor ip:port ([v6]:port)`;
}

let settings;

function parse(config) {
  const unknown = Object.keys(config).filter((key) => !KEYS.includes(key));
  if (unknown.length > 0) throw `unknown config keys: ${unknown.sort().join(", ")}`;
  if ("key_json_field" in config) {
    throw "key_json_field is not supported: select-targets sees only the request head, not the body; send the key in a header (key_header)";
  }
  const shards = config.shards;
  if (shards !== undefined && shards < 1) throw "shards must be at least 1";
  const replicas = config.replicas ?? 1;
  if (replicas < 1) throw "replicas must be at least 1";
  const keyHeader = (config.key_header ?? "x-shard-key").trim().toLowerCase();
  if (keyHeader === "") throw "key_header must not be empty";
  const missingKey = config.missing_key ?? "all";
  if (!["all", "reject"].includes(missingKey)) throw `missing_key must be "all" or "reject", got ${missingKey}`;
  const percent = config.sample_percent;
  if (percent !== undefined && !(percent > 0 && percent <= 100)) {
    throw `sample_percent must be more than 0 and at most 100, got ${percent}`;
  }
  return {
    shards,
    replicas,
    keyHeader,
    missingKey,
    exclude: (config.exclude ?? []).map(parseExcluded),
    sampleBasisPoints: percent === undefined ? undefined : BigInt(Math.round(percent * 100)),
  };
}

export function hooks() {
  return { selectTargets: true, transform: false, aggregate: false };
}

export const init = hook((text) => {
  settings = parse(JSON.parse(text));
});

export const selectTargets = hook((headJson, targetsJson) => {
  const head = JSON.parse(headJson);
  const targets = JSON.parse(targetsJson);
  const candidates = [];
  targets.forEach((target, position) => {
    const excluded = settings.exclude.some(
      (entry) => entry.address === target.address && (entry.port === undefined || entry.port === target.port),
    );
    if (!excluded) candidates.push({ position, target });
  });
  const key = head.headers.find((header) => header.name === settings.keyHeader)?.value;
  let chosen;
  if (key) {
    const placement = settings.shards === undefined ? `key:${key}` : `shard:${hash(key) % BigInt(settings.shards)}`;
    const weighted = candidates.map((candidate) => ({
      ...candidate,
      weight: hash(`${placement}\n${authority(candidate.target)}`),
    }));
    // Highest weight first; ties to the lower position.
    weighted.sort((a, b) => (a.weight === b.weight ? a.position - b.position : a.weight > b.weight ? -1 : 1));
    chosen = weighted.slice(0, settings.replicas);
    log("debug", "placed key", [["placement", placement], ["owners", String(chosen.length)]]);
  } else if (settings.missingKey === "reject") {
    throw `shard-filter: the request has no \`${settings.keyHeader}\` header to pick pods by`;
  } else {
    chosen = candidates;
  }
  if (settings.sampleBasisPoints !== undefined && chosen.length > 0) {
    const scored = chosen.map(({ position, target }) => ({
      position,
      score: hash(`${head.broadcastId}\n${authority(target)}`) % 10000n,
    }));
    const kept = scored.filter(({ score }) => score < settings.sampleBasisPoints);
    if (kept.length > 0) return Uint32Array.from(kept, ({ position }) => position);
    scored.sort((a, b) => (a.score === b.score ? a.position - b.position : a.score < b.score ? -1 : 1));
    return Uint32Array.of(scored[0].position);
  }
  // One copy into the router (an array is copied element by element).
  return Uint32Array.from(chosen, ({ position }) => position);
});

export function transform() {
  throw "shard-filter does not transform";
}

export function aggregate() {
  throw "shard-filter does not aggregate";
}

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

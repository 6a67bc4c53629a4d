"""shard-filter in Python: the same plugin as plugins/examples/shard-filter
(Rust), with the same config and the same arithmetic, so a keyed broadcast
reaches the same pods whichever of the two a route loads. See that
plugin's README for the config keys and the hash.
"""

import ipaddress
import json
from typing import List, Optional, Tuple

import wit_world
from componentize_py_types import Err
from wit_world.imports import log, types

MASK = (1 << 64) - 1
KEYS = {"key_header", "replicas", "shards", "missing_key", "exclude", "sample_percent", "key_json_field"}


def fnv_fmix(data: bytes) -> int:
    """64-bit FNV-1a, then MurmurHash3's fmix64."""
    state = 0xCBF29CE484222325
    for byte in data:
        state ^= byte
        state = (state * 0x100000001B3) & MASK
    state ^= state >> 33
    state = (state * 0xFF51AFD7ED558CCD) & MASK
    state ^= state >> 33
    state = (state * 0xC4CEB9FE1A85EC53) & MASK
    return state ^ (state >> 33)


def authority(target: types.Target) -> str:
    if ":" in target.address:
        return f"[{target.address}]:{target.port}"
    return f"{target.address}:{target.port}"


def parse_excluded(text: str) -> Tuple[ipaddress._BaseAddress, Optional[int]]:
    try:
        return ipaddress.ip_address(text), None
    except ValueError:
        pass
    host, _, port = text.rpartition(":")
    try:
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        elif ":" in host:
            raise ValueError(text)
        return ipaddress.ip_address(host), int(port)
    except ValueError:
        raise Err(f"exclude: `{text}` is neither an IP address nor ip:port ([v6]:port)")


class Settings:
    def __init__(self, config: dict) -> None:
        unknown = set(config) - KEYS
        if unknown:
            raise Err(f"unknown config keys: {', '.join(sorted(unknown))}")
        if "key_json_field" in config:
            raise Err(
                "key_json_field is not supported: select-targets sees only the request head, "
                "not the body; send the key in a header (key_header)"
            )
        self.shards = config.get("shards")
        if self.shards is not None and self.shards < 1:
            raise Err("shards must be at least 1")
        self.replicas = config.get("replicas", 1)
        if self.replicas < 1:
            raise Err("replicas must be at least 1")
        self.key_header = config.get("key_header", "x-shard-key").strip().lower()
        if not self.key_header:
            raise Err("key_header must not be empty")
        self.missing_key = config.get("missing_key", "all")
        if self.missing_key not in ("all", "reject"):
            raise Err(f"missing_key must be \"all\" or \"reject\", got {self.missing_key!r}")
        self.exclude = [parse_excluded(text) for text in config.get("exclude", [])]
        percent = config.get("sample_percent")
        if percent is not None and not 0 < percent <= 100:
            raise Err(f"sample_percent must be more than 0 and at most 100, got {percent}")
        self.sample_basis_points = None if percent is None else round(percent * 100)

    def excluded(self, target: types.Target) -> bool:
        address = ipaddress.ip_address(target.address)
        return any(
            address == excluded and (port is None or port == target.port)
            for excluded, port in self.exclude
        )

    def placement(self, key: str) -> str:
        if self.shards is not None:
            return f"shard:{fnv_fmix(key.encode()) % self.shards}"
        return f"key:{key}"


settings: Optional[Settings] = None


def header(head: types.RequestHead, name: str) -> Optional[str]:
    for entry in head.headers:
        if entry.name == name:
            return entry.value
    return None


class WitWorld(wit_world.WitWorld):
    def hooks(self) -> types.Hooks:
        return types.Hooks.SELECT_TARGETS

    def init(self, text: str) -> None:
        global settings
        settings = Settings(json.loads(text))

    def select_targets(self, head: types.RequestHead, targets: List[types.Target]) -> List[int]:
        candidates = [(position, target) for position, target in enumerate(targets) if not settings.excluded(target)]
        key = header(head, settings.key_header)
        if key:
            placement = settings.placement(key)
            weighted = [(fnv_fmix(f"{placement}\n{authority(target)}".encode()), position, target) for position, target in candidates]
            # Highest weight first; ties to the lower position.
            weighted.sort(key=lambda entry: (-entry[0], entry[1]))
            chosen = [(position, target) for _, position, target in weighted[: settings.replicas]]
            log.log(log.Level.DEBUG, "placed key", [("placement", placement), ("owners", str(len(chosen)))])
        elif settings.missing_key == "reject":
            raise Err(f"shard-filter: the request has no `{settings.key_header}` header to pick pods by")
        else:
            chosen = candidates
        if settings.sample_basis_points is not None:
            scored = [(fnv_fmix(f"{head.broadcast_id}\n{authority(target)}".encode()) % 10000, position) for position, target in chosen]
            kept = [position for score, position in scored if score < settings.sample_basis_points]
            return kept or [min(scored)[1]] if scored else []
        return [position for position, _ in chosen]

    def transform(self, request: types.Request, targets: List[types.Target]) -> List[types.RequestPatch]:
        raise Err("shard-filter does not transform")

    def aggregate(self, head: types.RequestHead, outcomes: List[types.Outcome]) -> types.Verdict:
        raise Err("shard-filter does not aggregate")

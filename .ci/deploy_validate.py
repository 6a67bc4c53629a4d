"""Offline checks of rendered Kubernetes manifests, for .ci/deploy-check.

    python deploy_validate.py --kubernetes-version 1.31.0 [--layout DIR] FILE

1. Every object is validated against the Kubernetes OpenAPI schemas of each
   given version, strictly (unknown fields are errors), with the schemas the
   kubernetes-validate package ships: nothing is downloaded. An object whose
   kind and apiVersion have no schema in that version is an error too.
2. Checks a schema cannot express: selectors select their pods, named ports
   exist, ConfigMaps fit in 1 MiB, role bindings grant the router's
   ServiceAccount list and watch on EndpointSlices and nothing else (and
   its token is mounted exactly when a role is bound), the router's shutdown_grace plus its
   preStop sleep fit in terminationGracePeriodSeconds.
3. With --layout DIR, where DIR holds the image's files (etc/broadcast-router/
   plugins/…), mounts the router pod's ConfigMap volumes there the way the
   kubelet does: each replaces its mount path's directory with one file per
   key (router.toml of broadcast-router-config at etc/broadcast-router/config/,
   and, when the render mounts it, the .wasm files of
   broadcast-router-plugins at etc/broadcast-router/plugins/).

Prints one line per problem and exits 1 if there is any.
"""

import argparse
import base64
import re
import shutil
import sys
import tomllib
from pathlib import Path

import kubernetes_validate
import yaml

ROUTER = "broadcast-router"
CONFIG_MAP = "broadcast-router-config"
PLUGINS_MAP = "broadcast-router-plugins"
MOUNT = Path("etc/broadcast-router")
# The API server refuses larger objects (etcd's request limit).
CONFIG_MAP_LIMIT = 1024 * 1024


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--kubernetes-version", action="append", required=True)
    parser.add_argument("--layout", type=Path)
    parser.add_argument("file", type=Path)
    args = parser.parse_args()

    objects = [doc for doc in yaml.safe_load_all(args.file.read_text()) if doc]
    problems = []
    for version in args.kubernetes_version:
        for obj in objects:
            problems += schema_problems(obj, version)
    if not problems:  # the checks below assume well-formed objects
        problems += consistency_problems(objects)
    if args.layout and not problems:
        problems += lay_out(objects, args.layout)

    for problem in problems:
        print(f"{args.file}: {problem}")
    if not problems:
        kinds = ", ".join(f"{o['kind']}/{o['metadata']['name']}" for o in objects)
        versions = ", ".join(args.kubernetes_version)
        print(f"{args.file}: ok against Kubernetes {versions}: {kinds}")
    return 1 if problems else 0


def name(obj) -> str:
    return f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"


def schema_problems(obj, version):
    try:
        kubernetes_validate.validate(obj, version, strict=True)
    except kubernetes_validate.ValidationError as error:
        path = ".".join(str(part) for part in error.path)
        return [f"{name(obj)}: invalid for Kubernetes {version}: {path}: {error.message}"]
    except kubernetes_validate.SchemaNotFoundError:
        return [f"{name(obj)}: Kubernetes {version} has no {obj['apiVersion']} {obj['kind']}"]
    return []


def of_kind(objects, kind):
    return [obj for obj in objects if obj["kind"] == kind]


def selects(selector, labels) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def consistency_problems(objects):
    problems = []
    workloads = of_kind(objects, "Deployment")
    config_maps = {obj["metadata"]["name"]: obj for obj in of_kind(objects, "ConfigMap")}
    pods = []  # (workload, pod labels, container port names)
    for deployment in workloads:
        template = deployment["spec"]["template"]
        labels = template["metadata"].get("labels", {})
        selector = deployment["spec"]["selector"].get("matchLabels", {})
        if not selects(selector, labels):
            problems.append(f"{name(deployment)}: its selector does not match its pod labels")
        spec = template["spec"]
        ports = set()
        for container in spec["containers"]:
            container_ports = {p["name"] for p in container.get("ports", []) if "name" in p}
            ports |= container_ports
            for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                handler = container.get(probe, {})
                port = (handler.get("httpGet") or handler.get("tcpSocket") or {}).get("port")
                if isinstance(port, str) and port not in container_ports:
                    problems.append(
                        f"{name(deployment)}: {probe} of {container['name']} uses unknown port {port}"
                    )
        for volume in spec.get("volumes", []):
            wanted = volume.get("configMap", {}).get("name")
            if wanted and wanted not in config_maps:
                problems.append(f"{name(deployment)}: volume {volume['name']} needs ConfigMap {wanted}, not rendered")
        pods.append((deployment, labels, ports))
        if deployment["metadata"]["name"] == ROUTER:
            problems += grace_problems(deployment, config_maps)

    for service in of_kind(objects, "Service"):
        matched = [(d, ports) for d, labels, ports in pods if selects(service["spec"].get("selector"), labels)]
        if not matched:
            problems.append(f"{name(service)}: its selector matches no rendered pods")
        for port in service["spec"].get("ports", []):
            target = port.get("targetPort")
            if isinstance(target, str) and not any(target in ports for _, ports in matched):
                problems.append(f"{name(service)}: targetPort {target} is not a container port")
    for kind, field in (("PodDisruptionBudget", "selector"), ("NetworkPolicy", "podSelector")):
        for obj in of_kind(objects, kind):
            selector = obj["spec"][field].get("matchLabels", {})
            if not any(selects(selector, labels) for _, labels, _ in pods):
                problems.append(f"{name(obj)}: its {field} matches no rendered pods")
    problems += rbac_problems(objects, workloads)
    for config_map in config_maps.values():
        size = len(yaml.safe_dump(config_map).encode())
        if size > CONFIG_MAP_LIMIT * 0.95:
            problems.append(f"{name(config_map)}: {size} bytes, too close to the 1 MiB limit")
    return problems


def rbac_problems(objects, workloads):
    """Bindings to the router's ServiceAccount grant exactly `list` and
    `watch` on EndpointSlices, name a rendered role, and come with a mounted
    token; without bindings the router has no token at all."""
    problems = []
    roles = {(o["kind"], o["metadata"]["name"]): o for o in objects if o["kind"] in ("Role", "ClusterRole")}
    bindings = [o for o in objects if o["kind"] in ("RoleBinding", "ClusterRoleBinding")]
    for binding in bindings:
        ref = binding["roleRef"]
        role = roles.get((ref["kind"], ref["name"]))
        if role is None:
            problems.append(f"{name(binding)}: its roleRef {ref['kind']}/{ref['name']} is not rendered")
            continue
        for subject in binding.get("subjects", []):
            if subject["kind"] != "ServiceAccount" or subject["name"] != ROUTER:
                problems.append(f"{name(binding)}: binds {subject['kind']}/{subject['name']}, not the router's ServiceAccount")
            if binding["kind"] == "RoleBinding" and not subject.get("namespace"):
                problems.append(f"{name(binding)}: its subject names no namespace")
        for rule in role.get("rules", []):
            granted = (rule.get("apiGroups"), rule.get("resources"), sorted(rule.get("verbs", [])))
            if granted != (["discovery.k8s.io"], ["endpointslices"], ["list", "watch"]):
                problems.append(f"{name(role)}: grants {granted}, more or other than list and watch on endpointslices")
    accounts = [o for o in objects if o["kind"] == "ServiceAccount" and o["metadata"]["name"] == ROUTER]
    routers = [d for d in workloads if d["metadata"]["name"] == ROUTER]
    tokens = [o.get("automountServiceAccountToken", True) for o in accounts] + [
        d["spec"]["template"]["spec"].get("automountServiceAccountToken", True) for d in routers
    ]
    if bindings and not all(tokens):
        problems.append("the router's ServiceAccount is bound to a role, but its token is not mounted")
    if not bindings and any(tokens):
        problems.append("the router mounts a ServiceAccount token it has no use for (no role is bound)")
    return problems


def seconds(text: str) -> float:
    """A humantime duration of the usual kinds: "20s", "1m 30s", "500ms"."""
    units = {"ms": 0.001, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600}
    parts = re.findall(r"(\d+)\s*([a-z]+)", text)
    if not parts or re.sub(r"\d+\s*[a-z]+|\s", "", text) or any(u not in units for _, u in parts):
        raise ValueError(f"cannot read the duration {text!r}")
    return sum(int(n) * units[u] for n, u in parts)


def grace_problems(deployment, config_maps):
    config_map = config_maps.get(CONFIG_MAP)
    if config_map is None:
        return [f"{name(deployment)}: no ConfigMap {CONFIG_MAP} rendered"]
    config = tomllib.loads(config_map["data"]["router.toml"])
    try:
        grace = seconds(config.get("server", {}).get("shutdown_grace", "20s"))
    except ValueError as error:
        return [f"{name(config_map)}: router.toml: shutdown_grace: {error}"]
    spec = deployment["spec"]["template"]["spec"]
    router = next(c for c in spec["containers"] if c["name"] == "router")
    pre_stop = router.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
    period = spec.get("terminationGracePeriodSeconds", 30)
    if period <= pre_stop + grace:
        return [
            f"{name(deployment)}: terminationGracePeriodSeconds {period} must exceed "
            f"the preStop sleep ({pre_stop}s) plus shutdown_grace ({grace:g}s)"
        ]
    return []


def lay_out(objects, root: Path):
    """Mounts the router's ConfigMap volumes under `root`, as the kubelet would."""
    config_maps = {obj["metadata"]["name"]: obj for obj in of_kind(objects, "ConfigMap")}
    router = next(d for d in of_kind(objects, "Deployment") if d["metadata"]["name"] == ROUTER)
    spec = router["spec"]["template"]["spec"]
    volumes = {v["name"]: v.get("configMap", {}).get("name") for v in spec.get("volumes", [])}
    container = next(c for c in spec["containers"] if c["name"] == "router")
    problems = []
    for mount in container.get("volumeMounts", []):
        source = volumes.get(mount["name"])
        if source not in (CONFIG_MAP, PLUGINS_MAP):
            continue
        target = root / Path(mount["mountPath"]).relative_to("/")
        shutil.rmtree(target, ignore_errors=True)  # a mount hides the image's files
        target.mkdir(parents=True)
        config_map = config_maps[source]
        for key, text in config_map.get("data", {}).items():
            (target / key).write_text(text)
        for key, data in config_map.get("binaryData", {}).items():
            (target / key).write_bytes(base64.b64decode(data))
    if not (root / MOUNT / "config/router.toml").is_file():
        problems.append(f"{name(router)}: {CONFIG_MAP} is not mounted at /{MOUNT}/config")
    return problems


if __name__ == "__main__":
    sys.exit(main())

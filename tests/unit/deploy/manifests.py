"""Checks for Kubernetes manifests: schema validation and the references between objects.

Each ``check_*`` function takes a list of objects (one file set as a user would apply it,
or what Helm created) and returns the problems it found as readable strings, so a test
asserts ``== []`` and a failure lists every problem at once.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml

from epp.config import (
    Config,
    ConfigError,
    add_serve_arguments,
    build_scheduler_from_config,
    check_endpoint_source,
    load_config,
)
from epp.k8s.client import INFERENCE_MODEL_RESOURCES, MODEL_REWRITE_RESOURCES, OBJECTIVE_RESOURCES
from epp.scheduling.errors import SchedulerConfigError

from .schemas import CRD_SCHEMAS

__all__ = [
    "EPP_IMAGE",
    "KUBERNETES_VERSION",
    "EppContainer",
    "check_epp_deployments",
    "check_pool_references",
    "check_rbac",
    "check_routes",
    "check_service_selectors",
    "describe",
    "epp_containers",
    "find",
    "load_documents",
    "lora_adapters",
    "parse_serve_args",
    "schema_problems",
    "serve_config",
    "serve_parser",
    "served_models",
]

Obj = dict[str, Any]

KUBERNETES_VERSION = "1.33"
EPP_IMAGE = "ghcr.io/epp-dev/epp"
GIE_GROUPS = ("inference.networking.k8s.io", "inference.networking.x-k8s.io")
MODEL_HEADER = "x-gateway-model-name"


def load_documents(path: Path) -> list[Obj]:
    """The non-empty YAML documents of a file (raises on a YAML error)."""
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def describe(obj: Mapping[str, Any]) -> str:
    metadata = obj.get("metadata") or {}
    return f"{obj.get('kind')}/{metadata.get('name')}"


def namespace_of(obj: Mapping[str, Any], default: str = "default") -> str:
    return (obj.get("metadata") or {}).get("namespace") or default


# -- schemas ----------------------------------------------------------------------------


def schema_problems(obj: Obj) -> list[str]:
    """Problems of one object against its schema: the Kubernetes OpenAPI schema (strict)
    for built-in kinds, ``schemas.CRD_SCHEMAS`` for custom resources."""
    key = (obj.get("apiVersion"), obj.get("kind"))
    schema = CRD_SCHEMAS.get(key)  # type: ignore[arg-type]
    if schema is not None:
        validator = jsonschema.Draft202012Validator(schema)
        return [
            f"{describe(obj)}: {'.'.join(map(str, error.absolute_path)) or '(root)'}: "
            f"{error.message}"
            for error in validator.iter_errors(obj)
        ]
    try:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.SchemaNotFoundError:
        return [
            f"{describe(obj)}: no schema for {key[0]} {key[1]}: not a Kubernetes "
            f"{KUBERNETES_VERSION} kind and not in schemas.CRD_SCHEMAS"
        ]
    except kubernetes_validate.ValidationError as exc:  # a copy of jsonschema's best error
        where = ".".join(map(str, exc.absolute_path)) or "(root)"
        return [f"{describe(obj)}: {where}: {exc.message}"]
    return []


# -- epp's command line -----------------------------------------------------------------


class _ArgumentError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # argparse would print and exit
        raise _ArgumentError(message)


def serve_parser() -> argparse.ArgumentParser:
    """``epp serve``'s parser, built the way ``epp.cli`` builds it."""
    parser = _Parser(prog="epp serve")
    add_serve_arguments(parser)
    return parser


def parse_serve_args(
    args: list[str], environ: Mapping[str, str] | None = None
) -> tuple[Config | None, str | None]:
    """(config, None) when epp accepts ``args`` (after ``serve``), else (None, why)."""
    try:
        namespace = serve_parser().parse_args(args)
        config = load_config(namespace, environ=dict(environ or {}))
        check_endpoint_source(config)
    except (_ArgumentError, ConfigError) as exc:
        return None, str(exc)
    return config, None


@dataclass
class EppContainer:
    """An epp container of a Deployment, with what its pod mounts and is called."""

    deployment: Obj
    container: Obj

    @property
    def pod_spec(self) -> Obj:
        return self.deployment["spec"]["template"]["spec"]

    @property
    def namespace(self) -> str:
        return namespace_of(self.deployment)

    def env(self) -> dict[str, str]:
        """The container's environment as the kubelet would set it (downward API filled)."""
        metadata = {"metadata.namespace": self.namespace, "metadata.name": "epp-0"}
        env: dict[str, str] = {}
        for var in self.container.get("env") or []:
            if "value" in var:
                env[var["name"]] = str(var["value"])
            elif "fieldRef" in (var.get("valueFrom") or {}):
                env[var["name"]] = metadata.get(var["valueFrom"]["fieldRef"]["fieldPath"], "x")
        return env

    def args(self) -> list[str]:
        """The arguments after ``serve``, with ``$(VAR)`` expanded as the kubelet does."""
        env = self.env()
        args = [
            re.sub(
                r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)",
                lambda m: env.get(m.group(1), m.group(0)),
                str(arg),
            )
            for arg in self.container.get("args") or []
        ]
        return args[1:] if args[:1] == ["serve"] else args

    def flag(self, name: str) -> str | None:
        prefix = f"--{name}="
        for arg in self.args():
            if arg.startswith(prefix):
                return arg[len(prefix) :]
        return None

    def mount_source(self, path: str) -> tuple[str, str] | None:
        """(volume kind, source name) of the volume mounted at the directory of ``path``."""
        volumes = {v["name"]: v for v in self.pod_spec.get("volumes") or []}
        for mount in self.container.get("volumeMounts") or []:
            if path.startswith(mount["mountPath"].rstrip("/") + "/"):
                volume = volumes.get(mount["name"]) or {}
                if "configMap" in volume:
                    return "ConfigMap", volume["configMap"]["name"]
                if "secret" in volume:
                    return "Secret", volume["secret"]["secretName"]
                return "other", mount["name"]
        return None


def epp_containers(objects: Iterable[Obj]) -> Iterator[EppContainer]:
    for obj in objects:
        if obj.get("kind") != "Deployment":
            continue
        for container in obj["spec"]["template"]["spec"]["containers"]:
            if str(container.get("image", "")).split(":")[0].endswith("/epp"):
                yield EppContainer(obj, container)


def find(objects: Iterable[Obj], kind: str, namespace: str, name: str) -> Obj | None:
    for obj in objects:
        if (
            obj.get("kind") == kind
            and obj["metadata"].get("name") == name
            and namespace_of(obj, namespace) == namespace
        ):
            return obj
    return None


def _config_with_files(epp: EppContainer, objects: list[Obj], tmp: Path) -> list[str]:
    """The args, with --config-file pointing at a copy of the mounted ConfigMap's file."""
    args = epp.args()
    config_file = epp.flag("config-file")
    if config_file is None:
        return args
    source = epp.mount_source(config_file)
    if source is None or source[0] != "ConfigMap":
        raise LookupError(f"--config-file={config_file} is not on a mounted ConfigMap")
    configmap = find(objects, "ConfigMap", epp.namespace, source[1])
    key = config_file.rsplit("/", 1)[1]
    if configmap is None or key not in (configmap.get("data") or {}):
        raise LookupError(f"--config-file={config_file}: no ConfigMap {source[1]} with key {key}")
    copy = tmp / f"{source[1]}-{key}"
    copy.write_text(configmap["data"][key])
    return [f"--config-file={copy}" if arg.startswith("--config-file=") else arg for arg in args]


def serve_config(epp: EppContainer, objects: list[Obj], tmp: Path) -> Config:
    """epp's Config for this container, or AssertionError with epp's own message."""
    try:
        args = _config_with_files(epp, objects, tmp)
    except LookupError as exc:
        raise AssertionError(f"{describe(epp.deployment)}: {exc}") from None
    config, why = parse_serve_args(args, epp.env())
    if config is None:
        raise AssertionError(f"{describe(epp.deployment)}: epp serve refuses {args}: {why}")
    return config


def _config_or_none(epp: EppContainer, objects: list[Obj], tmp: Path) -> Config | None:
    """The Config, or None where epp refuses it (check_epp_deployments reports that)."""
    try:
        return serve_config(epp, objects, tmp)
    except AssertionError:
        return None


# -- cross-references -------------------------------------------------------------------


def check_epp_deployments(objects: list[Obj], tmp: Path) -> list[str]:
    """Each epp Deployment: epp accepts its arguments and config file, and its ports,
    probes, mounts, shutdown and strategy agree with them."""
    problems: list[str] = []
    for epp in epp_containers(objects):
        where = describe(epp.deployment)
        try:
            config = serve_config(epp, objects, tmp)
        except AssertionError as exc:
            problems.append(str(exc))
            continue
        try:
            build_scheduler_from_config(config)
        except SchedulerConfigError as exc:
            problems.append(f"{where}: its EndpointPickerConfig does not build: {exc}")
        ports = {p["name"]: p["containerPort"] for p in epp.container.get("ports") or []}
        wanted = {
            "grpc": config.server.grpc_port,
            "grpc-health": config.server.grpc_health_port,
            "metrics": config.server.metrics_port,
        }
        for name, port in wanted.items():
            if ports.get(name) != port:
                problems.append(
                    f"{where}: container port {name} is {ports.get(name)}, epp listens on {port}"
                )
        leader = config.kubernetes.leader_election
        for probe, service in (("livenessProbe", "liveness"), ("readinessProbe", "readiness")):
            grpc = (epp.container.get(probe) or {}).get("grpc") or {}
            expected = service if leader else "inference-extension"
            if grpc.get("port") != config.server.grpc_health_port:
                problems.append(f"{where}: {probe} is not gRPC on the health port")
            if grpc.get("service") != expected:
                problems.append(
                    f"{where}: {probe} asks for {grpc.get('service')!r}, expected {expected!r}"
                )
        strategy = (epp.deployment["spec"].get("strategy") or {}).get("type", "RollingUpdate")
        if leader and strategy != "Recreate":
            problems.append(
                f"{where}: with leader election, standbys are never ready and a "
                f"{strategy} rollout cannot finish; use Recreate"
            )
        replicas = epp.deployment["spec"].get("replicas", 1)
        if replicas > 1 and config.kubernetes.enabled and not leader and not config.sync.enabled:
            problems.append(f"{where}: {replicas} replicas without leader election or shared state")
        grace = epp.pod_spec.get("terminationGracePeriodSeconds", 30)
        if grace <= config.server.graceful_timeout_s:
            problems.append(
                f"{where}: terminationGracePeriodSeconds {grace} does not exceed "
                f"--graceful-timeout {config.server.graceful_timeout_s:g}s"
            )
        if config.server.cert_path:
            source = epp.mount_source(config.server.cert_path.rstrip("/") + "/tls.crt")
            if source is None or source[0] != "Secret":
                problems.append(f"{where}: --cert-path is not a mounted Secret")
        security = epp.container.get("securityContext") or {}
        pod_security = epp.pod_spec.get("securityContext") or {}
        if not (security.get("runAsNonRoot") or pod_security.get("runAsNonRoot")):
            problems.append(f"{where}: not runAsNonRoot")
        if not security.get("readOnlyRootFilesystem"):
            problems.append(f"{where}: root filesystem is writable")
    return problems


def _selects(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def _pod_templates(objects: list[Obj], namespace: str) -> Iterator[tuple[Obj, Obj]]:
    for obj in objects:
        if obj.get("kind") == "Deployment" and namespace_of(obj) == namespace:
            yield obj, obj["spec"]["template"]


def check_service_selectors(objects: list[Obj]) -> list[str]:
    """Services select pods of a Deployment here and name ports those pods have; each
    Deployment's own selector matches its pod template."""
    problems = []
    for obj in objects:
        if obj.get("kind") == "Deployment":
            labels = obj["spec"]["template"]["metadata"].get("labels") or {}
            if not _selects(obj["spec"]["selector"].get("matchLabels") or {}, labels):
                problems.append(f"{describe(obj)}: its selector does not match its pods")
        if obj.get("kind") != "Service":
            continue
        selector = obj["spec"].get("selector") or {}
        selected = [
            template
            for _, template in _pod_templates(objects, namespace_of(obj))
            if _selects(selector, template["metadata"].get("labels") or {})
        ]
        if not selected:
            problems.append(f"{describe(obj)}: selects no pods of the Deployments here")
            continue
        for port in obj["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            for template in selected:
                container_ports = [
                    p for c in template["spec"]["containers"] for p in c.get("ports") or []
                ]
                if not any(target in (p.get("name"), p["containerPort"]) for p in container_ports):
                    problems.append(
                        f"{describe(obj)}: port {port.get('name')} targets "
                        f"{target!r}, which its pods do not expose"
                    )
    return problems


def _pool_ref(pool: Obj) -> tuple[str, int | None]:
    spec = pool["spec"]
    if "endpointPickerRef" in spec:
        ref = spec["endpointPickerRef"]
        return ref["name"], (ref.get("port") or {}).get("number")
    ref = spec["extensionRef"]
    return ref["name"], ref.get("portNumber")


def _pool_selector(pool: Obj) -> Mapping[str, str]:
    selector: Mapping[str, str] = pool["spec"]["selector"]  # v1alpha2: the labels themselves
    return pool["spec"]["selector"]["matchLabels"] if "matchLabels" in selector else selector


def _pool_ports(pool: Obj) -> list[int]:
    spec = pool["spec"]
    if "targetPorts" in spec:
        return [p["number"] for p in spec["targetPorts"]]
    return [spec["targetPortNumber"]]


def check_pool_references(objects: list[Obj], *, model_servers: bool, tmp: Path) -> list[str]:
    """Each InferencePool names an existing Service and port, behind which runs an epp for
    this very pool (name, namespace, API group); with ``model_servers``, the pool also
    selects pods of a Deployment here that serve on its target ports."""
    problems = []
    for pool in (o for o in objects if o.get("kind") == "InferencePool"):
        where, namespace = describe(pool), namespace_of(pool)
        group = pool["apiVersion"].split("/")[0]
        name, port = _pool_ref(pool)
        service = find(objects, "Service", namespace, name)
        if service is None:
            problems.append(f"{where}: its endpoint picker Service {name} is not here")
            continue
        if port not in [p["port"] for p in service["spec"]["ports"]]:
            problems.append(f"{where}: Service {name} has no port {port}")
        pickers = [
            epp
            for epp in epp_containers(objects)
            if epp.namespace == namespace
            and _selects(
                service["spec"].get("selector") or {},
                epp.deployment["spec"]["template"]["metadata"]["labels"],
            )
        ]
        if not pickers:
            problems.append(f"{where}: Service {name} selects no epp")
        for epp in pickers:
            config = _config_or_none(epp, objects, tmp)
            if config is None:
                continue
            kube = config.kubernetes
            if (kube.pool_name, kube.namespace, kube.pool_group) != (
                pool["metadata"]["name"],
                namespace,
                group,
            ):
                problems.append(
                    f"{where}: its epp watches {kube.pool_group} pool "
                    f"{kube.namespace}/{kube.pool_name}"
                )
            if port != config.server.grpc_port and not any(
                p["port"] == port and p.get("targetPort") in ("grpc", config.server.grpc_port)
                for p in service["spec"]["ports"]
            ):
                problems.append(f"{where}: port {port} does not lead to epp's gRPC port")
        if model_servers:
            selector = _pool_selector(pool)
            members = [
                t
                for _, t in _pod_templates(objects, namespace)
                if _selects(selector, t["metadata"].get("labels") or {})
            ]
            if not members:
                problems.append(f"{where}: selects no model-server pods here")
            for template in members:
                exposed = {
                    p["containerPort"]
                    for c in template["spec"]["containers"]
                    for p in c.get("ports") or []
                }
                missing = sorted(set(_pool_ports(pool)) - exposed)
                if missing:
                    problems.append(f"{where}: its pods do not serve on {missing}")
    for obj in objects:
        if obj.get("kind") in ("InferenceObjective", "InferenceModelRewrite", "InferenceModel"):
            ref = obj["spec"]["poolRef"]
            # The CRDs' default group: an InferenceModel's is the older one, where it lives.
            default_group = GIE_GROUPS[1 if obj["kind"] == "InferenceModel" else 0]
            referenced = find(objects, "InferencePool", namespace_of(obj), ref["name"])
            if referenced is None:
                problems.append(f"{describe(obj)}: no InferencePool {ref['name']} here")
            elif referenced["apiVersion"].split("/")[0] != ref.get("group", default_group):
                problems.append(
                    f"{describe(obj)}: poolRef group {ref.get('group')} is not the pool's"
                )
    return problems


def _served_model(template: Obj) -> str | None:
    """The model a vLLM pod serves: `vllm serve MODEL` or --model / --served-model-name."""
    for container in template["spec"]["containers"]:
        words = _words(container)
        for word in words:
            if word.startswith("--served-model-name="):
                return word.split("=", 1)[1]
        for i, word in enumerate(words):
            if word == "serve" and i + 1 < len(words) and not words[i + 1].startswith("-"):
                return words[i + 1]
            if word.startswith("--model="):
                return word.split("=", 1)[1]
    return None


def _words(container: Obj) -> list[str]:
    return [str(w) for w in (container.get("command") or []) + (container.get("args") or [])]


def lora_adapters(template: Obj) -> set[str]:
    """The LoRA adapters a vLLM pod names in --lora-modules (NAME=PATH, or vLLM's JSON
    form with "name"), each word after the flag until the next flag."""
    adapters: set[str] = set()
    for container in template["spec"]["containers"]:
        words = _words(container)
        for i, word in enumerate(words):
            if word.startswith("--lora-modules="):
                values = [word.split("=", 1)[1]]
            elif word == "--lora-modules":
                values = []
                for value in words[i + 1 :]:
                    if value.startswith("-"):
                        break
                    values.append(value)
            else:
                continue
            for value in values:
                if value.startswith("{"):
                    adapters.add(str(yaml.safe_load(value)["name"]))
                else:
                    adapters.add(value.split("=", 1)[0])
    return adapters


def served_models(objects: list[Obj], pool: Obj) -> set[str]:
    """The models and LoRA adapters the pods ``pool`` selects here serve by name."""
    served: set[str] = set()
    for _, template in _pod_templates(objects, namespace_of(pool)):
        if _selects(_pool_selector(pool), template["metadata"].get("labels") or {}):
            model = _served_model(template)
            # A pod whose model is not recognized serves none by name.
            if model is not None:
                served |= {model, *lora_adapters(template)}
    return served


def _aliases(objects: list[Obj], pool_name: str, served: set[str]) -> set[str]:
    """Model names the pool's epp sends on to models in ``served``: InferenceModelRewrite
    matches and InferenceModel modelNames whose every target is served."""
    aliases = {
        match["model"]["value"]
        for rewrite in objects
        if rewrite.get("kind") == "InferenceModelRewrite"
        and rewrite["spec"]["poolRef"]["name"] == pool_name
        for r in rewrite["spec"]["rules"]
        if {t["modelRewrite"] for t in r["targets"]} <= served
        for match in r.get("matches") or []
    }
    for model in objects:
        if model.get("kind") == "InferenceModel" and model["spec"]["poolRef"]["name"] == pool_name:
            spec = model["spec"]
            targets = {t["name"] for t in spec.get("targetModels") or []} or {spec["modelName"]}
            if targets <= served:
                aliases.add(spec["modelName"])
    return aliases


def check_routes(objects: list[Obj]) -> list[str]:
    """HTTPRoutes hang off a Gateway here and send each model, matched on the
    X-Gateway-Model-Name header, to an existing pool whose pods serve that model (directly,
    as a LoRA adapter, or through an InferenceModelRewrite or InferenceModel of that
    pool)."""
    problems = []
    gateways = {
        (namespace_of(o), o["metadata"]["name"]) for o in objects if o.get("kind") == "Gateway"
    }
    for route in (o for o in objects if o.get("kind") == "HTTPRoute"):
        where, namespace = describe(route), namespace_of(route)
        for parent in route["spec"]["parentRefs"]:
            if (parent.get("namespace", namespace), parent["name"]) not in gateways:
                problems.append(f"{where}: parent Gateway {parent['name']} is not here")
        for rule in route["spec"]["rules"]:
            for ref in rule.get("backendRefs") or []:
                if ref.get("kind") != "InferencePool":
                    continue
                pool = find(objects, "InferencePool", ref.get("namespace", namespace), ref["name"])
                if pool is None:
                    problems.append(f"{where}: InferencePool {ref['name']} is not here")
                    continue
                if pool["apiVersion"].split("/")[0] != ref.get("group"):
                    problems.append(
                        f"{where}: backendRef group {ref.get('group')} is not "
                        f"the pool's ({pool['apiVersion']})"
                    )
                served = served_models(objects, pool)
                aliases = _aliases(objects, ref["name"], served)
                for match in rule.get("matches") or []:
                    models = [
                        h["value"]
                        for h in match.get("headers") or []
                        if h["name"].lower() == MODEL_HEADER
                    ]
                    if not models:
                        problems.append(
                            f"{where}: a match to pool {ref['name']} does not "
                            f"match on the X-Gateway-Model-Name header"
                        )
                    for model in models:
                        if model not in served | aliases:
                            problems.append(
                                f"{where}: routes model {model!r} to pool "
                                f"{ref['name']}, whose pods serve {sorted(served)}"
                            )
    return problems


_RULES_NEEDED = {
    # (group, resource): verbs epp needs on it in the pool's namespace; the policy kinds
    # in every group epp watches them in.
    ("", "pods"): {"get", "list", "watch"},
    **{
        (resource._api_info.resource.group, resource._api_info.plural): {"get", "list", "watch"}
        for resource in (*OBJECTIVE_RESOURCES, *MODEL_REWRITE_RESOURCES, *INFERENCE_MODEL_RESOURCES)
    },
}


def _allowed(rules: list[Obj], group: str, resource: str, verb: str, name: str) -> bool:
    for rule in rules:
        names = rule.get("resourceNames")
        if (
            group in rule.get("apiGroups", [])
            and resource in rule.get("resources", [])
            and verb in rule.get("verbs", [])
            and (not names or name in names)
        ):
            return True
    return False


def check_rbac(objects: list[Obj], tmp: Path) -> list[str]:
    """Each epp's ServiceAccount exists and is bound to a Role in the pool's namespace that
    allows what epp reads (and, with leader election, its Lease); nothing cluster-wide."""
    problems = []
    for obj in objects:
        if obj.get("kind") in ("ClusterRole", "ClusterRoleBinding"):
            problems.append(f"{describe(obj)}: epp needs nothing cluster-wide")
    for epp in epp_containers(objects):
        where = describe(epp.deployment)
        account = epp.pod_spec.get("serviceAccountName", "default")
        if find(objects, "ServiceAccount", epp.namespace, account) is None:
            problems.append(f"{where}: ServiceAccount {account} is not here")
        config = _config_or_none(epp, objects, tmp)
        if config is None or not config.kubernetes.enabled:
            continue
        kube = config.kubernetes
        rules: list[Obj] = []
        for binding in (
            o
            for o in objects
            if o.get("kind") == "RoleBinding" and namespace_of(o) == kube.namespace
        ):
            if any(
                s.get("kind") == "ServiceAccount"
                and s["name"] == account
                and s.get("namespace", namespace_of(binding)) == epp.namespace
                for s in binding.get("subjects") or []
            ):
                role = find(objects, "Role", kube.namespace, binding["roleRef"]["name"])
                if role is None:
                    problems.append(
                        f"{describe(binding)}: Role {binding['roleRef']['name']} is not here"
                    )
                else:
                    rules.extend(role.get("rules") or [])
        needed = dict(_RULES_NEEDED)
        if kube.pool_name:
            needed[(kube.pool_group, "inferencepools")] = {"get", "list", "watch"}
        for (group, resource), verbs in needed.items():
            for verb in sorted(verbs):
                if not _allowed(rules, group, resource, verb, ""):
                    problems.append(
                        f"{where}: may not {verb} {resource} ({group or 'core'}) "
                        f"in {kube.namespace}"
                    )
        if kube.leader_election:
            lease = kube.lease_name or f"epp-{kube.pool_name}"
            for verb in ("get", "create", "update"):
                if not _allowed(rules, "coordination.k8s.io", "leases", verb, lease):
                    problems.append(f"{where}: may not {verb} its Lease {lease}")
    return problems

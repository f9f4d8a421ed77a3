"""deploy/helm/epp rendered by real Helm (the Go library inside helm-sdkpy).

helm-sdkpy has no `helm template`: `Lint` renders the templates with the chart's own
values.yaml (so each case lints a copy of the chart with its values file in place), and
`Install` against the fake Kubernetes API server (tests/kube_fake) renders and creates the
objects, which then get the same checks as deploy/kubernetes/epp.yaml. Helm runs in a
subprocess (helm_runner.py) with the in-memory release driver.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from epp.config import OPTIONS
from tests.kube_fake import FakeKubeAPI

from .manifests import (
    check_epp_deployments,
    check_pool_references,
    check_rbac,
    check_service_selectors,
    epp_containers,
    load_documents,
    schema_problems,
    serve_config,
)

Obj = dict[str, Any]

DEPLOY = Path(__file__).resolve().parents[3] / "deploy"
CHART = DEPLOY / "helm" / "epp"
RUNNER = Path(__file__).with_name("helm_runner.py")
# Severity of a Helm lint message: 1 info, 2 warning, 3 error.
LINT_WARNING = 2


def _values(name: str) -> Obj:
    if name == "defaults":
        return {}
    if name == "v1alpha2-pool":  # the defaults, creating an x-k8s.io v1alpha2 pool
        return {
            "inferencePool": {
                "create": True,
                "group": "inference.networking.x-k8s.io",
                "routingStrategy": "DEFAULT",
            }
        }
    return yaml.safe_load((CHART / "ci" / f"{name}-values.yaml").read_text())


# The last two are values files written for the reference charts (ci/*-values.yaml).
CASES = ["defaults", "all-options", "v1alpha2-pool", "gie-inferencepool", "llm-d-router"]


def _merge(base: Obj, override: Obj) -> Obj:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _effective_values(name: str) -> Obj:
    return _merge(yaml.safe_load((CHART / "values.yaml").read_text()), _values(name))


def _helm_env(tmp_path: Path) -> dict[str, str]:
    home = tmp_path / "helm-home"
    return {
        **os.environ,
        "HELM_DRIVER": "memory",
        "HELM_CACHE_HOME": str(home / "cache"),
        "HELM_CONFIG_HOME": str(home / "config"),
        "HELM_DATA_HOME": str(home / "data"),
        "KUBECONFIG": str(tmp_path / "no-kubeconfig"),
    }


def run_helm(tmp_path: Path, *args: str) -> tuple[Any, str]:
    """(the action's result, Helm's log on stderr); fails the test if the action fails."""
    # helm-sdkpy says Python >= 3.12 but runs on 3.11; `make install` installs it anyway.
    assert importlib.util.find_spec("helm_sdkpy") is not None, "run make install (helm-sdkpy)"
    result = subprocess.run(
        [sys.executable, str(RUNNER), *args],
        capture_output=True,
        text=True,
        timeout=90,
        env=_helm_env(tmp_path),
    )
    assert result.returncode == 0, f"helm {args[0]} failed:\n{result.stderr[-4000:]}"
    return json.loads(result.stdout), result.stderr


def lint(tmp_path: Path, values: Obj) -> tuple[list[str], str]:
    """Lint a copy of the chart whose values.yaml is ``values`` merged over the chart's:
    (the warnings and errors, Helm's log)."""
    chart = tmp_path / "epp"
    shutil.copytree(CHART, chart)
    merged = _merge(yaml.safe_load((CHART / "values.yaml").read_text()), values)
    (chart / "values.yaml").write_text(yaml.safe_dump(merged, sort_keys=False))
    result, log = run_helm(tmp_path, "lint", str(chart))
    # Helm's lint errors do not survive helm-sdkpy's JSON (they come out as {}): the
    # severity and the file are all there is.
    problems = [
        f"severity {m['Severity']} in {m['Path']}"
        for m in result.get("Messages") or []
        if m["Severity"] >= LINT_WARNING
    ]
    return problems, log


# Lint mode turns these template failures into log lines instead of errors.
LENIENT_FAILURES = ("funcMap fail", "missing required value")


def test_values_files_match_the_values_schema() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    for case in CASES:
        errors = [
            f"{case}: {'.'.join(map(str, e.absolute_path))}: {e.message}"
            for e in validator.iter_errors(_effective_values(case))
        ]
        assert errors == []
    assert not validator.is_valid(_effective_values("defaults") | {"replicas": "two"})
    assert not validator.is_valid(_effective_values("defaults") | {"replica": 2})


def test_all_options_values_set_every_option() -> None:
    """ci/all-options-values.yaml sets every key of values.yaml (to a value of its own)."""

    def keys(node: Any, prefix: str = "") -> set[str]:
        if not isinstance(node, dict) or not node:
            return {prefix}
        return {k for key, value in node.items() for k in keys(value, f"{prefix}.{key}")}

    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    every = _values("all-options")
    # flags and config are free-form: their keys are epp's, not the chart's.
    given = keys(every)
    # Exclusive with sync.redis.enabled, which the file sets; rendered by its own test.
    exclusive = {".sync.redisUrl"}
    missing = {
        k
        for k in keys(defaults) - exclusive
        if not k.startswith((".flags.", ".config."))
        and not any(e == k or e.startswith(f"{k}.") for e in given)
    }
    assert missing == set()
    changed = [k for k in defaults if k not in ("config", "flags") and defaults[k] == every[k]]
    assert changed == []


def test_chart_metadata() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert (chart["apiVersion"], chart["name"], chart["appVersion"]) == ("v2", "epp", "0.1.0")
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["image"]["repository"] == "ghcr.io/epp-dev/epp"


@pytest.mark.parametrize("case", CASES)
def test_chart_lints_clean(case: str, tmp_path: Path) -> None:
    problems, log = lint(tmp_path, _values(case))
    assert problems == []
    assert [line for line in log.splitlines() if any(f in line for f in LENIENT_FAILURES)] == []


def test_lint_catches_broken_values(tmp_path: Path) -> None:
    """The lint check above can fail: a schema violation is an error, and the chart's own
    `fail` (a flag the chart sets itself) shows in Helm's log."""
    problems, _ = lint(tmp_path / "schema", {"replicas": "two"})
    assert "severity 3 in values.yaml" in problems
    _, log = lint(tmp_path / "fail", {"flags": {"pool-name": "other"}})
    assert "flags.pool-name: the chart sets --pool-name" in log


# -- installing into the fake API server --------------------------------------------------


@pytest.fixture
def fake_api() -> Iterator[Any]:
    api = FakeKubeAPI().start_in_thread()
    try:
        yield api
    finally:
        api.stop()


def install(
    api: Any, tmp_path: Path, values: Obj, *, namespace: str = "default", release: str = "epp"
) -> tuple[list[Obj], Obj]:
    """Install the chart into the fake: (every object it created, Helm's release)."""
    kubeconfig = api.write_kubeconfig(tmp_path / "kubeconfig", namespace=namespace)
    values_file = tmp_path / "values.json"
    values_file.write_text(json.dumps(values))
    release_info, _ = run_helm(
        tmp_path, "install", str(kubeconfig), namespace, release, str(CHART), str(values_file)
    )
    objects = []
    for resource in api.table:
        for obj in api.list(resource.api_version, resource.kind):
            objects.append({"apiVersion": resource.api_version, "kind": resource.kind, **obj})
    return objects, release_info


EXPECTED_KINDS = {
    "defaults": {"ServiceAccount", "Role", "RoleBinding", "ConfigMap", "Deployment", "Service"},
    "all-options": {
        "InferenceObjective",
        "ServiceAccount",
        "Role",
        "RoleBinding",
        "ConfigMap",
        "Deployment",
        "Service",
        "InferencePool",
        "ServiceMonitor",
    },
    "v1alpha2-pool": {
        "ServiceAccount",
        "Role",
        "RoleBinding",
        "ConfigMap",
        "Deployment",
        "Service",
        "InferencePool",
    },
    "gie-inferencepool": {
        "ServiceAccount",
        "Role",
        "RoleBinding",
        "ConfigMap",
        "Deployment",
        "Service",
        "InferencePool",
        "InferenceObjective",
        "ServiceMonitor",
    },
    "llm-d-router": {
        "ServiceAccount",
        "Role",
        "RoleBinding",
        "ConfigMap",
        "Deployment",
        "Service",
        "InferencePool",
        "InferenceObjective",
    },
}


@pytest.mark.parametrize("case", CASES)
def test_installed_chart_passes_the_manifest_checks(
    case: str, fake_api: Any, tmp_path: Path
) -> None:
    values = _values(case)
    namespace = _effective_values(case)["inferencePool"]["namespace"] or "default"
    objects, release = install(fake_api, tmp_path, values, namespace=namespace)
    manifest = [doc for doc in yaml.safe_load_all(release["manifest"]) if doc]
    assert len(objects) == len(manifest), "the fake holds what Helm rendered"
    assert {obj["kind"] for obj in objects} == EXPECTED_KINDS[case]
    assert {obj["metadata"]["namespace"] for obj in objects} == {namespace}
    assert [p for obj in objects for p in schema_problems(obj)] == []
    assert check_epp_deployments(objects, tmp_path) == []
    assert check_service_selectors(objects) == []
    assert check_rbac(objects, tmp_path) == []
    assert check_pool_references(objects, model_servers=False, tmp=tmp_path) == []
    monitors = [obj for obj in objects if obj["kind"] == "ServiceMonitor"]
    for monitor in monitors:
        # It selects epp's Service alone (not the Redis of ci/all-options).
        selector = monitor["spec"]["selector"]["matchLabels"].items()
        (service,) = [
            obj
            for obj in objects
            if obj["kind"] == "Service" and selector <= obj["metadata"]["labels"].items()
        ]
        assert service["metadata"]["name"] == monitor["metadata"]["name"]
        assert {e["port"] for e in monitor["spec"]["endpoints"]} <= {
            p["name"] for p in service["spec"]["ports"]
        }


def test_flags_become_arguments_epp_accepts(fake_api: Any, tmp_path: Path) -> None:
    """Every entry of `flags:` in the all-options values reaches epp as --name=value, and
    epp parses it to the value the entry means (whole numbers without an exponent)."""
    values = _values("all-options")
    objects, _ = install(fake_api, tmp_path, values, namespace="inference")
    (epp,) = list(epp_containers(objects))
    config = serve_config(epp, objects, tmp_path)
    options = {option.flag.removeprefix("--"): option for option in OPTIONS}
    for name, value in values["flags"].items():
        rendered = epp.flag(name)
        if value is None:
            assert rendered is None, f"--{name} should be left out"
            continue
        assert name in options, f"flags.{name} is no option of epp serve"
        option = options[name]
        node: Any = config
        for attribute in option.path:
            node = getattr(node, attribute)
        assert node == option.parse(value), f"--{name}={rendered}"
    assert epp.flag("max-body-bytes") == "67108864"
    assert config.kubernetes.leader_election
    assert config.server.cert_path == "/etc/epp/tls"


# Options the chart has no use for: it runs epp for one InferencePool, in its cluster.
NOT_CHART_FLAGS = {"endpoint-selector", "endpoint-target-ports", "kubeconfig"}
CHART_MANAGED_FLAGS = {
    "pool-name",
    "pool-namespace",
    "pool-group",
    "grpc-port",
    "grpc-health-port",
    "metrics-port",
    "secure-serving",
    "cert-path",
    "ha-enable-leader-election",
    "sync-redis-url",
}


def test_every_option_has_a_value_in_the_chart() -> None:
    """A new `epp serve` option must be set somewhere in the all-options values (so the
    render test above checks it reaches epp), or be one the chart derives itself."""
    values = _values("all-options")
    options = {option.flag.removeprefix("--") for option in OPTIONS}
    missing = options - set(values["flags"]) - NOT_CHART_FLAGS - CHART_MANAGED_FLAGS
    assert not missing, f"add to deploy/helm/epp/ci/all-options-values.yaml: {sorted(missing)}"


@pytest.mark.parametrize(
    ("replicas", "enabled", "leader"),
    [(1, None, False), (2, None, True), (1, True, True)],
    ids=["one", "two", "one-on"],
)
def test_leader_election_follows_the_replicas(
    replicas: int, enabled: bool | None, leader: bool, fake_api: Any, tmp_path: Path
) -> None:
    values = {"replicas": replicas, "leaderElection": {"enabled": enabled}}
    objects, _ = install(fake_api, tmp_path, values)
    (epp,) = list(epp_containers(objects))
    assert epp.flag("ha-enable-leader-election") == str(leader).lower()
    assert epp.flag("sync-redis-url") is None
    (role,) = [obj for obj in objects if obj["kind"] == "Role"]
    leases = [rule for rule in role["rules"] if "leases" in rule["resources"]]
    assert bool(leases) == leader
    assert check_epp_deployments(objects, tmp_path) + check_rbac(objects, tmp_path) == []


def test_replicas_on_their_own_views_fail_the_render(tmp_path: Path) -> None:
    """replicas > 1 with leader election off and no shared state: each replica would see
    a fraction of the traffic (the manifest check reports the same of a plain manifest)."""
    _, log = lint(tmp_path / "alone", {"replicas": 2, "leaderElection": {"enabled": False}})
    assert "replicas: 2 without leader election needs shared state" in log
    both = {"sync": {"redisUrl": "redis://r:6379/0", "redis": {"enabled": True}}}
    _, log = lint(tmp_path / "both", both)
    assert "sync.redisUrl and sync.redis.enabled: choose one" in log
    _, log = lint(tmp_path / "flag", {"flags": {"sync-redis-url": "redis://r:6379/0"}})
    assert "flags.sync-redis-url: the chart sets --sync-redis-url" in log


@pytest.mark.parametrize("own_redis", [True, False], ids=["chart-redis", "existing-redis"])
def test_sync_values_make_the_replicas_active_active(
    own_redis: bool, fake_api: Any, tmp_path: Path
) -> None:
    sync: Obj = (
        {"redis": {"enabled": True}} if own_redis else {"redisUrl": "redis://kv.infra:6379/2"}
    )
    objects, release = install(fake_api, tmp_path, {"replicas": 3, "sync": sync})
    (epp,) = list(epp_containers(objects))
    # Every replica routes: no leader election, ready on the serving health service,
    # rolled one at a time.
    assert epp.flag("ha-enable-leader-election") == "false"
    assert epp.deployment["spec"]["strategy"]["type"] == "RollingUpdate"
    config = serve_config(epp, objects, tmp_path)
    assert not config.kubernetes.leader_election
    redis = [o for o in objects if o["metadata"]["name"] == "epp-epp-redis"]
    if own_redis:
        assert config.sync.redis_url == "redis://epp-epp-redis:6379/0"
        assert {o["kind"] for o in redis} == {"Deployment", "Service"}
        (service,) = [o for o in redis if o["kind"] == "Service"]
        assert service["spec"]["ports"][0]["port"] == 6379
        (pod,) = [o["spec"]["template"] for o in redis if o["kind"] == "Deployment"]
        # The Service reaches the Redis pod, and epp's Service does not select it.
        assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
        (epp_service,) = [
            o for o in objects if o["kind"] == "Service" and o["metadata"]["name"] == "epp-epp"
        ]
        assert not epp_service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    else:
        assert config.sync.redis_url == "redis://kv.infra:6379/2"
        assert redis == []
    assert "Active-active: all 3 replicas route" in release["info"]["notes"]
    problems = check_epp_deployments(objects, tmp_path) + check_service_selectors(objects)
    assert problems + [p for o in objects for p in schema_problems(o)] == []


def test_chart_defaults_match_the_plain_manifest(fake_api: Any, tmp_path: Path) -> None:
    """deploy/kubernetes/epp.yaml is the chart with its defaults (and the pool created)."""
    plain = load_documents(DEPLOY / "kubernetes" / "epp.yaml")
    values = {"inferencePool": {"create": True, "routingStrategy": "PREFIX_CACHE"}}
    rendered, _ = install(fake_api, tmp_path, values, release="vllm-llama3-8b-instruct")

    def one(objects: list[Obj], kind: str) -> Obj:
        (obj,) = [o for o in objects if o["kind"] == kind]
        return obj

    plain_pod = one(plain, "Deployment")["spec"]["template"]["spec"]
    chart_pod = one(rendered, "Deployment")["spec"]["template"]["spec"]
    for key in ("terminationGracePeriodSeconds", "securityContext"):
        assert chart_pod[key] == plain_pod[key], key
    (plain_epp,), (chart_epp,) = plain_pod["containers"], chart_pod["containers"]
    assert sorted(chart_epp["args"]) == sorted(
        arg.replace("$(POD_NAMESPACE)", "default") for arg in plain_epp["args"]
    )
    for key in (
        "image",
        "ports",
        "livenessProbe",
        "readinessProbe",
        "resources",
        "securityContext",
        "env",
    ):
        assert chart_epp[key] == plain_epp[key], key
    assert sorted(m["mountPath"] for m in chart_epp["volumeMounts"]) == sorted(
        m["mountPath"] for m in plain_epp["volumeMounts"]
    )
    assert one(rendered, "Service")["spec"]["ports"] == one(plain, "Service")["spec"]["ports"]
    assert one(rendered, "InferencePool")["spec"] == one(plain, "InferencePool")["spec"]
    assert (
        one(rendered, "InferencePool")["metadata"]["annotations"].items()
        >= one(plain, "InferencePool")["metadata"]["annotations"].items()
    )
    plain_config = yaml.safe_load(one(plain, "ConfigMap")["data"]["epp.yaml"])
    chart_config = yaml.safe_load(one(rendered, "ConfigMap")["data"]["epp.yaml"])
    assert chart_config == plain_config
    plain_rules = [r for r in one(plain, "Role")["rules"] if "leases" not in r["resources"]]
    assert one(rendered, "Role")["rules"] == plain_rules


# -- values written for the reference charts ----------------------------------------------


def _one(objects: list[Obj], kind: str) -> Obj:
    (obj,) = [o for o in objects if o["kind"] == kind]
    return obj


def test_gie_inferencepool_values_map_onto_epp(fake_api: Any, tmp_path: Path) -> None:
    """A values file for GIE's inferencepool chart: each of its keys reaches what epp reads,
    as deploy/README.md's map says."""
    objects, _ = install(fake_api, tmp_path, _values("gie-inferencepool"), release="qwen3")
    (epp,) = list(epp_containers(objects))
    config = serve_config(epp, objects, tmp_path)
    deployment = epp.deployment
    assert deployment["spec"]["replicas"] == 2
    assert epp.container["image"] == "registry.example.com/ml/epp:0.1.0"
    assert epp.container["imagePullPolicy"] == "Always"
    # Two replicas: leader election, as the reference chart does.
    assert config.kubernetes.leader_election
    assert (config.kubernetes.pool_name, config.kubernetes.pool_group) == (
        "qwen3",
        "inference.networking.k8s.io",
    )
    assert config.server.grpc_port == 9002
    assert epp.flag("v") == "4" and config.log_level == "debug"
    assert config.data_layer.refresh_metrics_interval_s == 0.1
    assert (config.data_layer.engine, config.data_layer.metrics_path) == ("vllm", "/metrics")
    assert epp.env()["EPP_REQUEST_LOG"] == "all" and config.request_log == "all"
    # pluginsConfigFile names the pluginsCustomConfig entry epp loads: the reference's
    # default weights (the picker, which it leaves out, is epp's to add).
    (profile,) = config.scheduler.profiles
    weights = {ref.plugin_ref: ref.weight for ref in profile.plugins}
    assert {name: weight for name, weight in weights.items() if weight is not None} == {
        "queue-scorer": 2,
        "kv-cache-utilization-scorer": 2,
        "prefix-cache-scorer": 3,
    }
    assert {"name": "debug", "containerPort": 8081, "protocol": "TCP"} in epp.container["ports"]
    assert epp.pod_spec["tolerations"] == [
        {"key": "dedicated", "operator": "Equal", "value": "routing", "effect": "NoSchedule"}
    ]
    assert epp.container["resources"]["requests"] == {"cpu": "4", "memory": "8Gi"}
    service = _one(objects, "Service")
    assert {"name": "debug", "port": 8081, "protocol": "TCP", "targetPort": 8081} in service[
        "spec"
    ]["ports"]
    pool = _one(objects, "InferencePool")
    assert pool["metadata"]["name"] == "qwen3"
    assert pool["spec"]["endpointPickerRef"]["failureMode"] == "FailOpen"
    assert pool["spec"]["selector"]["matchLabels"] == {"app": "vllm-qwen3-32b"}
    monitor = _one(objects, "ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    assert [e["interval"] for e in monitor["spec"]["endpoints"]] == ["30s"]
    objectives = {
        o["metadata"]["name"]: (
            o["apiVersion"],
            o["spec"]["priority"],
            o["spec"]["poolRef"]["name"],
        )
        for o in objects
        if o["kind"] == "InferenceObjective"
    }
    assert objectives == {
        "high-priority": ("llm-d.ai/v1alpha2", 5, "qwen3"),
        "batch": ("llm-d.ai/v1alpha2", -1, "qwen3"),
    }


def test_llm_d_router_values_map_onto_epp(fake_api: Any, tmp_path: Path) -> None:
    objects, _ = install(fake_api, tmp_path, _values("llm-d-router"), release="llama")
    (epp,) = list(epp_containers(objects))
    config = serve_config(epp, objects, tmp_path)
    assert epp.container["image"] == "registry.example.com/ml/epp:0.1.0"
    assert not config.kubernetes.leader_election
    assert config.server.grpc_health_port == 9013
    assert {p["containerPort"] for p in epp.container["ports"]} >= {9002, 9013}
    assert config.log_level == "debug"  # --zap-log-level debug
    assert (config.data_layer.engine, config.data_layer.metrics_path) == ("sglang", "/v1/metrics")
    assert epp.flag("tracing") == "true"  # accepted, and named in a warning at start
    assert config.request_log == "all"
    assert (
        epp.deployment["spec"]["template"]["metadata"]["annotations"]["prometheus.io/scrape"]
        == "true"
    )
    # default-plugins.yaml stands for this chart's own default config.
    chart_default = yaml.safe_load((CHART / "values.yaml").read_text())["config"]
    assert yaml.safe_load(_one(objects, "ConfigMap")["data"]["epp.yaml"]) == chart_default
    pool = _one(objects, "InferencePool")
    assert pool["spec"]["targetPorts"] == [{"number": 30000}]
    assert pool["spec"]["selector"]["matchLabels"] == {"app": "sglang-llama"}
    assert pool["spec"]["endpointPickerRef"]["failureMode"] == "FailOpen"
    assert [o["metadata"]["name"] for o in objects if o["kind"] == "InferenceObjective"] == [
        "interactive"
    ]


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            {"inferenceExtension": {"latencyPredictor": {"enabled": True}}},
            "inferenceExtension.latencyPredictor.enabled: epp has no latencyPredictor",
        ),
        (
            {"router": {"inferencePool": {"create": False}}},
            "router.inferencePool.create: false is llm-d-router's standalone mode",
        ),
        (
            {"inferenceExtension": {"pluginsConfigFile": "mine.yaml"}},
            "inferenceExtension.pluginsConfigFile: mine.yaml is not a key of pluginsCustomConfig",
        ),
        (
            {"router": {"modelServers": {"type": "triton-tensorrt-llm"}}},
            "model server type triton-tensorrt-llm",
        ),
        ({"provider": {"name": "gke"}}, "provider.name gke"),
        (
            {"inferenceExtension": {"replicas": 1}, "router": {"epp": {"replicas": 1}}},
            "give the values in one shape",
        ),
    ],
    ids=["latency-predictor", "standalone", "missing-config", "triton", "gke", "both-shapes"],
)
def test_reference_features_epp_lacks_fail_the_render(
    values: Obj, message: str, tmp_path: Path
) -> None:
    _, log = lint(tmp_path, values)
    assert message in log


def _reference_map() -> tuple[str, list[list[str]]]:
    """deploy/README.md's section on the reference charts' values: (its text, the cells
    of its table)."""
    text = (DEPLOY / "README.md").read_text()
    section = text.split("### Values written for the reference charts", 1)[1].split("\n## ", 1)[0]
    rows = [
        [cell.strip() for cell in line.strip("|").split("|")]
        for line in section.splitlines()
        if line.startswith("| `")
    ]
    return section, rows


_SHORTHANDS = {
    "E": ("inferenceExtension", "router.epp"),
    "M": ("inferenceExtension.monitoring", "router.monitoring"),
    "T": ("inferenceExtension.tracing", "router.tracing"),
}


def _resolve(root: Obj, node: Obj) -> Obj:
    while "$ref" in node:
        target: Any = root
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        node = target
    return node


def _schema_has(schema: Obj, path: str) -> bool:
    node = schema
    for key in path.split("."):
        properties = _resolve(schema, node).get("properties") or {}
        if key not in properties:
            return False
        node = properties[key]
    return True


def _keys(cell: str) -> list[str]:
    """The value paths a cell names, shorthands expanded."""
    keys = []
    for key in re.findall(r"`([A-Za-z][\w.-]*)`", cell):
        head, _, rest = key.partition(".")
        keys += [f"{full}.{rest}" for full in _SHORTHANDS[head]] if head in _SHORTHANDS else [key]
    return keys


def test_the_reference_values_map_is_the_charts() -> None:
    """Every key the README's map names is one the schema accepts, on both sides (an epp
    flag for `flags.*`), and every key of the reference shapes is in the map."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    section, rows = _reference_map()
    assert len(rows) >= 20
    flags = {option.flag.removeprefix("--") for option in OPTIONS}
    for reference, ours, _ in rows:
        for key in _keys(reference):
            assert _schema_has(schema, key), f"the schema has no {key}"
        for key in _keys(ours):
            if key.startswith("flags."):
                assert key.removeprefix("flags.") in flags | {"tracing"}, key
            else:
                assert _schema_has(schema, key), f"the schema has no {key}"
    named = set(_keys(section))
    for shape, node in (("inferenceExtension", schema["$defs"]["referenceEpp"]),):
        for key in node["properties"]:
            assert any(n == f"{shape}.{key}" or n.startswith(f"{shape}.{key}.") for n in named), (
                f"deploy/README.md does not say what becomes of {shape}.{key}"
            )
    for key in schema["properties"]["router"]["properties"]:
        assert any(n == f"router.{key}" or n.startswith(f"router.{key}.") for n in named), (
            f"deploy/README.md does not say what becomes of router.{key}"
        )

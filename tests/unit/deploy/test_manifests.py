"""deploy/: every YAML file parses, every object matches its schema, and the objects of
each setup (as a user applies them together) refer to each other correctly and run epp
with arguments it accepts."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from epp.config import OPTIONS

from .manifests import (
    EPP_IMAGE,
    check_epp_deployments,
    check_pool_references,
    check_rbac,
    check_routes,
    check_service_selectors,
    describe,
    epp_containers,
    find,
    load_documents,
    lora_adapters,
    schema_problems,
    serve_config,
    served_models,
)
from .setups import DEPLOY, GATEWAY_SETUPS, SETUPS, setup_objects

Obj = dict[str, Any]

# Files whose documents are not Kubernetes objects.
NOT_MANIFESTS = (
    "envoy/*.yaml",
    "helm/*/Chart.yaml",
    "helm/*/values.yaml",
    "helm/*/ci/*.yaml",
    "prometheus/prometheus.yml",
    "prometheus/kubernetes-scrape-configs.yaml",
    "reference-configs/*.yaml",  # EndpointPickerConfig files (tests/unit/test_reference_configs.py)
)


def _relative(path: Path) -> str:
    return path.relative_to(DEPLOY).as_posix()


def yaml_files() -> list[Path]:
    """Every YAML file under deploy/ but the Helm chart's templates (Go templates)."""
    return sorted(
        path
        for path in DEPLOY.rglob("*.y*ml")
        if not (path.is_relative_to(DEPLOY / "helm") and "templates" in path.parts)
    )


def manifest_files() -> list[Path]:
    return [
        path for path in yaml_files() if not any(path.match(pattern) for pattern in NOT_MANIFESTS)
    ]


def test_deploy_has_the_expected_files() -> None:
    names = {_relative(path) for path in yaml_files()}
    assert {
        "kubernetes/epp.yaml",
        "gateway/model-servers.yaml",
        "gateway/httproutes.yaml",
        "gateway/body-based-router.yaml",
        "gateway/envoy-gateway/gateway.yaml",
        "gateway/istio/gateway.yaml",
        "ack/pool.yaml",
        "ack/inference-models.yaml",
        "ack/model-server.yaml",
        "ack/httproutes.yaml",
        "helm/epp/Chart.yaml",
        "helm/epp/values.yaml",
    } <= names


@pytest.mark.parametrize("path", yaml_files(), ids=_relative)
def test_yaml_parses(path: Path) -> None:
    assert load_documents(path), f"{path} holds no YAML documents"


@pytest.mark.parametrize("path", manifest_files(), ids=_relative)
def test_objects_match_their_schemas(path: Path) -> None:
    problems = []
    for obj in load_documents(path):
        if not isinstance(obj, dict) or not {"apiVersion", "kind", "metadata"} <= obj.keys():
            problems.append(f"not a Kubernetes object: {str(obj)[:80]}")
            continue
        problems += schema_problems(obj)
    assert problems == []


def test_every_manifest_belongs_to_a_setup() -> None:
    covered = {
        path
        for patterns in SETUPS.values()
        for pattern in patterns
        for path in DEPLOY.glob(pattern)
    }
    assert [_relative(p) for p in manifest_files() if p not in covered] == []


@pytest.mark.parametrize("setup", SETUPS)
def test_names_are_unique(setup: str) -> None:
    seen: dict[tuple[str, str, str], int] = {}
    for obj in setup_objects(setup):
        key = (obj["apiVersion"].split("/")[0], obj["kind"], obj["metadata"]["name"])
        seen[key] = seen.get(key, 0) + 1
    assert [key for key, count in seen.items() if count > 1] == []


@pytest.mark.parametrize("setup", SETUPS)
def test_epp_accepts_each_deployments_arguments(setup: str, tmp_path: Path) -> None:
    objects = setup_objects(setup)
    containers = list(epp_containers(objects))
    assert containers, "no epp Deployment"
    flags = {name for option in OPTIONS for name in (option.flag, *option.aliases)}
    flags |= {"--config-file", "--endpoint", "--scorer-weight"}  # not in OPTIONS
    for epp in containers:
        assert epp.container["image"].startswith(f"{EPP_IMAGE}:")
        assert epp.container["args"][0] == "serve"
        assert [a for a in epp.args() if a.split("=")[0] not in flags] == []
    assert check_epp_deployments(objects, tmp_path) == []


@pytest.mark.parametrize("setup", SETUPS)
def test_services_select_their_pods(setup: str) -> None:
    assert check_service_selectors(setup_objects(setup)) == []


@pytest.mark.parametrize("setup", SETUPS)
def test_pools_name_their_epp(setup: str, tmp_path: Path) -> None:
    objects = setup_objects(setup)
    pools = [obj for obj in objects if obj["kind"] == "InferencePool"]
    assert pools
    has_model_servers = setup in GATEWAY_SETUPS
    assert check_pool_references(objects, model_servers=has_model_servers, tmp=tmp_path) == []


@pytest.mark.parametrize("setup", SETUPS)
def test_rbac_covers_what_epp_reads(setup: str, tmp_path: Path) -> None:
    assert check_rbac(setup_objects(setup), tmp_path) == []


@pytest.mark.parametrize("setup", GATEWAY_SETUPS)
def test_routes_send_each_model_to_its_pool(setup: str) -> None:
    objects = setup_objects(setup)
    routes = [obj for obj in objects if obj["kind"] == "HTTPRoute"]
    pools = {obj["metadata"]["name"] for obj in objects if obj["kind"] == "InferencePool"}
    routed = {
        ref["name"]
        for route in routes
        for rule in route["spec"]["rules"]
        for ref in rule["backendRefs"]
    }
    assert routed == pools, "every pool gets a route"
    assert check_routes(objects) == []


def _body_based_router(objects: list[Obj], service_name: str, port: int, tmp: Path) -> list[str]:
    """The Service is the body-based router: epp in --body-based-routing mode, plaintext
    gRPC on ``port`` (the gateway's ext_proc cluster does not dial TLS)."""
    service = find(objects, "Service", "default", service_name)
    if service is None:
        return [f"no Service {service_name}"]
    problems = []
    if port not in [p["port"] for p in service["spec"]["ports"]]:
        problems.append(f"Service {service_name} has no port {port}")
    pickers = [
        epp
        for epp in epp_containers(objects)
        if all(
            epp.deployment["spec"]["template"]["metadata"]["labels"].get(k) == v
            for k, v in service["spec"]["selector"].items()
        )
    ]
    if len(pickers) != 1:
        return [*problems, f"Service {service_name} selects {len(pickers)} epp Deployments"]
    config = serve_config(pickers[0], objects, tmp)
    if not config.server.body_based_routing:
        problems.append(f"{describe(pickers[0].deployment)} is not in --body-based-routing mode")
    if config.secure_serving:
        problems.append(
            f"{describe(pickers[0].deployment)} serves TLS; the gateway dials plaintext"
        )
    if config.kubernetes.enabled or config.endpoints:
        problems.append(f"{describe(pickers[0].deployment)} also picks endpoints")
    if config.server.grpc_port != port:
        problems.append(f"the router listens on {config.server.grpc_port}, not {port}")
    return problems


def _gateway_names(objects: list[Obj]) -> set[str]:
    return {obj["metadata"]["name"] for obj in objects if obj["kind"] == "Gateway"}


def test_envoy_gateway_runs_the_body_based_router_first(tmp_path: Path) -> None:
    objects = setup_objects("envoy-gateway")
    (gateway,) = [obj for obj in objects if obj["kind"] == "Gateway"]
    gateway_class = find(objects, "GatewayClass", "default", gateway["spec"]["gatewayClassName"])
    assert gateway_class is not None
    controller = gateway_class["spec"]["controllerName"]
    assert controller == "gateway.envoyproxy.io/gatewayclass-controller"
    (policy,) = [obj for obj in objects if obj["kind"] == "EnvoyExtensionPolicy"]
    assert [ref["name"] for ref in policy["spec"]["targetRefs"] if ref["kind"] == "Gateway"] == [
        gateway["metadata"]["name"]
    ]
    (ext_proc,) = policy["spec"]["extProc"]
    assert ext_proc["processingMode"]["request"]["body"] == "FullDuplexStreamed"
    assert ext_proc["processingMode"]["response"]["body"] == "FullDuplexStreamed"
    assert ext_proc["processingMode"].get("allowModeOverride") is False
    (backend,) = ext_proc["backendRefs"]
    assert backend.get("kind", "Service") == "Service"
    assert _body_based_router(objects, backend["name"], backend["port"], tmp_path) == []


def test_istio_runs_the_body_based_router_first(tmp_path: Path) -> None:
    objects = setup_objects("istio")
    (envoy_filter,) = [obj for obj in objects if obj["kind"] == "EnvoyFilter"]
    assert {ref["name"] for ref in envoy_filter["spec"]["targetRefs"]} == _gateway_names(objects)
    (patch,) = envoy_filter["spec"]["configPatches"]
    assert patch["applyTo"] == "HTTP_FILTER"
    assert patch["match"]["context"] == "GATEWAY"
    # Istio appends its InferencePool ext_proc filter just before the router; the model
    # header must be set before that one runs.
    assert patch["patch"]["operation"] == "INSERT_FIRST"
    typed_config = patch["patch"]["value"]["typed_config"]
    cluster = typed_config["grpc_service"]["envoy_grpc"]["cluster_name"]
    direction, port, subset, host = cluster.split("|")
    service, namespace, *domain = host.split(".")
    assert (direction, subset, domain) == ("outbound", "", ["svc", "cluster", "local"])
    assert namespace == "default"
    assert _body_based_router(objects, service, int(port), tmp_path) == []


def test_istio_reaches_the_pools_epps_with_tls(tmp_path: Path) -> None:
    """Each pool's epp serves TLS, so Istio's gateway needs a DestinationRule saying so;
    the plaintext body-based router must have none."""
    objects = setup_objects("istio")
    rules = {
        obj["spec"]["host"].split(".")[0]: obj
        for obj in objects
        if obj["kind"] == "DestinationRule"
    }
    tls_services = set()
    for pool in (obj for obj in objects if obj["kind"] == "InferencePool"):
        name = pool["spec"]["endpointPickerRef"]["name"]
        service = find(objects, "Service", "default", name)
        assert service is not None
        (epp,) = [
            e
            for e in epp_containers(objects)
            if all(
                e.deployment["spec"]["template"]["metadata"]["labels"].get(k) == v
                for k, v in service["spec"]["selector"].items()
            )
        ]
        assert serve_config(epp, objects, tmp_path).secure_serving, name
        tls_services.add(name)
    assert set(rules) == tls_services
    for rule in rules.values():
        assert rule["spec"]["trafficPolicy"]["tls"] == {
            "mode": "SIMPLE",
            "insecureSkipVerify": True,
        }


def test_epp_reads_the_objectives_and_rewrites() -> None:
    """epp's own readers accept the InferenceObjectives and InferenceModelRewrites."""
    from epp.requestcontrol import objectives, rewrite

    objects = setup_objects("istio")
    for pool in (obj["metadata"]["name"] for obj in objects if obj["kind"] == "InferencePool"):
        mine = [
            obj
            for obj in objects
            if obj["kind"] == "InferenceObjective" and obj["spec"]["poolRef"]["name"] == pool
        ]
        assert objectives.priorities_from_objects(mine, pool) == {
            obj["metadata"]["name"]: obj["spec"]["priority"] for obj in mine
        }
        rewrites = [
            obj
            for obj in objects
            if obj["kind"] == "InferenceModelRewrite" and obj["spec"]["poolRef"]["name"] == pool
        ]
        rules = rewrite.rules_from_objects(rewrites, pool)
        assert len(rules) == sum(len(obj["spec"]["rules"]) for obj in rewrites)
        table = rewrite.ModelRewrites(rules, seed=1)
        for obj in rewrites:
            for rule in obj["spec"]["rules"]:
                for match in rule["matches"]:
                    targets = {t["modelRewrite"] for t in rule["targets"]}
                    assert table.target(match["model"]["value"], {}) in targets


def test_model_servers_are_ready_only_when_serving() -> None:
    objects = setup_objects("istio")
    servers = [
        obj
        for obj in objects
        if obj["kind"] == "Deployment"
        and obj["spec"]["template"]["spec"]["containers"][0]["image"].startswith(
            "vllm/vllm-openai:"
        )
    ]
    assert len(servers) == 2
    for server in servers:
        (container,) = server["spec"]["template"]["spec"]["containers"]
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert container[probe]["httpGet"]["path"] == "/health", (describe(server), probe)
        assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
        assert "--port=8000" in container["args"]


def test_the_ack_example_reads_as_its_user_means_it(tmp_path: Path) -> None:
    """epp accepts every InferenceModel of deploy/ack/ (none ignored) with the priorities
    and the 90/10 canary the files describe, every target is a model or adapter the vLLM
    pods serve, and those pods run with the LoRA flags the example is about."""
    from epp.requestcontrol.inference_models import policies_from_objects

    objects = setup_objects("ack")
    (pool,) = [obj for obj in objects if obj["kind"] == "InferencePool"]
    assert pool["apiVersion"] == "inference.networking.x-k8s.io/v1alpha2"
    (epp,) = [
        e for e in epp_containers(objects) if serve_config(e, objects, tmp_path).kubernetes.enabled
    ]
    assert (
        serve_config(epp, objects, tmp_path).kubernetes.pool_group
        == "inference.networking.x-k8s.io"
    )
    models = [obj for obj in objects if obj["kind"] == "InferenceModel"]
    policies = policies_from_objects(models, pool["metadata"]["name"])
    assert policies.ignored == {}
    assert policies.priorities == {"qwen": 1, "travel-helper": 0, "qwen-batch": -1}
    rules = {next(iter(rule.models)): rule for rule in policies.rules}
    assert set(rules) == {"travel-helper", "qwen-batch"}  # `qwen` keeps its name
    assert (rules["travel-helper"].targets, rules["travel-helper"].cumulative_weights) == (
        ("travel-helper-v1", "travel-helper-v2"),
        (90, 100),
    )
    served = served_models(objects, pool)
    assert served == {"qwen", "travel-helper-v1", "travel-helper-v2"}
    assert {t["name"] for m in models for t in m["spec"]["targetModels"]} <= served

    (server,) = [
        obj
        for obj in objects
        if obj["kind"] == "Deployment" and obj["metadata"]["name"] == "vllm-qwen"
    ]
    (container,) = server["spec"]["template"]["spec"]["containers"]
    assert {"--enable-lora", "--max-loras=2", "--max-cpu-loras=4"} <= set(container["args"])
    assert lora_adapters(server["spec"]["template"]) == {"travel-helper-v1", "travel-helper-v2"}


def test_the_plain_manifests_run_active_active_as_epp_redis_yaml_says(tmp_path: Path) -> None:
    # Do what epp-redis.yaml's header tells a user: more replicas, the flag it gives.
    redis_file = DEPLOY / "kubernetes" / "epp-redis.yaml"
    match = re.search(r"- (--sync-redis-url=\S+)", redis_file.read_text())
    assert match is not None
    objects = setup_objects("kubernetes")
    (epp,) = epp_containers(objects)
    assert check_epp_deployments(objects, tmp_path) == []
    epp.deployment["spec"]["replicas"] = 3
    assert any(
        "without leader election or shared state" in p
        for p in check_epp_deployments(objects, tmp_path)
    )
    epp.container["args"].append(match.group(1))
    assert check_epp_deployments(objects, tmp_path) == []
    # The URL names the Service of the Redis pods, on its port.
    url = urlsplit(serve_config(epp, objects, tmp_path).sync.redis_url or "")
    (service,) = [o for o in load_documents(redis_file) if o["kind"] == "Service"]
    assert url.hostname == service["metadata"]["name"]
    assert url.port == service["spec"]["ports"][0]["port"]
    assert check_service_selectors(objects) == []

"""The manifest checks are not vacuous: each mistake below, made in a copy of the Istio
setup, is reported with a message that names it."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from . import manifests
from .setups import setup_objects

Obj = dict[str, Any]
PICKER = "vllm-llama3-8b-instruct-epp"


def _first(objects: list[Obj], kind: str, name: str | None = None) -> Obj:
    return next(o for o in objects if o["kind"] == kind and name in (None, o["metadata"]["name"]))


def _picker(objects: list[Obj]) -> Obj:
    deployment = _first(objects, "Deployment", PICKER)
    container: Obj = deployment["spec"]["template"]["spec"]["containers"][0]
    return container


def _set_arg(objects: list[Obj], flag: str, value: str) -> None:
    args = _picker(objects)["args"]
    args[:] = [a for a in args if not a.startswith(f"--{flag}=")] + [f"--{flag}={value}"]


def _all_checks(objects: list[Obj], tmp: Path) -> list[str]:
    return (
        manifests.check_epp_deployments(objects, tmp)
        + manifests.check_service_selectors(objects)
        + manifests.check_pool_references(objects, model_servers=True, tmp=tmp)
        + manifests.check_routes(objects)
        + manifests.check_rbac(objects, tmp)
        + [p for obj in objects for p in manifests.schema_problems(obj)]
    )


MISTAKES: dict[str, tuple[Callable[[list[Obj]], None], str]] = {
    "unknown flag": (
        lambda o: _picker(o)["args"].append("--no-such-flag=1"),
        "unrecognized arguments: --no-such-flag=1",
    ),
    "bad duration": (lambda o: _set_arg(o, "graceful-timeout", "ten"), "not a duration"),
    "two endpoint sources": (
        lambda o: _set_arg(o, "endpoint-selector", "app=x"),
        "choose one source of endpoints",
    ),
    "unknown scorer": (
        lambda o: _first(o, "ConfigMap", PICKER)["data"].update(
            {
                "epp.yaml": "plugins: [{type: no-such-scorer}, {type: max-score-picker}]\n"
                "schedulingProfiles: [{name: default, plugins: [{pluginRef: "
                "no-such-scorer, weight: 1}, {pluginRef: max-score-picker}]}]\n"
            }
        ),
        "unknown type 'no-such-scorer'",
    ),
    "grpc port mismatch": (
        lambda o: _set_arg(o, "grpc-port", "9999"),
        "container port grpc is 9002, epp listens on 9999",
    ),
    "short grace period": (
        lambda o: _first(o, "Deployment", PICKER)["spec"]["template"]["spec"].update(
            terminationGracePeriodSeconds=60
        ),
        "terminationGracePeriodSeconds 60 does not exceed",
    ),
    "leader election probes": (
        lambda o: _set_arg(o, "ha-enable-leader-election", "true"),
        "readinessProbe asks for 'inference-extension'",
    ),
    "service misses its pods": (
        lambda o: _first(o, "Service", PICKER)["spec"]["selector"].update(
            {"app.kubernetes.io/instance": "other"}
        ),
        "selects no pods",
    ),
    "pool names a missing service": (
        lambda o: _first(o, "InferencePool")["spec"]["endpointPickerRef"].update(name="nope"),
        "Service nope is not here",
    ),
    "pool and epp disagree": (
        lambda o: _set_arg(o, "pool-name", "vllm-qwen2-5-7b-instruct"),
        "its epp watches",
    ),
    "pool selects no model server": (
        lambda o: _first(o, "InferencePool")["spec"]["selector"]["matchLabels"].update(app="nope"),
        "selects no model-server pods",
    ),
    "route to a missing pool": (
        lambda o: _first(o, "HTTPRoute")["spec"]["rules"][0]["backendRefs"][0].update(name="nope"),
        "InferencePool nope is not here",
    ),
    "route for a model the pool lacks": (
        lambda o: _first(o, "HTTPRoute")["spec"]["rules"][0]["matches"][0]["headers"][0].update(
            value="llama"
        ),
        "routes model 'llama'",
    ),
    "role without pods": (
        lambda o: _first(o, "Role", PICKER)["rules"].pop(0),
        "may not watch pods",
    ),
    "typo in a Deployment": (
        lambda o: _picker(o).update(readinesProbe={}),
        "'readinesProbe' was unexpected",
    ),
    "ext_proc fails open": (
        lambda o: _first(o, "EnvoyFilter")["spec"]["configPatches"][0]["patch"]["value"][
            "typed_config"
        ].update(failure_mode_allow=True),
        "failure_mode_allow: False was expected",
    ),
}


@pytest.mark.parametrize("mistake", MISTAKES)
def test_mistake_is_reported(mistake: str, tmp_path: Path) -> None:
    objects = copy.deepcopy(setup_objects("istio"))
    assert _all_checks(objects, tmp_path) == []
    make, message = MISTAKES[mistake]
    make(objects)
    problems = _all_checks(objects, tmp_path)
    assert any(message in problem for problem in problems), problems

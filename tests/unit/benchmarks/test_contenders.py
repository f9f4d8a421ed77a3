from __future__ import annotations

import argparse
import shutil
from pathlib import Path
from types import ModuleType

import pytest

from benchmarks.routing.contenders import (
    CONFIGS,
    Contender,
    _checkout_bootstrap,
    builtin_contenders,
    load_peers,
    static_cluster_bootstrap,
)
from epp.config import build_scheduler_from_config, load_config
from epp.envoy_config import EnvoyPorts, envoy_bootstrap


def test_builtin_contenders_implement_the_protocol_with_unique_names() -> None:
    built = builtin_contenders()
    assert all(isinstance(c, Contender) for c in built)
    names = [c.name for c in built]
    assert names == [
        "envoy-rr",
        "envoy-lr",
        "epp",
        "epp-full-duplex",
        "epp-observed",
        "epp-timed",
        "epp-lean",
        "epp-buffered",
        "epp-reference",
        "epp-load",
        "epp-prefix",
    ]
    for contender in built:
        contender.stop()  # safe before start


@pytest.mark.parametrize("policy", ["ROUND_ROBIN", "LEAST_REQUEST"])
def test_static_cluster_holds_every_pod(policy: str) -> None:
    pods = ["127.0.0.1:8001", "127.0.0.1:8002", "127.0.0.1:8003"]
    bootstrap = static_cluster_bootstrap(pods, lb_policy=policy, listen_port=1, admin_port=2)
    resources = bootstrap["static_resources"]
    (cluster,) = resources["clusters"]
    assert cluster["lb_policy"] == policy
    endpoints = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]
    ports = [e["endpoint"]["address"]["socket_address"]["port_value"] for e in endpoints]
    assert ports == [8001, 8002, 8003]
    manager = resources["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    assert [f["name"] for f in manager["http_filters"]] == ["envoy.filters.http.router"]


@pytest.mark.parametrize("name", ["load-only.yaml", "prefix-only.yaml"])
def test_config_files_build_a_scheduler(name: str) -> None:
    config = load_config(argparse.Namespace(config_file=str(CONFIGS / name)), environ={})
    build_scheduler_from_config(config)


def test_config_files_hold_the_scorers_they_are_named_for() -> None:
    def scorers(name: str) -> set[str]:
        config = load_config(argparse.Namespace(config_file=str(CONFIGS / name)), environ={})
        return {
            ref.plugin_ref
            for p in config.scheduler.profiles
            for ref in p.plugins
            if ref.weight is not None
        }

    assert scorers("load-only.yaml") == {
        "queue-scorer",
        "kv-cache-utilization-scorer",
        "inflight-load-scorer",
    }
    assert scorers("prefix-only.yaml") == {"prefix-cache-scorer"}


class _Peer:
    name = "peer"

    def start(self, pods: object, model: str, workdir: Path) -> str:
        return "http://127.0.0.1:1"

    def stop(self) -> None:
        pass

    def processes(self) -> dict[str, list[int]]:
        return {}


def test_load_peers_accepts_instances_classes_and_factories() -> None:
    module = ModuleType("peers")
    module.PEERS = [_Peer(), _Peer, lambda: _Peer()]  # type: ignore[attr-defined]
    peers, note = load_peers(lambda name: module)
    assert note is None and [p.name for p in peers] == ["peer"] * 3


def test_load_peers_explains_an_absent_module() -> None:
    def missing(name: str) -> ModuleType:
        raise ModuleNotFoundError(f"No module named {name!r}", name=name)

    peers, note = load_peers(missing)
    assert peers == [] and note is not None and "skipped" in note
    peers, note = load_peers(lambda name: ModuleType("peers"))
    assert peers == [] and note is not None and "PEERS" in note


def test_a_checkout_contender_takes_the_envoy_bootstrap_that_tree_prints(tmp_path: Path) -> None:
    # A copy of this tree whose envoy-config answers on its own listener port: the
    # bootstrap must come from the checkout's code, not from the running benchmark's.
    root = Path(__file__).resolve().parents[3]
    checkout = tmp_path / "checkout"
    shutil.copytree(root / "epp", checkout / "epp", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(
        root / "vllm_sim", checkout / "vllm_sim", ignore=shutil.ignore_patterns("__pycache__")
    )
    marked = checkout / "epp" / "envoy_config.py"
    marked.write_text(
        marked.read_text().replace(
            '"stat_prefix": "inference_gateway"', '"stat_prefix": "from_checkout"'
        )
    )
    ports = EnvoyPorts(listen_port=18080, admin_port=19901, epp_port=19002)

    bootstrap = _checkout_bootstrap(checkout, ports)

    listener = bootstrap["static_resources"]["listeners"][0]
    assert listener["address"]["socket_address"]["port_value"] == 18080
    manager = listener["filter_chains"][0]["filters"][0]["typed_config"]
    assert manager["stat_prefix"] == "from_checkout"
    assert "from_checkout" not in str(envoy_bootstrap(ports))

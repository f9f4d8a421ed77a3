"""LoRA adapters through a real Envoy: epp keeps each adapter on the pod that loaded it,
where round-robin spreads it over the pods; an unknown adapter gets an OpenAI error."""

from __future__ import annotations

from collections import defaultdict

import httpx

from benchmarks.routing.contenders import static_cluster_bootstrap
from epp.stack import free_port, start_envoy
from tests.integration.helpers import chat, pod_metric
from tests.integration.resilience import Rig

BASE = "qwen"
ADAPTERS = ("travel-helper-v1", "travel-helper-v2")
MODELS = ",".join((BASE, *ADAPTERS))
LOADS = "vllm_sim:lora_adapter_loads_total"
ROUNDS = 6


def send_adapter_rounds(url: str) -> dict[str, set[str]]:
    """``ROUNDS`` requests per adapter, alternating, one at a time; adapter -> pods."""
    served: dict[str, set[str]] = defaultdict(set)
    with httpx.Client(base_url=url, timeout=30.0) as client:
        for _ in range(ROUNDS):
            for adapter in ADAPTERS:
                # 150 tokens at 2 ms: long enough for a scrape to see the adapter running.
                response = client.post(
                    "/v1/chat/completions", json=chat(adapter, "plan a trip", max_tokens=150)
                )
                assert response.status_code == 200, response.text
                assert response.json()["model"] == adapter
                served[adapter].add(response.headers["x-sim-pod"])
    return served


def _loads(pods: list[str]) -> float:
    return sum(pod_metric(pod, LOADS) for pod in pods)


def test_adapter_requests_stick_to_the_pod_holding_the_adapter(rig: Rig) -> None:
    # Two slots per pod and two adapters: once placed, nothing needs evicting.
    pods = rig.sims("pods", [MODELS] * 4, "--max-loras", "2")
    url = rig.start_envoy(rig.start_epp(dict.fromkeys(pods, MODELS)))
    served = send_adapter_rounds(url)
    assert all(len(on) == 1 for on in served.values()), served
    assert _loads(pods) == len(ADAPTERS)  # each loaded once, where it stayed

    # The same requests through Envoy's round-robin, on a fresh fleet: every adapter
    # lands on several pods and is loaded on each.
    fresh = rig.sims("rr-pods", [MODELS] * 4, "--max-loras", "2")
    listen, admin = free_port(), free_port()
    bootstrap = static_cluster_bootstrap(
        fresh, lb_policy="ROUND_ROBIN", listen_port=listen, admin_port=admin
    )
    rig.processes.append(start_envoy(bootstrap, admin_port=admin, log_dir=rig.log_dir, name="rr"))
    spread = send_adapter_rounds(f"http://127.0.0.1:{listen}")
    assert all(len(on) >= 2 for on in spread.values()), spread
    assert _loads(fresh) >= 2 * len(ADAPTERS)


def test_unknown_adapter_gets_an_openai_error(rig: Rig) -> None:
    pods = rig.sims("pods", [MODELS] * 2)
    url = rig.start_envoy(rig.start_epp(dict.fromkeys(pods, MODELS)))
    with httpx.Client(base_url=url, timeout=30.0) as client:
        response = client.post("/v1/chat/completions", json=chat("travel-helper-v9", "hi"))
        served = client.post("/v1/chat/completions", json=chat("travel-helper-v2", "hi"))
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert "travel-helper-v9" in error["message"]
    assert served.status_code == 200


def test_pool_mode_endpoints_serve_any_adapter_and_the_pod_refuses_unknown_ones(rig: Rig) -> None:
    # Endpoints with no model list (as in pool mode): every pod is a candidate for any
    # adapter, as vLLM loads adapters on demand; one no pod has is vLLM's 404.
    pods = rig.sims("pods", [MODELS] * 2)
    url = rig.start_envoy(rig.start_epp(dict.fromkeys(pods)))
    with httpx.Client(base_url=url, timeout=30.0) as client:
        served = client.post("/v1/chat/completions", json=chat("travel-helper-v1", "hi"))
        unknown = client.post("/v1/chat/completions", json=chat("travel-helper-v9", "hi"))
    assert served.status_code == 200
    assert served.headers["x-sim-pod"] in pods
    assert unknown.status_code == 404
    assert unknown.json()["error"]["message"] == "The model `travel-helper-v9` does not exist."

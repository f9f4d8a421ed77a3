"""GET /v1/models and /v1/models/{id} through a real Envoy, over pods whose models epp
learns from their metrics (endpoints given without a model list, as discovery gives them)."""

from __future__ import annotations

import concurrent.futures

import httpx

from tests.integration.helpers import chat
from tests.integration.resilience import Rig, wait_until

BASE = "org/llama-3-8b"  # a slash, as in Hugging Face ids
ADAPTER = "sql-lora"  # served by the BASE pod as a LoRA adapter
OTHER = "qwen2-1-5b"


def listed(client: httpx.Client) -> list[str]:
    response = client.get("/v1/models")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    assert "x-sim-pod" not in response.headers  # epp answered, no pod did
    document = response.json()
    assert document["object"] == "list"
    for model in document["data"]:
        assert model["object"] == "model" and isinstance(model["created"], int)
        assert model["owned_by"] == "epp"
    return [model["id"] for model in document["data"]]


def test_the_pool_lists_what_its_pods_serve(rig: Rig) -> None:
    base_pod, other_pod = rig.sims("sim", [f"{BASE},{ADAPTER}", OTHER])
    url = rig.start_envoy(rig.start_epp({base_pod: None, other_pod: None}))
    with httpx.Client(base_url=url, timeout=30) as client:
        # The adapter is idle: vLLM's metrics name it only while requests use it.
        assert listed(client) == [BASE, OTHER]

        for path in ("/v1/models/org%2Fllama-3-8b", f"/v1/models/{BASE}"):
            response = client.get(path)
            assert response.status_code == 200, (path, response.text)
            assert response.json()["id"] == BASE

        missing = client.get("/v1/models/no-such-model")
        assert missing.status_code == 404
        assert missing.json() == {
            "error": {
                "message": "The model 'no-such-model' does not exist",
                "type": "invalid_request_error",
                "param": None,
                "code": "model_not_found",
            }
        }
        assert client.get("/v1/models/bad%0Aid").status_code == 400

        # Straight to the pod, past Envoy: a long adapter request that its metrics report.
        long_request = chat(ADAPTER, "write at length", max_tokens=1500)
        with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
            running = pool.submit(
                httpx.post, f"http://{base_pod}/v1/chat/completions", json=long_request, timeout=60
            )
            wait_until(lambda: ADAPTER in listed(client), "the running adapter to be listed")
            assert client.get(f"/v1/models/{ADAPTER}").json()["id"] == ADAPTER
            assert running.result().status_code == 200
        wait_until(lambda: ADAPTER not in listed(client), "the idle adapter to leave the list")

        # Other bodiless requests still reach a pod.
        health = client.get("/health")
        assert health.status_code == 200
        assert health.headers["x-sim-pod"] in (base_pod, other_pod)

"""InferenceModels (v1alpha2), end to end as in Alibaba ACK: the fake Kubernetes API server
holding a v1alpha2 InferencePool and its InferenceModels, simulated vLLM pods serving the
base model `qwen` and two LoRA adapters of it, epp in pool mode, and a real Envoy.

The 90/10 adapter canary is checked on what the pods ran (Envoy without response
processing shows the model the pod answered with), the client-visible model through an
Envoy that streams responses through epp, and criticality by saturating the pool."""

from __future__ import annotations

import math
from collections import Counter

import httpx
import orjson

from epp.envoy_config import EnvoyPorts, envoy_bootstrap
from epp.stack import ManagedProcess, free_port, start_envoy
from tests.integration.helpers import chat
from tests.integration.resilience import Traffic, set_faults, wait_until
from tests.integration.test_lora import send_adapter_rounds
from tests.integration.test_pool_mode import (  # the pool-mode stack and its fixture
    NS,
    Cluster,
    cluster,  # noqa: F401
    health,
    start_picker,
)
from tests.kube_fake import inference_model, inference_pool_v1alpha2, pod

POOL = "qwen-pool"
LABELS = {"app": "vllm-qwen"}
SERVED = "qwen,travel-helper-v1,travel-helper-v2"  # the base model, then its adapters
SPLIT_REQUESTS = 2_000
V1_SHARE = 0.9


def envoy_for(
    stack: Cluster, grpc_port: int, response_body_mode: str
) -> tuple[str, ManagedProcess]:
    ports = EnvoyPorts(listen_port=free_port(), admin_port=free_port(), epp_port=grpc_port)
    envoy = start_envoy(
        envoy_bootstrap(ports, response_body_mode=response_body_mode, epp_tls=True),
        admin_port=ports.admin_port,
        log_dir=stack.log_dir,
        name=f"envoy-{response_body_mode.lower()}",
    )
    return f"http://127.0.0.1:{ports.listen_port}", envoy


def five_sigma_bounds(n: int, p: float) -> tuple[float, float]:
    """Where a binomial(n, p) count lands but with odds of about 1 in 1.7 million."""
    sigma = math.sqrt(n * p * (1 - p))
    return n * p - 5 * sigma, n * p + 5 * sigma


def test_inference_models_split_adapters_restore_names_and_shed_sheddable(
    cluster: Cluster,  # noqa: F811
) -> None:
    api = cluster.api
    api.apply(inference_pool_v1alpha2(POOL, NS, LABELS, target_port=cluster.port))
    api.apply(inference_model("qwen", NS, POOL, "qwen", "Critical", {"qwen": 100}))
    api.apply(
        inference_model(
            "travel-helper",
            NS,
            POOL,
            "travel-helper",
            "Standard",
            {"travel-helper-v1": 90, "travel-helper-v2": 10},
        )
    )
    api.apply(inference_model("qwen-batch", NS, POOL, "qwen-batch", "Sheddable", {"qwen": 100}))
    pods = []
    for ip in ("127.0.0.12", "127.0.0.13"):
        pods.append(cluster.start_pod(ip, SERVED))
        api.apply(pod(ip.replace(".", "-"), NS, ip, LABELS))

    epp, grpc_port, health_port = start_picker(
        cluster, "epp-imodel", "--pool-group", "inference.networking.x-k8s.io", pool=POOL
    )
    raw_url, raw_envoy = envoy_for(cluster, grpc_port, "NONE")
    url, envoy = envoy_for(cluster, grpc_port, "FULL_DUPLEX_STREAMED")
    try:
        wait_until(lambda: health(health_port) == "SERVING", "epp to report SERVING")
        with httpx.Client(base_url=url, timeout=30) as client:

            def post(model: str) -> httpx.Response:
                return client.post("/v1/chat/completions", json=chat(model, "hi", max_tokens=2))

            # The pods serve no `travel-helper`: it answers once the InferenceModels apply.
            wait_until(lambda: post("travel-helper").status_code == 200, "the models to apply")

            # 1. The split, as the pods ran it: 2,000 requests land within 5 sigma of 90/10.
            with Traffic(raw_url, "travel-helper") as traffic:
                wait_until(
                    lambda: len(traffic.outcomes) >= SPLIT_REQUESTS,
                    "the canary traffic",
                    timeout_s=180,
                )
            outcomes = traffic.outcomes
            assert Counter(o.status for o in outcomes) == {200: len(outcomes)}
            ran = Counter(o.model for o in outcomes)
            assert set(ran) == {"travel-helper-v1", "travel-helper-v2"}, ran
            low, high = five_sigma_bounds(len(outcomes), V1_SHARE)
            assert low <= ran["travel-helper-v1"] <= high, (ran, low, high)
            # The bounds are narrow enough that a wrong split could not pass them.
            for wrong in (0.5, 0.8):
                assert not low <= wrong * len(outcomes) <= high
            assert {o.pod for o in outcomes} == set(pods)

            # 2. The client sees the name it asked for, streamed or not.
            for model in ("travel-helper", "qwen-batch", "qwen"):
                response = post(model)
                assert response.status_code == 200, response.text
                assert response.json()["model"] == model
            body = chat("travel-helper", "stream", stream=True, max_tokens=4)
            with client.stream("POST", "/v1/chat/completions", json=body) as streamed:
                events = [line for line in streamed.iter_lines() if line.startswith("data: {")]
            assert events and {orjson.loads(e[6:])["model"] for e in events} == {"travel-helper"}

            # 3. Saturated (6 waiting on each pod, over the threshold of 5): Sheddable is
            # refused, Standard and Critical still served; then shedding stops.
            assert post("qwen-batch").status_code == 200
            for address in pods:
                set_faults(address, extra_waiting=6)
            wait_until(lambda: post("qwen-batch").status_code == 429, "sheddable work shed")
            shed = post("qwen-batch")
            assert shed.status_code == 429 and shed.json()["error"]["code"] == "pool_saturated"
            assert "x-sim-pod" not in shed.headers
            for model in ("travel-helper", "qwen"):
                assert post(model).status_code == 200, model
            for address in pods:
                set_faults(address, extra_waiting=0)
            wait_until(lambda: post("qwen-batch").status_code == 200, "shedding to stop")

        # 4. An InferenceModel epp cannot use is reported; the others keep applying.
        api.apply(inference_model("broken", NS, POOL, "broken", "Urgent"))
        wait_until(
            lambda: f"InferenceModel {NS}/broken is ignored" in epp.log_path.read_text(),
            "the invalid InferenceModel to be reported",
        )
        response = httpx.post(
            f"{raw_url}/v1/chat/completions", json=chat("qwen-batch", "hi"), timeout=30
        )
        assert response.status_code == 200 and response.json()["model"] == "qwen"
    finally:
        envoy.stop()
        raw_envoy.stop()
        code = epp.stop()
        assert code == 0, epp.log_tail()


def test_adapter_requests_stick_to_the_pod_holding_the_adapter_in_pool_mode(
    cluster: Cluster,  # noqa: F811
) -> None:
    # The pool's pods list no models (vLLM loads adapters on demand), so every pod is a
    # candidate for every adapter; lora-affinity keeps each adapter where it was loaded.
    api = cluster.api
    api.apply(inference_pool_v1alpha2(POOL, NS, LABELS, target_port=cluster.port))
    pods = []
    for ip in ("127.0.0.22", "127.0.0.23", "127.0.0.24", "127.0.0.25"):
        pods.append(cluster.start_pod(ip, SERVED, "--max-loras", "2"))
        api.apply(pod(ip.replace(".", "-"), NS, ip, LABELS))
    epp, grpc_port, health_port = start_picker(
        cluster, "epp-sticky", "--pool-group", "inference.networking.x-k8s.io", pool=POOL
    )
    url, envoy = envoy_for(cluster, grpc_port, "NONE")
    try:
        wait_until(lambda: health(health_port) == "SERVING", "epp to report SERVING")
        served = send_adapter_rounds(url)
        assert all(len(on) == 1 for on in served.values()), served
        assert set(served) == {"travel-helper-v1", "travel-helper-v2"}
    finally:
        envoy.stop()
        epp.stop()

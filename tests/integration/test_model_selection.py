""" "model": "auto" end to end, through a real Envoy, in both places epp can choose:

- gateway level, as in the semantic-router guide: a body-based-routing epp chooses the
  model and sets X-Gateway-Model-Name, a route per model matches it
  (``envoy_bootstrap(model_routes=...)``), and each pool's own epp picks the pod;
- pool mode: one epp over the pods of every model chooses the model, then the pod among
  those serving it.

Both run the same rules over the same simulated pods.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import orjson
import pytest

from epp.envoy_config import EnvoyPorts, envoy_bootstrap
from epp.stack import ManagedProcess, free_port, start_envoy, start_epp_module
from tests.integration.helpers import chat, pod_requests, start_local_epp

CODER, SMALL, LARGE = "qwen-coder", "qwen-small", "qwen-large"
RULES = (
    "[{name: coding, model: qwen-coder, keywords: [python, code, function, bug]},"
    " {name: short-chat, model: qwen-small, maxPromptTokens: 16}]"
)
SELECTION_ARGS = ["--model-selection-default", LARGE, "--model-selection-rules", RULES]
CODING_QUESTION = "Why does this Python function return None instead of the list?"
LONG_CHAT = "Tell me about the history of the Roman empire and its roads. " * 3


@dataclass(frozen=True)
class Stack:
    url: str  # Envoy's listener
    metrics_url: str  # the /metrics of the epp that chooses models
    pods: dict[str, tuple[str, ...]]  # model -> its pods


@dataclass(frozen=True)
class Fleet:
    log_dir: Path
    pods: dict[str, tuple[str, ...]]


def _endpoint_args(pods: dict[str, tuple[str, ...]]) -> list[str]:
    return [
        arg
        for model, addresses in pods.items()
        for a in addresses
        for arg in ("--endpoint", f"{a}={model}")
    ]


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    log_dir = tmp_path_factory.mktemp("model-selection")
    pods = {
        CODER: (f"127.0.0.1:{free_port()}",),
        SMALL: (f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"),
        LARGE: (f"127.0.0.1:{free_port()}",),
    }
    sim = start_epp_module(
        "sim",
        [
            "sim",
            *(
                arg
                for model, addresses in pods.items()
                for a in addresses
                for arg in ("--pod", f"{a}={model}")
            ),
            "--decode-ms-per-token",
            "1",
        ],
        log_dir=log_dir,
    )
    try:
        for addresses in pods.values():
            for address in addresses:
                sim.wait_http(f"http://{address}/health")
        yield Fleet(log_dir, pods)
    finally:
        sim.stop()


@pytest.fixture(scope="module")
def gateway(fleet: Fleet) -> Iterator[Stack]:
    """Body-based routing epp -> a route per model -> that pool's epp -> its pods."""
    started: list[ManagedProcess] = []
    try:
        routes: dict[str, int] = {}
        for model, addresses in fleet.pods.items():
            picker, port, _ = start_local_epp(
                f"picker-{model}", fleet.log_dir, *_endpoint_args({model: addresses})
            )
            started.append(picker)
            routes[model] = port
        router, router_port, router_metrics = start_local_epp(
            "router", fleet.log_dir, "--body-based-routing", *SELECTION_ARGS
        )
        started.append(router)
        ports = EnvoyPorts(listen_port=free_port(), admin_port=free_port(), epp_port=router_port)
        bootstrap = envoy_bootstrap(ports, response_body_mode="NONE", model_routes=routes)
        started.append(
            start_envoy(
                bootstrap, admin_port=ports.admin_port, log_dir=fleet.log_dir, name="envoy-gateway"
            )
        )
        yield Stack(
            f"http://127.0.0.1:{ports.listen_port}",
            f"http://127.0.0.1:{router_metrics}/metrics",
            fleet.pods,
        )
    finally:
        for process in reversed(started):
            process.stop()


@pytest.fixture(scope="module")
def pool(fleet: Fleet) -> Iterator[Stack]:
    """One epp over every pod: it chooses the model, then the pod."""
    started: list[ManagedProcess] = []
    try:
        epp, grpc_port, metrics_port = start_local_epp(
            "epp-pool", fleet.log_dir, *_endpoint_args(fleet.pods), *SELECTION_ARGS
        )
        started.append(epp)
        ports = EnvoyPorts(listen_port=free_port(), admin_port=free_port(), epp_port=grpc_port)
        started.append(
            start_envoy(
                envoy_bootstrap(ports),
                admin_port=ports.admin_port,
                log_dir=fleet.log_dir,
                name="envoy-pool",
            )
        )
        yield Stack(
            f"http://127.0.0.1:{ports.listen_port}",
            f"http://127.0.0.1:{metrics_port}/metrics",
            fleet.pods,
        )
    finally:
        for process in reversed(started):
            process.stop()


@pytest.fixture(params=["gateway", "pool"])
def stack(request: pytest.FixtureRequest) -> Stack:
    fixture: Stack = request.getfixturevalue(request.param)
    return fixture


def _selections(stack: Stack, rule: str, model: str) -> float:
    text = httpx.get(stack.metrics_url, timeout=5).text
    prefix = f'epp_model_selections_total{{model_name="{model}",rule="{rule}"}} '
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefix)
    )


@pytest.mark.parametrize(
    ("content", "model", "rule"),
    [
        (CODING_QUESTION, CODER, "coding"),
        ("Hi! How are you?", SMALL, "short-chat"),
        (LONG_CHAT, LARGE, "default"),
    ],
    ids=["coding-question", "short-chat", "no-rule-matched"],
)
def test_auto_is_served_by_the_chosen_model(
    stack: Stack, content: str, model: str, rule: str
) -> None:
    before = _selections(stack, rule, model)
    response = httpx.post(
        f"{stack.url}/v1/chat/completions", json=chat("auto", content, max_tokens=4), timeout=30
    )
    assert response.status_code == 200, response.text
    assert response.headers["x-sim-pod"] in stack.pods[model]
    assert response.headers["x-selected-model"] == model
    # The pod answers 404 to "auto": the body reached it with the chosen model, which the
    # client sees too (nothing restores "auto").
    assert response.json()["model"] == model
    request_id = response.headers["x-request-id"]
    (received,) = [
        r["headers"]
        for r in pod_requests(response.headers["x-sim-pod"])
        if r["headers"]["x-request-id"] == request_id  # type: ignore[index]
    ]
    assert received["x-gateway-model-name"] == model  # type: ignore[index]
    assert _selections(stack, rule, model) == before + 1


def test_a_streamed_auto_request_streams_from_the_chosen_model(stack: Stack) -> None:
    body = chat("auto", CODING_QUESTION, max_tokens=6, stream=True)
    with httpx.stream(
        "POST", f"{stack.url}/v1/chat/completions", json=body, timeout=30
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["x-selected-model"] == CODER
        assert response.headers["x-sim-pod"] in stack.pods[CODER]
        events = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [orjson.loads(event) for event in events[:-1]]
    assert len(chunks) >= 2
    assert {chunk["model"] for chunk in chunks} == {CODER}


def test_a_request_naming_a_real_model_is_untouched(stack: Stack) -> None:
    response = httpx.post(
        f"{stack.url}/v1/chat/completions",
        json=chat(LARGE, CODING_QUESTION, max_tokens=2),
        timeout=30,
    )
    assert response.status_code == 200, response.text
    assert response.headers["x-sim-pod"] in stack.pods[LARGE]
    assert "x-selected-model" not in response.headers
    assert response.json()["model"] == LARGE


def test_the_operators_function_chooses_first_and_its_failures_fall_to_the_rules(
    fleet: Fleet,
) -> None:
    # Pool mode, with a function imported at start from this repository (epp runs from its
    # root): it picks for the gold tenant, gives way to the rules otherwise, and a request
    # that makes it raise is still served by the rules.
    function = "tests.integration.selection_function:by_tenant"
    epp, grpc_port, metrics_port = start_local_epp(
        "epp-function",
        fleet.log_dir,
        *_endpoint_args(fleet.pods),
        *SELECTION_ARGS,
        "--model-selection-function",
        function,
    )
    ports = EnvoyPorts(listen_port=free_port(), admin_port=free_port(), epp_port=grpc_port)
    envoy = start_envoy(
        envoy_bootstrap(ports), admin_port=ports.admin_port, log_dir=fleet.log_dir, name="fn"
    )
    url = f"http://127.0.0.1:{ports.listen_port}/v1/chat/completions"
    try:
        gold = httpx.post(
            url, json=chat("auto", CODING_QUESTION, max_tokens=2), headers={"x-tenant": "gold"}
        )
        other = httpx.post(url, json=chat("auto", CODING_QUESTION, max_tokens=2))
        failing = httpx.post(url, json=chat("auto", "boom: fix this python bug", max_tokens=2))
        assert [r.status_code for r in (gold, other, failing)] == [200, 200, 200]
        assert gold.headers["x-selected-model"] == LARGE  # the function, over the rules
        assert other.headers["x-selected-model"] == CODER  # None: the coding rule
        assert failing.headers["x-selected-model"] == CODER  # it raised: the rules decide
        page = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).text
        assert f'epp_model_selections_total{{model_name="{LARGE}",rule="function"}} 1.0' in page
        assert 'epp_model_selection_function_failures_total{reason="error"} 1.0' in page
    finally:
        envoy.stop()
        epp.stop()

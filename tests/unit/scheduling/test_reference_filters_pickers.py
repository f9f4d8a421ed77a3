"""The reference's filters and pickers, and session affinity, on crafted endpoints."""

from __future__ import annotations

import base64
import math
import random
from collections import Counter
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import pytest

from epp.datalayer.endpoint import Endpoint
from epp.scheduling.errors import SchedulerConfigError
from epp.scheduling.pickers.weighted_random import WeightedRandomPicker
from epp.scheduling.registry import PluginRegistry, register_builtin_plugins
from epp.scheduling.scheduler import (
    PluginSpec,
    ProfilePluginRef,
    ProfileSpec,
    SchedulerConfig,
    build_scheduler,
)
from epp.scheduling.types import CycleState, Filter, LLMRequest, Plugin, Scorer

REQUEST = LLMRequest("r", "m", "")


def create(type_name: str, parameters: Mapping[str, Any] | None = None) -> Plugin:
    return register_builtin_plugins(PluginRegistry()).create(type_name, type_name, parameters)


def pod(address: str, labels: Mapping[str, str] | None = None, name: str = "") -> Endpoint:
    return Endpoint(address, labels=MappingProxyType(dict(labels or {})), name=name)


def kept(filter_plugin: Plugin, endpoints: list[Endpoint]) -> list[str]:
    assert isinstance(filter_plugin, Filter)
    return [ep.address for ep in filter_plugin.filter(CycleState(), REQUEST, endpoints)]


ROLES = [
    pod("decode", {"llm-d.ai/role": "decode"}),
    pod("prefill", {"llm-d.ai/role": "prefill"}),
    pod("both", {"llm-d.ai/role": "both"}),
    pod("prefill-decode", {"llm-d.ai/role": "prefill-decode"}),
    pod("encode-prefill-decode", {"llm-d.ai/role": "encode-prefill-decode"}),
    pod("encode", {"llm-d.ai/role": "encode"}),
    pod("encode-prefill", {"llm-d.ai/role": "encode-prefill"}),
    pod("unlabelled", {"app": "vllm"}),
    Endpoint("static"),
]


def test_decode_filter_keeps_decoders_and_unlabelled_pods() -> None:
    assert kept(create("decode-filter"), ROLES) == [
        "decode",
        "both",
        "prefill-decode",
        "encode-prefill-decode",
        "unlabelled",
        "static",
    ]
    with pytest.raises(SchedulerConfigError, match="'x' is not known"):
        create("decode-filter", {"x": 1})


def test_by_label_filter() -> None:
    gold = create("by-label", {"label": "llm-d.ai/role", "validValues": ["prefill"]})
    assert kept(gold, ROLES) == ["prefill"]
    open_door = create("by-label", {"label": "llm-d.ai/role", "allowsNoLabel": True})
    assert kept(open_door, ROLES) == ["unlabelled", "static"]
    with pytest.raises(SchedulerConfigError, match="nothing could pass"):
        create("by-label", {"label": "tier"})


SELECTOR_PODS = [
    pod("h100-decode", {"hardware": "H100", "llm-d.ai/role": "decode"}),
    pod("a100-decode", {"hardware": "A100", "llm-d.ai/role": "decode"}),
    pod("h100-bare", {"hardware": "H100"}),
    Endpoint("static"),
]


@pytest.mark.parametrize(
    ("parameters", "expected"),
    [
        ({}, ["h100-decode", "a100-decode", "h100-bare", "static"]),
        ({"matchLabels": {"hardware": "H100"}}, ["h100-decode", "h100-bare"]),
        (
            {"matchLabels": {"hardware": "H100", "llm-d.ai/role": "decode"}},
            ["h100-decode"],
        ),
        (
            {"matchExpressions": [{"key": "hardware", "operator": "In", "values": ["A100"]}]},
            ["a100-decode"],
        ),
        (
            {"matchExpressions": [{"key": "hardware", "operator": "NotIn", "values": ["A100"]}]},
            ["h100-decode", "h100-bare", "static"],
        ),
        (
            {"matchExpressions": [{"key": "llm-d.ai/role", "operator": "Exists"}]},
            ["h100-decode", "a100-decode"],
        ),
        (
            {
                "matchLabels": {"hardware": "H100"},
                "matchExpressions": [{"key": "llm-d.ai/role", "operator": "DoesNotExist"}],
            },
            ["h100-bare"],
        ),
    ],
    ids=["empty", "one-label", "two-labels", "in", "not-in", "exists", "labels-and-expression"],
)
def test_label_selector_filter(parameters: dict[str, Any], expected: list[str]) -> None:
    assert kept(create("label-selector-filter", parameters), SELECTOR_PODS) == expected
    assert kept(create("by-label-selector", parameters), SELECTOR_PODS) == expected


@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        ({"matchLabels": {"a": 1}}, "'matchLabels' must map label names to strings"),
        ({"matchExpressions": [{"key": "a", "operator": "Has"}]}, "operator must be one of"),
        ({"matchExpressions": [{"key": "a", "operator": "In"}]}, "operator In needs values"),
        (
            {"matchExpressions": [{"key": "a", "operator": "Exists", "values": ["x"]}]},
            "operator Exists takes no values",
        ),
        ({"matchExpressions": [{"key": "a", "operator": "In", "value": ["x"]}]}, "'value'"),
        ({"selector": {}}, "'selector' is not known"),
    ],
    ids=["int-value", "operator", "in-without-values", "exists-with-values", "typo", "unknown"],
)
def test_label_selector_filter_refuses_malformed_selectors(
    parameters: dict[str, Any], message: str
) -> None:
    with pytest.raises(SchedulerConfigError, match=message):
        create("label-selector-filter", parameters)


# -- weighted-random-picker -----------------------------------------------------------------


def draws(scores: list[float], count: int, seed: int) -> Counter[str]:
    picker = WeightedRandomPicker(fallbacks=0, rng=random.Random(seed))
    endpoints = [Endpoint(f"p{i}") for i in range(len(scores))]
    scored = list(zip(endpoints, scores, strict=True))
    return Counter(picker.pick(CycleState(), scored)[0].address for _ in range(count))


def within_six_sigma(seen: int, count: int, p: float) -> bool:
    return abs(seen - count * p) <= 6 * math.sqrt(count * p * (1 - p))


def test_weighted_random_picks_in_proportion_to_score() -> None:
    # 1 : 3 : 0. Max-score would give p1 every time, uniform 1/3 each: six standard
    # deviations (about 160 draws of 4000) keep both out, and chance (1e-9) too.
    count = 4000
    seen = draws([1.0, 3.0, 0.0], count, seed=7)
    assert within_six_sigma(seen["p0"], count, 0.25)
    assert within_six_sigma(seen["p1"], count, 0.75)
    assert seen["p2"] == 0  # a score of 0 is drawn only when nothing scores above it


def test_weighted_random_draws_uniformly_when_no_score_is_positive() -> None:
    count = 3000
    seen = draws([0.0, 0.0, 0.0], count, seed=11)
    assert all(within_six_sigma(seen[f"p{i}"], count, 1 / 3) for i in range(3))


def test_weighted_random_returns_distinct_fallbacks_and_reads_max_num_of_endpoints() -> None:
    picker = create("weighted-random-picker", {"maxNumOfEndpoints": 3, "seed": 1})
    endpoints = [Endpoint(f"p{i}") for i in range(5)]
    picked = picker.pick(CycleState(), [(ep, 1.0 + i) for i, ep in enumerate(endpoints)])  # type: ignore[attr-defined]
    assert len(picked) == 3 and len(set(picked)) == 3
    # Endpoints scoring 0 come last, after every positive one.
    picked = picker.pick(CycleState(), [(endpoints[0], 0.0), (endpoints[1], 0.5)])  # type: ignore[attr-defined]
    assert picked == [endpoints[1], endpoints[0]]
    with pytest.raises(SchedulerConfigError, match="'maxNumOfEndpoints' and fallbacks say"):
        create("weighted-random-picker", {"maxNumOfEndpoints": 2, "fallbacks": 1})


# -- session-affinity-scorer ----------------------------------------------------------------


def token(name: str) -> str:
    return base64.b64encode(name.encode()).decode()


def session_scheduler(parameters: dict[str, Any] | None = None) -> Any:
    plugins = [
        PluginSpec("session-affinity-scorer", parameters=parameters or {}),
        PluginSpec("active-request-scorer"),
    ]
    refs = [
        ProfilePluginRef("session-affinity-scorer", 10),
        ProfilePluginRef("active-request-scorer"),
    ]
    return build_scheduler(SchedulerConfig(plugins, [ProfileSpec("default", refs)]))


def test_session_token_names_the_endpoint_and_brings_the_next_request_back() -> None:
    pods = [
        pod("10.0.0.1:8000", name="ns/vllm-a-rank-0"),
        pod("10.0.0.2:8000", name="ns/vllm-b-rank-0"),
    ]
    scheduler = session_scheduler()
    first = scheduler.schedule(LLMRequest("r1", "m", ""), pods)
    (header,) = first.response_headers
    assert header == ("x-session-token", token(first.primary.name))  # the reference's encoding
    first.primary.inflight_requests = 5  # busier now: without the token the other would win
    headers = {"x-session-token": header[1]}
    for i in range(5):
        assert (
            scheduler.schedule(LLMRequest(f"r{i}", "m", "", headers=headers), pods).primary
            is first.primary
        )


def test_static_endpoints_are_named_by_their_address() -> None:
    scorer = create("session-affinity-scorer")
    static = [Endpoint("10.0.0.1:8000"), Endpoint("10.0.0.2:8000")]
    request = LLMRequest("r", "m", "", headers={"x-session-token": token("10.0.0.2:8000")})
    assert isinstance(scorer, Scorer)
    assert list(scorer.score(CycleState(), request, static)) == [0.0, 1.0]


@pytest.mark.parametrize(
    "value",
    [
        "",
        "not base64!",
        token("ns/gone-rank-0"),
        base64.b64encode(b"\xff\xfe").decode(),
        "A" * 4000,
    ],
    ids=["empty", "not-base64", "unknown-pod", "not-utf8", "too-long"],
)
def test_a_bad_or_stale_token_is_no_preference(value: str) -> None:
    scorer = create("session-affinity-scorer")
    assert isinstance(scorer, Scorer)
    request = LLMRequest("r", "m", "", headers={"x-session-token": value})
    assert list(scorer.score(CycleState(), request, [pod("a", name="ns/p-rank-0")])) == [0.0]


def test_session_header_name_is_configurable_and_other_strategies_fail() -> None:
    scheduler = session_scheduler({"encodedEndpointHeaderConfig": {"header": "X-My-Session"}})
    result = scheduler.schedule(LLMRequest("r", "m", ""), [pod("a", name="ns/p-rank-0")])
    assert result.response_headers == (("x-my-session", token("ns/p-rank-0")),)
    with pytest.raises(SchedulerConfigError, match="'session_id' is not supported by epp"):
        create("session-affinity-scorer", {"strategy": "session_id"})
    with pytest.raises(SchedulerConfigError, match="'profileName' pins a pod"):
        create("session-affinity-scorer", {"profileName": "prefill"})
    with pytest.raises(SchedulerConfigError, match="is no header name"):
        create("session-affinity-scorer", {"encodedEndpointHeaderConfig": {"header": "a b"}})

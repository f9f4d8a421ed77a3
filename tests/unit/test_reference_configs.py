"""Every config of deploy/reference-configs/ loads through epp's real loader and builds its
scheduler; what epp does not take fails naming the plugin and the way out."""

from __future__ import annotations

import argparse
import base64
import time
from pathlib import Path
from types import MappingProxyType

import pytest

from epp.config import (
    Config,
    ConfigError,
    add_serve_arguments,
    build_scheduler_from_config,
    load_config,
)
from epp.datalayer.endpoint import Endpoint, Metrics
from epp.scheduling.errors import SchedulerConfigError
from epp.scheduling.scorers.prefix_cache import PrefixCacheScorer
from epp.scheduling.types import LLMRequest

CONFIGS = Path(__file__).resolve().parents[2] / "deploy" / "reference-configs"

# The plugin types of each file's scheduling profile, as epp builds it.
PROFILES = {
    "gie-v1.0-chart-default.yaml": {
        "queue-scorer",
        "kv-cache-utilization-scorer",
        "prefix-cache-scorer",
        "max-score-picker",
    },
    "gie-v1.5-chart-default.yaml": {
        "queue-scorer",
        "kv-cache-utilization-scorer",
        "prefix-cache-scorer",
        "max-score-picker",
    },
    "gie-v1.5-integration-default.yaml": {
        "queue-scorer",
        "kv-cache-utilization-scorer",
        "prefix-cache-scorer",
        "lora-affinity-scorer",
        "max-score-picker",
    },
    "llm-d-router-v0.10-chart-default.yaml": {
        "queue-scorer",
        "kv-cache-utilization-scorer",
        "prefix-cache-scorer",
        "max-score-picker",
    },
    "llm-d-no-disaggregation.yaml": {"decode-filter", "prefix-cache-scorer", "max-score-picker"},
    "llm-d-prefix-tokens.yaml": {
        "decode-filter",
        "prefix-cache-scorer",
        "queue-scorer",
        "max-score-picker",
    },
    "gie-v1.4-prefix-scorer-tokens.yaml": {
        "prefix-cache-scorer",
        "queue-scorer",
        "max-score-picker",
    },
    "llm-d-no-hit-lru.yaml": {
        "decode-filter",
        "prefix-cache-scorer",
        "no-hit-lru-scorer",
        "max-score-picker",
    },
    "session-affinity.yaml": {
        "active-request-scorer",
        "session-affinity-scorer",
        "max-score-picker",
    },
    "weighted-random.yaml": {
        "queue-scorer",
        "kv-cache-utilization-scorer",
        "running-requests-size-scorer",
        "weighted-random-picker",
    },
    "label-selector.yaml": {
        "label-selector-filter",
        "running-requests-size-scorer",
        "max-score-picker",
    },
    # The filter's work is the conformance hooks', before the profile runs.
    "gie-conformance.yaml": {"max-score-picker"},
}


def load(*argv: str) -> Config:
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    return load_config(parser.parse_args(list(argv)), environ={})


def fleet() -> list[Endpoint]:
    """Two pods any of the configs may route to, and two none should."""
    now = time.monotonic()

    def pod(address: str, **labels: str) -> Endpoint:
        endpoint = Endpoint(address, labels=MappingProxyType(labels), name=f"ns/{address}")
        endpoint.metrics = Metrics(updated_at=now, running_requests=1)
        return endpoint

    return [
        pod("decode", **{"llm-d.ai/role": "decode", "hardware-type": "H100"}),
        pod("plain", **{"hardware-type": "H100"}),
        pod("prefill", **{"llm-d.ai/role": "prefill", "hardware-type": "A100"}),
        pod("draining", **{"llm-d.ai/role": "prefill", "hardware-type": "H100", "drain": "1"}),
    ]


def test_the_folder_holds_what_the_test_knows() -> None:
    assert {p.name for p in CONFIGS.glob("*.yaml")} == PROFILES.keys()
    assert len(PROFILES) >= 8


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_each_reference_config_loads_and_schedules(name: str) -> None:
    config = load("--config-file", str(CONFIGS / name))
    scheduler = build_scheduler_from_config(config)
    assert {p.typed_name.type for p in scheduler.plugins} == PROFILES[name]
    pods = fleet()
    chosen = {
        scheduler.schedule(LLMRequest(f"r{i}", "m", f"prompt {i} " * 40), pods).primary.address
        for i in range(40)
    }
    # decode-filter and the H100 selector both leave the prefill pods out; without a
    # filter the load scorers spread the requests (every pod is as idle as the others).
    filtered = "decode-filter" in PROFILES[name] or "label-selector-filter" in PROFILES[name]
    assert chosen <= {"decode", "plain"} if filtered else len(chosen) > 1


def test_the_data_layer_plugins_feed_epps_settings() -> None:
    config = load("--config-file", str(CONFIGS / "llm-d-router-v0.10-chart-default.yaml"))
    assert config.data_layer.metrics_path == "/metrics"
    text = (
        "plugins:\n"
        "- {type: metrics-data-source, parameters: {path: /stats, interval: 200ms}}\n"
        "- {type: queue-scorer}\n"
    )
    fed = load("--config-text", text)
    assert fed.data_layer.metrics_path == "/stats"
    assert fed.data_layer.refresh_metrics_interval_s == pytest.approx(0.2)
    # The same setting under epp's own key must agree.
    with pytest.raises(ConfigError, match=r"'/stats'\) contradicts .*dataLayer.metricsPath"):
        load("--config-text", text + "dataLayer: {metricsPath: /metrics}\n")


def test_the_conformance_plugins_turn_the_hooks_on() -> None:
    assert not load().server.conformance_hooks
    config = load("--config-file", str(CONFIGS / "gie-conformance.yaml"))
    assert config.server.conformance_hooks
    for kind in ("header-based-testing-filter", "destination-endpoint-served-verifier"):
        assert load("--config-text", f"plugins:\n- {{type: {kind}}}\n").server.conformance_hooks
        with pytest.raises(ConfigError, match=rf"\({kind}\): takes no parameters"):
            load("--config-text", f"plugins:\n- {{type: {kind}, parameters: {{a: 1}}}}\n")
    with pytest.raises(ConfigError, match=r"contradicts .*enableConformanceHooks"):
        load(
            "--config-text",
            "plugins:\n- {type: header-based-testing-filter}\n"
            "server: {enableConformanceHooks: false}\n",
        )


def test_prefix_token_sizes_become_bytes() -> None:
    # The producer (llm-d-router v0.10) raises 16 tokens to 64, as the reference does; the
    # GIE v1.4 scorer's own blockSizeTokens is taken as given.
    for name, block_size, blocks in (
        ("llm-d-prefix-tokens.yaml", 256, 256),
        ("gie-v1.4-prefix-scorer-tokens.yaml", 64, 256),
    ):
        scheduler = build_scheduler_from_config(load("--config-file", str(CONFIGS / name)))
        (scorer,) = [p for p in scheduler.plugins if isinstance(p, PrefixCacheScorer)]
        assert (scorer.settings.block_size, scorer.settings.max_blocks) == (block_size, blocks)


def test_the_session_config_returns_a_token_naming_the_pod() -> None:
    scheduler = build_scheduler_from_config(
        load("--config-file", str(CONFIGS / "session-affinity.yaml"))
    )
    result = scheduler.schedule(LLMRequest("r", "m", ""), fleet()[:2])
    assert result.response_headers == (
        ("x-session-token", base64.b64encode(f"ns/{result.primary.address}".encode()).decode()),
    )


REFUSED = [
    pytest.param(
        "plugins:\n- {type: disagg-profile-handler}\n",
        SchedulerConfigError,
        r"'disagg-profile-handler' of the reference EPP is not implemented by epp; epp sends "
        r"each request to one pod",
        id="disaggregation",
    ),
    pytest.param(
        "plugins:\n- {type: prefill-filter}\n",
        SchedulerConfigError,
        r"'prefill-filter' of the reference EPP is not implemented.*decode-filter",
        id="prefill-filter",
    ),
    pytest.param(
        "plugins:\n- {type: prefix-based-pd-decider, parameters: {nonCachedTokens: 16}}\n",
        SchedulerConfigError,
        r"'prefix-based-pd-decider' of the reference EPP is not implemented",
        id="pd-decider",
    ),
    pytest.param(
        "plugins:\n- {type: vllmgrpc-parser}\n",
        ConfigError,
        r"plugins\[0\] \(vllmgrpc-parser\): the reference EPP's 'vllmgrpc-parser' is not "
        r"implemented by epp; epp parses OpenAI",
        id="grpc-parser",
    ),
    pytest.param(
        "plugins:\n- {type: metrics-data-source, parameters: {scheme: https}}\n",
        ConfigError,
        r"scheme 'https': epp scrapes model servers over plain HTTP only",
        id="https-scrape",
    ),
    pytest.param(
        "plugins:\n- {type: core-metrics-extractor, parameters: {defaultEngine: triton}}\n",
        ConfigError,
        r"defaultEngine 'triton': epp reads the metrics of vllm and sglang only",
        id="engine",
    ),
    pytest.param(
        "plugins:\n- {type: core-metrics-extractor, parameters: {engineConfig: []}}\n",
        ConfigError,
        r"unknown key 'engineConfig'",
        id="extractor-typo",
    ),
    pytest.param(
        "plugins:\n- {type: queue-scorer}\nparser: {pluginRef: openai-parser}\n",
        ConfigError,
        r"parser: pluginRef 'openai-parser' names no openai-parser in plugins",
        id="parser-not-defined",
    ),
    pytest.param(
        "plugins:\n- {type: queue-scorer}\ndataLayer: {sources: [{pluginRef: queue-scorer}]}\n",
        ConfigError,
        r"dataLayer.sources\[0\]: pluginRef 'queue-scorer' names no metrics-data-source",
        id="source-not-a-source",
    ),
    pytest.param(
        "dataLayer: {discovery: {pluginRef: file-discovery}}\n",
        ConfigError,
        r"dataLayer.discovery: epp finds endpoints from --pool-name",
        id="discovery",
    ),
    pytest.param(
        "featureGates: [flowControl]\n",
        ConfigError,
        r"featureGates: flowControl: epp has no flow-control queue",
        id="flow-control-gate",
    ),
    pytest.param(
        "featureGates: [noSuchGate]\n",
        ConfigError,
        r"featureGates: unknown gate 'noSuchGate'",
        id="unknown-gate",
    ),
    pytest.param(
        "requestHandler: {parsers: [], extra: 1}\n",
        ConfigError,
        r"requestHandler: unknown key 'extra'",
        id="request-handler-typo",
    ),
    pytest.param(
        "plugins:\n- {type: no-such-scorer}\n",
        SchedulerConfigError,
        r"unknown type 'no-such-scorer' \(known types: ",
        id="unknown-type",
    ),
]


@pytest.mark.parametrize(("text", "error", "message"), REFUSED)
def test_what_epp_does_not_take_fails_naming_it(
    text: str, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        build_scheduler_from_config(load("--config-text", text))

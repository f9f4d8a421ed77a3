"""benchmarks/bench_long_prompt.py's pure parts: ratios to the transport floor per round,
and the bootstrap of its ext_authz row."""

from __future__ import annotations

import pytest

from benchmarks.bench_long_prompt import ext_authz_bootstrap, floor_ratios, print_table
from epp.envoy_config import EnvoyPorts, envoy_bootstrap


def _row(cpu_ms: float) -> dict[str, float]:
    return {
        "requests": 10,
        "rps": 1.0,
        "processor_cpu_ms": cpu_ms,
        "envoy_cpu_ms": 1.0,
        "switches": 2,
    }


def test_ratios_are_taken_within_each_round() -> None:
    # The machine halves its speed in round 2: each round's ratio stays 1.1, while a
    # ratio of the medians over an odd number of rounds would mix rounds.
    samples = {
        "epp": [_row(1.1), _row(2.2), _row(1.1)],
        "grpc-floor": [_row(1.0), _row(2.0), _row(1.0)],
    }
    assert floor_ratios(samples) == {"epp": [pytest.approx(1.1)] * 3}


def test_no_floor_no_ratios_and_a_zero_floor_round_is_left_out() -> None:
    assert floor_ratios({"epp": [_row(1.0)]}) == {}
    samples = {"epp": [_row(1.0), _row(3.0)], "grpc-floor": [_row(0.0), _row(2.0)]}
    assert floor_ratios(samples) == {"epp": [1.5]}


def test_the_table_names_each_ratio_median(capsys: pytest.CaptureFixture[str]) -> None:
    samples = {"epp": [_row(1.2), _row(1.0), _row(1.4)], "grpc-floor": [_row(1.0)] * 3}
    summary = {name: rows[0] for name, rows in samples.items()}
    print_table(summary, floor_ratios(samples), body_bytes=400_000, rounds=3)
    out = capsys.readouterr().out
    expected = "epp / grpc-floor, processor CPU within each round: median 1.20x (1.20, 1.00, 1.40)"
    assert expected in out


def test_the_ext_authz_bootstrap_swaps_only_the_routing_filter() -> None:
    before = envoy_bootstrap(EnvoyPorts(listen_port=1, admin_port=2, epp_port=3))
    manager = before["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    names = [f["name"] for f in manager["typed_config"]["http_filters"]]
    after = ext_authz_bootstrap(before)
    swapped = after["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    filters = swapped["typed_config"]["http_filters"]
    assert [f["name"] for f in filters] == [
        "envoy.filters.http.ext_authz" if n == "envoy.filters.http.ext_proc" else n for n in names
    ]
    authz = filters[0]["typed_config"]
    assert authz["grpc_service"]["envoy_grpc"] == {"cluster_name": "epp"}
    assert authz["with_request_body"]["pack_as_bytes"] is True
    assert authz["with_request_body"]["allow_partial_message"] is False
    assert authz["clear_route_cache"] is True
    assert swapped["typed_config"]["access_log"]  # completions still reach the processor

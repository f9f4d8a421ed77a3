"""The conformance hooks' parsing: which endpoints a selection names, what is echoed."""

from __future__ import annotations

import pytest

from epp.datalayer.endpoint import Endpoint
from epp.errors import BadRequest
from epp.requestcontrol.conformance import (
    MAX_SELECTION_CHARS,
    MAX_SELECTION_ENTRIES,
    selected_endpoints,
    served_header_value,
)

ENDPOINTS = [
    Endpoint("10.0.0.7:3000"),
    Endpoint("10.0.0.7:3002"),
    Endpoint("10.0.0.8:3000"),
    Endpoint("[fd00::1]:3000"),
    Endpoint("[fd00::2]:3000"),
]


def addresses(value: str) -> list[str]:
    return [ep.address for ep in selected_endpoints(value, ENDPOINTS)]


def test_an_ip_names_every_port_and_an_ip_port_one() -> None:
    assert addresses("10.0.0.7") == ["10.0.0.7:3000", "10.0.0.7:3002"]
    assert addresses("10.0.0.7:3002") == ["10.0.0.7:3002"]
    assert addresses("10.0.0.7:9999") == []


def test_order_is_the_headers_and_duplicates_count_once() -> None:
    assert addresses(" 10.0.0.8 , 10.0.0.7:3000,10.0.0.8:3000,,") == [
        "10.0.0.8:3000",
        "10.0.0.7:3000",
    ]


def test_ipv6_with_and_without_brackets() -> None:
    assert addresses("[fd00::1]:3000,fd00::2") == ["[fd00::1]:3000", "[fd00::2]:3000"]
    assert addresses("[fd00::2]") == ["[fd00::2]:3000"]


def test_oversized_selections_are_refused() -> None:
    with pytest.raises(BadRequest):
        selected_endpoints("1" * (MAX_SELECTION_CHARS + 1), ENDPOINTS)
    with pytest.raises(BadRequest):
        selected_endpoints(",".join(["10.0.0.7"] * (MAX_SELECTION_ENTRIES + 1)), ENDPOINTS)
    assert addresses(",".join(["10.0.0.8"] * MAX_SELECTION_ENTRIES)) == ["10.0.0.8:3000"]


def test_the_served_echo_says_what_the_gateway_reported() -> None:
    assert served_header_value("10.0.0.7:3000") == "10.0.0.7:3000"
    assert served_header_value("[fd00::1]:3000") == "[fd00::1]:3000"
    assert served_header_value(None) == "fail: missing envoy lb metadata"
    assert served_header_value("") == "fail: missing destination endpoint served metadata"
    for hostile in ("10.0.0.7\r\nx-evil: 1", "x" * 300, "pod-a:80"):
        assert served_header_value(hostile).startswith("fail: invalid")

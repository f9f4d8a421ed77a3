"""Static discovery and the --endpoint flag form."""

from __future__ import annotations

import re

import pytest

from epp.datalayer.static_discovery import StaticDiscovery, format_address, parse_endpoint_flag
from epp.datalayer.store import EndpointSpec, EndpointStore


@pytest.mark.parametrize(
    ("flag", "spec"),
    [
        ("10.0.0.7:8000", ("10.0.0.7:8000", None)),
        (" 10.0.0.7:8000 ", ("10.0.0.7:8000", None)),
        ("10.0.0.7:8000=llama", ("10.0.0.7:8000", frozenset({"llama"}))),
        ("10.0.0.7:8000=a, b ,a", ("10.0.0.7:8000", frozenset({"a", "b"}))),
        (
            "10.0.0.7:8000=meta-llama/Llama-3.1-8B",
            ("10.0.0.7:8000", frozenset({"meta-llama/Llama-3.1-8B"})),
        ),
        ("127.0.0.1:1", ("127.0.0.1:1", None)),
        ("[::1]:65535", ("[::1]:65535", None)),
        ("[0:0::1]:80=m", ("[::1]:80", frozenset({"m"}))),
    ],
    ids=[
        "bare",
        "spaces",
        "one-model",
        "models-deduplicated",
        "model-with-slash",
        "port-1",
        "ipv6",
        "ipv6-canonical",
    ],
)
def test_parse_endpoint_flag(flag: str, spec: EndpointSpec) -> None:
    assert parse_endpoint_flag(flag) == spec


@pytest.mark.parametrize(
    ("flag", "message"),
    [
        ("10.0.0.7", "missing port"),
        ("10.0.0.7=llama", "missing port"),
        (":8000", "missing port"),
        ("", "missing port"),
        ("10.0.0.7:", "port '' is not a number"),
        ("10.0.0.7:http", "port 'http' is not a number"),
        ("10.0.0.7:-1", "port '-1' is not a number"),
        ("10.0.0.7:0", "port 0 is out of range 1-65535"),
        ("10.0.0.7:65536", "port 65536 is out of range 1-65535"),
        ("localhost:8000", "'localhost' is not an IP address"),
        ("10.0.0.300:8000", "'10.0.0.300' is not an IP address"),
        ("::1:8000", "put an IPv6 address in brackets"),
        ("[::1:8000", "expected [IPv6]:PORT"),
        ("10.0.0.7:8000=", "empty model name"),
        ("10.0.0.7:8000=a,,b", "empty model name"),
        ("10.0.0.7:8000=a,", "empty model name"),
    ],
)
def test_parse_endpoint_flag_errors(flag: str, message: str) -> None:
    with pytest.raises(ValueError, match="endpoint ") as caught:
        parse_endpoint_flag(flag)
    assert message in str(caught.value)
    assert repr(flag) in str(caught.value)


def test_format_address() -> None:
    assert format_address("10.0.0.7:8000") == "10.0.0.7:8000"
    with pytest.raises(ValueError, match=re.escape("endpoint '10.0.0.7': missing port")):
        format_address("10.0.0.7")


@pytest.mark.asyncio
async def test_static_discovery_fills_the_store() -> None:
    store = EndpointStore()
    seen: list[tuple[list[str], list[str]]] = []
    store.subscribe(
        lambda added, removed: seen.append(
            ([e.address for e in added], [e.address for e in removed])
        )
    )
    specs = [parse_endpoint_flag("10.0.0.7:8000=a"), parse_endpoint_flag("10.0.0.8:8000")]
    discovery = StaticDiscovery(store, specs)
    await discovery.start()
    assert [e.address for e in store.all()] == ["10.0.0.7:8000", "10.0.0.8:8000"]
    assert [e.address for e in store.serving("a")] == ["10.0.0.7:8000", "10.0.0.8:8000"]
    assert [e.address for e in store.serving("b")] == ["10.0.0.8:8000"]
    assert seen == [(["10.0.0.7:8000", "10.0.0.8:8000"], [])]
    await discovery.stop()
    assert len(store.all()) == 2


def test_static_discovery_rejects_duplicates() -> None:
    with pytest.raises(
        ValueError, match=re.escape("endpoint 10.0.0.7:8000 is listed more than once")
    ):
        StaticDiscovery(EndpointStore(), [("10.0.0.7:8000", None), ("10.0.0.7:8000", None)])

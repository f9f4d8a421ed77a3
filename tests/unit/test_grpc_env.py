"""epp's gRPC core defaults: set only where the operator set nothing, only before grpc loads."""

from __future__ import annotations

import sys

import pytest

from epp.grpc_env import GRPC_EXPERIMENTS, apply_grpc_defaults


def test_set_when_the_environment_has_none_and_grpc_is_not_loaded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delitem(sys.modules, "grpc", raising=False)
    environ: dict[str, str] = {}
    assert apply_grpc_defaults(environ)
    assert environ == {"GRPC_EXPERIMENTS": GRPC_EXPERIMENTS}


@pytest.mark.parametrize("operators", ["", "-event_engine_client", "event_engine_listener"])
def test_the_operators_value_is_kept_even_empty(
    monkeypatch: pytest.MonkeyPatch, operators: str
) -> None:
    monkeypatch.delitem(sys.modules, "grpc", raising=False)
    environ = {"GRPC_EXPERIMENTS": operators}
    assert not apply_grpc_defaults(environ)
    assert environ == {"GRPC_EXPERIMENTS": operators}


def test_nothing_is_set_once_grpc_is_loaded(monkeypatch: pytest.MonkeyPatch) -> None:
    import grpc

    monkeypatch.setitem(sys.modules, "grpc", grpc)
    environ: dict[str, str] = {}
    assert not apply_grpc_defaults(environ)
    assert environ == {}

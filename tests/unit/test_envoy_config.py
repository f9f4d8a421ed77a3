from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from epp.envoy_config import EnvoyPorts, envoy_bootstrap, render_bootstrap

DEPLOYED = Path(__file__).resolve().parents[2] / "deploy" / "envoy" / "envoy.yaml"


def test_deploy_file_is_the_rendered_default() -> None:
    # deploy/envoy/envoy.yaml is what `make run` and users start Envoy with.
    assert DEPLOYED.read_text() == render_bootstrap(envoy_bootstrap(EnvoyPorts()))


def _ext_proc(bootstrap: dict) -> dict:  # type: ignore[type-arg]
    manager = bootstrap["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    filters = manager["typed_config"]["http_filters"]
    return next(f for f in filters if f["name"] == "envoy.filters.http.ext_proc")["typed_config"]


@pytest.mark.parametrize("mode", ["FULL_DUPLEX_STREAMED", "BUFFERED"])
def test_processing_mode(mode: str) -> None:
    ext_proc = _ext_proc(yaml.safe_load(render_bootstrap(envoy_bootstrap(body_mode=mode))))
    assert ext_proc["processing_mode"]["request_body_mode"] == mode
    assert ext_proc["failure_mode_allow"] is False
    # Response trailers keep the stream open until the response ends (load accounting).
    assert ext_proc["processing_mode"]["response_trailer_mode"] == "SEND"


def test_rejects_unknown_mode() -> None:
    with pytest.raises(ValueError, match="body_mode"):
        envoy_bootstrap(body_mode="STREAMED")


def test_responses_stream_through_epp_by_default() -> None:
    mode = _ext_proc(envoy_bootstrap())["processing_mode"]
    assert mode["response_body_mode"] == "FULL_DUPLEX_STREAMED"
    assert mode["response_trailer_mode"] == "SEND"  # Envoy requires it in full duplex
    none = _ext_proc(envoy_bootstrap(response_body_mode="NONE"))["processing_mode"]
    assert none["response_body_mode"] == "NONE"
    with pytest.raises(ValueError, match="response_body_mode"):
        envoy_bootstrap(response_body_mode="BUFFERED")

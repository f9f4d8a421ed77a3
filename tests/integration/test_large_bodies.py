"""Large bodies reach epp BUFFERED on a route of their own, through a real Envoy
(``envoy_bootstrap(buffer_bodies_over=...)``, 64 KiB by default): whole, in one message,
while smaller and chunked bodies stream in full duplex. epp's own counter of the mode
each body came in (``epp_extproc_request_body_mode_total``) tells which; the pod gets
every body byte for byte either way. The gateway of several pools: test_gateway_bbr.py."""

from __future__ import annotations

import hashlib

import httpx
import pytest

from tests.integration.conftest import Stack
from tests.integration.helpers import QWEN, chat_of_size, in_chunks
from tests.integration.metrics_helpers import body_modes, counted_since

THRESHOLD = 64 * 1024


@pytest.mark.parametrize(
    ("size", "chunked", "large"),
    [
        (400_000, False, True),
        (THRESHOLD + 1, False, True),
        (THRESHOLD, False, False),
        (4_000, False, False),
        (400_000, True, False),
    ],
    ids=["400kb", "just-over-64kib", "exactly-64kib", "4kb", "400kb-chunked"],
)
def test_a_body_with_a_large_content_length_reaches_epp_whole(
    stack: Stack, client: httpx.Client, size: int, chunked: bool, large: bool
) -> None:
    body = chat_of_size(QWEN, size)
    assert len(body) == size
    before = body_modes(stack.epp_metrics_url)
    response = client.post(
        "/v1/chat/completions",
        content=in_chunks(body) if chunked else body,
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 200, response.text
    assert response.headers["x-sim-pod"] in stack.fleet.qwen_pods  # routed by epp
    assert int(response.headers["x-sim-body-bytes"]) == size
    assert response.headers["x-sim-body-sha256"] == hashlib.sha256(body).hexdigest()
    # A BUFFERED bootstrap buffers every body; a full-duplex one only those over 64 KiB
    # that say their length.
    expected = "BUFFERED" if large or stack.body_mode == "BUFFERED" else "FULL_DUPLEX_STREAMED"
    assert counted_since(before, body_modes(stack.epp_metrics_url)) == {expected: 1.0}

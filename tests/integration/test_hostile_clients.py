"""Requests built to hurt: through a real Envoy, each gets a clean answer, and none can
steer routing, grow epp's metrics page or its memory past their bounds."""

from __future__ import annotations

import asyncio
import re
import socket
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import orjson
import pytest

from tests.integration.conftest import Stack
from tests.integration.helpers import GEMMA, QWEN, chat, dumps
from tests.integration.resilience import Rig


def raw_request(url: str, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send ``request`` as bytes (no client library tidies it) and read the answer to the
    end of the connection: (status, lower-case headers, body)."""
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=30) as sock:
        sock.sendall(request)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if headers.get("transfer-encoding") == "chunked":
        body = _unchunk(body)
    return int(status_line.split()[1]), headers, body


def _unchunk(data: bytes) -> bytes:
    out = b""
    while data:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        out, data = out + data[:size], data[size + 2 :]
    return out


def post(path: str, headers: bytes, body: bytes) -> bytes:
    return f"POST {path} HTTP/1.1\r\nhost: epp\r\nconnection: close\r\n".encode() + headers + body


def test_a_header_that_is_not_utf8_is_served(stack: Stack) -> None:
    body = dumps(chat(QWEN, "hi"))
    status, headers, _ = raw_request(
        stack.url,
        post(
            "/v1/chat/completions",
            b"x-a: \xff\xfe\r\ncontent-type: application/json\r\n"
            + f"content-length: {len(body)}\r\n\r\n".encode(),
            body,
        ),
    )
    assert status == 200
    assert headers["x-sim-pod"] in stack.fleet.qwen_pods


@pytest.mark.parametrize(
    "model",
    [f"{QWEN}\r\nx-injected: 1", f"{QWEN}\n", f"{QWEN}\x00", "q" * 70_000],
    ids=["crlf", "lf", "nul", "70kb"],
)
def test_a_model_name_that_cannot_be_a_header_is_a_400(client: httpx.Client, model: str) -> None:
    response = client.post("/v1/chat/completions", content=dumps(chat(model, "hi")))
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_model"
    assert "x-sim-pod" not in response.headers


def test_an_empty_chunked_body_is_a_missing_body(stack: Stack) -> None:
    status, headers, body = raw_request(
        stack.url, post("/v1/chat/completions", b"transfer-encoding: chunked\r\n\r\n", b"0\r\n\r\n")
    )
    assert status == 400
    assert headers["content-type"] == "application/json"
    assert orjson.loads(body)["error"]["code"] == "missing_body"


def test_a_client_cannot_rewrite_its_model_by_header(stack: Stack, client: httpx.Client) -> None:
    response = client.post(
        "/v1/chat/completions",
        json=chat(QWEN, "hi"),
        headers={"x-gateway-model-name-rewrite": GEMMA},
    )
    assert response.status_code == 200
    assert response.headers["x-sim-pod"] in stack.fleet.qwen_pods


def test_a_client_model_header_does_not_reach_a_request_without_body(
    client: httpx.Client,
) -> None:
    response = client.get("/health", headers={"x-gateway-model-name": "evil"})
    assert response.status_code == 200
    assert response.headers["x-sim-model-header"] == ""  # what the pod received


# -- per-test stacks ---------------------------------------------------------------------


def test_invented_model_names_cannot_grow_the_metrics_page(rig: Rig) -> None:
    (pod,) = rig.sims("sim", ["m"])
    # An endpoint without a model list takes any name to the pod (as in pool mode).
    url = rig.start_envoy(
        rig.start_epp({pod: None}, "--max-model-series", "16"),
        response_body_mode="FULL_DUPLEX_STREAMED",
    )
    pages = []
    with httpx.Client(base_url=url, timeout=30) as client:
        assert client.post("/v1/chat/completions", json=chat("m", "hi")).status_code == 200
        # Twice 20 pairs of invented names: the first 20 fill the 16 series and spill into
        # __other__, so the second 20 must not add a byte but for the counts' digits.
        for first in (0, 20):
            for n in range(first, first + 20):
                for model in (f"r{n}-" + "x" * 1000, f"s{n}-" + "y" * 100):
                    response = client.post("/v1/chat/completions", json=chat(model, "hi"))
                    assert response.status_code == 404  # the pod's answer: it serves only m
            pages.append(httpx.get(rig.metrics_url, timeout=30).text)
    page = pages[-1]
    names = set(re.findall(r'model_name="([^"]*)"', page))
    assert "m" in names
    assert "__other__" in names
    assert len(names - {"__other__", ""}) <= 16
    assert max(len(name) for name in names) <= 128
    assert len(pages[1].splitlines()) == len(pages[0].splitlines())
    assert len(pages[1]) <= len(pages[0]) * 1.01
    # 17 pairs at most, each ~260 lines under the llm_d_epp_* names and as many under the
    # legacy ones (exported beside them until epp 1.0), of ~300 bytes on average.
    assert len(page) < 17 * 2 * 260 * 300


def _vm_hwm_kib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1))  # type: ignore[union-attr]


async def _slow_upload(url: str, body: bytes, pieces: int) -> tuple[int, bytes]:
    """POST ``body`` in ``pieces`` writes with pauses, reading the answer all the while
    (Envoy may answer, and then reset, before the body is all sent)."""
    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)

    async def read_all() -> bytes:
        received = b""
        try:
            while chunk := await reader.read(65536):
                received += chunk
        except ConnectionError:
            pass
        return received

    reading = asyncio.create_task(read_all())
    writer.write(
        b"POST /v1/completions HTTP/1.1\r\nhost: epp\r\nconnection: close\r\n"
        b"content-type: application/json\r\n" + f"content-length: {len(body)}\r\n\r\n".encode()
    )
    step = len(body) // pieces + 1
    try:
        for start in range(0, len(body), step):
            if reading.done():
                break
            writer.write(body[start : start + step])
            await writer.drain()
            await asyncio.sleep(0.05)
    except ConnectionError:
        pass  # answered (and closed) before the body was all sent
    received = await reading
    writer.close()
    try:
        await writer.wait_closed()
    except ConnectionError:
        pass
    head, _, rest = received.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1]) if head else 0
    return status, rest


def test_concurrent_huge_uploads_stay_within_the_body_budget(rig: Rig) -> None:
    (pod,) = rig.sims("sim", ["m"], "--prefill-ms-per-token", "0.000001")
    url = rig.start_envoy(rig.start_epp({pod: "m"}))
    assert rig.epp is not None
    idle_kib = _vm_hwm_kib(rig.epp.process.pid)
    body = b'{"model": "m", "max_tokens": 1, "prompt": "' + b"p" * (60 * 1024 * 1024) + b'"}'

    async def uploads() -> list[tuple[int, bytes]]:
        return await asyncio.gather(*(_slow_upload(url, body, 60) for _ in range(6)))

    outcomes = asyncio.run(uploads())
    statuses = sorted(status for status, _ in outcomes)
    assert set(statuses) <= {200, 503}, statuses
    assert 200 in statuses and 503 in statuses  # 6 x 60 MB do not fit 128 MiB at once
    for status, rest in outcomes:
        if status == 503:
            assert b'"code":"overloaded"' in rest
    # The peak of epp's resident memory over the whole test, from the kernel, above what
    # it held before: the 128 MiB budget and the buffers of bodies still arriving (about
    # 220 MiB measured), well under the 360 MB six bodies held at once would take.
    assert _vm_hwm_kib(rig.epp.process.pid) - idle_kib < 256 * 1024
    assert rig.metric("epp_request_body_bytes_held") == 0
    assert rig.metric("epp_request_body_budget_refusals_total") == statuses.count(503)

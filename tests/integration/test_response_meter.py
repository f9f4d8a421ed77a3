"""LOGGED mode's response meter (Envoy's Lua script) against a pod that dribbles its body.

The pod writes each response a few bytes at a time, so Envoy hands the script many small
chunks and the ``"usage"`` key, the usage object and the Responses API's ``.delta``
marker all arrive split across chunks. What epp reports must not depend on where the
chunks broke.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from epp.envoy_config import EnvoyPorts, envoy_bootstrap
from epp.stack import ManagedProcess, free_port, loopback_serve_args, start_envoy, start_epp_module
from tests.integration.helpers import QWEN, chat, finished_lines
from tests.integration.metrics_helpers import metric

pytestmark = pytest.mark.integration

METRICS_PAGE = (
    f'vllm:num_requests_running{{model_name="{QWEN}"}} 0.0\n'
    f'vllm:num_requests_waiting{{model_name="{QWEN}"}} 0.0\n'
    f'vllm:kv_cache_usage_perc{{model_name="{QWEN}"}} 0.0\n'
).encode()
USAGE = {
    "prompt_tokens": 17,
    "completion_tokens": 4,
    "prompt_tokens_details": {"cached_tokens": 16},
}
# How many bytes the pod writes at a time (the x-piece-bytes request header says): 3
# spans the key over three chunks; 11 and 64 split it at every offset as the body goes.
PIECES = (3, 11, 64)
FIRST_TOKEN_AFTER_S = 0.15


def chat_stream(include_usage: bool, tokens: int = 4) -> bytes:
    events: list[dict[str, object]] = [
        {"choices": [{"delta": {"content": f"t{i}"}}]} for i in range(tokens)
    ]
    if include_usage:
        events.append({"choices": [], "usage": USAGE})
    return b"".join(b"data: %s\n\n" % json.dumps(e).encode() for e in events) + b"data: [DONE]\n\n"


def responses_stream() -> bytes:
    events: list[dict[str, Any]] = [
        {"type": "response.created", "response": {"usage": None}},
        {"type": "response.output_text.delta", "delta": "x"},
        {
            "type": "response.completed",
            "response": {"usage": {"input_tokens": 9, "output_tokens": 2}, "user": None},
        },
    ]
    return b"".join(
        b"event: %s\ndata: %s\n\n" % (e["type"].encode(), json.dumps(e).encode()) for e in events
    )


class DribblingPod(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"  # the body ends when the connection closes

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _request_body(self) -> bytes:
        if "Content-Length" in self.headers:
            return self.rfile.read(int(self.headers["Content-Length"]))
        # Envoy streams a body it has from ext_proc in full duplex mode chunked.
        body = b""
        while size := int(self.rfile.readline().split(b";")[0], 16):
            body += self.rfile.read(size)
            self.rfile.readline()
        self.rfile.readline()
        return body

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(METRICS_PAGE)))
        self.end_headers()
        self.wfile.write(METRICS_PAGE)

    def do_POST(self) -> None:
        request = json.loads(self._request_body())
        include_usage = bool((request.get("stream_options") or {}).get("include_usage"))
        # As vLLM --enable-force-include-usage: usage whether the request asked or not.
        include_usage = include_usage or "x-force-usage" in self.headers
        responses_api = self.path.startswith("/v1/responses")
        if not request.get("stream"):
            self._json_answer(int(self.headers.get("x-tail-bytes", "0")))
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        self.wfile.flush()
        tokens = int(self.headers.get("x-tokens", "4"))
        body = responses_stream() if responses_api else chat_stream(include_usage, tokens)
        if responses_api:
            # response.created goes out at once; the first token comes later.
            created_end = body.index(b"\n\n") + 2
            self.wfile.write(body[:created_end])
            self.wfile.flush()
            body = body[created_end:]
        time.sleep(FIRST_TOKEN_AFTER_S)
        piece = int(self.headers.get("x-piece-bytes", "3"))
        for at in range(0, len(body), piece):
            self.wfile.write(body[at : at + piece])
            self.wfile.flush()
            time.sleep(0.002)

    def _json_answer(self, tail_bytes: int) -> None:
        """A chat completion whose usage is followed by ``tail_bytes`` of token ids, as
        vLLM's is when a request asks for them (return_token_ids)."""
        answer = {
            "choices": [{"message": {"content": "x" * 3000}}],
            "usage": USAGE,
            "prompt_token_ids": [7] * (tail_bytes // 3),
        }
        body = json.dumps(answer, separators=(",", ":")).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        time.sleep(FIRST_TOKEN_AFTER_S)
        for at in range(0, len(body), 700):
            self.wfile.write(body[at : at + 700])
            self.wfile.flush()


@dataclass(frozen=True)
class MeteredStack:
    url: str
    metrics_url: str
    epp: ManagedProcess


def _metered_stack(
    log_dir: Any, response_body_mode: str, *epp_flags: str
) -> Iterator[MeteredStack]:
    pod = ThreadingHTTPServer(("127.0.0.1", 0), DribblingPod)
    threading.Thread(target=pod.serve_forever, daemon=True).start()
    grpc_port, metrics_port = free_port(), free_port()
    epp = start_epp_module(
        "epp-meter",
        [
            *loopback_serve_args(grpc_port, metrics_port),
            "--log-format",
            "json",
            "--request-log",
            "all",
            "--endpoint",
            f"127.0.0.1:{pod.server_address[1]}={QWEN}",
            *epp_flags,
        ],
        log_dir=log_dir,
    )
    envoy: ManagedProcess | None = None
    try:
        epp.wait_http(f"http://127.0.0.1:{metrics_port}/readyz")
        ports = EnvoyPorts(listen_port=free_port(), admin_port=free_port(), epp_port=grpc_port)
        envoy = start_envoy(
            envoy_bootstrap(ports, response_body_mode=response_body_mode),
            admin_port=ports.admin_port,
            log_dir=log_dir,
            name="envoy-meter",
        )
        yield MeteredStack(
            f"http://127.0.0.1:{ports.listen_port}", f"http://127.0.0.1:{metrics_port}/metrics", epp
        )
    finally:
        if envoy is not None:
            envoy.stop()
        pod.shutdown()
        pod.server_close()
        assert epp.stop() == 0, epp.log_tail()


@pytest.fixture(scope="module")
def metered(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MeteredStack]:
    yield from _metered_stack(tmp_path_factory.mktemp("meter"), "LOGGED")


@pytest.fixture(scope="module")
def metered_unasked(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MeteredStack]:
    """LOGGED, with pods that add usage to every stream (--servers-add-stream-usage)."""
    yield from _metered_stack(
        tmp_path_factory.mktemp("meter-unasked"), "LOGGED", "--servers-add-stream-usage"
    )


@pytest.fixture(scope="module")
def timed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MeteredStack]:
    yield from _metered_stack(tmp_path_factory.mktemp("timed"), "TIMED")


def finished_line(epp: ManagedProcess, request_id: str) -> dict[str, object]:
    lines = finished_lines(epp.log_path, request_id)
    assert lines, f"no log line for {request_id}:\n{epp.log_tail()}"
    fields: dict[str, object] = json.loads(lines[0])
    return fields


@pytest.mark.parametrize("piece", PIECES)
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/responses"])
def test_usage_and_first_token_survive_any_chunking(
    metered: MeteredStack, path: str, piece: int
) -> None:
    request_id = uuid.uuid4().hex
    if path == "/v1/responses":
        body: dict[str, object] = {"model": QWEN, "input": "hi", "stream": True}
        expected: tuple[int, int, int | None] = (9, 2, None)
    else:
        body = chat(QWEN, "hi", stream=True, stream_options={"include_usage": True})
        expected = (17, 4, 16)
    with httpx.Client(timeout=30) as http:
        response = http.post(
            metered.url + path,
            json=body,
            headers={"x-request-id": request_id, "x-piece-bytes": str(piece)},
        )
    assert response.status_code == 200
    fields = finished_line(metered.epp, request_id)
    cached = fields.get("cached_tokens")
    assert (fields["prompt_tokens"], fields["completion_tokens"], cached) == expected
    assert fields["outcome"] == "completed"
    # The first token, not response.created nor the headers: the pod waited before it.
    ttft_ms = fields["ttft_ms"]
    assert isinstance(ttft_ms, (int, float)) and ttft_ms >= FIRST_TOKEN_AFTER_S * 1000 - 1
    assert metric(metered.metrics_url, "inference_objective_output_tokens_sum") >= expected[1]


def test_a_long_stream_in_many_chunks_keeps_its_usage(metered: MeteredStack) -> None:
    """A body written in a thousand pieces: the script's window of the body's end drops old pieces
    and starts a fresh table now and then, and still ends on the usage event."""
    request_id = uuid.uuid4().hex
    with httpx.Client(timeout=60) as http:
        response = http.post(
            metered.url + "/v1/chat/completions",
            json=chat(QWEN, "long", stream=True, stream_options={"include_usage": True}),
            headers={"x-request-id": request_id, "x-piece-bytes": "40", "x-tokens": "800"},
        )
    assert response.status_code == 200 and response.content.count(b"data: ") == 802
    fields = finished_line(metered.epp, request_id)
    assert (fields["prompt_tokens"], fields["completion_tokens"]) == (17, 4)


def test_a_stream_without_usage_is_timed_and_counts_no_tokens(metered: MeteredStack) -> None:
    request_id = uuid.uuid4().hex
    with httpx.Client(timeout=30) as http:
        response = http.post(
            metered.url + "/v1/chat/completions",
            json=chat(QWEN, "no usage", stream=True),
            headers={"x-request-id": request_id},
        )
    assert response.status_code == 200 and b'"usage"' not in response.content
    fields = finished_line(metered.epp, request_id)
    assert fields["outcome"] == "completed"
    assert "prompt_tokens" not in fields and "completion_tokens" not in fields
    ttft_ms = fields["ttft_ms"]
    assert isinstance(ttft_ms, (int, float)) and ttft_ms >= FIRST_TOKEN_AFTER_S * 1000 - 1


def forced_usage_stream(stack: MeteredStack) -> dict[str, object]:
    """A stream that did not ask for usage from a pod that sends it anyway."""
    request_id = uuid.uuid4().hex
    with httpx.Client(timeout=30) as http:
        response = http.post(
            stack.url + "/v1/chat/completions",
            json=chat(QWEN, "unasked", stream=True),
            headers={"x-request-id": request_id, "x-force-usage": "1", "x-piece-bytes": "11"},
        )
    assert response.status_code == 200 and b'"usage"' in response.content
    fields = finished_line(stack.epp, request_id)
    assert fields["outcome"] == "completed"
    ttft_ms = fields["ttft_ms"]
    assert isinstance(ttft_ms, (int, float)) and ttft_ms >= FIRST_TOKEN_AFTER_S * 1000 - 1
    return fields


def test_the_meter_leaves_alone_a_stream_that_did_not_ask_for_usage(
    metered: MeteredStack,
) -> None:
    """epp told the Lua meter (dynamic metadata) that this stream carries no usage, so
    the script returned without reading a chunk: the usage the pod added unasked is not
    counted, and the first token's time is Envoy's own (the access log's tag)."""
    fields = forced_usage_stream(metered)
    assert "prompt_tokens" not in fields and "completion_tokens" not in fields


@pytest.mark.parametrize(("tail_bytes", "read"), [(0, True), (6000, True), (30000, False)])
def test_json_usage_is_read_from_the_bodys_last_8_kib(
    metered: MeteredStack, tail_bytes: int, read: bool
) -> None:
    """The script looks for usage only in the body's end (USAGE_WINDOW_BYTES, at least):
    what follows usage in a vLLM body is a few null fields, unless the request asked
    for token ids or prompt logprobs, whose usage is then not read."""
    request_id = uuid.uuid4().hex
    with httpx.Client(timeout=30) as http:
        response = http.post(
            metered.url + "/v1/chat/completions",
            json=chat(QWEN, "json"),
            headers={"x-request-id": request_id, "x-tail-bytes": str(tail_bytes)},
        )
    assert response.status_code == 200 and response.json()["usage"] == USAGE
    fields = finished_line(metered.epp, request_id)
    assert fields["outcome"] == "completed"
    if read:
        assert (fields["prompt_tokens"], fields["completion_tokens"]) == (17, 4)
    else:
        assert "prompt_tokens" not in fields


def test_servers_that_add_usage_unasked_have_every_stream_read(
    metered_unasked: MeteredStack,
) -> None:
    fields = forced_usage_stream(metered_unasked)
    assert (fields["prompt_tokens"], fields["completion_tokens"]) == (17, 4)


@pytest.mark.parametrize("piece", (3, 64))
def test_timed_mode_times_the_first_body_byte_and_reads_no_usage(
    timed: MeteredStack, piece: int
) -> None:
    """TIMED: no Lua meter; Envoy's access log brings its own time of the body's first
    byte (the pod sent its headers at once and the body after a pause), the end and
    the outcome. Usage is not read, even when the body carries it."""
    request_id = uuid.uuid4().hex
    with httpx.Client(timeout=30) as http:
        response = http.post(
            timed.url + "/v1/chat/completions",
            json=chat(QWEN, "hi", stream=True, stream_options={"include_usage": True}),
            headers={"x-request-id": request_id, "x-piece-bytes": str(piece)},
        )
    assert response.status_code == 200 and b'"usage"' in response.content
    fields = finished_line(timed.epp, request_id)
    assert fields["outcome"] == "completed"
    assert "prompt_tokens" not in fields and "completion_tokens" not in fields
    ttft_ms = fields["ttft_ms"]
    assert isinstance(ttft_ms, (int, float)) and ttft_ms >= FIRST_TOKEN_AFTER_S * 1000 - 1
    assert metric(timed.metrics_url, "inference_objective_output_tokens_count") == 0

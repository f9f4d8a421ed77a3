"""The response side of the state machine: timing, usage, the usage option, accounting,
metrics and the request's log line; fed Envoy's messages in memory."""

from __future__ import annotations

import base64
import logging
from collections.abc import Iterable

import orjson
import pytest
from envoy.config.core.v3.base_pb2 import HeaderMap, HeaderValue
from envoy.service.ext_proc.v3.external_processor_pb2 import (
    HttpBody,
    HttpHeaders,
    HttpTrailers,
    ProcessingRequest,
    ProcessingResponse,
    ProtocolConfiguration,
)

from epp.api.usage import Usage
from epp.datalayer.store import EndpointStore
from epp.director import Director
from epp.extproc.stream import RequestStream
from epp.observability import request_metrics
from epp.observability.metrics import REGISTRY
from epp.requestcontrol.rewrite import MODEL_REWRITE_HEADER
from epp.scheduling.scheduler import (
    PluginSpec,
    ProfilePluginRef,
    ProfileSpec,
    SchedulerConfig,
    build_scheduler,
)
from tests.unit.directors import POD_A, POD_B, fresh_store
from tests.unit.extproc.envoy_messages import BUFFERED, FULL_DUPLEX, body_message, set_headers

MODELS = frozenset({"m", "m-v2", "metrics-model", "m-log"})
USAGE_EVENT = (
    b'data: {"id":"c","model":"m","choices":[],"usage":{"prompt_tokens":7,'
    b'"completion_tokens":3,"prompt_tokens_details":{"cached_tokens":4}}}\n\n'
)
TOKEN_EVENTS = [
    b'data: {"id":"c","model":"m","choices":[{"delta":{"content":"t%d"}}]}\n\n' % i
    for i in range(3)
]
DONE = b"data: [DONE]\n\n"


@pytest.fixture
def store() -> EndpointStore:
    """POD_A and POD_B serve every model of MODELS."""
    return fresh_store({POD_A: MODELS, POD_B: MODELS})


def request_headers(
    path: str = "/v1/chat/completions",
    *,
    body_mode: int = FULL_DUPLEX,
    extra: dict[str, str] | None = None,
) -> ProcessingRequest:
    pairs = {":method": "POST", ":path": path, "x-request-id": "req-9", **(extra or {})}
    return ProcessingRequest(
        request_headers=HttpHeaders(
            headers=HeaderMap(
                headers=[HeaderValue(key=k, raw_value=v.encode()) for k, v in pairs.items()]
            )
        ),
        protocol_config=ProtocolConfiguration(
            request_body_mode=body_mode, response_body_mode=FULL_DUPLEX
        ),
    )


def response_headers(
    status: int = 200, content_type: str = "text/event-stream", **extra: str
) -> ProcessingRequest:
    pairs = {":status": str(status), "content-type": content_type, **extra}
    return ProcessingRequest(
        response_headers=HttpHeaders(
            headers=HeaderMap(
                headers=[HeaderValue(key=k, raw_value=v.encode()) for k, v in pairs.items()]
            )
        )
    )


def response_body(data: bytes, *, end: bool = False) -> ProcessingRequest:
    return ProcessingRequest(response_body=HttpBody(body=data, end_of_stream=end))


def echoed(responses: Iterable[ProcessingResponse]) -> bytes:
    (response,) = responses
    return response.response_body.response.body_mutation.streamed_response.body


def sent_body(responses: Iterable[ProcessingResponse]) -> bytes:
    return b"".join(
        r.request_body.response.body_mutation.streamed_response.body
        for r in responses
        if r.WhichOneof("response") == "request_body"
    )


def routed(
    director: Director,
    body: dict[str, object],
    *,
    path: str = "/v1/chat/completions",
    inject: bool = False,
    extra: dict[str, str] | None = None,
) -> tuple[RequestStream, bytes]:
    stream = RequestStream(director, max_body_bytes=1 << 20, inject_stream_usage=inject)
    assert stream.handle(request_headers(path, extra=extra)) == ()
    responses = stream.handle(body_message(orjson.dumps(body), end_of_stream=True))
    return stream, sent_body(responses)


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_streamed_response_passes_through_and_is_timed(director: Director) -> None:
    stream, _ = routed(director, {"model": "m", "messages": [], "stream": True})
    decision = stream.decision
    assert decision is not None
    stream.handle(response_headers())
    assert decision.response.streamed and decision.response.first_token_at is None
    chunks = [*TOKEN_EVENTS, USAGE_EVENT + DONE]
    for i, chunk in enumerate(chunks):
        assert echoed(stream.handle(response_body(chunk, end=i == len(chunks) - 1))) == chunk
        first = decision.response.first_token_at
        assert first is not None
    response = decision.response
    assert response.completed and response.status == 200
    # The loop narrowed `first`; mypy forgets that once the loop is left.
    assert first is not None and response.ended_at is not None and response.ended_at >= first
    assert response.body_bytes == sum(map(len, chunks))
    assert response.usage == Usage(7, 3, 4)
    stream.close()
    assert all(ep.inflight_requests == 0 for ep in decision.endpoints)


def test_json_response_usage_is_read_at_the_end(director: Director) -> None:
    stream, _ = routed(director, {"model": "m", "prompt": "p"}, path="/v1/completions")
    stream.handle(response_headers(content_type="application/json"))
    body = orjson.dumps(
        {
            "choices": [{"text": "x"}],
            "usage": {"prompt_tokens": 11, "completion_tokens": 2, "total_tokens": 13},
        }
    )
    stream.handle(response_body(body[:20]))
    stream.handle(response_body(body[20:], end=True))
    assert stream.decision is not None
    assert stream.decision.response.usage == Usage(11, 2)
    assert not stream.decision.response.streamed


def test_responses_api_ttft_waits_for_the_first_delta(director: Director) -> None:
    stream, _ = routed(
        director, {"model": "m", "input": "hi", "stream": True}, path="/v1/responses"
    )
    stream.handle(response_headers())
    stream.handle(response_body(b'event: response.created\ndata: {"type":"response.created"}\n\n'))
    assert stream.decision is not None
    assert stream.decision.response.first_token_at is None
    stream.handle(
        response_body(
            b'event: response.output_text.delta\ndata: {"delta":"a",'
            b'"type":"response.output_text.delta"}\n\n'
        )
    )
    assert stream.decision.response.first_token_at is not None


@pytest.mark.parametrize(
    ("status", "headers"),
    [(500, {}), (200, {"content-encoding": "gzip"})],
    ids=["error-status", "compressed"],
)
def test_usage_is_not_read_from_errors_or_compressed_bodies(
    director: Director, status: int, headers: dict[str, str]
) -> None:
    stream, _ = routed(director, {"model": "m", "prompt": "p"})
    stream.handle(response_headers(status, "application/json", **headers))
    stream.handle(response_body(b'{"usage":{"prompt_tokens":1,"completion_tokens":1}}', end=True))
    assert stream.decision is not None and stream.decision.response.usage is None


def test_usage_option_off_leaves_the_body_alone(director: Director) -> None:
    body = {"model": "m", "messages": [], "stream": True}
    _, sent = routed(director, body)
    assert sent == orjson.dumps(body)


def test_usage_option_adds_include_usage_and_strips_the_event(director: Director) -> None:
    stream, sent = routed(director, {"model": "m", "messages": [], "stream": True}, inject=True)
    assert orjson.loads(sent)["stream_options"] == {"include_usage": True}
    stream.handle(response_headers())
    whole = b"".join(TOKEN_EVENTS) + USAGE_EVENT + DONE
    pieces = [whole[i : i + 40] for i in range(0, len(whole), 40)]
    out = b"".join(
        echoed(stream.handle(response_body(p, end=i == len(pieces) - 1)))
        for i, p in enumerate(pieces)
    )
    assert out == b"".join(TOKEN_EVENTS) + DONE
    assert stream.decision is not None
    assert stream.decision.response.usage == Usage(7, 3, 4)  # read before it was stripped


@pytest.mark.parametrize(
    ("body", "path"),
    [
        (
            {
                "model": "m",
                "messages": [],
                "stream": True,
                "stream_options": {"include_usage": True},
            },
            "/v1/chat/completions",
        ),
        ({"model": "m", "messages": []}, "/v1/chat/completions"),
        ({"model": "m", "input": "x", "stream": True}, "/v1/responses"),
    ],
    ids=["client-asked", "not-streamed", "responses-api"],
)
def test_usage_option_touches_only_streams_that_lack_it(
    director: Director, body: dict[str, object], path: str
) -> None:
    stream, sent = routed(director, body, path=path, inject=True)
    assert sent == orjson.dumps(body)
    stream.handle(response_headers())
    assert echoed(stream.handle(response_body(USAGE_EVENT + DONE, end=True))) == (
        USAGE_EVENT + DONE
    )


def test_usage_option_composes_with_a_model_rewrite(director: Director) -> None:
    director.rewrites.honour_header = True
    stream, sent = routed(
        director,
        {"model": "m", "messages": [], "stream": True},
        inject=True,
        extra={MODEL_REWRITE_HEADER: "m-v2"},
    )
    assert orjson.loads(sent) == {
        "model": "m-v2",
        "messages": [],
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    stream.handle(response_headers())
    upstream = (TOKEN_EVENTS[0] + USAGE_EVENT + DONE).replace(b'"model":"m"', b'"model":"m-v2"')
    out = b"".join(
        echoed(stream.handle(response_body(upstream[i : i + 9], end=i + 9 >= len(upstream))))
        for i in range(0, len(upstream), 9)
    )
    assert out == TOKEN_EVENTS[0] + DONE


def test_usage_option_in_buffered_mode_replaces_the_body(director: Director) -> None:
    stream = RequestStream(director, max_body_bytes=1 << 20, inject_stream_usage=True)
    stream.handle(request_headers(body_mode=BUFFERED))
    (answer,) = stream.handle(
        body_message(b'{"model":"m","messages":[],"stream":true}', end_of_stream=True)
    )
    replaced = orjson.loads(answer.request_body.response.body_mutation.body)
    assert replaced["stream_options"] == {"include_usage": True}


def _finish(director: Director, model: str, *, complete: bool, status: int = 200) -> None:
    stream, _ = routed(director, {"model": model, "messages": [], "stream": True})
    stream.handle(response_headers(status))
    stream.handle(response_body(TOKEN_EVENTS[0]))
    if complete:
        stream.handle(response_body(USAGE_EVENT + DONE))
        stream.handle(ProcessingRequest(response_trailers=HttpTrailers()))
    stream.close()


def test_metrics_recorded_at_close(director: Director, store: EndpointStore) -> None:
    labels = {"model_name": "metrics-model", "target_model_name": "metrics-model"}
    before = {
        name: sample(name, **labels)
        for name in (
            "inference_objective_input_tokens_sum",
            "inference_objective_output_tokens_sum",
            "inference_objective_prompt_cached_tokens_sum",
            "inference_objective_request_duration_seconds_count",
            "inference_objective_request_ttft_seconds_count",
            "inference_objective_request_tpot_seconds_count",
            "inference_objective_normalized_time_per_output_token_seconds_count",
        )
    }
    _finish(director, "metrics-model", complete=True)
    after = {name: sample(name, **labels) - value for name, value in before.items()}
    assert after == {
        "inference_objective_input_tokens_sum": 7,
        "inference_objective_output_tokens_sum": 3,
        "inference_objective_prompt_cached_tokens_sum": 4,
        "inference_objective_request_duration_seconds_count": 1,
        "inference_objective_request_ttft_seconds_count": 1,
        "inference_objective_request_tpot_seconds_count": 1,
        "inference_objective_normalized_time_per_output_token_seconds_count": 1,
    }
    assert sample("inference_objective_running_requests", model_name="metrics-model") == 0
    assert all(ep.inflight_requests == 0 for ep in store.all())


def test_reset_and_failed_responses(director: Director, store: EndpointStore) -> None:
    labels = {"model_name": "metrics-model", "target_model_name": "metrics-model"}
    durations = sample("inference_objective_request_duration_seconds_count", **labels)
    errors = sample(
        "inference_objective_request_error_total", error_code="model_server_error", **labels
    )
    _finish(director, "metrics-model", complete=False)  # reset mid-stream
    _finish(director, "metrics-model", complete=True, status=503)
    assert sample("inference_objective_request_duration_seconds_count", **labels) == durations
    assert (
        sample("inference_objective_request_error_total", error_code="model_server_error", **labels)
        == errors + 1
    )
    assert sample("inference_objective_running_requests", model_name="metrics-model") == 0
    assert all(ep.inflight_requests == 0 for ep in store.all())


def test_one_log_line_per_request(director: Director, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="epp.requests")
    request_metrics.set_request_log("all")
    try:
        _finish(director, "m-log", complete=True)
        _finish(director, "m-log", complete=False)
        stream = RequestStream(director, max_body_bytes=1 << 20)
        stream.handle(request_headers())
        stream.handle(body_message(b'{"model": "unknown"}', end_of_stream=True))
        stream.close()
        RequestStream(director, max_body_bytes=1 << 20).close()  # no request at all: no line
    finally:
        request_metrics.set_request_log("errors")
    records = [r for r in caplog.records if r.name == "epp.requests"]
    assert [r.__dict__["outcome"] for r in records] == ["completed", "reset", "error"]
    done = records[0].__dict__
    assert done["request_id"] == "req-9" and done["model"] == "m-log"
    assert done["endpoint"] in (POD_A, POD_B) and done["status"] == 200 and done["stream"] is True
    assert (done["prompt_tokens"], done["completion_tokens"], done["cached_tokens"]) == (7, 3, 4)
    assert done["decision_ms"] >= 0 and done["ttft_ms"] <= done["duration_ms"]
    error = records[2].__dict__
    assert (error["status"], error["error_code"]) == (404, "model_not_found")


@pytest.mark.parametrize(
    ("mode", "outcomes"), [("errors", ["reset"]), ("off", []), ("all", ["completed", "reset"])]
)
def test_request_log_modes(
    director: Director, caplog: pytest.LogCaptureFixture, mode: str, outcomes: list[str]
) -> None:
    caplog.set_level(logging.INFO, logger="epp.requests")
    request_metrics.set_request_log(mode)
    try:
        _finish(director, "m-log", complete=True)
        _finish(director, "m-log", complete=False)
    finally:
        request_metrics.set_request_log("errors")
    assert [r.__dict__["outcome"] for r in caplog.records if r.name == "epp.requests"] == outcomes


def test_the_session_token_reaches_the_client_and_steers_its_next_request(
    store: EndpointStore,
) -> None:
    profile = ProfileSpec(
        "default",
        [ProfilePluginRef("session-affinity-scorer", 5), ProfilePluginRef("inflight-load-scorer")],
    )
    plugins = [PluginSpec("session-affinity-scorer"), PluginSpec("inflight-load-scorer")]
    director = Director(store, build_scheduler(SchedulerConfig(plugins, [profile])))
    stream, _ = routed(director, {"model": "m", "messages": []})
    assert stream.decision is not None
    first = stream.decision.endpoints[0]
    (reply,) = stream.handle(response_headers())
    token = set_headers(reply, "response_headers")["x-session-token"]
    assert token == base64.b64encode(first.address.encode()).decode()
    # The first request is still in flight there, so only the token can bring the next
    # one back to the busier pod.
    again, _ = routed(director, {"model": "m", "messages": []}, extra={"x-session-token": token})
    assert again.decision is not None and again.decision.endpoints[0] is first
    without, _ = routed(director, {"model": "m", "messages": []})
    assert without.decision is not None and without.decision.endpoints[0] is not first


@pytest.mark.parametrize(
    ("meter", "path", "body", "unmetered"),
    [
        (True, "/v1/chat/completions", {"stream": True}, True),
        (True, "/v1/completions", {"stream": True}, True),
        (True, "/v1/chat/completions?x=1", {"stream": True}, True),
        (True, "/v1/chat/completions", {"stream": True, "stream_options": {}}, True),
        (
            True,
            "/v1/chat/completions",
            {"stream": True, "stream_options": {"include_usage": False}},
            True,
        ),
        (
            True,
            "/v1/chat/completions",
            {"stream": True, "stream_options": {"include_usage": True}},
            False,
        ),
        (True, "/v1/chat/completions", {"stream_options": {"include_usage": True}}, False),
        (True, "/v1/chat/completions", {}, False),  # a JSON body: usage is in it
        (True, "/v1/responses", {"stream": True}, False),  # response.completed has usage
        (False, "/v1/chat/completions", {"stream": True}, False),  # no Lua meter
    ],
)
def test_the_envoy_meter_is_told_to_leave_alone_only_streams_without_usage(
    director: Director, meter: bool, path: str, body: dict[str, object], unmetered: bool
) -> None:
    """LOGGED mode: a chat/completions stream that did not ask for usage carries none,
    so the routing answer tells Envoy's Lua meter (dynamic metadata) not to read it."""
    stream = RequestStream(director, max_body_bytes=1 << 20, envoy_meters_usage=meter)
    assert stream.handle(request_headers(path)) == ()
    document = {"model": "m", "messages": [{"role": "user", "content": "hi"}], **body}
    responses = stream.handle(body_message(orjson.dumps(document), end_of_stream=True))
    (routing,) = [r for r in responses if r.WhichOneof("response") == "request_headers"]
    metadata = routing.dynamic_metadata
    assert metadata["envoy.lb"]["x-gateway-destination-endpoint"] in (POD_A, POD_B)
    told = "epp.response" in metadata and metadata["epp.response"]["body_unmetered"] is True
    assert told is unmetered

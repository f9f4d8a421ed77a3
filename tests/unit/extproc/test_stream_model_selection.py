"""``"model": "auto"`` through the stream state machine: the chosen model goes upstream in
the body and the model header, and comes back to the client in x-selected-model."""

from __future__ import annotations

import orjson
from envoy.config.core.v3.base_pb2 import HeaderMap, HeaderValue
from envoy.service.ext_proc.v3.external_processor_pb2 import (
    HttpBody,
    HttpHeaders,
    ProcessingRequest,
    ProcessingResponse,
)

from epp.director import Director
from epp.extproc.stream import RequestStream
from epp.observability import metrics
from epp.requestcontrol.model_selection import ModelSelector, parse_rules
from epp.requestcontrol.rewrite import ModelRewrites, RewriteRule
from tests.unit.directors import POD_A, POD_B, POD_C, director_over, fresh_store
from tests.unit.extproc.envoy_messages import (
    BUFFERED,
    FULL_DUPLEX,
    body_message,
    headers_message,
    lb_destination,
    set_headers,
)

RULES = parse_rules([{"name": "coding", "model": "coder", "keywords": ["python"]}])


def make_director(**options: object) -> Director:
    store = fresh_store({POD_A: {"coder"}, POD_B: {"small"}, POD_C: {"small-v2"}})
    selector = ModelSelector(default_model="small", rules=RULES)
    return director_over(store, selector=selector, **options)


def chat_body(model: str, content: str, **extra: object) -> bytes:
    return orjson.dumps(
        {"model": model, "messages": [{"role": "user", "content": content}], **extra}
    )


def route(director: Director, body: bytes) -> tuple[RequestStream, list[ProcessingResponse]]:
    stream = RequestStream(director, max_body_bytes=1 << 20)
    stream.handle(headers_message(response_body_mode=FULL_DUPLEX))
    return stream, list(stream.handle(body_message(body, end_of_stream=True)))


def sent_body(chunks: list[ProcessingResponse]) -> bytes:
    return b"".join(c.request_body.response.body_mutation.streamed_response.body for c in chunks)


def response_headers(stream: RequestStream) -> dict[str, str]:
    (answer,) = stream.handle(
        ProcessingRequest(
            response_headers=HttpHeaders(
                headers=HeaderMap(
                    headers=[
                        HeaderValue(key=":status", raw_value=b"200"),
                        HeaderValue(key="content-type", raw_value=b"text/event-stream"),
                    ]
                )
            )
        )
    )
    return set_headers(answer, "response_headers")


def response_chunk(stream: RequestStream, data: bytes) -> bytes:
    (echo,) = stream.handle(
        ProcessingRequest(response_body=HttpBody(body=data, end_of_stream=True))
    )
    body: bytes = echo.response_body.response.body_mutation.streamed_response.body
    return body


def selections(rule: str, model: str) -> float:
    value: float = metrics.MODEL_SELECTIONS.labels(rule, model)._value.get()
    return value


def test_auto_gets_the_chosen_model_in_body_header_destination_and_response() -> None:
    before = selections("coding", "coder")
    stream, (head, *chunks) = route(
        make_director(), chat_body("auto", "a python question", stream=True)
    )
    assert set_headers(head, "request_headers")["x-gateway-model-name"] == "coder"
    assert lb_destination(head) == POD_A
    assert orjson.loads(sent_body(chunks))["model"] == "coder"
    assert selections("coding", "coder") == before + 1

    assert response_headers(stream)["x-selected-model"] == "coder"
    # The client sees the model that served it: nothing is restored to "auto".
    event = b'data: {"model":"coder","choices":[]}\n\n'
    assert response_chunk(stream, event) == event
    stream.close()


def test_no_rule_matched_is_the_default_model() -> None:
    before = selections("default", "small")
    stream, (head, *chunks) = route(make_director(), chat_body("auto", "hello there"))
    assert set_headers(head, "request_headers")["x-gateway-model-name"] == "small"
    assert lb_destination(head) == POD_B
    assert orjson.loads(sent_body(chunks)) == orjson.loads(chat_body("small", "hello there"))
    assert selections("default", "small") == before + 1
    stream.close()


def test_a_request_naming_a_real_model_is_never_changed() -> None:
    body = chat_body("small", "a python question")
    stream, (head, *chunks) = route(make_director(), body)
    assert set_headers(head, "request_headers")["x-gateway-model-name"] == "small"
    assert sent_body(chunks) == body  # byte for byte
    assert "x-selected-model" not in response_headers(stream)
    stream.close()


def test_a_rewrite_of_the_chosen_model_restores_the_chosen_one() -> None:
    rewrites = ModelRewrites([RewriteRule(frozenset({"small"}), ("small-v2",), (1,))])
    stream, (head, *chunks) = route(make_director(rewrites=rewrites), chat_body("auto", "hi"))
    assert set_headers(head, "request_headers")["x-gateway-model-name"] == "small"
    assert lb_destination(head) == POD_C
    assert orjson.loads(sent_body(chunks))["model"] == "small-v2"
    assert response_headers(stream)["x-selected-model"] == "small"
    assert response_chunk(stream, b'{"model":"small-v2"}') == b'{"model":"small"}'
    stream.close()


def test_body_based_routing_names_the_chosen_model_and_picks_no_endpoint() -> None:
    stream = RequestStream(make_director(pick_endpoints=False), max_body_bytes=1 << 20)
    stream.handle(headers_message(body_mode=BUFFERED))
    (answer,) = stream.handle(body_message(chat_body("auto", "python?"), end_of_stream=True))
    headers = set_headers(answer, "request_body")
    assert headers == {"x-gateway-model-name": "coder"}
    assert orjson.loads(answer.request_body.response.body_mutation.body)["model"] == "coder"
    assert response_headers(stream)["x-selected-model"] == "coder"
    stream.close()


def test_a_rewritten_buffered_body_says_its_new_length_if_the_request_said_one() -> None:
    # Envoy 1.40 answers 503 to a buffered body mutation that does not match the
    # content-length the request still carries; a chunked request has none to fix.
    body = chat_body("auto", "python?")
    declared: dict[str, str | bytes] = {"content-length": str(len(body))}
    for extra, length in ((declared, True), ({}, False)):
        stream = RequestStream(make_director(pick_endpoints=False), max_body_bytes=1 << 20)
        stream.handle(headers_message(body_mode=BUFFERED, extra=extra))
        (answer,) = stream.handle(body_message(body, end_of_stream=True))
        sent = answer.request_body.response.body_mutation.body
        assert len(sent) != len(body)  # "auto" became "coder"
        headers = set_headers(answer, "request_body")
        assert headers.get("content-length") == (str(len(sent)) if length else None)
        stream.close()


def test_without_a_selector_auto_is_just_a_model_name() -> None:
    store = fresh_store({POD_A: {"coder"}, POD_B: {"small"}})
    stream = RequestStream(director_over(store), max_body_bytes=1 << 20)
    stream.handle(headers_message())
    (answer,) = stream.handle(body_message(chat_body("auto", "python?"), end_of_stream=True))
    assert answer.immediate_response.status.code == 404

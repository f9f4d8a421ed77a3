"""Log formats: fields given as ``extra`` reach both the text and the JSON line."""

from __future__ import annotations

import logging

import orjson

from epp.observability.logging import JsonFormatter, TextFormatter


def _record(**extra: object) -> logging.LogRecord:
    return logging.getLogger("epp.requests").makeRecord(
        "epp.requests", logging.INFO, __file__, 1, "request finished", (), None, extra=extra
    )


def test_text_lines_end_with_key_values_quoted_where_needed() -> None:
    line = TextFormatter().format(
        _record(request_id="r1", model="my model", stream=True, status=200, empty="")
    )
    assert line.endswith(
        'epp.requests: request finished request_id=r1 model="my model" stream=true '
        'status=200 empty=""'
    )


def test_text_line_without_extras_is_just_the_message() -> None:
    assert TextFormatter().format(_record()).endswith("epp.requests: request finished")


def test_json_lines_carry_the_extras_as_fields() -> None:
    entry = orjson.loads(JsonFormatter().format(_record(request_id="r1", decision_ms=0.25)))
    assert entry["msg"] == "request finished" and entry["logger"] == "epp.requests"
    assert (entry["request_id"], entry["decision_ms"]) == ("r1", 0.25)
    assert "message" not in entry and "args" not in entry

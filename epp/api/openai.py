"""Parsing OpenAI-style request bodies into what routing needs.

Only three things matter for routing: the ``model``, the text that prefix-cache affinity
is computed over, and whether the response streams. The body reaches the model server
byte for byte unless a model rewrite applies (:mod:`epp.api.usage_injection`'s
``rewrite_request_body``).

A model name becomes a request header (``x-gateway-model-name``), a metric label and a
log field, so :func:`model_name_problem` bounds what a client may put there: Envoy
refuses a header value with CR, LF or NUL, and a name of kilobytes serves no one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import orjson

from epp.errors import BadRequest

__all__ = [
    "MAX_MODEL_NAME_BYTES",
    "ParsedBody",
    "model_name_problem",
    "parse_request_body",
    "prompt_text",
]

# Far above real names (Hugging Face ids are at most 96 + 1 + 96 characters; vLLM's
# default served name is the model's path), far below Envoy's 60 KiB header budget.
MAX_MODEL_NAME_BYTES = 1024
# C0 controls and DEL: CR, LF and NUL would break the header; the rest have no business
# in a name and would garble logs.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True, slots=True)
class ParsedBody:
    model: str
    prompt: str
    stream: bool
    # A stream that asked for its usage (stream_options.include_usage): only such a
    # chat/completions stream carries a usage event.
    usage_asked: bool = False
    # The whole JSON object, for what reads more of the request (model selection).
    document: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)


def parse_request_body(
    body: bytes | bytearray | memoryview,
    *,
    max_prompt_chars: int | None = None,
    model: str | None = None,
) -> ParsedBody:
    """Read ``model``, the prompt text and ``stream`` from an OpenAI-style JSON body.

    ``max_prompt_chars``: how much of the prompt's start routing can use; the text is
    built only that far (see :func:`prompt_text`). ``model``: the model when the caller
    names it apart from the body (the Pick API); the body's own is then not read, and an
    empty body stands for a request with no prompt.

    Raises :class:`BadRequest` when the body is empty, not a JSON object, or lacks a
    string model that :func:`model_name_problem` accepts.
    """
    if model is not None:
        problem = model_name_problem(model)
        if problem is not None:
            raise BadRequest(f"'model' {problem}", code="invalid_model")
        if _is_blank(body):
            return ParsedBody(model=model, prompt="", stream=False)
    if _is_blank(body):
        raise BadRequest(
            "request body is empty; expected a JSON object with 'model'", code="missing_body"
        )
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"request body is not valid JSON: {exc.msg}", code="invalid_json") from exc
    if not isinstance(document, dict):
        raise BadRequest(
            f"request body must be a JSON object, not {_json_type(document)}",
            code="invalid_body",
        )
    if model is None:
        model = document.get("model")
    if model is None or model == "":
        raise BadRequest("request body has no 'model'", code="missing_model")
    if not isinstance(model, str):
        raise BadRequest(f"'model' must be a string, not {_json_type(model)}", code="invalid_model")
    problem = model_name_problem(model)
    if problem is not None:
        raise BadRequest(f"'model' {problem}", code="invalid_model")
    stream = document.get("stream") is True
    options = document.get("stream_options") if stream else None
    return ParsedBody(
        model=model,
        prompt=prompt_text(document, max_prompt_chars),
        stream=stream,
        usage_asked=isinstance(options, dict) and options.get("include_usage") is True,
        document=document,
    )


def _is_blank(body: bytes | bytearray | memoryview) -> bool:
    # Looks past the first byte only when it is JSON whitespace: bodies are rarely blank.
    return not body or (body[0] in _JSON_BLANKS and not bytes(body).strip())


_JSON_BLANKS = frozenset(b" \t\r\n")


def model_name_problem(name: str) -> str | None:
    """Why ``name`` cannot be routed as a model name (phrased to follow "'model' "), or
    None when it can."""
    if name.isascii() and name.isprintable() and len(name) <= MAX_MODEL_NAME_BYTES:
        return None  # the usual name, told in two C calls: printable ASCII has no controls
    try:
        size = len(name.encode())
    except UnicodeEncodeError:  # a lone surrogate cannot become a header
        return "is not valid Unicode"
    if size > MAX_MODEL_NAME_BYTES:
        return f"is longer than {MAX_MODEL_NAME_BYTES} bytes"
    if _CONTROL.search(name):
        return "contains a control character (CR, LF, NUL, tab, ...)"
    return None


def prompt_text(document: dict[str, Any], max_chars: int | None = None) -> str:
    """The text a model server would prefill, in order, as far as JSON shows it, cut at
    ``max_chars`` (None: whole).

    Covers chat (``messages``), completions (``prompt``), embeddings and the Responses API
    (``input``, ``instructions``). Roles are kept so two conversations that differ only in
    who said what do not share a prefix. Token-id prompts have no text and give "".
    Parts are gathered only until there are ``max_chars``: a long prompt is not copied
    whole when routing reads only its start.
    """
    room = _UNLIMITED if max_chars is None else max_chars
    parts: list[str] = []
    messages = document.get("messages")
    if isinstance(messages, list):
        _messages_text(messages, parts, room)
    else:
        instructions = document.get("instructions")
        if isinstance(instructions, str):
            parts.append(
                instructions if len(instructions) <= room else instructions[: max(room, 0)]
            )
            room -= len(instructions)
        for key in ("prompt", "input"):
            value = document.get(key)
            if room <= 0:
                break
            if isinstance(value, str):
                parts.append(value if len(value) <= room else value[: max(room, 0)])
                room -= len(value)
            elif isinstance(value, list):
                if value and isinstance(value[0], dict):
                    room = _messages_text(value, parts, room)
                else:
                    for item in value:
                        if isinstance(item, str):
                            parts.append(item if len(item) <= room else item[: max(room, 0)])
                            room -= len(item)
                            if room <= 0:
                                break
    text = "".join(parts)
    return text if max_chars is None or len(text) <= max_chars else text[:max_chars]


_UNLIMITED = 1 << 62


def _messages_text(messages: list[Any], parts: list[str], room: int) -> int:
    """Append the messages' roles and text to ``parts`` until ``room`` characters are
    used up; return the room left."""
    for message in messages:
        if room <= 0:
            break
        if not isinstance(message, dict):
            continue
        role = message.get("role")
        if isinstance(role, str):
            marker = f"<|{role}|>"
            parts.append(marker)
            room -= len(marker)
        content = message.get("content")
        if isinstance(content, str):
            # A long part is cut here, so the join below never copies it whole.
            parts.append(content if len(content) <= room else content[: max(room, 0)])
            room -= len(content)
        elif isinstance(content, list):
            for part in content:
                if isinstance(part, str):
                    parts.append(part if len(part) <= room else part[: max(room, 0)])
                    room -= len(part)
                elif isinstance(part, dict):
                    text = part.get("text")
                    if isinstance(text, str):
                        parts.append(text if len(text) <= room else text[: max(room, 0)])
                        room -= len(text)
                if room <= 0:
                    break
    return room


def _json_type(value: Any) -> str:
    return {
        list: "an array",
        str: "a string",
        int: "a number",
        float: "a number",
        bool: "a boolean",
        type(None): "null",
        dict: "an object",
    }.get(type(value), type(value).__name__)

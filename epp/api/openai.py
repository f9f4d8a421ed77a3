"""Parsing OpenAI-style request bodies into what routing needs.

Only three things matter for routing: the ``model``, the text that prefix-cache affinity
is computed over, and whether the response streams. The body reaches the model server
byte for byte unless a model rewrite applies (``rewrite_model``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from epp.errors import BadRequest

__all__ = ["ParsedBody", "parse_request_body", "prompt_text", "rewrite_model"]


@dataclass(frozen=True, slots=True)
class ParsedBody:
    model: str
    prompt: str
    stream: bool


def parse_request_body(body: bytes | bytearray | memoryview) -> ParsedBody:
    """Read ``model``, the prompt text and ``stream`` from an OpenAI-style JSON body.

    Raises :class:`BadRequest` when the body is not a JSON object or lacks a string model.
    """
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"request body is not valid JSON: {exc.msg}", code="invalid_json") from exc
    if not isinstance(document, dict):
        raise BadRequest(
            f"request body must be a JSON object, not {_json_type(document)}",
            code="invalid_body",
        )
    model = document.get("model")
    if model is None or model == "":
        raise BadRequest("request body has no 'model'", code="missing_model")
    if not isinstance(model, str):
        raise BadRequest(f"'model' must be a string, not {_json_type(model)}", code="invalid_model")
    return ParsedBody(
        model=model,
        prompt=prompt_text(document),
        stream=document.get("stream") is True,
    )


def rewrite_model(body: bytes, model: str) -> bytes:
    """``body`` with its ``model`` replaced; the rest keeps its keys, order and values."""
    document = orjson.loads(body)
    document["model"] = model
    return orjson.dumps(document)


def prompt_text(document: dict[str, Any]) -> str:
    """The text a model server would prefill, in order, as far as JSON shows it.

    Covers chat (``messages``), completions (``prompt``), embeddings and the Responses API
    (``input``, ``instructions``). Roles are kept so two conversations that differ only in
    who said what do not share a prefix. Token-id prompts have no text and give "".
    """
    messages = document.get("messages")
    if isinstance(messages, list):
        return _messages_text(messages)
    parts: list[str] = []
    instructions = document.get("instructions")
    if isinstance(instructions, str):
        parts.append(instructions)
    for key in ("prompt", "input"):
        value = document.get(key)
        if isinstance(value, str):
            parts.append(value)
        elif isinstance(value, list):
            if value and isinstance(value[0], dict):
                parts.append(_messages_text(value))
            else:
                parts.extend(item for item in value if isinstance(item, str))
    return "".join(parts)


def _messages_text(messages: list[Any]) -> str:
    parts: list[str] = []
    for message in messages:
        if not isinstance(message, dict):
            continue
        role = message.get("role")
        if isinstance(role, str):
            parts.append(f"<|{role}|>")
        _append_content(parts, message.get("content"))
    return "".join(parts)


def _append_content(parts: list[str], content: Any) -> None:
    if isinstance(content, str):
        parts.append(content)
    elif isinstance(content, list):
        for part in content:
            if isinstance(part, str):
                parts.append(part)
            elif isinstance(part, dict):
                text = part.get("text")
                if isinstance(text, str):
                    parts.append(text)


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

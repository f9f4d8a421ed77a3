"""What model-selection rules read from an OpenAI-style request body.

Chat (``messages``), completions (``prompt``) and the Responses API (``input``) are
covered. Every function walks the parsed document without copying its text, except
:func:`last_user_text`, which copies at most ``max_chars`` characters: rules that search
the text (keywords, regular expressions) then cost at most that much, however large the
prompt a client sends.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

__all__ = [
    "CHARS_PER_TOKEN",
    "estimated_prompt_tokens",
    "has_images",
    "has_tools",
    "last_user_text",
]

# OpenAI's rule of thumb for English text with its tokenizers (and close for Llama's and
# Qwen's): about four characters per token. An estimate, not a count: code and other
# languages run denser, so thresholds near a context limit need room to spare.
CHARS_PER_TOKEN = 4
_IMAGE_PART_TYPES = frozenset({"image_url", "input_image", "image"})


def last_user_text(document: Mapping[str, Any], max_chars: int) -> str:
    """The text of the request's last user message, cut to its first ``max_chars``.

    Chat and Responses API messages: the last one whose role is ``user`` (its string
    content, or its text parts joined with newlines). A completions ``prompt`` (or a
    plain-string ``input``) is the user's text itself; a list of prompts gives its last.
    "" when there is none (token-id prompts have no text).
    """
    messages = document.get("messages")
    if not isinstance(messages, list):
        messages = document.get("input")
    if isinstance(messages, str):
        return messages[:max_chars]
    if isinstance(messages, list) and messages and isinstance(messages[0], dict):
        for message in reversed(messages):
            if isinstance(message, dict) and message.get("role") == "user":
                return _content_text(message.get("content"), max_chars)
        return ""
    prompt = document.get("prompt")
    if isinstance(prompt, list) and prompt and isinstance(prompt[-1], str):
        prompt = prompt[-1]
    return prompt[:max_chars] if isinstance(prompt, str) else ""


def _content_text(content: Any, max_chars: int) -> str:
    if isinstance(content, str):
        return content[:max_chars]
    if not isinstance(content, list):
        return ""
    parts: list[str] = []
    room = max_chars
    for part in content:
        text = part.get("text") if isinstance(part, dict) else part
        if isinstance(text, str) and room > 0:
            parts.append(text[:room])
            room -= len(text) + 1
    return "\n".join(parts)[:max_chars]


def estimated_prompt_tokens(document: Mapping[str, Any]) -> int:
    """The prompt's length in tokens, estimated as its characters / ``CHARS_PER_TOKEN``
    (rounded up): every message's text, the instructions, the prompt, the input.
    Roles, tool definitions and images are not counted."""
    chars = sum(len(text) for text in _texts(document))
    return -(-chars // CHARS_PER_TOKEN)


def _texts(document: Mapping[str, Any]) -> Iterator[str]:
    for key in ("messages", "input", "prompt", "instructions"):
        value = document.get(key)
        if isinstance(value, str):
            yield value
        elif isinstance(value, list):
            for item in value:
                if isinstance(item, str):
                    yield item
                elif isinstance(item, dict):
                    yield from _message_texts(item)


def _message_texts(message: Mapping[str, Any]) -> Iterator[str]:
    content = message.get("content")
    if isinstance(content, str):
        yield content
    elif isinstance(content, list):
        for part in content:
            if isinstance(part, dict):
                text = part.get("text")
                if isinstance(text, str):
                    yield text
            elif isinstance(part, str):
                yield part


def has_tools(document: Mapping[str, Any]) -> bool:
    """The request offers the model tools (``tools``, or chat's legacy ``functions``)."""
    return any(
        isinstance(value, list) and bool(value)
        for value in (document.get("tools"), document.get("functions"))
    )


def has_images(document: Mapping[str, Any]) -> bool:
    """A message carries an image part (``image_url``, the Responses API's
    ``input_image``)."""
    for key in ("messages", "input"):
        messages = document.get(key)
        if not isinstance(messages, list):
            continue
        for message in messages:
            content = message.get("content") if isinstance(message, dict) else None
            if isinstance(content, list) and any(
                isinstance(part, dict) and part.get("type") in _IMAGE_PART_TYPES for part in content
            ):
                return True
    return False

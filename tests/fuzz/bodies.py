"""OpenAI-style request bodies, well-formed and not, and what epp should make of one.

Both fuzz targets draw bodies from here. ``judge_body`` is the suite's own reading of a
body (written from the OpenAI API and RFC 8259, not from epp's parser): the outcome a
client should see, where the body settles it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from hypothesis import strategies as st

from tests.fuzz.harness import GEMMA, GHOST, QWEN, Pool

__all__ = [
    "BodyVerdict",
    "Expectation",
    "body_chunks",
    "expect_for_model",
    "is_plain_model_name",
    "judge_body",
    "model_names",
    "openai_documents",
    "rare",
    "request_bodies",
    "valid_request_bodies",
]

MAX_INT = 2**63 - 1
MIN_INT = -(2**63)


def rare(
    unusual: st.SearchStrategy[Any], usual: st.SearchStrategy[Any], one_in: int = 12
) -> st.SearchStrategy[Any]:
    """``unusual`` about once in ``one_in`` draws, else ``usual`` (shrinks to usual)."""
    return st.integers(0, one_in - 1).flatmap(lambda n: unusual if n == one_in - 1 else usual)


def _repeated(unit: st.SearchStrategy[str], low: int, high: int) -> st.SearchStrategy[str]:
    # A long string from a short unit: Hypothesis draws a few choices, not one per byte.
    return st.tuples(unit, st.integers(low, high)).map(lambda pair: pair[0] * pair[1])


_TEXT = st.text(st.characters(codec="utf-8"), max_size=40)
_CONTROL_NAMES = st.sampled_from(
    [
        "qwen2-1-5b\r\nx-injected: 1",
        "qwen2-1-5b\n",
        "\x00",
        "qwen\x00",
        "a\rb",
        "tab\tname",
        "\x7f",
        "\x1b[31m",
        "qwen2-1-5b\u2028",
        "\ufeffqwen2-1-5b",
    ]
)

# Model names: mostly served ones, so requests get routed, then everything else.
model_names: st.SearchStrategy[Any] = st.one_of(
    st.sampled_from([QWEN, QWEN, GEMMA, GHOST, "unknown-model"]),
    st.sampled_from([QWEN, GEMMA]),
    _TEXT,
    _CONTROL_NAMES,
    _repeated(st.sampled_from(["m", "é", "\x00", "\n", "🦙"]), 1_000, 200_000),
    st.sampled_from(["", " ", QWEN.upper(), f" {QWEN}", f"{QWEN} ", f"{QWEN},{GEMMA}"]),
    # Not strings at all.
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.floats(allow_nan=False),
        st.lists(st.sampled_from([QWEN, 1]), max_size=2),
        st.fixed_dictionaries({"name": st.just(QWEN)}),
    ),
)


@st.composite
def openai_documents(
    draw: st.DrawFn,
    model: st.SearchStrategy[Any] = model_names,
) -> dict[str, Any]:
    """A chat, completions, Responses API or embeddings request body as a dict."""
    shape = draw(st.sampled_from(["chat", "completions", "responses", "embeddings", "bare"]))
    document: dict[str, Any] = {}
    if draw(st.integers(0, 15)) != 0:  # now and then no model at all
        document["model"] = draw(model)
    content = draw(st.one_of(_TEXT, _repeated(st.sampled_from(["hello ", "é", "🦙"]), 10, 3000)))
    if shape == "chat":
        role = draw(st.sampled_from(["user", "system", "assistant", "tool"]))
        document["messages"] = draw(
            st.one_of(
                st.just([{"role": role, "content": content}]),
                st.just([{"role": role, "content": [{"type": "text", "text": content}]}]),
                st.sampled_from([content, None, [content, 3], {"role": role}]),
            )
        )
    elif shape == "completions":
        document["prompt"] = draw(
            st.one_of(st.just(content), st.just([content, content]), st.just([1, 2, 3]))
        )
    elif shape == "responses":
        document["input"] = content
        if draw(st.booleans()):
            document["instructions"] = "Be brief."
    elif shape == "embeddings":
        document["input"] = [content]
    if draw(st.booleans()):
        document["stream"] = draw(st.one_of(st.booleans(), st.sampled_from(["true", 1, None])))
        if document["stream"] is True and draw(st.booleans()):
            document["stream_options"] = {"include_usage": draw(st.booleans())}
    if draw(st.booleans()):
        document["max_tokens"] = draw(st.integers(1, 3))
    if draw(st.integers(0, 5)) == 0:
        # Odd extras a model server ignores: huge and odd numbers, deep-ish nesting.
        document["x_fuzz"] = draw(
            st.one_of(
                st.integers(min_value=-(10**30), max_value=10**30),
                st.floats(allow_nan=False, allow_infinity=False),
                st.recursive(
                    st.none() | st.booleans() | st.integers(-5, 5) | _TEXT,
                    lambda inner: (
                        st.lists(inner, max_size=3) | st.dictionaries(_TEXT, inner, max_size=3)
                    ),
                    max_leaves=12,
                ),
            )
        )
    return document


def _dumps(document: Any, *, ascii_only: bool, spaced: bool) -> bytes:
    separators = (", ", ": ") if spaced else (",", ":")
    return json.dumps(document, ensure_ascii=ascii_only, separators=separators).encode()


@st.composite
def valid_request_bodies(draw: st.DrawFn) -> tuple[bytes, str, str]:
    """A well-formed body for a model the pool serves: (bytes, model, path)."""
    model = draw(st.sampled_from([QWEN, GEMMA]))
    content = draw(_TEXT)
    document: dict[str, Any]
    if draw(st.booleans()):
        path = "/v1/chat/completions"
        document = {"model": model, "messages": [{"role": "user", "content": content}]}
    else:
        path = "/v1/completions"
        document = {"model": model, "prompt": content}
    document["max_tokens"] = draw(st.integers(1, 3))
    if draw(st.booleans()):
        document["stream"] = draw(st.booleans())
    return _dumps(document, ascii_only=draw(st.booleans()), spaced=draw(st.booleans())), model, path


@st.composite
def request_bodies(draw: st.DrawFn) -> bytes:
    """Any request body: mostly JSON documents, then broken and hostile ones."""
    kind = draw(
        st.sampled_from(
            [
                "document",
                "document",
                "document",
                "empty",
                "blank",
                "truncated",
                "not_object",
                "deep",
                "huge_number",
                "control_in_string",
                "bom",
                "duplicate_model",
                "random",
                "not_json",
                "lone_surrogate",
            ]
        )
    )
    if kind == "document":
        return _dumps(
            draw(openai_documents()), ascii_only=draw(st.booleans()), spaced=draw(st.booleans())
        )
    if kind == "empty":
        return b""
    if kind == "blank":
        return draw(st.sampled_from([b" ", b"\n", b"\r\n\t ", b" " * 70_000]))
    if kind == "truncated":
        whole = _dumps(draw(openai_documents()), ascii_only=False, spaced=False)
        return whole[: draw(st.integers(1, max(1, len(whole) - 1)))]
    if kind == "not_object":
        return draw(
            st.sampled_from(
                [
                    b"[]",
                    b"1",
                    b'"qwen2-1-5b"',
                    b"null",
                    b"true",
                    b'[{"model": "qwen2-1-5b"}]',
                    b"-0",
                    b"1e400",
                ]
            )
        )
    if kind == "deep":
        depth = draw(st.integers(10, 200_000))
        opener, closer = draw(st.sampled_from([(b"[", b"]"), (b'{"a":', b"}")]))
        inner = opener * depth + b"1" + closer * depth
        if draw(st.booleans()):
            return b'{"model": "qwen2-1-5b", "x": ' + inner + b"}"
        return inner[: draw(st.integers(1, len(inner)))] if draw(st.booleans()) else inner
    if kind == "huge_number":
        number = draw(
            st.one_of(
                _repeated(st.sampled_from(["9", "1"]), 20, 20_000),
                st.sampled_from(
                    [
                        "1e999",
                        "-1e999",
                        "1.5e308",
                        "-0.0",
                        "0.0000000000000000001e-400",
                        "18446744073709551616",
                        "-9223372036854775809",
                    ]
                ),
            )
        )
        key = draw(st.sampled_from(["x_fuzz", "model", "max_tokens", "temperature"]))
        if key == "model":
            return f'{{"model": {number}}}'.encode()
        return f'{{"model": "{QWEN}", "max_tokens": 2, "{key}": {number}}}'.encode()
    if kind == "control_in_string":
        control = draw(st.sampled_from([b"\x00", b"\x01", b"\n", b"\r", b"\x1f"]))
        return b'{"model": "qwen' + control + b'2-1-5b", "prompt": "hi"}'
    if kind == "bom":
        return b"\xef\xbb\xbf" + _dumps(
            {"model": QWEN, "prompt": "hi"}, ascii_only=True, spaced=False
        )
    if kind == "duplicate_model":
        first, second = draw(
            st.sampled_from([(QWEN, GEMMA), (QWEN, "unknown-model"), ("unknown-model", QWEN)])
        )
        return f'{{"model": "{first}", "prompt": "hi", "model": "{second}"}}'.encode()
    if kind == "lone_surrogate":
        return b'{"model": "qwen2-1-5b\\ud800", "prompt": "hi"}'
    if kind == "not_json":
        return draw(
            st.sampled_from(
                [
                    b"{",
                    b"}",
                    b"nul",
                    b"{'model': 'qwen2-1-5b'}",
                    b'{"model": "qwen2-1-5b"} trailing',
                    b"\xff\xfe{}",
                    b'{"model": "qwen2-1-5b",}',
                    b"NaN",
                    b'{"model": NaN}',
                    b"<xml/>",
                ]
            )
        )
    return draw(st.binary(max_size=200))


@st.composite
def body_chunks(draw: st.DrawFn, body: bytes) -> list[bytes]:
    """``body`` cut at random points, now and then with empty chunks among the pieces."""
    if not body:
        return [b""] * draw(st.integers(1, 2))
    cuts = sorted(set(draw(st.lists(st.integers(0, len(body)), max_size=5))))
    pieces: list[bytes] = []
    start = 0
    for cut in [*cuts, len(body)]:
        pieces.append(body[start:cut])
        start = cut
    return pieces


# -- what a body should get -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BodyVerdict:
    """``kind``: empty, blank, invalid (400), not_object (400), no_model (400),
    bad_model (400: not a string), model (a string ``model``), or edge (JSON where
    parsers may differ: huge integers, deep nesting, duplicate keys, lone surrogates;
    any clean answer will do)."""

    kind: str
    model: str | None = None


class _Duplicate(Exception):
    pass


class _EdgeNumber(Exception):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [key for key, _ in pairs]
    if len(set(keys)) != len(keys):
        raise _Duplicate
    return dict(pairs)


def _edge_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _edge_int(text: str) -> int:
    value = int(text)
    if not MIN_INT <= value <= 2**64 - 1:
        raise _EdgeNumber
    return value


def _edge_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise _EdgeNumber
    return value


_NESTING = re.compile(rb"[\[{]")


def judge_body(body: bytes) -> BodyVerdict:
    if not body:
        return BodyVerdict("empty")
    if not body.strip(b" \t\r\n"):
        return BodyVerdict("blank")
    if body.startswith(b"\xef\xbb\xbf"):
        return BodyVerdict("edge")  # RFC 8259 lets parsers ignore or refuse a BOM
    if len(_NESTING.findall(body)) > 400:
        return BodyVerdict("edge")  # parsers cap depth differently
    try:
        text = body.decode()
    except UnicodeDecodeError:
        return BodyVerdict("invalid")
    try:
        document = json.loads(
            text,
            parse_constant=_edge_constant,
            object_pairs_hook=_no_duplicates,
            parse_int=_edge_int,
            parse_float=_edge_float,
        )
    except (_Duplicate, _EdgeNumber, RecursionError):
        return BodyVerdict("edge")
    except ValueError:
        return BodyVerdict("invalid")
    if not isinstance(document, dict):
        return BodyVerdict("not_object")
    if _has_lone_surrogate(document):
        return BodyVerdict("edge")
    model = document.get("model")
    if model is None or model == "":
        return BodyVerdict("no_model")
    if not isinstance(model, str):
        return BodyVerdict("bad_model")
    return BodyVerdict("model", model)


def _has_lone_surrogate(value: Any) -> bool:
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            try:
                item.encode()
            except UnicodeEncodeError:
                return True
        elif isinstance(item, dict):
            pending.extend(item.keys())
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
    return False


_PLAIN_NAME = re.compile(r"[\x21-\x7e]{1,256}")


def is_plain_model_name(name: str) -> bool:
    """A name any gateway must take as given: printable ASCII, no spaces, <= 256 bytes."""
    return _PLAIN_NAME.fullmatch(name) is not None


@dataclass(frozen=True, slots=True)
class Expectation:
    """What a request should get: routed to one of ``destinations`` or answered with one
    of ``statuses``; ``code`` the error.code an answer must carry, if it is settled."""

    destinations: frozenset[str] = frozenset()
    statuses: frozenset[int] = frozenset()
    code: str | None = None

    @property
    def routes(self) -> bool:
        return bool(self.destinations)


def expect_for_model(
    requested: str, target: str, pool: Pool, subset: frozenset[str] | None
) -> Expectation:
    """A body naming ``requested``, sent to ``target`` (a rewrite header may change it)."""
    serving = pool.serving(target)
    if subset is not None:
        serving &= subset
    odd = not (is_plain_model_name(requested) and is_plain_model_name(target))
    # An odd name may be refused as such (400) before any lookup.
    refusal = frozenset({400}) if odd else frozenset()
    if serving:
        return Expectation(destinations=serving, statuses=refusal)
    if target in pool.models:
        return Expectation(statuses=frozenset({503}) | refusal)  # known, none ready
    return Expectation(statuses=frozenset({404}) | refusal)


def expect_for_body(
    body: bytes, pool: Pool, *, rewrite: str | None, subset: frozenset[str] | None
) -> Expectation | None:
    """What a body should get, or None where the body does not settle it."""
    verdict = judge_body(body)
    if verdict.kind == "empty":
        return Expectation(statuses=frozenset({400}), code="missing_body")
    if verdict.kind in ("blank", "invalid", "not_object", "no_model", "bad_model"):
        return Expectation(statuses=frozenset({400}))
    if verdict.kind == "edge" or verdict.model is None:
        return None
    return expect_for_model(verdict.model, rewrite or verdict.model, pool, subset)

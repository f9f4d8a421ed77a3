"""``"model": "auto"``: choosing the model for a request that leaves the choice to epp.

A request whose ``model`` is the selector name (``auto`` by default) gets a model chosen
here; every other request keeps the model it names. In order:

1. the operator's own function (``module:function``), when configured: it gets a
   :class:`SelectionRequest` and returns a model name, or None to leave the choice to
   the rules. It runs on epp's event loop, in the middle of routing: it must be fast
   and must not block (no I/O). An exception, an answer that is no model name, or a
   call that takes longer than its budget is counted
   (``epp_model_selection_function_failures_total``) and the rules decide instead; after
   a slow call the function is left out for :data:`SLOW_FUNCTION_PAUSE_S`, so a
   function that became slow costs one request in that time, not every one. (A call
   that never returns cannot be interrupted: it stops epp.)
2. the rules, in order: the first whose every condition holds names the model;
3. the default model.

A rule's conditions read the request (:mod:`epp.api.request_features`): keywords
(any of them, as whole words, any case) or a regular expression searched in the last
user message's first ``max_text_chars`` characters; the prompt's estimated length in
tokens; whether it offers tools or carries images; a request header.
"""

from __future__ import annotations

import importlib
import logging
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from epp.api.openai import model_name_problem
from epp.api.request_features import (
    estimated_prompt_tokens,
    has_images,
    has_tools,
    last_user_text,
)
from epp.observability import metrics
from epp.requestcontrol.regex_budget import check_pattern

__all__ = [
    "DEFAULT_RULE",
    "FUNCTION_RULE",
    "SLOW_FUNCTION_PAUSE_S",
    "ModelSelector",
    "Selection",
    "SelectionFunction",
    "SelectionRequest",
    "SelectionRule",
    "load_function",
    "parse_rules",
]

log = logging.getLogger(__name__)

# The rule names a choice is counted under when no configured rule made it.
DEFAULT_RULE = "default"
FUNCTION_RULE = "function"
SLOW_FUNCTION_PAUSE_S = 10.0
_RULE_KEYS = frozenset(
    {
        "name",
        "model",
        "keywords",
        "regex",
        "minPromptTokens",
        "maxPromptTokens",
        "hasTools",
        "hasImages",
        "header",
    }
)
_MAX_RULE_NAME_CHARS = 64  # it becomes a metric label


@dataclass(frozen=True, slots=True)
class SelectionRequest:
    """What a selection function (and each rule) is given about a request.

    ``body`` is the parsed JSON body (changing it changes nothing: epp rewrites the body
    from the original bytes); ``headers`` the request headers, lower-case names;
    ``text`` the last user message's first ``max_text_chars`` characters;
    ``prompt_tokens`` the prompt's length estimated at four characters a token.
    """

    body: Mapping[str, Any]
    headers: Mapping[str, str]
    text: str
    prompt_tokens: int
    has_tools: bool
    has_images: bool


SelectionFunction = Callable[[SelectionRequest], "str | None"]


@dataclass(frozen=True, slots=True)
class SelectionRule:
    """One rule: every condition given must hold; the first rule that matches wins."""

    name: str
    model: str
    keywords: tuple[str, ...] = ()
    regex: str | None = None
    min_prompt_tokens: int | None = None
    max_prompt_tokens: int | None = None
    has_tools: bool | None = None
    has_images: bool | None = None
    header: tuple[str, str | None] | None = None  # (lower-case name, value or None: any)
    _text_pattern: re.Pattern[str] | None = field(default=None, init=False, repr=False)
    _regex_pattern: re.Pattern[str] | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.keywords:
            # Whole words in any case: "code" must not fire on "decode". Lookarounds
            # rather than \b, so keywords that end in a symbol ("c++") work too.
            alternatives = "|".join(re.escape(k) for k in self.keywords)
            pattern = re.compile(rf"(?<!\w)(?:{alternatives})(?!\w)", re.IGNORECASE)
            object.__setattr__(self, "_text_pattern", pattern)
        if self.regex is not None:
            object.__setattr__(self, "_regex_pattern", re.compile(self.regex))

    def matches(self, request: SelectionRequest) -> bool:
        if self.min_prompt_tokens is not None and request.prompt_tokens < self.min_prompt_tokens:
            return False
        if self.max_prompt_tokens is not None and request.prompt_tokens > self.max_prompt_tokens:
            return False
        if self.has_tools is not None and request.has_tools != self.has_tools:
            return False
        if self.has_images is not None and request.has_images != self.has_images:
            return False
        if self.header is not None:
            value = request.headers.get(self.header[0])
            if value is None or (self.header[1] is not None and value != self.header[1]):
                return False
        if self._text_pattern is not None and self._text_pattern.search(request.text) is None:
            return False
        return self._regex_pattern is None or self._regex_pattern.search(request.text) is not None


@dataclass(frozen=True, slots=True)
class Selection:
    model: str
    rule: str  # the configured rule's name, FUNCTION_RULE or DEFAULT_RULE


class ModelSelector:
    """Chooses the model of requests that name ``selector_name`` (see the module)."""

    def __init__(
        self,
        *,
        default_model: str,
        rules: Iterable[SelectionRule] = (),
        selector_name: str = "auto",
        function: SelectionFunction | None = None,
        function_budget_s: float = 0.005,
        max_text_chars: int = 1024,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.selector_name = selector_name
        self.default_model = default_model
        self.rules = tuple(rules)
        check_rules(self.rules, max_text_chars)
        self._function = function
        self._budget_s = function_budget_s
        self._max_text_chars = max_text_chars
        self._clock = clock
        self._paused_until = 0.0
        self._logged: set[str] = set()

    def handles(self, model: str) -> bool:
        return model == self.selector_name

    def select(self, body: Mapping[str, Any], headers: Mapping[str, str]) -> Selection:
        """The model for a request whose body is ``body`` (a JSON object)."""
        request = SelectionRequest(
            body=body,
            headers=headers,
            text=last_user_text(body, self._max_text_chars),
            prompt_tokens=estimated_prompt_tokens(body),
            has_tools=has_tools(body),
            has_images=has_images(body),
        )
        if self._function is not None:
            model = self._call_function(request)
            if model is not None:
                return Selection(model, FUNCTION_RULE)
        for rule in self.rules:
            if rule.matches(request):
                return Selection(rule.model, rule.name)
        return Selection(self.default_model, DEFAULT_RULE)

    def _call_function(self, request: SelectionRequest) -> str | None:
        assert self._function is not None
        started = self._clock()
        if started < self._paused_until:
            metrics.MODEL_SELECTION_FUNCTION_FAILURES.labels("paused").inc()
            return None
        try:
            answer = self._function(request)
        except Exception as exc:
            self._failed("error", "raised %s: %s", type(exc).__name__, exc, exc_info=True)
            return None
        elapsed = self._clock() - started
        if elapsed > self._budget_s:
            self._paused_until = started + elapsed + SLOW_FUNCTION_PAUSE_S
            self._failed(
                "slow",
                "took %.1f ms (budget %.1f ms): its answer is dropped and it is left out "
                "for %.0f s",
                elapsed * 1000,
                self._budget_s * 1000,
                SLOW_FUNCTION_PAUSE_S,
            )
            return None
        if answer is None:
            return None
        if (
            not isinstance(answer, str)
            or not answer
            or answer == self.selector_name
            or model_name_problem(answer) is not None
        ):
            self._failed("invalid", "returned %.80r, not a model name", answer)
            return None
        return answer

    def _failed(self, reason: str, message: str, *args: object, exc_info: bool = False) -> None:
        """Count a failed call; log the first of each kind (the count tells the rest)."""
        metrics.MODEL_SELECTION_FUNCTION_FAILURES.labels(reason).inc()
        if reason in self._logged:
            return
        self._logged.add(reason)
        log.warning(
            "the model-selection function " + message + "; the rules decide (further "
            "failures of this kind are only counted: epp_model_selection_function_failures_total)",
            *args,
            exc_info=exc_info,
        )


def check_rules(rules: Iterable[SelectionRule], max_text_chars: int) -> None:
    """Raise ``ValueError`` naming the first rule whose regex the text bound cannot
    keep fast (:mod:`epp.requestcontrol.regex_budget`)."""
    for rule in rules:
        if rule.regex is not None:
            try:
                check_pattern(rule.regex, max_text_chars)
            except ValueError as exc:
                raise ValueError(f"rule {rule.name!r}: regex {rule.regex!r}: {exc}") from None


def parse_rules(documents: Any) -> tuple[SelectionRule, ...]:
    """Rules from their config form: a list of mappings (``name``, ``model``, and the
    conditions ``keywords``, ``regex``, ``minPromptTokens``, ``maxPromptTokens``,
    ``hasTools``, ``hasImages``, ``header: {name, value}``). Raises ``ValueError``."""
    if not isinstance(documents, list):
        raise ValueError("rules must be a list of {name, model, <conditions>}")
    rules: list[SelectionRule] = []
    names: set[str] = set()
    for index, document in enumerate(documents):
        where = f"rule {index}"
        if not isinstance(document, Mapping):
            raise ValueError(f"{where} must be a mapping")
        unknown = sorted(set(document) - _RULE_KEYS)
        if unknown:
            raise ValueError(
                f"{where}: unknown key {unknown[0]!r} (known: {', '.join(sorted(_RULE_KEYS))})"
            )
        rule = _parse_rule(document, where)
        if rule.name in names:
            raise ValueError(f"{where}: the name {rule.name!r} is taken by an earlier rule")
        names.add(rule.name)
        rules.append(rule)
    return tuple(rules)


def _parse_rule(document: Mapping[str, Any], where: str) -> SelectionRule:
    name = document.get("name")
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", name):
        raise ValueError(
            f"{where}: name must be 1-{_MAX_RULE_NAME_CHARS} letters, digits, '.', '_' or '-'"
        )
    where = f"rule {name!r}"
    if name in (DEFAULT_RULE, FUNCTION_RULE):
        raise ValueError(f"{where}: {name!r} is reserved (choices that no rule made)")
    model = document.get("model")
    if not isinstance(model, str) or not model or model_name_problem(model) is not None:
        raise ValueError(f"{where}: model must be a model name")
    keywords = document.get("keywords") or ()
    if isinstance(keywords, str) or not all(isinstance(k, str) and k.strip() for k in keywords):
        raise ValueError(f"{where}: keywords must be a list of words or phrases")
    regex = document.get("regex")
    if regex is not None:
        if not isinstance(regex, str) or not regex:
            raise ValueError(f"{where}: regex must be a regular expression")
        try:
            re.compile(regex)
        except re.error as exc:
            raise ValueError(f"{where}: regex {regex!r} does not compile: {exc}") from None
    header = document.get("header")
    header_match: tuple[str, str | None] | None = None
    if header is not None:
        if not isinstance(header, Mapping) or not isinstance(header.get("name"), str):
            raise ValueError(f"{where}: header must be {{name: NAME, value: VALUE}}")
        if set(header) - {"name", "value"}:
            raise ValueError(f"{where}: header takes only name and value")
        value = header.get("value")
        if value is not None and not isinstance(value, str):
            raise ValueError(f"{where}: header value must be a string")
        header_match = (header["name"].lower(), value)
    rule = SelectionRule(
        name=name,
        model=model,
        keywords=tuple(k.strip() for k in keywords),
        regex=regex,
        min_prompt_tokens=_count(document, "minPromptTokens", where),
        max_prompt_tokens=_count(document, "maxPromptTokens", where),
        has_tools=_flag(document, "hasTools", where),
        has_images=_flag(document, "hasImages", where),
        header=header_match,
    )
    if not (
        keywords
        or regex is not None
        or header is not None
        or any(
            value is not None
            for value in (
                rule.min_prompt_tokens,
                rule.max_prompt_tokens,
                rule.has_tools,
                rule.has_images,
            )
        )
    ):
        raise ValueError(f"{where} has no condition (the default model is for that)")
    return rule


def _count(document: Mapping[str, Any], key: str, where: str) -> int | None:
    value = document.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{where}: {key} must be a whole number of tokens")
    return value


def _flag(document: Mapping[str, Any], key: str, where: str) -> bool | None:
    value = document.get(key)
    if value is not None and not isinstance(value, bool):
        raise ValueError(f"{where}: {key} must be true or false")
    return value


def load_function(spec: str) -> SelectionFunction:
    """Import ``module:function``. Raises ``ValueError`` saying what went wrong."""
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise ValueError(f"{spec!r} is not module:function (e.g. mypackage.routing:choose)")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise ValueError(f"cannot import {module_name!r}: {type(exc).__name__}: {exc}") from exc
    target: Any = module
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise ValueError(f"{module_name!r} has no {attribute!r}")
        target = getattr(target, part)
    if not callable(target):
        raise ValueError(f"{spec!r} is not callable")
    function: SelectionFunction = target
    return function

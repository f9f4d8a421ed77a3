"""Model selection for ``"model": "auto"``: the rules, the operator's function, and what
they read from a request."""

from __future__ import annotations

from typing import Any

import pytest

from epp.api.request_features import (
    estimated_prompt_tokens,
    has_images,
    has_tools,
    last_user_text,
)
from epp.observability import metrics
from epp.requestcontrol.model_selection import (
    SLOW_FUNCTION_PAUSE_S,
    ModelSelector,
    SelectionRequest,
    load_function,
    parse_rules,
)

RULES = parse_rules(
    [
        {"name": "coding", "model": "coder", "keywords": ["python", "c++", "stack trace"]},
        {"name": "sql", "model": "coder", "regex": r"(?i)\bselect\s.{0,64}\bfrom\b"},
        {"name": "vision", "model": "vl", "hasImages": True},
        {"name": "agent", "model": "big", "hasTools": True},
        {"name": "premium", "model": "big", "header": {"name": "X-Tier", "value": "gold"}},
        {"name": "long", "model": "big", "minPromptTokens": 1000},
        {"name": "short", "model": "small", "maxPromptTokens": 50},
    ]
)


def chat(*messages: tuple[str, Any], **extra: Any) -> dict[str, Any]:
    return {"model": "auto", "messages": [{"role": r, "content": c} for r, c in messages], **extra}


def user(content: Any, **extra: Any) -> dict[str, Any]:
    return chat(("user", content), **extra)


def selector(**options: Any) -> ModelSelector:
    return ModelSelector(default_model="medium", rules=RULES, **options)


@pytest.mark.parametrize(
    ("body", "headers", "expected"),
    [
        (user("Why does my Python loop never end?"), {}, ("coder", "coding")),
        (user("PYTHON question"), {}, ("coder", "coding")),
        (user("is C++ faster?"), {}, ("coder", "coding")),
        (user("here is the stack trace: ..."), {}, ("coder", "coding")),
        (user("please decode this pythonic word"), {}, ("small", "short")),  # whole words
        (user("SELECT name FROM users; why slow?"), {}, ("coder", "sql")),
        (
            user([{"type": "text", "text": "what is this"}, {"type": "image_url"}]),
            {},
            ("vl", "vision"),
        ),
        (user("book a flight", tools=[{"type": "function"}]), {}, ("big", "agent")),
        (user("book a flight", tools=[]), {}, ("small", "short")),
        (user("hi"), {"x-tier": "gold"}, ("big", "premium")),
        (user("hi"), {"x-tier": "silver"}, ("small", "short")),
        (user("word " * 1000), {}, ("big", "long")),
        (user("tell me about the history of the Roman empire " * 10), {}, ("medium", "default")),
        # The first rule that matches wins: images and keywords, keywords first.
        (
            user([{"type": "text", "text": "python"}, {"type": "input_image"}]),
            {},
            ("coder", "coding"),
        ),
    ],
    ids=[
        "keyword",
        "keyword-any-case",
        "keyword-with-symbols",
        "phrase",
        "no-partial-words",
        "regex",
        "image",
        "tools",
        "empty-tools",
        "header",
        "header-other-value",
        "long-prompt",
        "default",
        "first-rule-wins",
    ],
)
def test_the_first_matching_rule_names_the_model(
    body: dict[str, Any], headers: dict[str, str], expected: tuple[str, str]
) -> None:
    selection = selector().select(body, headers)
    assert (selection.model, selection.rule) == expected


def test_every_condition_of_a_rule_must_hold() -> None:
    (rule,) = parse_rules(
        [
            {
                "name": "long-code",
                "model": "big-coder",
                "keywords": ["python"],
                "minPromptTokens": 100,
            }
        ]
    )
    picker = ModelSelector(default_model="small", rules=[rule])
    assert picker.select(user("python"), {}).model == "small"
    assert picker.select(user("python " + "x" * 400), {}).model == "big-coder"
    assert picker.select(user("y" * 400), {}).model == "small"


def test_keywords_are_only_looked_for_in_the_first_characters_of_the_last_user_message() -> None:
    picker = selector(max_text_chars=100)
    assert picker.select(user("python " + "x" * 200), {}).rule == "coding"
    assert picker.select(user("x" * 200 + " python"), {}).rule != "coding"
    # Only the last user message counts, not the system prompt or earlier turns.
    earlier = chat(("system", "You are a python expert"), ("user", "python?"), ("user", "hi"))
    assert picker.select(earlier, {}).rule == "short"


def test_only_the_selector_name_is_handled() -> None:
    picker = selector(selector_name="router")
    assert picker.handles("router")
    assert not picker.handles("auto")
    assert not picker.handles("coder")


# -- the operator's function -------------------------------------------------------------


def failure_counts() -> dict[str, float]:
    return {
        r: metrics.MODEL_SELECTION_FUNCTION_FAILURES.labels(r)._value.get()
        for r in ("error", "invalid", "slow", "paused")
    }


def added_since(before: dict[str, float]) -> dict[str, float]:
    return {r: n - before[r] for r, n in failure_counts().items() if n != before[r]}


def test_the_function_chooses_first_and_none_leaves_it_to_the_rules() -> None:
    seen: list[SelectionRequest] = []

    def choose(request: SelectionRequest) -> str | None:
        seen.append(request)
        return "fn-model" if request.headers.get("x-team") == "research" else None

    picker = selector(function=choose)
    chosen = picker.select(user("python?"), {"x-team": "research"})
    assert (chosen.model, chosen.rule) == ("fn-model", "function")
    assert picker.select(user("python?"), {}).rule == "coding"
    request = seen[0]
    assert request.text == "python?"
    assert request.prompt_tokens == 2
    assert request.body["messages"][0]["content"] == "python?"
    assert (request.has_tools, request.has_images) == (False, False)


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        (ValueError("boom"), "error"),
        (42, "invalid"),
        ("", "invalid"),
        ("a\nb", "invalid"),
        ("auto", "invalid"),
    ],
    ids=["raises", "not-a-string", "empty", "control-character", "the-selector-itself"],
)
def test_a_failing_function_is_counted_and_the_rules_decide(answer: object, reason: str) -> None:
    def choose(_: SelectionRequest) -> object:
        if isinstance(answer, Exception):
            raise answer
        return answer

    picker = selector(function=choose)
    before = failure_counts()
    for _ in range(2):
        assert picker.select(user("python?"), {}).rule == "coding"
    assert added_since(before) == {reason: 2}


def test_a_slow_function_is_dropped_then_left_out_for_a_while() -> None:
    now = [100.0]
    calls: list[float] = []

    def clock() -> float:
        return now[0]

    def slow(_: SelectionRequest) -> str:
        calls.append(now[0])
        now[0] += 0.050  # the call takes 50 ms by the selector's clock
        return "fn-model"

    picker = selector(function=slow, function_budget_s=0.010, clock=clock)
    before = failure_counts()
    assert picker.select(user("hi"), {}).rule == "short"  # its answer is dropped
    assert picker.select(user("hi"), {}).rule == "short"  # not even called
    assert len(calls) == 1
    assert added_since(before) == {"slow": 1, "paused": 1}
    now[0] += SLOW_FUNCTION_PAUSE_S
    picker.select(user("hi"), {})
    assert len(calls) == 2  # tried again after the pause


def test_a_fast_function_is_within_budget() -> None:
    now = [0.0]
    picker = selector(function=lambda _: "fn-model", function_budget_s=0.010, clock=lambda: now[0])
    before = failure_counts()
    assert picker.select(user("hi"), {}).model == "fn-model"
    assert added_since(before) == {}


def test_load_function_imports_module_function() -> None:
    function: object = load_function("tests.unit.requestcontrol.test_model_selection:user")
    assert function is user


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("no_colon", "is not module:function"),
        ("no.such.module_xyz:f", "cannot import 'no.such.module_xyz'"),
        ("tests.unit.requestcontrol.test_model_selection:nope", "has no 'nope'"),
        ("tests.unit.requestcontrol.test_model_selection:RULES", "is not callable"),
    ],
)
def test_load_function_says_what_is_wrong(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_function(spec)


# -- rules from their config form -------------------------------------------------------


@pytest.mark.parametrize(
    ("rules", "message"),
    [
        ("coding", "must be a list"),
        ([{"name": "a", "model": "m", "keyword": ["x"]}], "unknown key 'keyword'"),
        ([{"name": "a", "model": "m"}], "has no condition"),
        ([{"name": "default", "model": "m", "hasTools": True}], "reserved"),
        ([{"name": "bad name!", "model": "m", "hasTools": True}], "name must be"),
        ([{"name": "a", "model": "m\n", "hasTools": True}], "model must be a model name"),
        (
            [
                {"name": "a", "model": "m", "hasTools": True},
                {"name": "a", "model": "n", "hasImages": True},
            ],
            "taken by an earlier rule",
        ),
        ([{"name": "a", "model": "m", "keywords": "python"}], "keywords must be a list"),
        ([{"name": "a", "model": "m", "regex": "(unclosed"}], "does not compile"),
        ([{"name": "a", "model": "m", "minPromptTokens": -1}], "whole number"),
        ([{"name": "a", "model": "m", "hasTools": "yes"}], "true or false"),
        (
            [{"name": "a", "model": "m", "header": {"name": "x", "values": ["a"]}}],
            "only name and value",
        ),
    ],
)
def test_invalid_rules_are_refused(rules: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_rules(rules)


def test_a_regex_that_could_backtrack_too_long_is_refused_with_its_rule() -> None:
    rules = parse_rules([{"name": "greedy", "model": "m", "regex": r"\w+\s+x"}])
    with pytest.raises(ValueError, match=r"rule 'greedy'.*backtrack"):
        ModelSelector(default_model="d", rules=rules, max_text_chars=1024)
    # A shorter text bound admits it.
    ModelSelector(default_model="d", rules=rules, max_text_chars=100)


# -- what the rules read ------------------------------------------------------------------


def test_last_user_text_of_each_api() -> None:
    assert last_user_text(chat(("user", "a"), ("assistant", "b"), ("user", "c")), 10) == "c"
    parts = [
        {"type": "text", "text": "one"},
        {"type": "image_url"},
        {"type": "text", "text": "two"},
    ]
    assert last_user_text(user(parts), 100) == "one\ntwo"
    assert last_user_text({"input": "plain"}, 100) == "plain"
    responses = {"input": [{"role": "user", "content": [{"type": "input_text", "text": "q"}]}]}
    assert last_user_text(responses, 100) == "q"
    assert last_user_text({"prompt": ["first", "last"]}, 100) == "last"
    assert last_user_text({"prompt": [1, 2, 3]}, 100) == ""
    assert last_user_text(chat(("system", "s")), 100) == ""
    assert last_user_text(user("x" * 50), 8) == "x" * 8
    assert len(last_user_text(user([{"type": "text", "text": "y" * 50}] * 3), 20)) == 20


def test_prompt_tokens_are_characters_over_four() -> None:
    assert estimated_prompt_tokens(chat(("system", "s" * 40), ("user", "u" * 41))) == 21
    assert estimated_prompt_tokens({"prompt": "p" * 8}) == 2
    assert estimated_prompt_tokens({"input": "i" * 3, "instructions": "n"}) == 1
    assert estimated_prompt_tokens({}) == 0


def test_tools_and_images() -> None:
    assert has_tools({"tools": [{"type": "function"}]})
    assert has_tools({"functions": [{"name": "f"}]})
    assert not has_tools({"tools": []})
    assert not has_tools({"tools": "x"})
    assert has_images({"input": [{"role": "user", "content": [{"type": "input_image"}]}]})
    assert not has_images(user("an image_url in words"))

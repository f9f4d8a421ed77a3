"""Config of model selection ("model": "auto"): the file section, flags, env, and errors."""

from __future__ import annotations

import argparse

import pytest

from epp.config import (
    Config,
    ConfigError,
    add_serve_arguments,
    build_model_selector,
    load_config,
)
from epp.requestcontrol.model_selection import SelectionRequest

FILE = """
modelSelection:
  selector: router
  defaultModel: small
  function: tests.unit.test_config_model_selection:by_team
  functionBudget: 2ms
  maxTextChars: 512
  rules:
    - {name: coding, model: coder, keywords: [python, bug]}
    - {name: long, model: big, minPromptTokens: 2000}
"""


def by_team(request: SelectionRequest) -> str | None:
    """A selection function for these tests: research gets its own model."""
    return "research-model" if request.headers.get("x-team") == "research" else None


def parse(argv: list[str], env: dict[str, str] | None = None) -> Config:
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    return load_config(parser.parse_args(argv), environ=env or {})


def test_off_by_default() -> None:
    config = parse([])
    assert not config.model_selection.enabled
    assert build_model_selector(config) is None


def test_the_file_section() -> None:
    config = parse(["--config-text", FILE])
    selection = config.model_selection
    assert (selection.selector_name, selection.default_model) == ("router", "small")
    assert [(r.name, r.model) for r in selection.rules] == [("coding", "coder"), ("long", "big")]
    assert selection.rules[0].keywords == ("python", "bug")
    assert (selection.function_budget_s, selection.max_text_chars) == (0.002, 512)
    selector = build_model_selector(config)
    assert selector is not None and selector.handles("router")
    body = {"messages": [{"role": "user", "content": "a python bug"}]}
    assert selector.select(body, {"x-team": "research"}).model == "research-model"
    assert selector.select(body, {}).model == "coder"


def test_flags_give_rules_as_yaml_and_beat_the_environment() -> None:
    rules = "[{name: vision, model: vl, hasImages: true}]"
    config = parse(
        ["--model-selection-default", "small", "--model-selection-rules", rules],
        env={
            "EPP_MODEL_SELECTION_DEFAULT": "ignored",
            "EPP_MODEL_SELECTION_SELECTOR": "pick-for-me",
        },
    )
    selection = config.model_selection
    assert selection.default_model == "small"
    assert selection.selector_name == "pick-for-me"
    assert [(r.name, r.model, r.has_images) for r in selection.rules] == [("vision", "vl", True)]


def test_flags_replace_the_files_rules() -> None:
    config = parse(
        [
            "--config-text",
            FILE,
            "--model-selection-rules",
            '[{"name": "t", "model": "x", "hasTools": true}]',
        ]
    )
    assert [r.name for r in config.model_selection.rules] == ["t"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--config-text", "modelSelection: {defaultModel: a, rule: []}"], "unknown key 'rule'"),
        (
            [
                "--config-text",
                "modelSelection: {defaultModel: a, rules: [{name: x, model: m, word: y}]}",
            ],
            "modelSelection.rules: rule 0: unknown key 'word'",
        ),
        (
            ["--model-selection-rules", "[{name: x, model: m, hasTools: true}]"],
            "needs a default model",
        ),
        (["--model-selection-function", "a:b"], "needs a default model"),
        (["--model-selection-default", "auto"], "'auto' is the selector name"),
        (
            [
                "--model-selection-default",
                "a",
                "--model-selection-rules",
                "[{name: x, model: auto, hasTools: true}]",
            ],
            "'auto' is the selector name",
        ),
        (["--model-selection-default", "bad\tname"], "control character"),
        (
            ["--model-selection-rules", "{not: [a list"],
            "flag --model-selection-rules: not a YAML list",
        ),
        (
            [
                "--model-selection-default",
                "a",
                "--model-selection-rules",
                r"[{name: g, model: m, regex: '.*a.*b'}]",
            ],
            "model selection: rule 'g': regex",
        ),
        (["--model-selection-max-text-chars", "0"], "at least 1"),
    ],
    ids=[
        "unknown-section-key",
        "unknown-rule-key",
        "rules-without-default",
        "function-without-default",
        "default-is-the-selector",
        "rule-names-the-selector",
        "bad-model-name",
        "rules-not-yaml",
        "regex-too-costly",
        "no-text",
    ],
)
def test_mistakes_are_configuration_errors(argv: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse(argv)


def test_a_function_that_cannot_be_imported_fails_at_start() -> None:
    config = parse(
        ["--model-selection-default", "a", "--model-selection-function", "nowhere_xyz:f"]
    )
    with pytest.raises(ConfigError, match="model selection function: cannot import 'nowhere_xyz'"):
        build_model_selector(config)

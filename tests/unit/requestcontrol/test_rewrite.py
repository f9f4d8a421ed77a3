"""InferenceModelRewrite rules: precedence, weighted splits and the header override."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from epp.errors import BadRequest
from epp.requestcontrol.rewrite import (
    MODEL_REWRITE_HEADER,
    MODEL_REWRITE_HEADERS,
    ModelRewrites,
    rules_from_objects,
)


def rewrite(
    name: str, created: str, rules: list[dict[str, Any]], pool: str = "pool"
) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "creationTimestamp": created},
        "spec": {"poolRef": {"name": pool}, "rules": rules},
    }


def rule(targets: list[tuple[str, int | None]], *models: str) -> dict[str, Any]:
    document: dict[str, Any] = {
        "targets": [
            {"modelRewrite": target, **({"weight": weight} if weight is not None else {})}
            for target, weight in targets
        ]
    }
    if models:
        document["matches"] = [{"model": {"type": "Exact", "value": m}} for m in models]
    return document


def test_weighted_split_follows_the_weights() -> None:
    rules = rules_from_objects(
        [
            rewrite(
                "canary", "2026-01-01T00:00:00Z", [rule([("food-v1", 90), ("food-v2", 10)], "food")]
            )
        ],
        "pool",
    )
    rewrites = ModelRewrites(rules, seed=7)
    drawn = Counter(rewrites.target("food", {}) for _ in range(10_000))
    assert set(drawn) == {"food-v1", "food-v2"}
    assert 0.87 < drawn["food-v1"] / 10_000 < 0.93
    assert rewrites.target("other", {}) == "other"  # no rule: unchanged


def test_exact_match_beats_catch_all_and_oldest_resource_wins() -> None:
    objects = [
        rewrite("newer", "2026-02-01T00:00:00Z", [rule([("from-newer", None)], "m")]),
        rewrite("catch-all", "2025-01-01T00:00:00Z", [rule([("generic", None)])]),
        rewrite(
            "older",
            "2026-01-01T00:00:00Z",
            [rule([("from-older", None)], "m"), rule([("second-rule", None)], "m")],
        ),
        rewrite(
            "other-pool", "2020-01-01T00:00:00Z", [rule([("wrong", None)], "m")], pool="elsewhere"
        ),
    ]
    rewrites = ModelRewrites(rules_from_objects(objects, "pool"))
    assert rewrites.target("m", {}) == "from-older"
    assert rewrites.target("anything", {}) == "generic"


def test_header_overrides_every_rule_only_when_trusted() -> None:
    rules = rules_from_objects(
        [rewrite("r", "2026-01-01T00:00:00Z", [rule([("v2", None)], "m")])], "pool"
    )
    # By default the header is a client's wish, and the operator's rule wins.
    assert ModelRewrites(rules).target("m", {MODEL_REWRITE_HEADER: "pinned"}) == "v2"
    trusted = ModelRewrites(rules, honour_header=True)
    assert trusted.target("m", {MODEL_REWRITE_HEADER: "pinned"}) == "pinned"


def test_the_current_and_the_legacy_header_names_both_override() -> None:
    trusted = ModelRewrites(honour_header=True)
    assert MODEL_REWRITE_HEADERS == ("x-llm-d-model-name-rewrite", "x-gateway-model-name-rewrite")
    assert trusted.target("m", {"x-llm-d-model-name-rewrite": "new"}) == "new"
    assert trusted.target("m", {"x-gateway-model-name-rewrite": "old"}) == "old"
    both = {"x-gateway-model-name-rewrite": "old", "x-llm-d-model-name-rewrite": "new"}
    assert trusted.target("m", both) == "new"  # the reference reads the current name first


@pytest.mark.parametrize("value", ["a\r\nb", "nul\x00", "x" * 1025])
def test_a_trusted_header_must_still_be_a_model_name(value: str) -> None:
    rewrites = ModelRewrites(honour_header=True)
    with pytest.raises(BadRequest) as caught:
        rewrites.target("m", {MODEL_REWRITE_HEADER: value})
    assert caught.value.code == "invalid_model"


def test_a_rule_whose_target_is_no_model_name_is_skipped() -> None:
    objects = [
        rewrite("bad", "2026-01-01T00:00:00Z", [rule([("a\nb", None)], "m")]),
        rewrite("good", "2026-01-02T00:00:00Z", [rule([("ok", None)], "m")]),
    ]
    assert ModelRewrites(rules_from_objects(objects, "pool")).target("m", {}) == "ok"


@pytest.mark.parametrize(
    "bad_rule",
    [
        {"targets": []},
        {"targets": [{"modelRewrite": "a", "weight": 1}, {"modelRewrite": "b"}]},
        {"targets": [{"modelRewrite": "a", "weight": 0}]},
        {"matches": [{"model": {}}], "targets": [{"modelRewrite": "a"}]},
    ],
)
def test_a_malformed_rewrite_is_skipped_and_others_apply(bad_rule: dict[str, Any]) -> None:
    objects = [
        rewrite("bad", "2026-01-01T00:00:00Z", [bad_rule]),
        rewrite("good", "2026-02-01T00:00:00Z", [rule([("v2", None)], "m")]),
    ]
    assert ModelRewrites(rules_from_objects(objects, "pool")).target("m", {}) == "v2"

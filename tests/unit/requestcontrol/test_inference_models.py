"""InferenceModels: weighted targetModels through the rewrite machinery, criticality as
priority, precedence over the newer kinds, and invalid objects reported, not applied."""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

import pytest

from epp.errors import TooManyRequests
from epp.observability.metrics import REGISTRY
from epp.requestcontrol.inference_models import InferenceModels, policies_from_objects
from epp.requestcontrol.objectives import OBJECTIVE_HEADER, Objectives
from epp.requestcontrol.rewrite import ModelRewrites, rules_from_objects
from tests.unit.directors import POD_A, POD_B, director_over, fresh_store

NS = "ns"


def model(
    name: str,
    model_name: object,
    criticality: object = None,
    targets: Any = None,
    *,
    pool: str = "pool",
    created: str = "2026-01-01T00:00:00Z",
    pool_kind: str | None = None,
) -> dict[str, Any]:
    """An InferenceModel as the API server returns it; ``targets`` is {name: weight or
    None (unset)} or any value to put in ``targetModels`` as it is."""
    spec: dict[str, Any] = {"modelName": model_name, "poolRef": {"name": pool}}
    if pool_kind is not None:
        spec["poolRef"]["kind"] = pool_kind
    if criticality is not None:
        spec["criticality"] = criticality
    if isinstance(targets, dict):
        spec["targetModels"] = [
            {"name": t, **({"weight": w} if w is not None else {})} for t, w in targets.items()
        ]
    elif targets is not None:
        spec["targetModels"] = targets
    return {
        "metadata": {"name": name, "namespace": NS, "creationTimestamp": created},
        "spec": spec,
    }


def applied(*objects: dict[str, Any], seed: int = 3) -> tuple[ModelRewrites, Objectives]:
    rewrites, objectives = ModelRewrites(seed=seed), Objectives()
    InferenceModels("pool", rewrites=rewrites, objectives=objectives).apply(objects)
    return rewrites, objectives


def test_a_90_10_split_follows_the_weights() -> None:
    rewrites, _ = applied(
        model("travel", "travel-helper", "Standard", {"travel-v1": 90, "travel-v2": 10})
    )
    draws = Counter(rewrites.target("travel-helper", {}) for _ in range(20_000))
    assert set(draws) == {"travel-v1", "travel-v2"}
    # 5 sigma of a binomial(20,000, 0.9) is 212 draws.
    assert abs(draws["travel-v1"] - 18_000) < 212
    assert rewrites.target("qwen", {}) == "qwen"  # no InferenceModel: unchanged


def test_unset_weights_share_equally_and_weight_zero_is_never_drawn() -> None:
    rewrites, _ = applied(
        model("even", "even", None, {"a": None, "b": None}),
        model("held", "held", None, {"old": 0, "new": 5}),
    )
    even = Counter(rewrites.target("even", {}) for _ in range(4_000))
    assert abs(even["a"] - 2_000) < 5 * 32  # sigma of binomial(4,000, 0.5) is 31.6
    assert {rewrites.target("held", {}) for _ in range(500)} == {"new"}


def test_criticality_is_the_priority_of_requests_for_the_model() -> None:
    _, objectives = applied(
        model("a", "qwen", "Critical", {"qwen": 100}),
        model("b", "travel-helper", "Standard"),
        model("c", "batch", "Sheddable"),
        model("d", "plain", None),
    )
    priority = {m: objectives.priority({}, m) for m in ("qwen", "travel-helper", "batch", "plain")}
    assert priority == {"qwen": 1, "travel-helper": 0, "batch": -1, "plain": 0}
    assert objectives.priority({}, "no-such-model") == 0


def test_a_model_that_targets_only_itself_is_not_rewritten() -> None:
    policies = policies_from_objects([model("q", "qwen", "Critical", {"qwen": 100})], "pool")
    assert policies.rules == () and policies.priorities == {"qwen": 1}


def test_only_the_pools_own_inference_models_apply() -> None:
    rewrites, objectives = applied(
        model("mine", "m", "Sheddable", {"m-v2": 1}),
        model("theirs", "t", "Sheddable", {"t-v2": 1}, pool="other"),
        model("odd-kind", "k", "Sheddable", {"k-v2": 1}, pool_kind="Service"),
    )
    assert rewrites.target("m", {}) == "m-v2" and objectives.priority({}, "m") == -1
    assert rewrites.target("t", {}) == "t" and objectives.priority({}, "t") == 0
    assert rewrites.target("k", {}) == "k"


def test_precedence_between_the_three_kinds() -> None:
    """An InferenceModelRewrite's exact rule beats an InferenceModel, which beats the
    rewrite's catch-all; a named InferenceObjective beats the model's criticality."""
    rewrite_objects = [
        {
            "metadata": {"name": "exact", "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {
                "poolRef": {"name": "pool"},
                "rules": [
                    {
                        "matches": [{"model": {"type": "Exact", "value": "both"}}],
                        "targets": [{"modelRewrite": "from-rewrite"}],
                    }
                ],
            },
        },
        {
            "metadata": {"name": "all", "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {
                "poolRef": {"name": "pool"},
                "rules": [{"targets": [{"modelRewrite": "any"}]}],
            },
        },
    ]
    rewrites, objectives = ModelRewrites(), Objectives()
    rewrites.replace(rules_from_objects(rewrite_objects, "pool"))
    objectives.replace({"interactive": 5, "batch": -2})
    InferenceModels("pool", rewrites=rewrites, objectives=objectives).apply(
        [
            model("both", "both", "Sheddable", {"from-model": 1}),
            model("model-only", "model-only", "Sheddable", {"model-only-v2": 1}),
        ]
    )
    assert rewrites.target("both", {}) == "from-rewrite"
    assert rewrites.target("model-only", {}) == "model-only-v2"
    assert rewrites.target("neither", {}) == "any"

    assert objectives.priority({OBJECTIVE_HEADER: "interactive"}, "model-only") == 5
    assert objectives.priority({OBJECTIVE_HEADER: "batch"}, "neither") == -2
    # An objective that does not exist names nothing: the model's criticality holds.
    assert objectives.priority({OBJECTIVE_HEADER: "unknown"}, "model-only") == -1

    # Removing the rewrites uncovers the InferenceModel's rule.
    rewrites.replace([])
    assert rewrites.target("both", {}) == "from-model"
    assert rewrites.target("neither", {}) == "neither"


INVALID: list[tuple[str, dict[str, Any], str]] = [
    ("no-model-name", model("x", None, "Standard"), "it has no modelName"),
    ("empty-model-name", model("x", "", "Standard"), "it has no modelName"),
    ("model-name-control", model("x", "a\nb"), "contains a control character"),
    ("model-name-too-long", model("x", "m" * 257), "longer than 256 characters"),
    ("unknown-criticality", model("x", "m", "Urgent"), "criticality 'Urgent' is none of"),
    ("weight-not-int", model("x", "m", None, {"a": "90", "b": 10}), "weights must be set"),
    ("weight-negative", model("x", "m", None, {"a": -1, "b": 10}), "weights must be set"),
    ("weight-bool", model("x", "m", None, {"a": True, "b": 10}), "weights must be set"),
    ("weight-too-big", model("x", "m", None, {"a": 1_000_001}), "weights must be set"),
    ("weights-partly-set", model("x", "m", None, {"a": 1, "b": None}), "weights must be set"),
    ("all-weights-zero", model("x", "m", None, {"a": 0, "b": 0}), "no target can be drawn"),
    ("target-twice", model("x", "m", None, [{"name": "a"}, {"name": "a"}]), "named twice"),
    ("target-no-name", model("x", "m", None, [{"weight": 1}]), "has no name"),
    ("target-not-object", model("x", "m", None, ["a"]), "is not an object"),
    ("targets-not-list", model("x", "m", None, "a"), "is not a list"),
    ("eleven-targets", model("x", "m", None, {f"t{i}": 1 for i in range(11)}), "at most 10"),
]


@pytest.mark.parametrize(
    ("obj", "why"), [(o, w) for _, o, w in INVALID], ids=[i for i, *_ in INVALID]
)
def test_an_invalid_inference_model_is_ignored_and_others_apply(
    obj: dict[str, Any], why: str
) -> None:
    good = model("good", "g", "Sheddable", {"g-v2": 1})
    policies = policies_from_objects([obj, good], "pool")
    (reason, message), *others = policies.ignored.values()
    assert others == [] and reason == "invalid" and why in message
    assert list(policies.ignored) == ["ns/x"]
    assert policies.priorities == {"g": -1}
    assert [rule.targets for rule in policies.rules] == [("g-v2",)]


def test_the_oldest_inference_model_keeps_a_model_name() -> None:
    policies = policies_from_objects(
        [
            model("newer", "chat", "Sheddable", {"chat-new": 1}, created="2026-03-01T00:00:00Z"),
            model("older", "chat", "Critical", {"chat-old": 1}, created="2026-02-01T00:00:00Z"),
        ],
        "pool",
    )
    assert policies.priorities == {"chat": 1}
    assert [rule.targets for rule in policies.rules] == [("chat-old",)]
    assert policies.ignored == {
        "ns/newer": ("duplicate", "modelName 'chat' is already ns/older's (older)")
    }


def ignored(reason: str) -> float | None:
    return REGISTRY.get_sample_value("epp_inference_models_ignored", {"reason": reason})


def test_ignored_models_are_logged_once_and_counted(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="epp.requestcontrol.inference_models")
    rewrites, objectives = ModelRewrites(), Objectives()
    models = InferenceModels("pool", rewrites=rewrites, objectives=objectives)
    broken = model("broken", "b", "Urgent")
    twin = model("twin", "g", "Critical", created="2026-05-01T00:00:00Z")
    good = model("good", "g", "Sheddable", {"g-v2": 1})

    models.apply([broken, twin, good])
    models.apply([broken, twin, good])  # the informer calls again on every change
    assert [r.getMessage() for r in caplog.records] == [
        "InferenceModel ns/broken is ignored: criticality 'Urgent' is none of "
        "Critical, Standard, Sheddable",
        "InferenceModel ns/twin is ignored: modelName 'g' is already ns/good's (older)",
    ]
    assert (ignored("invalid"), ignored("duplicate")) == (1, 1)
    assert objectives.priority({}, "g") == -1

    caplog.clear()
    models.apply([model("broken", "b", "Critical"), good])  # fixed, and the twin deleted
    assert caplog.records == []
    assert (ignored("invalid"), ignored("duplicate")) == (0, 0)
    assert objectives.priority({}, "b") == 1

    models.apply([broken])  # broken again: said again
    assert len(caplog.records) == 1
    assert rewrites.target("g", {}) == "g" and objectives.priority({}, "g") == 0


def test_the_director_sheds_sheddable_models_first_and_rewrites_their_body() -> None:
    served = ("qwen", "travel-helper-v1")  # a base model and an adapter, on both pods
    store = fresh_store({POD_A: served, POD_B: served}, waiting_requests=10)  # saturated
    director = director_over(store)
    InferenceModels("pool", rewrites=director.rewrites, objectives=director.objectives).apply(
        [
            model("qwen", "qwen", "Critical"),
            model("travel", "travel-helper", "Standard", {"travel-helper-v1": 1}),
            model("batch", "qwen-batch", "Sheddable", {"qwen": 1}),
        ]
    )

    def route(name: str, headers: dict[str, str] | None = None) -> Any:
        body = f'{{"model": "{name}", "prompt": "hi"}}'.encode()
        return director.route_body(body, request_id="r", headers=headers or {})

    with pytest.raises(TooManyRequests) as shed:
        route("qwen-batch")
    assert shed.value.code == "pool_saturated"
    standard = route("travel-helper")
    assert (standard.model, standard.target_model, standard.priority) == (
        "travel-helper",
        "travel-helper-v1",
        0,
    )
    assert standard.rewritten  # the stream restores "travel-helper" in the response
    assert route("qwen").priority == 1
    director.objectives.replace({"urgent": 2})
    assert route("qwen-batch", {OBJECTIVE_HEADER: "urgent"}).target_model == "qwen"

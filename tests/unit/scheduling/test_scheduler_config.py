"""build_scheduler: the default configuration and reference validation."""

from __future__ import annotations

import math
import time

import pytest

from epp.datalayer.endpoint import Endpoint, Metrics
from epp.scheduling.errors import SchedulerConfigError
from epp.scheduling.scheduler import (
    PluginSpec,
    ProfilePluginRef,
    ProfileSpec,
    SchedulerConfig,
    build_scheduler,
    default_scheduler_config,
)
from epp.scheduling.scorers.lora_affinity import LoraAffinityScorer
from epp.scheduling.scorers.no_hit_lru import NoHitLruScorer
from epp.scheduling.scorers.prefix_cache import PrefixCacheScorer
from epp.scheduling.types import LLMRequest

PLUGINS = [
    PluginSpec("prefer-fresh-filter"),
    PluginSpec("queue-scorer"),
    PluginSpec("max-score-picker"),
    PluginSpec("random-picker"),
]


def config(*refs: ProfilePluginRef, plugins: list[PluginSpec] = PLUGINS) -> SchedulerConfig:
    return SchedulerConfig(plugins=plugins, profiles=[ProfileSpec("default", list(refs))])


def ref(name: str, weight: float | None = None) -> ProfilePluginRef:
    return ProfilePluginRef(name, weight)


def test_default_config_builds_the_documented_profile() -> None:
    scheduler = build_scheduler(default_scheduler_config())
    points = [(t.extension_point, t.typed_name.type) for t in scheduler.timings]
    assert points == [
        ("filter", "candidate-sample-filter"),
        ("filter", "prefer-fresh-filter"),
        ("scorer", "queue-scorer"),
        ("scorer", "prefix-cache-scorer"),
        ("scorer", "inflight-load-scorer"),
        ("scorer", "lora-affinity-scorer"),
        ("scorer", "no-hit-lru-scorer"),
        ("picker", "max-score-picker"),
        ("post_pick", "prefix-cache-scorer"),
        ("post_pick", "lora-affinity-scorer"),
        ("post_pick", "no-hit-lru-scorer"),
    ]
    weights = {r.plugin_ref: r.weight for r in default_scheduler_config().profiles[0].plugins}
    assert weights == {
        "candidate-sample-filter": None,
        "prefer-fresh-filter": None,
        "queue-scorer": 1.0,
        "prefix-cache-scorer": 3.0,
        "inflight-load-scorer": 4.0,
        "lora-affinity-scorer": 1.0,
        "no-hit-lru-scorer": 0.5,
        "max-score-picker": None,
    }
    parameters = {p.type: dict(p.parameters) for p in default_scheduler_config().plugins}
    assert parameters["inflight-load-scorer"] == {"gapScale": 128.0}
    assert [type(h) for h in scheduler.profile.removal_hooks] == [
        PrefixCacheScorer,
        LoraAffinityScorer,
        NoHitLruScorer,
    ]


def test_default_scheduler_keeps_prefix_affinity_and_forgets_removed_endpoints() -> None:
    scheduler = build_scheduler(default_scheduler_config())
    now = time.monotonic()
    eps = [Endpoint(f"10.0.0.{i}:8000", metrics=Metrics(updated_at=now)) for i in range(3)]
    req = LLMRequest("r", "m", "system prompt " * 40)
    first = scheduler.schedule(req, eps)
    assert len(first.endpoints) == 3
    assert all(scheduler.schedule(req, eps).primary is first.primary for _ in range(5))
    scheduler.on_endpoints_removed([first.primary])
    prefix = scheduler.profile.removal_hooks[0]
    assert isinstance(prefix, PrefixCacheScorer)
    assert prefix.index.size() == 0


def test_plugin_name_defaults_to_type() -> None:
    assert PluginSpec("queue-scorer").name == "queue-scorer"
    assert PluginSpec("queue-scorer", "").name == "queue-scorer"
    assert PluginSpec("queue-scorer", "q").name == "q"


def test_two_instances_of_one_type() -> None:
    plugins = [
        PluginSpec("prefix-cache-scorer", "short", {"blockSize": 16}),
        PluginSpec("prefix-cache-scorer", "long", {"blockSize": 256}),
        PluginSpec("max-score-picker"),
    ]
    scheduler = build_scheduler(
        config(ref("short", 1), ref("long", 2), ref("max-score-picker"), plugins=plugins)
    )
    names = [str(t.typed_name) for t in scheduler.timings if t.extension_point == "scorer"]
    assert names == ["prefix-cache-scorer/short", "prefix-cache-scorer/long"]


def test_profile_named_default_wins_else_first() -> None:
    profiles = [
        ProfileSpec("other", [ref("random-picker")]),
        ProfileSpec("default", [ref("max-score-picker")]),
    ]
    assert build_scheduler(SchedulerConfig(PLUGINS, profiles)).profile.name == "default"
    assert build_scheduler(SchedulerConfig(PLUGINS, profiles[:1])).profile.name == "other"


def test_the_references_defaults_a_weight_of_1_and_a_max_score_picker() -> None:
    # The GIE chart's default profile lists its scorers without weights and no picker.
    profile = build_scheduler(config(ref("prefer-fresh-filter"), ref("queue-scorer"))).profile
    points = {(t.extension_point, t.typed_name.type) for t in profile.timings}
    assert ("picker", "max-score-picker") in points
    assert ("scorer", "queue-scorer") in points
    # Weight 1, not 0: the queue decides (a 0-weight scorer would leave a coin toss).
    busy, idle = Endpoint("10.0.0.1:8000"), Endpoint("10.0.0.2:8000")
    busy.metrics = Metrics(waiting_requests=9, updated_at=time.monotonic())
    idle.metrics = Metrics(waiting_requests=0, updated_at=time.monotonic())
    picks = {profile.run(LLMRequest("r", "m", ""), [busy, idle]).primary for _ in range(20)}
    assert picks == {idle}


def test_without_profiles_one_profile_holds_every_filter_scorer_and_picker() -> None:
    plugins = [
        PluginSpec("single-profile-handler"),
        PluginSpec("queue-scorer"),
        PluginSpec("approx-prefix-cache-producer"),
        PluginSpec("prefix-cache-scorer"),
        PluginSpec("decode-filter"),
    ]
    profile = build_scheduler(SchedulerConfig(plugins, [])).profile
    assert profile.name == "default"
    assert sorted(p.typed_name.type for p in profile.plugins) == [
        "decode-filter",
        "max-score-picker",
        "prefix-cache-scorer",
        "queue-scorer",
    ]


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        pytest.param(
            config(ref("nope"), ref("max-score-picker")),
            r"profile 'default': pluginRef 'nope' names no plugin \(defined: "
            r"max-score-picker, prefer-fresh-filter, queue-scorer, random-picker\)",
            id="unknown-ref",
        ),
        pytest.param(
            config(ref("queue-scorer", -1), ref("max-score-picker")),
            r"scorer 'queue-scorer' weight must be a finite number >= 0, got -1",
            id="negative-weight",
        ),
        pytest.param(
            config(ref("queue-scorer", math.nan), ref("max-score-picker")),
            r"scorer 'queue-scorer' weight must be a finite number >= 0, got nan",
            id="nan-weight",
        ),
        pytest.param(
            config(ref("queue-scorer", math.inf), ref("max-score-picker")),
            r"scorer 'queue-scorer' weight must be a finite number >= 0, got inf",
            id="infinite-weight",
        ),
        pytest.param(
            config(ref("queue-scorer", "2"), ref("max-score-picker")),  # type: ignore[arg-type]
            r"scorer 'queue-scorer' weight must be a finite number >= 0, got '2'",
            id="text-weight",
        ),
        pytest.param(
            config(ref("queue-scorer", True), ref("max-score-picker")),
            r"scorer 'queue-scorer' weight must be a finite number >= 0, got True",
            id="boolean-weight",
        ),
        pytest.param(
            config(ref("prefer-fresh-filter", 1), ref("max-score-picker")),
            r"'prefer-fresh-filter' is not a scorer and takes no weight",
            id="weight-on-filter",
        ),
        pytest.param(
            config(ref("max-score-picker", 1)),
            r"'max-score-picker' is not a scorer and takes no weight",
            id="weight-on-picker",
        ),
        pytest.param(
            config(ref("max-score-picker"), ref("random-picker")),
            r"needs exactly one picker, got 'max-score-picker', 'random-picker'",
            id="two-pickers",
        ),
        pytest.param(
            config(ref("max-score-picker"), ref("max-score-picker")),
            r"pluginRef 'max-score-picker' is listed twice",
            id="duplicate-ref",
        ),
        pytest.param(
            config(ref("max-score-picker"), plugins=[*PLUGINS, PluginSpec("random-picker")]),
            r"plugin name 'random-picker' is defined twice",
            id="duplicate-name",
        ),
        pytest.param(
            config(ref("max-score-picker"), plugins=[PluginSpec("nope")]),
            r"plugin 'nope': unknown type 'nope' \(known types: ",
            id="unknown-type",
        ),
        pytest.param(
            config(
                ref("max-score-picker"),
                plugins=[PluginSpec("max-score-picker", parameters={"x": 1})],
            ),
            r"plugin 'max-score-picker' \(type 'max-score-picker'\): parameter 'x' is "
            r"not known",
            id="bad-parameter",
        ),
        pytest.param(SchedulerConfig([], []), r"no scheduling profile", id="nothing-at-all"),
        pytest.param(  # the reference's profile of everything has two pickers here
            SchedulerConfig(PLUGINS, []), r"needs exactly one picker", id="no-profiles"
        ),
        pytest.param(
            SchedulerConfig(PLUGINS, [ProfileSpec("a", [ref("max-score-picker")])] * 2),
            r"profile 'a' is defined twice",
            id="duplicate-profile",
        ),
        pytest.param(
            SchedulerConfig(
                PLUGINS,
                [
                    ProfileSpec("default", [ref("max-score-picker")]),
                    ProfileSpec("spare", [ref("queue-scorer", -1)]),
                ],
            ),
            r"profile 'spare': scorer 'queue-scorer' weight must be",
            id="unused-profile-validated",
        ),
    ],
)
def test_invalid_config(cfg: SchedulerConfig, message: str) -> None:
    with pytest.raises(SchedulerConfigError, match=message):
        build_scheduler(cfg)

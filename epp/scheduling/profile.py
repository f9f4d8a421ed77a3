"""A scheduler profile: filters, then weighted scorers, then one picker, then post-pick hooks.

Every plugin call is timed (``time.perf_counter_ns``) into the distribution of a
:class:`~epp.scheduling.stats.PluginTiming`, plain data that the observability layer
exports as ``inference_extension_plugin_duration_seconds{extension_point, plugin_type,
plugin_name}``; nothing here imports a metrics library.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass
from time import perf_counter_ns

from epp.datalayer.endpoint import Endpoint
from epp.distribution import Distribution
from epp.scheduling.errors import NoCandidates, SchedulerConfigError
from epp.scheduling.stats import PluginTiming
from epp.scheduling.types import (
    CycleState,
    EndpointRemovalHook,
    EndpointScores,
    Filter,
    LLMRequest,
    Picker,
    Plugin,
    PostPick,
    PromptReader,
    ResponseHeaderWriter,
    SchedulingResult,
    ScoreAdder,
    Scorer,
    ScoresPicker,
)

__all__ = ["SchedulerProfile", "WeightedScorer"]


@dataclass(frozen=True, slots=True)
class WeightedScorer:
    """A scorer and its weight in the profile's sum: a finite number >= 0, which
    :func:`~epp.scheduling.scheduler.build_scheduler` has checked.

    A weight of 0 disables the scorer's scoring (it is not called); if it is also a
    PostPick it still hears about picks.
    """

    scorer: Scorer
    weight: float


class SchedulerProfile:
    """Runs one scheduling cycle: ``filters`` in order, ``weighted_scorers`` summed, the
    ``picker``, then ``on_pick(primary)`` on every PostPick plugin.

    ``post_picks`` defaults to those of the filters, scorers and picker that implement
    :class:`PostPick`. Scores outside [0, 1] (or NaN) are clamped (NaN to 0) before
    weighting. Raises :class:`NoCandidates` when a filter leaves no endpoint.

    A scorer that is a :class:`ScoreAdder` adds its weighted scores itself, and a
    :class:`ScoresPicker` is handed the totals as they are: the result is the same, with
    fewer passes over the endpoints (at 1,024 endpoints each pass costs tens of µs).
    """

    __slots__ = (
        "_filters",
        "_pick_scores",
        "_picker",
        "_picker_durations",
        "_plugins",
        "_post_picks",
        "_prompt_chars",
        "_removal_hooks",
        "_response_headers",
        "_scorers",
        "_timings",
        "name",
    )

    def __init__(
        self,
        name: str,
        filters: Sequence[Filter],
        weighted_scorers: Sequence[WeightedScorer],
        picker: Picker,
        post_picks: Sequence[PostPick] | None = None,
    ) -> None:
        if not isinstance(picker, Picker):
            raise SchedulerConfigError(f"profile {name!r}: {picker!r} is not a picker")
        for f in filters:
            if not isinstance(f, Filter):
                raise SchedulerConfigError(f"profile {name!r}: {f!r} is not a filter")
        for ws in weighted_scorers:
            if not isinstance(ws, WeightedScorer):
                raise SchedulerConfigError(
                    f"profile {name!r}: scorers must come as WeightedScorer, got {ws!r}"
                )
        self.name = name
        timings: list[PluginTiming] = []

        def timing(plugin: Plugin, point: str) -> Distribution:
            t = PluginTiming(plugin.typed_name, point)
            timings.append(t)
            return t.durations_ns

        self._filters = tuple((f, timing(f, "filter")) for f in filters)
        self._scorers = tuple(
            (
                ws.scorer,
                float(ws.weight),
                timing(ws.scorer, "scorer"),
                ws.scorer.add_scores if isinstance(ws.scorer, ScoreAdder) else None,
            )
            for ws in weighted_scorers
            if ws.weight > 0
        )
        self._picker = picker
        self._pick_scores = picker.pick_scores if isinstance(picker, ScoresPicker) else None
        self._picker_durations = timing(picker, "picker")
        plugins = self._unique([*filters, *(ws.scorer for ws in weighted_scorers), picker])
        if post_picks is None:
            post_picks = [p for p in plugins if isinstance(p, PostPick)]
        self._post_picks = tuple((p, timing(p, "post_pick")) for p in post_picks)
        self._plugins = tuple(self._unique([*plugins, *post_picks]))
        self._removal_hooks = tuple(p for p in self._plugins if isinstance(p, EndpointRemovalHook))
        self._response_headers = tuple(
            p for p in self._plugins if isinstance(p, ResponseHeaderWriter)
        )
        self._timings = tuple(timings)
        self._prompt_chars = max(
            (p.prompt_chars for p in self._plugins if isinstance(p, PromptReader)), default=0
        )

    @property
    def prompt_chars(self) -> int:
        """How much of a prompt this profile's plugins read (0: none of it)."""
        return self._prompt_chars

    @property
    def plugins(self) -> tuple[Plugin, ...]:
        """Every plugin of the profile, each once."""
        return self._plugins

    @property
    def timings(self) -> tuple[PluginTiming, ...]:
        """Live timings, one per (plugin, extension point); read them, do not reset."""
        return self._timings

    @property
    def removal_hooks(self) -> tuple[EndpointRemovalHook, ...]:
        return self._removal_hooks

    def run(self, request: LLMRequest, candidates: Sequence[Endpoint]) -> SchedulingResult:
        cycle = CycleState()
        endpoints = candidates
        clock = perf_counter_ns
        # Each call's time goes into its Distribution as observe() would put it: inlined,
        # because the call itself would add half as much again to what timing costs.
        for flt, durations in self._filters:
            start = clock()
            endpoints = flt.filter(cycle, request, endpoints)
            elapsed = clock() - start
            durations.counts[bisect_left(durations.bounds, elapsed)] += 1
            durations.sum += elapsed
            if not endpoints:
                raise NoCandidates(
                    f"no endpoint for model {request.model!r} passed {flt.typed_name}"
                )

        n = len(endpoints)
        totals: list[float] | None = None  # None: all 0.0 so far
        # Each scorer's weighted share, for a request that asks (never an Envoy one).
        shares: list[tuple[str, list[float]]] | None = [] if request.explain else None
        for scorer, weight, durations, add_scores in self._scorers:
            start = clock()
            if add_scores is not None:
                # add_scores may update totals in place: what was there before, to tell
                # this scorer's share.
                before = None if shares is None else list(totals or [0.0] * n)
                totals = add_scores(cycle, request, endpoints, weight, totals)
                if before is not None and shares is not None:
                    share = [t - b for t, b in zip(totals, before, strict=False)]
                    shares.append((str(scorer.typed_name), share))
                elapsed = clock() - start
                durations.counts[bisect_left(durations.bounds, elapsed)] += 1
                durations.sum += elapsed
                if len(totals) != n:
                    raise RuntimeError(
                        f"scorer {scorer.typed_name} returned {len(totals)} totals "
                        f"for {n} endpoints"
                    )
                continue
            scores = scorer.score(cycle, request, endpoints)
            elapsed = clock() - start
            durations.counts[bisect_left(durations.bounds, elapsed)] += 1
            durations.sum += elapsed
            if len(scores) != n:
                raise RuntimeError(
                    f"scorer {scorer.typed_name} returned {len(scores)} scores for {n} endpoints"
                )
            # Clamp into [0, 1]; NaN fails both comparisons and becomes 0.
            totals = [
                total + weight * (s if 0.0 <= s <= 1.0 else (1.0 if s > 1.0 else 0.0))
                for total, s in zip(totals or [0.0] * n, scores, strict=True)
            ]
            if shares is not None:
                shares.append(
                    (
                        str(scorer.typed_name),
                        [
                            weight * (s if 0.0 <= s <= 1.0 else (1.0 if s > 1.0 else 0.0))
                            for s in scores
                        ],
                    )
                )
        if totals is None:
            totals = [0.0] * n

        start = clock()
        if self._pick_scores is not None:
            picked = self._pick_scores(cycle, endpoints, totals)
        else:
            picked = self._picker.pick(cycle, list(zip(endpoints, totals, strict=True)))
        elapsed = clock() - start
        durations = self._picker_durations
        durations.counts[bisect_left(durations.bounds, elapsed)] += 1
        durations.sum += elapsed
        if not picked:
            raise NoCandidates(f"picker {self._picker.typed_name} chose no endpoint")

        primary = picked[0]
        for post_pick, durations in self._post_picks:
            start = clock()
            post_pick.on_pick(cycle, request, primary)
            elapsed = clock() - start
            durations.counts[bisect_left(durations.bounds, elapsed)] += 1
            durations.sum += elapsed
        headers: tuple[tuple[str, str], ...] = ()
        if self._response_headers:
            headers = tuple(
                header
                for writer in self._response_headers
                for header in writer.response_headers(cycle, request, primary)
            )
        if shares is not None:
            explained = tuple(
                EndpointScores(ep, totals[i], tuple((name, share[i]) for name, share in shares))
                for i, ep in enumerate(endpoints)
            )
            return SchedulingResult(picked, headers, explained)
        return SchedulingResult(picked, headers)

    def on_endpoints_removed(self, endpoints: Sequence[Endpoint]) -> None:
        for hook in self._removal_hooks:
            hook.on_endpoints_removed(endpoints)

    @staticmethod
    def _unique(plugins: Sequence[Plugin]) -> list[Plugin]:
        seen: set[int] = set()
        out: list[Plugin] = []
        for p in plugins:
            if id(p) not in seen:
                seen.add(id(p))
                out.append(p)
        return out

    def __repr__(self) -> str:
        return f"SchedulerProfile({self.name!r})"

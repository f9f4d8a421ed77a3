"""The scheduler the request path calls, and how it is built from configuration."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from epp.datalayer.endpoint import Endpoint
from epp.scheduling.errors import NoCandidates, SchedulerConfigError
from epp.scheduling.pickers.max_score import TYPE as MAX_SCORE_PICKER
from epp.scheduling.plugin import SettingsPlugin
from epp.scheduling.profile import SchedulerProfile, WeightedScorer
from epp.scheduling.registry import PluginRegistry, register_builtin_plugins
from epp.scheduling.spec import (
    DEFAULT_PROFILE_NAME,
    PluginSpec,
    ProfilePluginRef,
    ProfileSpec,
    SchedulerConfig,
    default_scheduler_config,
)
from epp.scheduling.stats import PluginTiming
from epp.scheduling.types import (
    DeferredWork,
    Filter,
    LLMRequest,
    PeerAware,
    Picker,
    PickListener,
    Plugin,
    PostPick,
    SchedulingResult,
    Scorer,
    SharedIndex,
)

# The config dataclasses are re-exported: callers build a scheduler from this module alone.
__all__ = [
    "PluginSpec",
    "ProfilePluginRef",
    "ProfileSpec",
    "Scheduler",
    "SchedulerConfig",
    "build_scheduler",
    "default_scheduler_config",
]

DEFAULT_WEIGHT = 1.0  # a scorer listed without a weight, as in the reference EPP


class Scheduler:
    """Chooses endpoints for requests with one :class:`SchedulerProfile`.

    Synchronous and I/O-free; call it from the event loop thread only. Wire
    :meth:`on_endpoints_removed` to discovery so per-endpoint state is dropped.
    """

    __slots__ = ("_deferring", "_profile")

    def __init__(self, profile: SchedulerProfile) -> None:
        self._profile = profile
        self._deferring: tuple[DeferredWork, ...] = ()

    @property
    def profile(self) -> SchedulerProfile:
        return self._profile

    @property
    def plugins(self) -> tuple[Plugin, ...]:
        return self._profile.plugins

    @property
    def timings(self) -> tuple[PluginTiming, ...]:
        return self._profile.timings

    @property
    def prompt_chars(self) -> int:
        """How many leading characters of a prompt scheduling reads: the caller may cut
        ``LLMRequest.prompt`` there."""
        return self._profile.prompt_chars

    def schedule(self, request: LLMRequest, candidates: Sequence[Endpoint]) -> SchedulingResult:
        """The endpoints to try for ``request``, best first.

        Raises :class:`NoCandidates` (503) when ``candidates`` is empty or the filters
        leave none. Records the pick in post-pick plugins (the prefix index).
        """
        if not candidates:
            raise NoCandidates(f"no endpoint is available for model {request.model!r}")
        return self._profile.run(request, candidates)

    def defer_post_pick_work(self) -> bool:
        """Have the plugins that can (:class:`DeferredWork`, the prefix index) leave their
        ``on_pick`` bookkeeping for :meth:`flush_deferred`; True if any will. Decisions
        stay the same; the caller must call :meth:`flush_deferred` soon after each."""
        deferring = [p for p in self.plugins if isinstance(p, DeferredWork)]
        for plugin in deferring:
            plugin.set_deferred(True)
        self._deferring = tuple(deferring)
        return bool(deferring)

    def flush_deferred(self) -> None:
        """Do the post-pick work left so far (see :meth:`defer_post_pick_work`)."""
        for plugin in self._deferring:
            plugin.flush_deferred()

    def shared_indexes(self) -> dict[str, SharedIndex]:
        """The profile's prefix indexes that replicas share, by their key."""
        return {
            plugin.index_key: plugin for plugin in self.plugins if isinstance(plugin, SharedIndex)
        }

    def set_pick_listener(self, listener: PickListener | None) -> None:
        """Tell ``listener`` of every prefix the profile records at a pick (epp/sync
        publishes them to the other replicas)."""
        for plugin in self.shared_indexes().values():
            plugin.set_pick_listener(listener)

    def on_endpoints_removed(self, endpoints: Sequence[Endpoint]) -> None:
        """Forward to every plugin that keeps per-endpoint state."""
        if endpoints:
            self._profile.on_endpoints_removed(endpoints)


def build_scheduler(config: SchedulerConfig, registry: PluginRegistry | None = None) -> Scheduler:
    """Validate ``config`` and build the plugins and the profile.

    As the reference EPP does, a scorer listed without a weight weighs 1, a profile
    that names no picker gets a ``max-score-picker``, and a config without profiles
    gets one profile of all its filters, scorers and pickers. Plugins that work with
    another (:class:`~epp.scheduling.types.PeerAware`) are bound before any profile is
    built; a profile may list a :class:`~epp.scheduling.plugin.SettingsPlugin`, which
    has no role there. Raises
    :class:`SchedulerConfigError` for a duplicate plugin name, an unknown type or
    parameter, an unknown ``pluginRef``, a weight that is not a finite number >= 0, a
    weight on a plugin that is not a scorer, or a profile with two pickers. This is the
    one place weights are checked, whether they come from the file, ``--scorer-weight``
    or code. Every profile is validated; the one named ``default`` (else the first) is
    used.
    """
    if registry is None:
        registry = register_builtin_plugins(PluginRegistry())
    plugins: dict[str, Plugin] = {}
    for spec in config.plugins:
        name = spec.instance_name
        if name in plugins:
            raise SchedulerConfigError(f"plugin name {name!r} is defined twice")
        plugins[name] = registry.create(spec.type, name, spec.parameters)
    for plugin in plugins.values():
        if isinstance(plugin, PeerAware):
            plugin.bind(plugins)
    profile_specs = config.profiles
    if not profile_specs:
        # As the reference does: one profile of every filter, scorer and picker, in order.
        profile_specs = [
            ProfileSpec(
                DEFAULT_PROFILE_NAME,
                [
                    ProfilePluginRef(name)
                    for name, plugin in plugins.items()
                    if not isinstance(plugin, SettingsPlugin)
                    and isinstance(plugin, Filter | Scorer | Picker)
                ],
            )
        ]
        if not plugins:
            raise SchedulerConfigError("no scheduling profile is configured")
    profiles: dict[str, SchedulerProfile] = {}
    for profile_spec in profile_specs:
        if profile_spec.name in profiles:
            raise SchedulerConfigError(f"profile {profile_spec.name!r} is defined twice")
        profiles[profile_spec.name] = _build_profile(
            profile_spec, plugins, lambda: registry.create(MAX_SCORE_PICKER, MAX_SCORE_PICKER, {})
        )
    chosen = profiles.get(DEFAULT_PROFILE_NAME) or profiles[profile_specs[0].name]
    return Scheduler(chosen)


def _build_profile(
    spec: ProfileSpec, plugins: dict[str, Plugin], default_picker: Callable[[], Plugin]
) -> SchedulerProfile:
    where = f"profile {spec.name!r}"
    filters: list[Filter] = []
    scorers: list[WeightedScorer] = []
    pickers: list[Picker] = []
    post_picks: list[PostPick] = []
    seen: set[str] = set()
    for ref in spec.plugins:
        plugin = plugins.get(ref.plugin_ref)
        if plugin is None:
            known = ", ".join(sorted(plugins)) or "none"
            raise SchedulerConfigError(
                f"{where}: pluginRef {ref.plugin_ref!r} names no plugin (defined: {known})"
            )
        if ref.plugin_ref in seen:
            raise SchedulerConfigError(f"{where}: pluginRef {ref.plugin_ref!r} is listed twice")
        seen.add(ref.plugin_ref)
        if isinstance(plugin, SettingsPlugin):
            if ref.weight is not None:
                raise SchedulerConfigError(
                    f"{where}: {ref.plugin_ref!r} is not a scorer and takes no weight "
                    f"(got {ref.weight!r})"
                )
            continue
        has_role = False
        if isinstance(plugin, Scorer):
            has_role = True
            weight = DEFAULT_WEIGHT if ref.weight is None else ref.weight
            if (
                isinstance(weight, bool)
                or not isinstance(weight, int | float)
                or not (math.isfinite(weight) and weight >= 0)
            ):
                raise SchedulerConfigError(
                    f"{where}: scorer {ref.plugin_ref!r} weight must be a finite number "
                    f">= 0, got {weight!r}"
                )
            scorers.append(WeightedScorer(plugin, float(weight)))
        elif ref.weight is not None:
            raise SchedulerConfigError(
                f"{where}: {ref.plugin_ref!r} is not a scorer and takes no weight "
                f"(got {ref.weight!r})"
            )
        if isinstance(plugin, Filter):
            has_role = True
            filters.append(plugin)
        if isinstance(plugin, Picker):
            has_role = True
            pickers.append(plugin)
        if isinstance(plugin, PostPick):
            has_role = True
            post_picks.append(plugin)
        if not has_role:
            raise SchedulerConfigError(
                f"{where}: plugin {ref.plugin_ref!r} is no filter, scorer, picker or post-pick"
            )
    if not pickers:
        picker = default_picker()
        assert isinstance(picker, Picker)
        pickers.append(picker)
    if len(pickers) != 1:
        names = ", ".join(repr(str(p.typed_name.name)) for p in pickers)
        raise SchedulerConfigError(f"{where}: needs exactly one picker, got {names}")
    return SchedulerProfile(spec.name, filters, scorers, pickers[0], post_picks)

"""Choosing the endpoint for one request: filters, weighted scorers, one picker.

Nothing here knows gRPC, Envoy or Prometheus: what scheduling measures about itself is
plain data (:mod:`epp.scheduling.stats`) that ``epp.observability`` exports. Plugins are
small classes registered by type name (see :mod:`epp.scheduling.registry`), so a config
file can name them.
"""

from epp.scheduling.errors import NoCandidates, SchedulerConfigError
from epp.scheduling.prefix_index import PrefixIndex
from epp.scheduling.profile import SchedulerProfile, WeightedScorer
from epp.scheduling.registry import PluginFactory, PluginRegistry, register_builtin_plugins
from epp.scheduling.scheduler import Scheduler, build_scheduler
from epp.scheduling.spec import (
    PluginSpec,
    ProfilePluginRef,
    ProfileSpec,
    SchedulerConfig,
    default_scheduler_config,
)
from epp.scheduling.stats import PluginTiming, PrefixStats
from epp.scheduling.types import (
    CycleState,
    EndpointRemovalHook,
    Filter,
    LLMRequest,
    Picker,
    Plugin,
    PostPick,
    SchedulingResult,
    ScoreAdder,
    ScoredEndpoint,
    Scorer,
    ScoresPicker,
    TypedName,
)

__all__ = [
    "CycleState",
    "EndpointRemovalHook",
    "Filter",
    "LLMRequest",
    "NoCandidates",
    "Picker",
    "Plugin",
    "PluginFactory",
    "PluginRegistry",
    "PluginSpec",
    "PluginTiming",
    "PostPick",
    "PrefixIndex",
    "PrefixStats",
    "ProfilePluginRef",
    "ProfileSpec",
    "Scheduler",
    "SchedulerConfig",
    "SchedulerConfigError",
    "SchedulerProfile",
    "SchedulingResult",
    "ScoreAdder",
    "ScoredEndpoint",
    "Scorer",
    "ScoresPicker",
    "TypedName",
    "WeightedScorer",
    "build_scheduler",
    "default_scheduler_config",
    "register_builtin_plugins",
]

"""The contracts between the scheduler and its plugins."""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from epp.datalayer.endpoint import Endpoint
from epp.scheduling.prefix_index import PrefixIndex

__all__ = [
    "AffinityHint",
    "CycleState",
    "DeferredWork",
    "EndpointRemovalHook",
    "EndpointScores",
    "Filter",
    "LLMRequest",
    "PeerAware",
    "PickListener",
    "Picker",
    "Plugin",
    "PostPick",
    "PromptReader",
    "ResponseHeaderWriter",
    "SchedulingResult",
    "ScoreAdder",
    "ScoredEndpoint",
    "Scorer",
    "ScoresPicker",
    "SharedIndex",
    "TypedName",
]


@dataclass(frozen=True, slots=True)
class LLMRequest:
    """What the scheduler knows of a request: no Envoy types, no raw body."""

    request_id: str
    model: str
    # The text prefix-cache affinity is computed over: the prompt, or the chat messages
    # flattened in order. Empty when the body has none (embeddings of token ids, say).
    # Only its start, as long as the profile's PromptReaders read (a 60 MB prompt is
    # not copied to hash its first 16 KB).
    prompt: str
    stream: bool = False
    headers: dict[str, str] = field(default_factory=dict)
    # Keep every candidate's scores in the result (the Pick API's include_scores): a
    # slower pass that no Envoy request takes.
    explain: bool = False


class CycleState(dict[str, Any]):
    """Scratch space for one scheduling cycle, shared by its plugins.

    A scorer may leave work here (the prompt's block hashes) for a post-pick hook to use,
    so nothing is computed twice.
    """


@dataclass(frozen=True, slots=True)
class TypedName:
    """A plugin's type (what the registry knows it by) and its instance name."""

    type: str
    name: str

    def __str__(self) -> str:
        return f"{self.type}/{self.name}"


@runtime_checkable
class Plugin(Protocol):
    @property
    def typed_name(self) -> TypedName: ...


@runtime_checkable
class Filter(Plugin, Protocol):
    def filter(
        self, cycle: CycleState, request: LLMRequest, endpoints: Sequence[Endpoint]
    ) -> Sequence[Endpoint]:
        """Return the endpoints that may serve ``request``; never mutates the input."""
        ...


@runtime_checkable
class Scorer(Plugin, Protocol):
    def score(
        self, cycle: CycleState, request: LLMRequest, endpoints: Sequence[Endpoint]
    ) -> Sequence[float]:
        """One score per endpoint, in the order given, each in [0, 1] (higher is better).

        Synchronous and free of I/O: it works on the snapshot in ``endpoints``. The
        framework clamps scores into [0, 1] and applies the weight.
        """
        ...


@runtime_checkable
class ScoreAdder(Scorer, Protocol):
    """A scorer that adds its weighted scores into the profile's running totals itself.

    Optional: the profile calls ``score`` on scorers without it, then clamps, weights and
    adds each score in a pass of its own. At hundreds of endpoints those passes are most
    of a cycle's cost; a scorer that knows its scores lie in [0, 1] (or clamps a few
    distinct values) can fold them into the one pass it makes anyway.
    """

    def add_scores(
        self,
        cycle: CycleState,
        request: LLMRequest,
        endpoints: Sequence[Endpoint],
        weight: float,
        totals: list[float] | None,
    ) -> list[float]:
        """``totals[i] + weight * s[i]`` for each endpoint, where ``s`` is what
        :meth:`score` returns clamped into [0, 1]; ``weight * s[i]`` when ``totals`` is
        None (the first scorer).

        The same floating-point operations in the same order, so the result equals
        the profile's own sum exactly (ties stay ties); adding ``weight * 0.0`` may be
        skipped, as it changes no value. May update ``totals`` in place and return it.
        """
        ...


ScoredEndpoint = tuple[Endpoint, float]


@runtime_checkable
class Picker(Plugin, Protocol):
    def pick(self, cycle: CycleState, scored: Sequence[ScoredEndpoint]) -> list[Endpoint]:
        """Order the endpoints to try: the first is the primary, the rest fallbacks."""
        ...


@runtime_checkable
class ScoresPicker(Picker, Protocol):
    """A picker that takes endpoints and their totals as two parallel sequences.

    Optional: it spares the profile building an (endpoint, score) pair per endpoint.
    """

    def pick_scores(
        self, cycle: CycleState, endpoints: Sequence[Endpoint], scores: Sequence[float]
    ) -> list[Endpoint]:
        """Exactly ``pick(cycle, list(zip(endpoints, scores)))``, including its use of
        randomness. ``scores`` are finite (the profile's totals always are)."""
        ...


@runtime_checkable
class PostPick(Plugin, Protocol):
    def on_pick(self, cycle: CycleState, request: LLMRequest, chosen: Endpoint) -> None:
        """Told which endpoint was chosen (the prefix index records it here)."""
        ...


@runtime_checkable
class AffinityHint(Plugin, Protocol):
    """A scorer that can name, cheaply, the few candidates it favours for a request (the
    pods holding the prompt's longest cached prefix, the pod a session token names), so
    that a filter that cuts a large pool down to a sample (``candidate-sample-filter``)
    keeps them."""

    def preferred(
        self, cycle: CycleState, request: LLMRequest, endpoints: Sequence[Endpoint]
    ) -> Collection[Endpoint]:
        """The endpoints this plugin would score highest, empty for none; it may name
        endpoints that are not among ``endpoints`` (the caller keeps candidates only).
        Asked only of pools larger than the sample, whose every pass costs: look
        through ``endpoints`` only when the request asks for it (a session token)."""
        ...


@runtime_checkable
class DeferredWork(Plugin, Protocol):
    """A plugin that can leave the bookkeeping of ``on_pick`` for later, off the path of
    the request that was just routed (the prefix index's inserts), without changing any
    later decision: what it has not done yet still counts when it scores."""

    def set_deferred(self, deferred: bool) -> None:
        """From now on leave that work for :meth:`flush_deferred` (False: do it at once)."""
        ...

    def flush_deferred(self) -> None:
        """Do the work left so far."""
        ...


@runtime_checkable
class PromptReader(Plugin, Protocol):
    """A plugin that reads ``LLMRequest.prompt``; plugins that do not read it need not
    implement this, and a profile without one gets an empty prompt."""

    @property
    def prompt_chars(self) -> int:
        """How many leading characters of the prompt this plugin reads at most."""
        ...


@runtime_checkable
class ResponseHeaderWriter(Plugin, Protocol):
    def response_headers(
        self, cycle: CycleState, request: LLMRequest, chosen: Endpoint
    ) -> Sequence[tuple[str, str]]:
        """Headers to set on the response the client gets (a session token), after the
        pick. Names lower-case; values are the plugin's own text, never a client's."""
        ...


@runtime_checkable
class PeerAware(Plugin, Protocol):
    def bind(self, peers: Mapping[str, Plugin]) -> None:
        """Called once, before any scheduling, with every configured plugin by name: a
        plugin that works with another (a scorer and its producer) finds it here.
        Raises ``SchedulerConfigError`` when the one it needs is missing or wrong."""
        ...


@runtime_checkable
class EndpointRemovalHook(Plugin, Protocol):
    def on_endpoints_removed(self, endpoints: Sequence[Endpoint]) -> None:
        """Forget per-endpoint state (the prefix index) for endpoints discovery dropped."""
        ...


# Told of every prefix a plugin records at a pick: (the index's key, the endpoint
# chosen, the prompt's chained block hashes). Runs on the request path: must be cheap and
# must not raise.
PickListener = Callable[[str, Endpoint, Sequence[int]], None]


@runtime_checkable
class SharedIndex(Plugin, Protocol):
    """A plugin whose prefix index other replicas can feed and read from (epp/sync).

    ``index_key`` names the index the same way on every replica that runs the same
    configuration, and differs when the hashes would (another block size), so a replica
    never applies hashes it could not have computed itself.
    """

    @property
    def index_key(self) -> str: ...

    @property
    def index(self) -> PrefixIndex: ...

    def set_pick_listener(self, listener: PickListener | None) -> None:
        """Call ``listener`` after each pick this plugin records (None: stop)."""
        ...


@dataclass(frozen=True, slots=True)
class EndpointScores:
    """One candidate's total and each scorer's weighted share of it, by ``str(TypedName)``."""

    endpoint: Endpoint
    total: float
    by_scorer: tuple[tuple[str, float], ...]


@dataclass(frozen=True, slots=True)
class SchedulingResult:
    """The endpoints to try, best first; never empty. ``response_headers``: what the
    profile's plugins ask to set on the client's response."""

    endpoints: list[Endpoint]
    response_headers: tuple[tuple[str, str], ...] = ()
    # Only for a request that asked (``LLMRequest.explain``): the candidates that passed
    # the filters, with their totals and each scorer's weighted share.
    scores: tuple[EndpointScores, ...] = ()

    @property
    def primary(self) -> Endpoint:
        return self.endpoints[0]

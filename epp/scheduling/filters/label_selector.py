"""``label-selector-filter``: keep endpoints whose pod labels match a Kubernetes selector.

Parameters are a ``metav1.LabelSelector``, as in the reference: ``matchLabels`` (every
pair must match) and ``matchExpressions`` (``key``, ``operator`` ``In`` / ``NotIn`` /
``Exists`` / ``DoesNotExist``, ``values``), all of which must hold. As in Kubernetes,
``NotIn`` also matches an endpoint without the key, ``In`` and ``NotIn`` need values and
the other two take none, and an empty selector matches every endpoint. Static endpoints
have no labels. ``by-label-selector`` is the reference's deprecated name for it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from epp.datalayer.endpoint import Endpoint
from epp.scheduling.errors import SchedulerConfigError
from epp.scheduling.plugin import NamedPlugin, Params
from epp.scheduling.types import CycleState, Filter, LLMRequest, TypedName

__all__ = ["DEPRECATED_TYPE", "TYPE", "LabelSelectorFilter", "Requirement", "factory"]

TYPE = "label-selector-filter"
DEPRECATED_TYPE = "by-label-selector"
OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist")


@dataclass(frozen=True, slots=True)
class Requirement:
    """One ``matchExpressions`` entry (``matchLabels`` pairs become ``In`` of one value)."""

    key: str
    operator: str
    values: frozenset[str] = frozenset()

    def matches(self, labels: Mapping[str, str]) -> bool:
        value = labels.get(self.key)
        if self.operator == "In":
            return value is not None and value in self.values
        if self.operator == "NotIn":
            return value is None or value not in self.values
        if self.operator == "Exists":
            return value is not None
        return value is None  # DoesNotExist


class LabelSelectorFilter(NamedPlugin):
    """Keeps the endpoints whose labels meet every requirement."""

    __slots__ = ("_requirements",)

    TYPE = TYPE

    def __init__(self, name: str | None = None, *, requirements: Sequence[Requirement]) -> None:
        super().__init__(name)
        self._requirements = tuple(requirements)

    def filter(
        self, cycle: CycleState, request: LLMRequest, endpoints: Sequence[Endpoint]
    ) -> Sequence[Endpoint]:
        requirements = self._requirements
        return [ep for ep in endpoints if all(r.matches(ep.labels) for r in requirements)]


def parse_selector(params: Params) -> list[Requirement]:
    """The requirements of a LabelSelector's ``matchLabels`` and ``matchExpressions``."""
    requirements: list[Requirement] = []
    labels = params.get_raw("matchLabels") or {}
    if not isinstance(labels, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in labels.items()
    ):
        params.fail("matchLabels", f"must map label names to strings, got {labels!r}")
    requirements += [Requirement(k, "In", frozenset({v})) for k, v in labels.items()]
    expressions = params.get_raw("matchExpressions") or []
    if not isinstance(expressions, list):
        params.fail("matchExpressions", f"must be a list, got {expressions!r}")
    for index, raw in enumerate(expressions):
        where = f"matchExpressions[{index}]"
        if not isinstance(raw, Mapping):
            params.fail(where, f"must be a mapping, got {raw!r}")
        unknown = sorted(set(raw) - {"key", "operator", "values"})
        if unknown:
            params.fail(where, f"has unknown key {unknown[0]!r} (known: key, operator, values)")
        key, operator, values = raw.get("key"), raw.get("operator"), raw.get("values") or []
        if not isinstance(key, str) or not key:
            params.fail(where, "needs a 'key'")
        if operator not in OPERATORS:
            params.fail(where, f"operator must be one of {', '.join(OPERATORS)}, got {operator!r}")
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            params.fail(where, f"values must be a list of strings, got {values!r}")
        if operator in ("In", "NotIn") and not values:
            params.fail(where, f"operator {operator} needs values")
        if operator in ("Exists", "DoesNotExist") and values:
            params.fail(where, f"operator {operator} takes no values")
        requirements.append(Requirement(key, str(operator), frozenset(values)))
    return requirements


def factory(name: str, parameters: Mapping[str, Any]) -> LabelSelectorFilter:
    params = Params(TypedName(TYPE, name), parameters)
    requirements = parse_selector(params)
    params.finish()
    return LabelSelectorFilter(name, requirements=requirements)


def deprecated_factory(name: str, parameters: Mapping[str, Any]) -> LabelSelectorFilter:
    """``by-label-selector``: the same filter under the reference's older name."""
    try:
        return factory(name, parameters)
    except SchedulerConfigError as exc:
        raise SchedulerConfigError(str(exc).replace(repr(TYPE), repr(DEPRECATED_TYPE))) from exc


_: type[Filter] = LabelSelectorFilter

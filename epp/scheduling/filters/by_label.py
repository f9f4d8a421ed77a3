"""``by-label``: keep endpoints whose pod has a label with one of some values.

Deprecated in the reference in favour of ``label-selector-filter`` and the role filters,
which it still accepts; ``decode-filter`` is one of these with fixed parameters.
Parameters: ``label`` (required), ``validValues``, ``allowsNoLabel`` (false: an endpoint
without the label is dropped). Static endpoints have no labels.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from epp.datalayer.endpoint import Endpoint
from epp.scheduling.plugin import NamedPlugin, Params
from epp.scheduling.types import CycleState, Filter, LLMRequest, TypedName

__all__ = ["TYPE", "ByLabelFilter", "factory"]

TYPE = "by-label"


class ByLabelFilter(NamedPlugin):
    """Keeps an endpoint whose ``label`` has one of ``values``, or that lacks the label
    when ``allows_no_label``."""

    __slots__ = ("_allows_no_label", "_label", "_values")

    TYPE = TYPE

    def __init__(
        self,
        name: str | None = None,
        *,
        label: str,
        values: Iterable[str],
        allows_no_label: bool = False,
    ) -> None:
        super().__init__(name)
        self._label = label
        self._values = frozenset(values)
        self._allows_no_label = allows_no_label

    def filter(
        self, cycle: CycleState, request: LLMRequest, endpoints: Sequence[Endpoint]
    ) -> Sequence[Endpoint]:
        label, values, allows_none = self._label, self._values, self._allows_no_label
        kept = []
        for endpoint in endpoints:
            value = endpoint.labels.get(label)
            if (value is None and allows_none) or (value is not None and value in values):
                kept.append(endpoint)
        return kept


def factory(name: str, parameters: Mapping[str, Any]) -> ByLabelFilter:
    params = Params(TypedName(TYPE, name), parameters)
    label = params.get_str("label")
    if not label:
        params.fail("label", "is required: the name of the label to look at")
    values = params.get_raw("validValues") or []
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        params.fail("validValues", f"must be a list of strings, got {values!r}")
    allows_no_label = params.get_bool("allowsNoLabel", False)
    if not values and not allows_no_label:
        params.fail("validValues", "is empty and allowsNoLabel is false: nothing could pass")
    params.finish()
    return ByLabelFilter(name, label=label, values=values, allows_no_label=allows_no_label)


_: type[Filter] = ByLabelFilter

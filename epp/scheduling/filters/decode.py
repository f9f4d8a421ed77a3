"""``decode-filter``: keep the endpoints that may decode, which without disaggregation is
every pod not set aside for another stage.

The reference's role label ``llm-d.ai/role``: a pod labelled ``decode``,
``prefill-decode``, ``both`` (deprecated for ``prefill-decode``) or
``encode-prefill-decode`` is kept, and so is a pod without the label (a static endpoint
has none); ``prefill``, ``encode`` or ``encode-prefill`` pods are dropped. llm-d's sample
config for serving without P/D disaggregation lists it. No parameters.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from epp.scheduling.filters.by_label import ByLabelFilter
from epp.scheduling.plugin import Params
from epp.scheduling.types import Filter, TypedName

__all__ = ["DECODE_ROLES", "ROLE_LABEL", "TYPE", "DecodeFilter", "factory"]

TYPE = "decode-filter"
ROLE_LABEL = "llm-d.ai/role"
DECODE_ROLES = frozenset({"decode", "prefill-decode", "both", "encode-prefill-decode"})


class DecodeFilter(ByLabelFilter):
    """A :class:`ByLabelFilter` on ``llm-d.ai/role`` that lets unlabelled pods through."""

    __slots__ = ()

    TYPE = TYPE

    def __init__(self, name: str | None = None) -> None:
        super().__init__(name, label=ROLE_LABEL, values=DECODE_ROLES, allows_no_label=True)


def factory(name: str, parameters: Mapping[str, Any]) -> DecodeFilter:
    Params(TypedName(TYPE, name), parameters).finish()
    return DecodeFilter(name)


_: type[Filter] = DecodeFilter

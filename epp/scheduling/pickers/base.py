"""What every picker shares: how many endpoints it returns, and its source of randomness."""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any, TypeVar

from epp.scheduling.plugin import NamedPlugin, Params
from epp.scheduling.types import TypedName

__all__ = ["DEFAULT_FALLBACKS", "FallbackPicker", "build_picker"]

DEFAULT_FALLBACKS = 2

_PickerT = TypeVar("_PickerT", bound="FallbackPicker")


class FallbackPicker(NamedPlugin):
    """A picker that returns up to ``1 + fallbacks`` endpoints, using ``rng`` for chance."""

    __slots__ = ("_limit", "_rng")

    def __init__(
        self,
        name: str | None = None,
        *,
        fallbacks: int = DEFAULT_FALLBACKS,
        rng: random.Random | None = None,
    ) -> None:
        super().__init__(name)
        if fallbacks < 0:
            raise ValueError(f"fallbacks must be >= 0, got {fallbacks}")
        self._limit = 1 + fallbacks
        self._rng = rng if rng is not None else random.Random()


def build_picker(
    cls: type[_PickerT], type_name: str, name: str, parameters: Mapping[str, Any]
) -> _PickerT:
    """A picker from config parameters ``fallbacks`` and ``seed`` (for reproducible runs).

    The reference's ``maxNumOfEndpoints`` (how many endpoints to return, primary
    included) is ``fallbacks + 1``; give one or the other.
    """
    params = Params(TypedName(type_name, name), parameters)
    if params.has("fallbacks") and params.has("maxNumOfEndpoints"):
        params.fail("maxNumOfEndpoints", "and fallbacks say the same thing; give one")
    fallbacks = params.get_int("fallbacks", DEFAULT_FALLBACKS, min_value=0)
    most = params.get_optional_int("maxNumOfEndpoints", min_value=1)
    if most is not None:
        fallbacks = most - 1
    seed = params.get_optional_int("seed")
    params.finish()
    return cls(name, fallbacks=fallbacks, rng=random.Random(seed) if seed is not None else None)

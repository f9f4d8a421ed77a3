"""``single-profile-handler``: run the one scheduling profile for every request.

That is what epp's scheduler does (the profile named ``default``, else the first), so
the reference's handler is accepted as a statement of it. No parameters.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from epp.scheduling.plugin import Params, SettingsPlugin
from epp.scheduling.types import Plugin, TypedName

__all__ = ["TYPE", "SingleProfileHandler", "factory"]

TYPE = "single-profile-handler"


class SingleProfileHandler(SettingsPlugin):
    """Has no behaviour of its own: see the module docstring."""

    __slots__ = ()

    TYPE = TYPE


def factory(name: str, parameters: Mapping[str, Any]) -> SingleProfileHandler:
    Params(TypedName(TYPE, name), parameters).finish()
    return SingleProfileHandler(name)


_: type[Plugin] = SingleProfileHandler

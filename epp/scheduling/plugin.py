"""Helpers for writing plugins: a named base class and a strict parameter reader."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, NoReturn

from epp.scheduling.errors import SchedulerConfigError
from epp.scheduling.types import TypedName

__all__ = ["NamedPlugin", "Params", "SettingsPlugin"]


class NamedPlugin:
    """Carries a plugin's :class:`TypedName`; subclasses set ``TYPE``."""

    __slots__ = ("_typed_name",)

    TYPE: str = ""

    def __init__(self, name: str | None = None) -> None:
        self._typed_name = TypedName(self.TYPE, name or self.TYPE)

    @property
    def typed_name(self) -> TypedName:
        return self._typed_name

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._typed_name})"


class SettingsPlugin(NamedPlugin):
    """A plugin with no role in a profile: settings other plugins take up when bound
    (``approx-prefix-cache-producer``), or a reference plugin whose job epp does
    anyway (``single-profile-handler``). A profile may list it; it is then skipped."""

    __slots__ = ()


class Params:
    """Reads one plugin's parameters; every error names the plugin and the parameter.

    Unknown keys are an error (:meth:`finish`), so a typo such as ``blocksize`` fails at
    startup instead of silently using the default.

    >>> p = Params(TypedName("queue-scorer", "q"), {"fallbacks": 3})
    >>> p.get_int("fallbacks", 2, min_value=0)
    3
    >>> p.finish()
    """

    __slots__ = ("_raw", "_seen", "_typed_name")

    def __init__(self, typed_name: TypedName, raw: Mapping[str, Any] | None) -> None:
        self._typed_name = typed_name
        self._raw: Mapping[str, Any] = raw if raw is not None else {}
        if not isinstance(self._raw, Mapping):
            raise SchedulerConfigError(
                f"plugin {typed_name.name!r} (type {typed_name.type!r}): parameters must be "
                f"a mapping, got {type(raw).__name__}"
            )
        self._seen: set[str] = set()

    def fail(self, key: str, message: str) -> NoReturn:
        tn = self._typed_name
        raise SchedulerConfigError(
            f"plugin {tn.name!r} (type {tn.type!r}): parameter {key!r} {message}"
        )

    def get_float(
        self, key: str, default: float, *, min_value: float | None = None, positive: bool = False
    ) -> float:
        self._seen.add(key)
        value = self._raw.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.fail(key, f"must be a number, got {value!r}")
        value = float(value)
        if not math.isfinite(value):
            self.fail(key, f"must be finite, got {value!r}")
        if positive and value <= 0.0:
            self.fail(key, f"must be > 0, got {value!r}")
        if min_value is not None and value < min_value:
            self.fail(key, f"must be >= {min_value}, got {value!r}")
        return value

    def get_bool(self, key: str, default: bool) -> bool:
        self._seen.add(key)
        value = self._raw.get(key, default)
        if not isinstance(value, bool):
            self.fail(key, f"must be true or false, got {value!r}")
        return value

    def get_str(self, key: str, default: str = "") -> str:
        self._seen.add(key)
        value = self._raw.get(key, default)
        if value is None:
            return default
        if not isinstance(value, str):
            self.fail(key, f"must be a string, got {value!r}")
        return value

    def get_raw(self, key: str) -> Any:
        """The value as written (None when absent), for a parameter with a shape of its
        own (a mapping, a list); the caller checks it."""
        self._seen.add(key)
        return self._raw.get(key)

    def has(self, key: str) -> bool:
        return key in self._raw

    def get_int(self, key: str, default: int, *, min_value: int | None = None) -> int:
        value = self.get_optional_int(key, min_value=min_value)
        return default if value is None else value

    def get_optional_int(self, key: str, *, min_value: int | None = None) -> int | None:
        self._seen.add(key)
        value = self._raw.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            self.fail(key, f"must be an integer, got {value!r}")
        if min_value is not None and value < min_value:
            self.fail(key, f"must be >= {min_value}, got {value!r}")
        return value

    def finish(self) -> None:
        """Raise if the mapping holds a key no ``get_*`` call asked for."""
        unknown = sorted(str(k) for k in self._raw if k not in self._seen)
        if unknown:
            known = ", ".join(sorted(self._seen)) or "none"
            self.fail(unknown[0], f"is not known (known parameters: {known})")

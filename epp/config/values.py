"""Parsers of one setting's value, as text (a flag, the environment) or YAML (the file).

Each takes what it was given and returns the typed value, or raises ``ValueError``;
:func:`parsed` turns that into a ``ConfigError`` that names where the value came from.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import yaml

from epp.api.openai import model_name_problem
from epp.config.settings import ConfigError
from epp.requestcontrol.model_selection import SelectionRule, parse_rules

__all__ = [
    "Given",
    "boolean",
    "fallback_chain",
    "integer",
    "label_selector",
    "model_name",
    "non_negative_int",
    "one_of",
    "optional_model_name",
    "optional_text",
    "parse_duration_s",
    "parsed",
    "port",
    "ports",
    "positive_duration_s",
    "positive_float",
    "positive_int",
    "selection_rules",
    "whole_seconds",
]

T = TypeVar("T")

# A raw value and where it came from ("flag --grpc-port", "environment EPP_GRPC_PORT"),
# which every error about it names.
Given = tuple[Any, str]


def parsed(parse: Callable[[Any], T], given: Given) -> T:
    """``parse`` applied to a given value; its ``ValueError`` becomes a ``ConfigError``."""
    raw, source = given
    try:
        return parse(raw)
    except ValueError as exc:
        raise ConfigError(f"{source}: {exc}") from exc


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_duration_s(value: Any) -> float:
    """Seconds from a number (seconds) or a Go-style duration string: 50ms, 2s, 1m."""
    if isinstance(value, bool):
        raise ValueError(f"not a duration: {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        match = _DURATION.match(str(value))
        if match is None:
            raise ValueError(f"not a duration: {value!r} (use e.g. 50ms, 2s, 1m)")
        seconds = float(match.group(1)) * _UNIT_S[match.group(2)]
    if seconds < 0:
        raise ValueError(f"duration must not be negative: {value!r}")
    return seconds


def port(value: Any) -> int:
    number = integer(value)
    if not 0 <= number <= 65535:
        raise ValueError(f"port out of range: {value!r}")
    return number


def integer(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError(f"not an integer: {value!r}")
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ValueError(f"not an integer: {value!r}") from None


def one_of(*allowed: str) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        text = str(value).lower()
        if text not in allowed:
            raise ValueError(f"{value!r} is not one of {', '.join(allowed)}")
        return text

    return parse


def boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off"):
        return False
    raise ValueError(f"not a boolean: {value!r} (use true or false)")


def label_selector(value: Any) -> tuple[tuple[str, str], ...]:
    """``app=vllm,env=prod`` (the reference EPP's format: key=value pairs only)."""
    if isinstance(value, Mapping):
        return tuple(sorted((str(k), str(v)) for k, v in value.items()))
    pairs = []
    for part in str(value).split(","):
        key, sep, label = part.strip().partition("=")
        if not sep or not key.strip():
            raise ValueError(f"expected key=value[,key=value...], got {value!r}")
        pairs.append((key.strip(), label.strip()))
    return tuple(sorted(pairs))


def ports(value: Any) -> tuple[int, ...]:
    """``8000,8001`` or a list of numbers."""
    parts = value if isinstance(value, list | tuple) else str(value).split(",")
    numbers = tuple(port(part.strip() if isinstance(part, str) else part) for part in parts)
    if not numbers or 0 in numbers:
        raise ValueError(f"expected port numbers 1-65535, got {value!r}")
    return numbers


def optional_text(value: Any) -> str | None:
    text = str(value).strip()
    return text or None


def positive_duration_s(value: Any) -> float:
    seconds = parse_duration_s(value)
    if seconds == 0:
        raise ValueError("must be greater than zero")
    return seconds


def whole_seconds(value: Any) -> int:
    """A duration rounded up to whole seconds, as HTTP's retry-after takes them."""
    return math.ceil(parse_duration_s(value))


def positive_float(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError(f"not a number: {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"not a number: {value!r}") from None
    if not number > 0:  # also refuses NaN
        raise ValueError(f"must be greater than zero, got {value!r}")
    return number


def positive_int(value: Any) -> int:
    number = integer(value)
    if number < 1:
        raise ValueError(f"must be at least 1, got {value!r}")
    return number


def non_negative_int(value: Any) -> int:
    number = integer(value)
    if number < 0:
        raise ValueError(f"must not be negative, got {value!r}")
    return number


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kKMGT]i?)?[bB]?\s*$")
_SIZE_UNITS = {
    None: 1,
    "k": 10**3,
    "K": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
}


def byte_size(value: Any) -> int:
    """A positive size in bytes: a number, or a Kubernetes-style quantity as the
    reference EPP takes (``4194304``, ``10Mi``, ``10MiB``, ``25MB``, ``1.5Gi``).

    >>> byte_size("10MiB"), byte_size("25MB"), byte_size(4096)
    (10485760, 25000000, 4096)
    """
    if isinstance(value, bool):
        raise ValueError(f"not a size: {value!r}")
    match = _SIZE.match(str(value))
    if match is None:
        raise ValueError(f"not a size (like 4194304, 10Mi, 25MB): {value!r}")
    number, unit = match.groups()
    size = int(float(number) * _SIZE_UNITS[unit])
    if size < 1:
        raise ValueError(f"must be at least 1 byte, got {value!r}")
    return size


def fallback_chain(value: Any) -> tuple[str, ...]:
    """``small,tiny`` or a list of model names."""
    parts = value if isinstance(value, list | tuple) else str(value).split(",")
    chain = tuple(str(part).strip() for part in parts if str(part).strip())
    if not chain:
        raise ValueError("expected one or more fallback model names")
    return chain


def model_name(value: Any) -> str:
    """A name a request's ``model`` could carry (see ``epp.api.openai``)."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"expected a model name, got {value!r}")
    name = value.strip()
    problem = model_name_problem(name)
    if problem is not None:
        raise ValueError(f"the model name {problem}")
    return name


def optional_model_name(value: Any) -> str | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    return model_name(value)


def selection_rules(value: Any) -> tuple[SelectionRule, ...]:
    """Model-selection rules: a list (the file), or its YAML or JSON text (a flag)."""
    if isinstance(value, str):
        try:
            value = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            raise ValueError(f"not a YAML list of rules: {exc}") from None
        if value is None:
            return ()
    return parse_rules(value)

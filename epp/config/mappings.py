"""The settings that map names to values: model fallbacks and objectives' priorities."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from epp.config import values as v

__all__ = ["MAPPINGS", "MappingOption"]


@dataclass(frozen=True, slots=True)
class MappingOption:
    """A setting that maps names to values: a repeatable ``--flag NAME=VALUE``, an env
    variable of space-separated ``NAME=VALUE`` pairs, and a mapping in the file. They
    merge by name: the file's entries, then the environment's, then the flags'."""

    flag: str
    path: tuple[str, ...]
    file_key: str
    parse: Callable[[Any], Any]  # one value, as text (flag, env) or YAML (file)
    metavar: str
    help: str

    @property
    def env(self) -> str:
        return "EPP_" + self.path[-1].upper()

    @property
    def dest(self) -> str:
        return "_".join(self.path)


MAPPINGS: tuple[MappingOption, ...] = (
    MappingOption(
        "--model-fallback",
        ("request_control", "model_fallbacks"),
        "modelFallbacks",
        v.fallback_chain,
        "MODEL=FALLBACK[,FALLBACK...]",
        "models to serve MODEL's requests with, in order, when no ready, healthy "
        "endpoint serves it; repeat for more models (env EPP_MODEL_FALLBACKS, "
        "space-separated)",
    ),
    MappingOption(
        "--objective",
        ("request_control", "objectives"),
        "objectives",
        v.integer,
        "NAME=PRIORITY",
        "the priority of requests naming objective NAME in x-llm-d-inference-objective "
        "(or x-gateway-inference-objective; negative: sheddable), for deployments "
        "without InferenceObjectives; repeatable (env EPP_OBJECTIVES)",
    ),
)

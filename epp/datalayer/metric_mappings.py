"""Which metric names each model-server engine exposes, kept as data.

A :class:`MetricMapping` lists, per signal, the names to look for in order: the first name
present in a scrape wins, so a renamed metric can sit beside its older name (vLLM's
``vllm:kv_cache_usage_perc`` replaced ``vllm:gpu_cache_usage_perc``).

``engine="auto"`` (the default) tries every mapping in :data:`MAPPINGS` order and uses the
first one whose waiting/running/KV names appear in the scrape, so a mixed vLLM and SGLang
pool needs no configuration.

Example::

    mappings = mappings_for("auto")      # (VLLM, SGLANG)
    names = wanted_names(mappings)        # what the parser should keep
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["AUTO", "MAPPINGS", "SGLANG", "VLLM", "MetricMapping", "mappings_for", "wanted_names"]

AUTO = "auto"


@dataclass(frozen=True, slots=True)
class MetricMapping:
    """Metric names of one engine, each signal tried in order (first present wins).

    ``cache_config`` is an info-style metric (value 1) whose labels carry the KV block size
    and block count; ``block_size_label`` and ``num_blocks_label`` name those labels.
    ``lora_info`` is one too: its labels list the LoRA adapters running and waiting
    (comma-separated) and the most that may be loaded; each change of them is a new
    series whose value is when it was made, so the newest series is the current one.
    ``model_label`` is the label on the waiting/running/KV series that names the model
    the server serves (vLLM: its first served model name).
    """

    waiting: tuple[str, ...]
    running: tuple[str, ...]
    kv_usage: tuple[str, ...]
    cache_config: tuple[str, ...] = ()
    block_size_label: str = "block_size"
    num_blocks_label: str = "num_gpu_blocks"
    lora_info: tuple[str, ...] = ()
    lora_running_label: str = "running_lora_adapters"
    lora_waiting_label: str = "waiting_lora_adapters"
    max_lora_label: str = "max_lora"
    model_label: str = "model_name"
    engine: str = "custom"  # shown in logs

    def __post_init__(self) -> None:
        for field_name in ("waiting", "running", "kv_usage", "cache_config", "lora_info"):
            names = getattr(self, field_name)
            if not isinstance(names, tuple) or not all(isinstance(n, str) and n for n in names):
                raise TypeError(f"MetricMapping.{field_name} must be a tuple of names: {names!r}")
        for field_name in ("waiting", "running", "kv_usage"):
            if not getattr(self, field_name):
                raise ValueError(f"MetricMapping.{field_name} needs at least one name")

    def names(self) -> frozenset[str]:
        """Every metric name this mapping reads."""
        return frozenset(
            self.waiting + self.running + self.kv_usage + self.cache_config + self.lora_info
        )

    def required_names(self) -> tuple[str, ...]:
        """The names whose presence identifies this engine (waiting, running, KV use)."""
        return self.waiting + self.running + self.kv_usage


VLLM = MetricMapping(
    waiting=("vllm:num_requests_waiting",),
    running=("vllm:num_requests_running",),
    # The new name first: vLLM v1 renamed gpu_cache_usage_perc (both are fractions 0..1).
    kv_usage=("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"),
    cache_config=("vllm:cache_config_info",),
    block_size_label="block_size",
    num_blocks_label="num_gpu_blocks",
    lora_info=("vllm:lora_requests_info",),
    engine="vllm",
)

SGLANG = MetricMapping(
    waiting=("sglang:num_queue_reqs",),
    running=("sglang:num_running_reqs",),
    kv_usage=("sglang:token_usage",),
    cache_config=("sglang:cache_config_info",),
    block_size_label="page_size",
    num_blocks_label="num_pages",
    engine="sglang",
)

# Order matters for "auto": the first mapping that matches a scrape is used.
MAPPINGS: dict[str, MetricMapping] = {"vllm": VLLM, "sglang": SGLANG}


def mappings_for(engine: str) -> tuple[MetricMapping, ...]:
    """The mappings to try for a configured engine name (``"auto"`` means all of them)."""
    if engine == AUTO:
        return tuple(MAPPINGS.values())
    try:
        return (MAPPINGS[engine],)
    except KeyError:
        known = ", ".join([AUTO, *sorted(MAPPINGS)])
        message = f"unknown model-server engine {engine!r}; expected one of: {known}"
        raise ValueError(message) from None


def wanted_names(mappings: Iterable[MetricMapping]) -> frozenset[str]:
    """The union of the names the given mappings read: the parser's filter."""
    names: set[str] = set()
    for mapping in mappings:
        names |= mapping.names()
    return frozenset(names)

"""Prometheus text exposition (format 0.0.4) of a simulated pod, with vLLM's metric names.

Rendered by hand rather than through a prometheus_client registry: a scrape is one pass
over a few dozen numbers, cheap enough for 50 ms polling of many pods in one process.
The shape follows what vLLM's prometheus_client output looks like: ``# HELP``/``# TYPE``
per family, counters named ``*_total``, float values ("3.0"), labels ``model_name`` and
``engine``, and latency histograms with vLLM's buckets, in simulated seconds (unscaled by
``time_scale``, so a fast-forwarded benchmark still reports GPU-like latencies).

Only the first served model is labelled, as in vLLM, where LoRA adapters share the base
model's series. A pod with adapters (the models after the first) reports them as vLLM
does with ``--enable-lora``: ``vllm:lora_requests_info{max_lora, waiting_lora_adapters,
running_lora_adapters}`` (labels in vLLM's order), a gauge whose labels name the adapters
of waiting and running requests, comma-separated, and whose value is the Unix time the
series was last current (vLLM calls ``set_to_current_time()`` on every update). vLLM never
removes a series, so old adapter combinations stay on the page with older times and a
reader must take the newest; the simulator keeps the last ``LORA_INFO_SERIES`` of them.
The current one is stamped at render time (vLLM's stops at the last engine step).

The simulator's own counter, for benchmarks (not a vLLM metric):
``vllm_sim:lora_adapter_loads_total{source="disk"|"cpu"}``: adapters loaded into a GPU
slot, read from disk or copied from the host-memory cache (``vllm_sim.lora``).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

from vllm_sim.engine import SimEngine
from vllm_sim.faults import Faults
from vllm_sim.histogram import Histogram

__all__ = ["CONTENT_TYPE", "LORA_INFO_SERIES", "LORA_LOADS", "MetricsRenderer"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Adapter combinations kept on the page (vLLM keeps every one it has seen).
LORA_INFO_SERIES = 32
LORA_LOADS = "vllm_sim:lora_adapter_loads_total"


def _esc(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _num(value: float) -> str:
    if value == float("inf"):
        return "+Inf"
    return repr(float(value))


def _family(name: str, kind: str, help_text: str) -> str:
    return f"# HELP {name} {help_text}\n# TYPE {name} {kind}\n"


class MetricsRenderer:
    """Renders one pod's ``/metrics`` page from its engine's live state."""

    def __init__(
        self, engine: SimEngine, models: Sequence[str], *, faults: Faults | None = None
    ) -> None:
        if not models:
            raise ValueError("a pod serves at least one model")
        self._engine = engine
        self._faults = faults or Faults()
        self._models = tuple(models)
        self._labels = f'model_name="{_esc(models[0])}",engine="0"'
        cfg = engine.config
        self._cache_info = (
            _family("vllm:cache_config_info", "gauge", "Information of the LLMEngine CacheConfig")
            + "vllm:cache_config_info{"
            f'block_size="{cfg.kv_block_size}",cache_dtype="auto",enable_prefix_caching="True",'
            f'engine="0",gpu_memory_utilization="0.9",num_cpu_blocks="None",'
            f'num_gpu_blocks="{cfg.kv_num_blocks}"'
            "} 1.0\n"
        )
        self._kv_name = (
            "vllm:gpu_cache_usage_perc" if cfg.legacy_metric_names else "vllm:kv_cache_usage_perc"
        )
        # (waiting, running) adapter lists -> when they were last current, oldest first.
        self._lora_series: dict[tuple[str, str], float] = {}
        self._itl_name = (
            "vllm:time_per_output_token_seconds"
            if cfg.legacy_metric_names
            else "vllm:inter_token_latency_seconds"
        )

    def render(self, names: frozenset[str] | None = None) -> str:
        """The exposition text, ending with a newline.

        ``names`` works like prometheus_client's ``?name[]=`` query (which vLLM's server
        honours): only families with a sample of one of those names are rendered, so a
        scraper that asks for three gauges does not pay for every histogram. ``None``
        renders everything.
        """
        s = self._engine.stats()
        h = self._engine.histograms
        lb = self._labels
        out: list[str] = []

        def scalar(name: str, kind: str, help_text: str, *samples: str) -> None:
            if names is None or name in names:
                out.append(_family(name, kind, help_text))
                out.extend(samples)

        scalar(
            "vllm:num_requests_running",
            "gauge",
            "Number of requests in model execution batches.",
            f"vllm:num_requests_running{{{lb}}} {_num(s.running)}\n",
        )
        scalar(
            "vllm:num_requests_waiting",
            "gauge",
            "Number of requests waiting to be processed.",
            f"vllm:num_requests_waiting{{{lb}}} {_num(s.waiting + self._faults.extra_waiting)}\n",
        )
        scalar(
            self._kv_name,
            "gauge",
            "KV-cache usage. 1 means 100 percent usage.",
            f"{self._kv_name}{{{lb}}} {_num(s.kv_cache_usage)}\n",
        )
        scalar(
            "vllm:prefix_cache_queries_total",
            "counter",
            "Prefix cache queries, in terms of number of queried tokens.",
            f"vllm:prefix_cache_queries_total{{{lb}}} {_num(s.prefix_cache_queries)}\n",
        )
        scalar(
            "vllm:prefix_cache_hits_total",
            "counter",
            "Prefix cache hits, in terms of number of cached tokens.",
            f"vllm:prefix_cache_hits_total{{{lb}}} {_num(s.prefix_cache_hits)}\n",
        )
        scalar(
            "vllm:num_preemptions_total",
            "counter",
            "Cumulative number of preemption from the engine.",
            f"vllm:num_preemptions_total{{{lb}}} {_num(s.preemptions)}\n",
        )
        scalar(
            "vllm:prompt_tokens_total",
            "counter",
            "Number of prefill tokens processed.",
            f"vllm:prompt_tokens_total{{{lb}}} {_num(s.prompt_tokens)}\n",
        )
        scalar(
            "vllm:generation_tokens_total",
            "counter",
            "Number of generation tokens processed.",
            f"vllm:generation_tokens_total{{{lb}}} {_num(s.generation_tokens)}\n",
        )
        scalar(
            "vllm:request_success_total",
            "counter",
            "Count of successfully processed requests.",
            # Every simulated request stops on its token budget.
            f'vllm:request_success_total{{{lb},finished_reason="stop"}} 0.0\n',
            f'vllm:request_success_total{{{lb},finished_reason="length"}} '
            f"{_num(s.request_success)}\n",
        )
        if names is None or "vllm:cache_config_info" in names:
            out.append(self._cache_info)
        if s.lora is not None:
            if names is None or "vllm:lora_requests_info" in names:
                out.append(self._lora_info(s.running_by_model, s.waiting_by_model))
            scalar(
                LORA_LOADS,
                "counter",
                "Simulator only: LoRA adapters loaded into a GPU slot, by where from.",
                f'{LORA_LOADS}{{source="disk"}} {_num(s.lora.loads_from_disk)}\n',
                f'{LORA_LOADS}{{source="cpu"}} {_num(s.lora.loads_from_cpu)}\n',
            )
        for name, help_text, hist in (
            (
                "vllm:time_to_first_token_seconds",
                "Histogram of time to first token in seconds.",
                h.ttft_s,
            ),
            (
                self._itl_name,
                "Histogram of inter-token latency in seconds.",
                h.inter_token_latency_s,
            ),
            (
                "vllm:e2e_request_latency_seconds",
                "Histogram of e2e request latency in seconds.",
                h.e2e_latency_s,
            ),
            (
                "vllm:request_queue_time_seconds",
                "Histogram of time spent in WAITING phase for request.",
                h.queue_time_s,
            ),
            ("vllm:request_prompt_tokens", "Number of prefill tokens processed.", h.prompt_tokens),
            (
                "vllm:request_generation_tokens",
                "Number of generation tokens processed.",
                h.generation_tokens,
            ),
        ):
            if names is None or {f"{name}_bucket", f"{name}_count", f"{name}_sum"} & names:
                self._histogram(out, name, help_text, hist)
        return "".join(out)

    def _lora_info(self, running: Mapping[str, int], waiting: Mapping[str, int]) -> str:
        adapters = [m for m in self._models if m in self._engine.lora_adapters]
        key = (
            ",".join(m for m in adapters if waiting.get(m)),
            ",".join(m for m in adapters if running.get(m)),
        )
        series = self._lora_series
        series.pop(key, None)
        series[key] = time.time()  # newest last
        while len(series) > LORA_INFO_SERIES:
            del series[next(iter(series))]
        max_lora = self._engine.config.max_loras
        lines = [_family("vllm:lora_requests_info", "gauge", "Running stats on lora requests.")]
        lines.extend(
            f'vllm:lora_requests_info{{max_lora="{max_lora}",'
            f'waiting_lora_adapters="{_esc(w)}",running_lora_adapters="{_esc(r)}"}} '
            f"{_num(stamp)}\n"
            for (w, r), stamp in series.items()
        )
        return "".join(lines)

    def _histogram(self, out: list[str], name: str, help_text: str, hist: Histogram) -> None:
        out.append(_family(name, "histogram", help_text))
        lb = self._labels
        bounds = (*hist.bounds, float("inf"))
        for bound, count in zip(bounds, hist.cumulative(), strict=True):
            out.append(f'{name}_bucket{{{lb},le="{_num(bound)}"}} {_num(count)}\n')
        out.append(f"{name}_count{{{lb}}} {_num(hist.count)}\n")
        out.append(f"{name}_sum{{{lb}}} {_num(hist.sum)}\n")

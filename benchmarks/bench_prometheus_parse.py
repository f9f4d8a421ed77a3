"""Micro-benchmark: epp's filtering Prometheus parser against prometheus_client's parser.

Builds a ~60 KB vLLM-like /metrics payload (histograms per model and data-parallel engine,
counters with _created series, process/GC metrics), then times, per call:

  epp parse_samples        the filtering parser, with the names the "auto" mapping wants
  epp parse+extract        the same plus detect_mapping/extract_metrics: one scrape's CPU
  split+startswith (ref.)  str.split, then map(str.startswith) per line: locating only
  find per name (ref.)     one str.find per wanted name over the text: locating only
  prometheus_client        list(text_string_to_metric_families(text)): full parse

Prints a table and writes benchmarks/results/prometheus_parse.json. Ratios are the
figure to read; absolute times on shared 2-core machines are noisy.

    python benchmarks/bench_prometheus_parse.py [--repeat 7] [--target-kb 60]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from itertools import compress, repeat
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from prometheus_client.metrics_core import Metric  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from epp.datalayer.endpoint import Metrics  # noqa: E402
from epp.datalayer.extract import detect_mapping, extract_metrics  # noqa: E402
from epp.datalayer.metric_mappings import mappings_for, wanted_names  # noqa: E402
from epp.datalayer.prometheus_text import Sample, parse_samples  # noqa: E402

HISTOGRAMS: dict[str, list[float]] = {
    "vllm:time_to_first_token_seconds": [
        0.001,
        0.005,
        0.01,
        0.02,
        0.04,
        0.06,
        0.08,
        0.1,
        0.25,
        0.5,
        0.75,
        1.0,
        2.5,
        5.0,
        7.5,
        10.0,
        20.0,
        40.0,
        80.0,
        160.0,
        640.0,
        2560.0,
    ],
    "vllm:inter_token_latency_seconds": [
        0.01,
        0.025,
        0.05,
        0.075,
        0.1,
        0.15,
        0.2,
        0.3,
        0.4,
        0.5,
        0.75,
        1.0,
        2.5,
        5.0,
        7.5,
        10.0,
        20.0,
        40.0,
        80.0,
    ],
    "vllm:e2e_request_latency_seconds": [
        0.3,
        0.5,
        0.8,
        1.0,
        1.5,
        2.0,
        2.5,
        5.0,
        10.0,
        15.0,
        20.0,
        30.0,
        40.0,
        50.0,
        60.0,
        120.0,
        240.0,
        480.0,
        960.0,
        1920.0,
        7680.0,
    ],
    "vllm:request_queue_time_seconds": [
        0.3,
        0.5,
        0.8,
        1.0,
        1.5,
        2.0,
        2.5,
        5.0,
        10.0,
        15.0,
        20.0,
        30.0,
        40.0,
        50.0,
        60.0,
        120.0,
    ],
    "vllm:request_prefill_time_seconds": [
        0.3,
        0.5,
        0.8,
        1.0,
        1.5,
        2.0,
        2.5,
        5.0,
        10.0,
        15.0,
        20.0,
        30.0,
        40.0,
        50.0,
        60.0,
        120.0,
    ],
    "vllm:request_decode_time_seconds": [
        0.3,
        0.5,
        0.8,
        1.0,
        1.5,
        2.0,
        2.5,
        5.0,
        10.0,
        15.0,
        20.0,
        30.0,
        40.0,
        50.0,
        60.0,
        120.0,
    ],
    "vllm:request_prompt_tokens": [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000],
    "vllm:request_generation_tokens": [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000],
    "vllm:iteration_tokens_total": [1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384],
}
COUNTERS = [
    "vllm:prompt_tokens",
    "vllm:generation_tokens",
    "vllm:num_preemptions",
    "vllm:prefix_cache_queries",
    "vllm:prefix_cache_hits",
]
MODEL = "meta-llama/Llama-3.1-8B-Instruct"


def build_payload(target_bytes: int) -> str:
    """A vLLM-like exposition text of about ``target_bytes``: as many data-parallel engines
    as fit, then per-LoRA-adapter success counters until the target is reached."""
    engines = 1
    while engines < 64 and len(_payload(engines + 1)) <= target_bytes:
        engines += 1
    text = _payload(engines)
    extra = ["# TYPE vllm:lora_request_success_total counter"]
    size = len(text) + len(extra[0]) + 1
    adapter = 0
    while size < target_bytes:
        line = (
            f'vllm:lora_request_success_total{{engine="0",lora_name="adapter-{adapter}",'
            f'model_name="{MODEL}"}} {adapter * 3.0}'
        )
        extra.append(line)
        size += len(line) + 1
        adapter += 1
    return text + "\n".join(extra) + "\n"


def _payload(engines: int) -> str:
    out: list[str] = []
    for name, doc in (
        ("python_gc_objects_collected_total", "Objects collected during gc"),
        ("python_gc_collections_total", "Number of times this generation"),
    ):
        out += [f"# HELP {name} {doc}", f"# TYPE {name} counter"]
        out += [f'{name}{{generation="{g}"}} {1234.0 * (g + 1)}' for g in range(3)]
    for name in (
        "process_virtual_memory_bytes",
        "process_resident_memory_bytes",
        "process_start_time_seconds",
        "process_cpu_seconds_total",
        "process_open_fds",
        "process_max_fds",
    ):
        out += [f"# HELP {name} process metric", f"# TYPE {name} gauge", f"{name} 1.2345e+09"]
    out += [
        "# HELP vllm:cache_config_info Information of the LLMEngine CacheConfig",
        "# TYPE vllm:cache_config_info gauge",
        'vllm:cache_config_info{block_size="16",cache_dtype="auto",calculate_kv_scales="False",'
        'enable_prefix_caching="True",gpu_memory_utilization="0.9",is_attention_free="False",'
        'num_cpu_blocks="None",num_gpu_blocks="27000",prefix_caching_hash_algo="builtin",'
        'sliding_window="None",swap_space="4",swap_space_bytes="4294967296"} 1.0',
        "# HELP vllm:lora_requests_info Running stats on lora requests.",
        "# TYPE vllm:lora_requests_info gauge",
        'vllm:lora_requests_info{max_lora="4",running_lora_adapters="sql-lora,\\"odd\\" one",'
        'waiting_lora_adapters=""} 1.7e+09',
    ]
    # As prometheus_client writes it: each family's series together, under one HELP/TYPE.
    all_labels = [f'engine="{e}",model_name="{MODEL}"' for e in range(engines)]
    for name, value in (
        ("vllm:num_requests_running", 7),
        ("vllm:num_requests_waiting", 3),
        ("vllm:kv_cache_usage_perc", 0.42),
    ):
        out += [f"# HELP {name} gauge", f"# TYPE {name} gauge"]
        out += [f"{name}{{{labels}}} {value}" for labels in all_labels]
    for name in COUNTERS:
        out += [f"# HELP {name}_total counter", f"# TYPE {name}_total counter"]
        for labels in all_labels:
            out.append(f"{name}_total{{{labels}}} 123456.0")
            out.append(f"{name}_created{{{labels}}} 1.7000000001e+09")
    out += [
        "# HELP vllm:request_success_total counter",
        "# TYPE vllm:request_success_total counter",
    ]
    for labels in all_labels:
        for reason in ("stop", "length", "abort"):
            out.append(f'vllm:request_success_total{{{labels},finished_reason="{reason}"}} 42.0')
    for name, buckets in HISTOGRAMS.items():
        out += [f"# HELP {name} histogram", f"# TYPE {name} histogram"]
        for labels in all_labels:
            count = 0
            for bound in buckets:
                count += 17
                out.append(f'{name}_bucket{{{labels},le="{float(bound)}"}} {float(count)}')
            out.append(f'{name}_bucket{{{labels},le="+Inf"}} {float(count)}')
            out.append(f"{name}_count{{{labels}}} {float(count)}")
            out.append(f"{name}_sum{{{labels}}} 1234.5678")
            out.append(f"{name}_created{{{labels}}} 1.7000000001e+09")
    return "\n".join(out) + "\n"


def find_per_name(text: str, names: frozenset[str]) -> dict[str, list[str]]:
    """Reference: one str.find of "\\n" + name per wanted name over the whole text (only
    locates the lines; the design epp's parser measured against and did not take)."""
    found: dict[str, list[str]] = {}
    for name in names:
        needle = "\n" + name
        start = text.find(needle)
        while start >= 0:
            end = text.find("\n", start + 1)
            line = text[start + 1 : end if end >= 0 else len(text)]
            if line[len(name) : len(name) + 1] in ("{", " "):
                found.setdefault(name, []).append(line)
            start = text.find(needle, start + 1)
    return found


def split_startswith(text: str, names: frozenset[str]) -> list[str]:
    """Reference: split into lines, then one C-level tuple startswith() per line (only
    locates the lines; the other design epp's parser measured against)."""
    lines = text.split("\n")
    prefixes = tuple(names)
    return list(compress(lines, map(str.startswith, lines, repeat(prefixes))))


def time_call(fn: Callable[[], object], repeat: int) -> dict[str, float]:
    """Median and best µs per call over ``repeat`` rounds of an auto-sized loop."""
    fn()
    loops = 1
    while True:
        started = time.perf_counter()
        for _ in range(loops):
            fn()
        if time.perf_counter() - started >= 0.2:
            break
        loops *= 2
    rounds = []
    for _ in range(repeat):
        started = time.perf_counter()
        for _ in range(loops):
            fn()
        rounds.append((time.perf_counter() - started) / loops * 1e6)
    return {"median_us": statistics.median(rounds), "best_us": min(rounds), "loops": loops}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--target-kb", type=float, default=60.0)
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks/results/prometheus_parse.json"
    )
    args = parser.parse_args()

    text = build_payload(int(args.target_kb * 1024))
    mappings = mappings_for("auto")
    names = wanted_names(mappings)

    def epp_parse() -> dict[str, list[Sample]]:
        return parse_samples(text, names)

    def epp_extract() -> Metrics:
        samples = parse_samples(text, names)
        mapping = detect_mapping(samples, mappings)
        assert mapping is not None
        return extract_metrics(samples, mapping, updated_at=1.0)

    def client_parse() -> list[Metric]:
        return list(text_string_to_metric_families(text))

    # Same answers before timing anything.
    metrics = epp_extract()
    assert metrics.running_requests > 0, metrics
    running = sum(
        sample.value
        for family in client_parse()
        for sample in family.samples
        if sample.name == "vllm:num_requests_running"
    )
    assert running == metrics.running_requests, (running, metrics)

    cases = {
        "epp parse_samples": epp_parse,
        "epp parse+extract": epp_extract,
        "split+startswith (ref.)": lambda: split_startswith(text, names),
        "find per name (ref.)": lambda: find_per_name(text, names),
        "prometheus_client": client_parse,
    }
    results = {label: time_call(fn, args.repeat) for label, fn in cases.items()}
    baseline = results["prometheus_client"]["median_us"]
    for result in results.values():
        result["speedup_vs_prometheus_client"] = baseline / result["median_us"]

    lines = text.count("\n")
    print(
        f"payload: {len(text):,} bytes, {lines:,} lines, {len(names)} wanted names; "
        f"Python {platform.python_version()}"
    )
    print(f"{'parser':<28}{'median µs':>12}{'best µs':>12}{'x faster':>12}")
    for label, result in results.items():
        print(
            f"{label:<28}{result['median_us']:>12.1f}{result['best_us']:>12.1f}"
            f"{result['speedup_vs_prometheus_client']:>12.1f}"
        )

    args.out.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "benchmark": "prometheus_parse",
        "python": platform.python_version(),
        "machine": platform.machine(),
        "payload_bytes": len(text),
        "payload_lines": lines,
        "wanted_names": sorted(names),
        "results": results,
    }
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

"""``vllm-sim``: run a fleet of simulated vLLM pods until SIGINT or SIGTERM.

``python -m vllm_sim`` is the same command, and ``epp sim`` builds its subcommand from
``configure_parser`` and ``run``, so it takes the same arguments.

Example::

    vllm-sim --pod 127.0.0.1:8001=qwen2-1-5b --pod 127.0.0.1:8002=qwen2-1-5b,lora-a
    vllm-sim --pods 16 --first-port 8100 --model llama-3-1-8b --time-scale 0.1
    vllm-sim --pods 4 --first-port 8100 --model qwen --enable-lora --max-loras 2 \
        --max-cpu-loras 4 --lora-modules travel-helper-v1=/adapters/v1 travel-helper-v2=/adapters/v2

LoRA flags are spelled as vLLM spells them: ``--enable-lora``, ``--max-loras``,
``--max-cpu-loras`` and ``--lora-modules NAME=PATH ...`` (or vLLM's JSON form
``'{"name": ..., "path": ...}'``), which adds the adapters to every pod. Models after the
first in ``--pod ADDR=MODEL,...`` are adapters too (with LoRA on for that pod). The
simulator's own: ``--lora-load-ms`` and ``--lora-activate-ms`` (see ``vllm_sim.config``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import uvloop

from vllm_sim.config import SimConfig
from vllm_sim.fleet import PodSpec, SimFleet

__all__ = [
    "config_from_args",
    "configure_parser",
    "main",
    "parse_lora_module",
    "parse_pod",
    "run",
    "specs_from_args",
]

log = logging.getLogger("vllm_sim")

_DEFAULTS = SimConfig()

# Flag -> (SimConfig field, type, flag units per field unit, help).
_ENGINE_FLAGS: dict[str, tuple[str, type, float, str]] = {
    "--max-num-seqs": ("max_num_seqs", int, 1, "requests running at once per pod"),
    "--max-num-batched-tokens": ("max_num_batched_tokens", int, 1,
                                 "tokens one engine step may process (chunked-prefill budget)"),
    "--kv-num-blocks": ("kv_num_blocks", int, 1, "KV-cache blocks per pod"),
    "--kv-block-size": ("kv_block_size", int, 1, "tokens per KV-cache block"),
    "--prefill-ms-per-token": ("prefill_s_per_token", float, 1e3,
                               "compute time per token a step processes (prefill and decode)"),
    "--decode-ms-per-token": ("decode_s_per_token", float, 1e3,
                              "time of a decode step at batch 1 (all weights read once)"),
    "--kv-read-ns-per-token": ("kv_read_s_per_token", float, 1e9,
                               "step time per context token of each decoding sequence"),
    "--decode-ms-per-seq": ("decode_s_per_seq", float, 1e3,
                            "extra step time per decoding sequence"),
    "--base-latency-ms": ("base_latency_s", float, 1e3,
                          "front-end delay of every request before it is scheduled"),
    "--default-max-tokens": ("default_max_tokens", int, 1,
                             "output tokens when a request sets no max_tokens"),
    "--max-model-len": ("max_model_len", int, 1,
                        "context length reported by /tokenize and /v1/models"),
    "--time-scale": ("time_scale", float, 1,
                     "multiplies every simulated delay; 0 runs steps back to back"),
    "--max-loras": ("max_loras", int, 1,
                    "LoRA adapters on the GPU at once, and the most distinct ones per step"),
    "--lora-load-ms": ("lora_load_s", float, 1e3,
                       "reading an adapter that is not in host memory from disk"),
    "--lora-activate-ms": ("lora_activate_s", float, 1e3,
                           "copying an adapter from host memory into a GPU slot"),
}  # fmt: skip


def parse_pod(value: str) -> PodSpec:
    """Parse ``HOST:PORT=MODEL[,MODEL...]`` (host optional, IPv6 in brackets)."""
    addr, sep, models = value.partition("=")
    names = tuple(m.strip() for m in models.split(",") if m.strip())
    host, colon, port = addr.rpartition(":")
    if not sep or not names or not colon or not port.isdigit():
        raise argparse.ArgumentTypeError(
            f"expected HOST:PORT=MODEL[,MODEL...], e.g. 127.0.0.1:8001=qwen2-1-5b; got {value!r}"
        )
    host = host.strip("[]") or "127.0.0.1"
    try:
        return PodSpec(host=host, port=int(port), models=names)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def parse_lora_module(value: str) -> tuple[str, str]:
    """Parse one ``--lora-modules`` item: ``NAME=PATH`` or ``{"name": ..., "path": ...}``."""
    if value.lstrip().startswith("{"):
        try:
            item = json.loads(value)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"invalid JSON in --lora-modules: {exc}") from exc
        if not isinstance(item, dict):
            item = {}
        name, path = item.get("name"), item.get("path")
    else:
        name, sep, path = value.partition("=")
        if not sep:
            path = None
    if not isinstance(name, str) or not isinstance(path, str) or not name or not path:
        raise argparse.ArgumentTypeError(
            f'expected NAME=PATH or {{"name": ..., "path": ...}}; got {value!r}'
        )
    if "," in name:
        raise argparse.ArgumentTypeError(f"an adapter name cannot hold a comma: {name!r}")
    return name, path


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Add the simulator's arguments to ``parser``."""
    parser.add_argument(
        "--pod",
        dest="pods",
        action="append",
        type=parse_pod,
        default=[],
        metavar="ADDR=MODEL[,MODEL...]",
        help="a pod to run (repeatable); models after the first act as LoRA adapters",
    )
    fleet = parser.add_argument_group("a fleet of like pods (with or instead of --pod)")
    fleet.add_argument(
        "--pods",
        dest="pod_count",
        type=int,
        default=0,
        metavar="N",
        help="run N pods on consecutive ports from --first-port",
    )
    fleet.add_argument("--first-port", type=int, default=None, metavar="PORT")
    fleet.add_argument(
        "--model",
        dest="fleet_model",
        default=None,
        metavar="MODEL",
        help="the model every --pods pod serves",
    )
    fleet.add_argument(
        "--host",
        dest="fleet_host",
        default="127.0.0.1",
        metavar="HOST",
        help="where the --pods pods listen (default: %(default)s)",
    )

    engine = parser.add_argument_group(
        "engine (defaults: Llama-3.1-8B bf16 on one H100 80GB under vLLM V1; see README)"
    )
    lora = parser.add_argument_group("LoRA adapters (vLLM's flags, and the load times)")
    for name, (field, kind, unit, text) in _ENGINE_FLAGS.items():
        default = getattr(_DEFAULTS, field) * unit
        group = lora if field.startswith(("max_loras", "lora_")) else engine
        group.add_argument(
            name, type=kind, default=None, metavar="N", help=f"{text} (default: {default:g})"
        )
    engine.add_argument(
        "--legacy-metric-names",
        action="store_true",
        help="emit vllm:gpu_cache_usage_perc instead of vllm:kv_cache_usage_perc",
    )
    lora.add_argument("--enable-lora", action="store_true", help="serve LoRA adapters")
    lora.add_argument(
        "--lora-modules",
        nargs="+",
        action="extend",
        type=parse_lora_module,
        default=[],
        metavar="NAME=PATH",
        help="adapters every pod serves (needs --enable-lora)",
    )
    lora.add_argument(
        "--max-cpu-loras",
        type=int,
        default=None,
        metavar="N",
        help="adapters kept in host memory, >= --max-loras (default: --max-loras)",
    )


def config_from_args(args: argparse.Namespace) -> SimConfig:
    """The ``SimConfig`` the parsed flags describe; raises ValueError on a bad value."""
    values: dict[str, Any] = {
        "legacy_metric_names": args.legacy_metric_names,
        "max_cpu_loras": args.max_cpu_loras,
    }
    for name, (field, _, unit, _) in _ENGINE_FLAGS.items():
        value = getattr(args, name.removeprefix("--").replace("-", "_"))
        if value is not None:
            values[field] = value / unit if unit != 1 else value
    return replace(_DEFAULTS, **values)


def specs_from_args(args: argparse.Namespace) -> list[PodSpec]:
    """Every ``--pod``, then the ``--pods`` fleet; raises ValueError on a bad combination."""
    specs: list[PodSpec] = list(args.pods)
    if args.pod_count:
        if args.pod_count < 0 or args.first_port is None or not args.fleet_model:
            raise ValueError("--pods N needs N >= 1, --first-port and --model")
        specs += [
            PodSpec(host=args.fleet_host, port=args.first_port + i, models=(args.fleet_model,))
            for i in range(args.pod_count)
        ]
    modules: list[tuple[str, str]] = args.lora_modules
    if modules and not args.enable_lora:
        raise ValueError("--lora-modules needs --enable-lora")
    if len({name for name, _ in modules}) != len(modules):
        raise ValueError("an adapter is named twice in --lora-modules")
    if modules:
        specs = [_with_adapters(spec, modules) for spec in specs]
    return specs


def _with_adapters(spec: PodSpec, modules: list[tuple[str, str]]) -> PodSpec:
    clash = [name for name, _ in modules if name in spec.models]
    if clash:
        raise ValueError(f"pod {spec.host}:{spec.port} already serves {', '.join(clash)}")
    return replace(
        spec,
        models=(*spec.models, *(name for name, _ in modules)),
        lora_paths=(*spec.lora_paths, *modules),
    )


async def _serve(specs: list[PodSpec], config: SimConfig) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        async with SimFleet(specs, config) as fleet:
            for pod in fleet.pods:
                log.info("sim pod %s serving %s", pod.address, ",".join(pod.models))
            await stop.wait()
            log.info("sim: shutting down %d pods", len(fleet.pods))
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


def run(args: argparse.Namespace) -> int:
    """Run the pods named by ``args`` on uvloop until SIGINT/SIGTERM; return the exit code."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if log.getEffectiveLevel() > logging.INFO:
        log.setLevel(logging.INFO)
    try:
        specs = specs_from_args(args)
        config = config_from_args(args)
    except ValueError as exc:
        log.error("sim: %s", exc)
        return 2
    if not specs:
        log.error(
            "sim: give at least one --pod ADDR=MODEL (e.g. --pod 127.0.0.1:8001=qwen2-1-5b)"
            " or --pods N --first-port PORT --model MODEL"
        )
        return 2
    try:
        uvloop.run(_serve(specs, config))
    except OSError as exc:
        log.error("sim: cannot start: %s", exc)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """The ``vllm-sim`` command: parse ``argv`` (default: the process's) and ``run`` it."""
    parser = argparse.ArgumentParser(
        prog="vllm-sim", description="Run simulated vLLM model servers until SIGINT or SIGTERM."
    )
    configure_parser(parser)
    return run(parser.parse_args(argv))

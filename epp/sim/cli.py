"""``epp sim``: run a fleet of simulated vLLM pods until SIGINT or SIGTERM.

Example::

    epp sim --pod 127.0.0.1:8001=qwen2-1-5b --pod 127.0.0.1:8002=qwen2-1-5b,lora-a
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal

import uvloop

from epp.sim.engine import SimConfig
from epp.sim.fleet import PodSpec, SimFleet

__all__ = ["config_from_args", "configure_parser", "parse_pod", "run"]

log = logging.getLogger("epp.sim")

_DEFAULTS = SimConfig()


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
    parser.add_argument(
        "--max-num-seqs",
        type=int,
        default=_DEFAULTS.max_num_seqs,
        help="requests running at once per pod (default: %(default)s)",
    )
    parser.add_argument(
        "--kv-num-blocks",
        type=int,
        default=_DEFAULTS.kv_num_blocks,
        help="KV-cache blocks per pod (default: %(default)s)",
    )
    parser.add_argument(
        "--kv-block-size",
        type=int,
        default=_DEFAULTS.kv_block_size,
        help="tokens per KV-cache block (default: %(default)s)",
    )
    parser.add_argument(
        "--prefill-ms-per-token",
        type=float,
        default=_DEFAULTS.prefill_s_per_token * 1000,
        help="prefill time per uncached prompt token (default: %(default)s)",
    )
    parser.add_argument(
        "--decode-ms-per-token",
        type=float,
        default=_DEFAULTS.decode_s_per_token * 1000,
        help="time per generated token (default: %(default)s)",
    )
    parser.add_argument(
        "--base-latency-ms",
        type=float,
        default=_DEFAULTS.base_latency_s * 1000,
        help="fixed time before the first token (default: %(default)s)",
    )
    parser.add_argument(
        "--default-max-tokens",
        type=int,
        default=_DEFAULTS.default_max_tokens,
        help="output tokens when a request sets no max_tokens (default: %(default)s)",
    )
    parser.add_argument(
        "--time-scale",
        type=float,
        default=_DEFAULTS.time_scale,
        help="multiplies every simulated delay; 0 disables sleeping (default: %(default)s)",
    )
    parser.add_argument(
        "--legacy-metric-names",
        action="store_true",
        help="emit vllm:gpu_cache_usage_perc instead of vllm:kv_cache_usage_perc",
    )


def config_from_args(args: argparse.Namespace) -> SimConfig:
    """The ``SimConfig`` the parsed flags describe; raises ValueError on a bad value."""
    return SimConfig(
        max_num_seqs=args.max_num_seqs,
        kv_num_blocks=args.kv_num_blocks,
        kv_block_size=args.kv_block_size,
        prefill_s_per_token=args.prefill_ms_per_token / 1000,
        decode_s_per_token=args.decode_ms_per_token / 1000,
        base_latency_s=args.base_latency_ms / 1000,
        default_max_tokens=args.default_max_tokens,
        time_scale=args.time_scale,
        legacy_metric_names=args.legacy_metric_names,
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
    specs: list[PodSpec] = list(args.pods)
    if not specs:
        log.error("sim: give at least one --pod ADDR=MODEL, e.g. --pod 127.0.0.1:8001=qwen2-1-5b")
        return 2
    try:
        config = config_from_args(args)
    except ValueError as exc:
        log.error("sim: %s", exc)
        return 2
    try:
        uvloop.run(_serve(specs, config))
    except OSError as exc:
        log.error("sim: cannot start: %s", exc)
        return 1
    return 0

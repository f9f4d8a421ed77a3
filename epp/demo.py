"""``epp demo``: Envoy → epp → three simulated vLLM pods on this machine, for curl.

What ``make run`` starts (``make run REPLICAS=2``: ``epp demo --replicas 2``, several epp
replicas behind the one Envoy, sharing their decisions through a redis-server the demo
starts). Every process it starts is stopped on Ctrl-C (or SIGTERM).
"""

from __future__ import annotations

import argparse
import signal
import socket
import tempfile
import threading
from pathlib import Path

from epp.envoy_config import EnvoyPorts, envoy_bootstrap
from epp.stack import (
    ManagedProcess,
    StackError,
    free_port,
    start_envoy,
    start_epp_module,
    start_redis,
)

__all__ = ["DEMO_MODELS", "DEMO_MODEL_SELECTION", "configure_parser", "run"]

# The models of the three pods: two share a model so routing has a choice to make. The
# qwen2-1-5b pods also serve two LoRA adapters of it (models after the first), with room
# for both on the GPU at once (--max-loras 2).
DEMO_MODELS = (
    ("qwen2-1-5b", "travel-helper-v1", "travel-helper-v2"),
    ("qwen2-1-5b", "travel-helper-v1", "travel-helper-v2"),
    ("gemma-2-2b",),
)
DEMO_MAX_LORAS = 2
# More replicas than this on one machine only compete for its cores.
MAX_DEMO_REPLICAS = 8
# "model": "auto": questions about code go to gemma-2-2b, everything else to qwen2-1-5b.
DEMO_MODEL_SELECTION = (
    "--model-selection-default",
    "qwen2-1-5b",
    "--model-selection-rules",
    "[{name: coding, model: gemma-2-2b, keywords: [code, python, function, bug, error]}]",
)


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--listen-port", type=int, default=8080, help="Envoy's HTTP port")
    parser.add_argument("--admin-port", type=int, default=9901, help="Envoy's admin port")
    parser.add_argument(
        "--grpc-port",
        type=int,
        default=9002,
        help="epp's ext_proc port (replica i: this port + i)",
    )
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=9090,
        help="epp's /metrics port (replica i: this port + i)",
    )
    parser.add_argument(
        "--replicas",
        type=_replica_count,
        default=1,
        help="epp replicas behind Envoy, sharing state through a redis-server (1-8)",
    )
    parser.add_argument(
        "--first-pod-port",
        type=int,
        default=8001,
        help="the simulated pods listen here and on the next two ports",
    )
    parser.add_argument(
        "--body-mode",
        choices=("FULL_DUPLEX_STREAMED", "BUFFERED"),
        default="FULL_DUPLEX_STREAMED",
        help="ext_proc request body mode",
    )
    parser.add_argument(
        "--log-dir",
        type=Path,
        default=None,
        help="where each process writes its log (default: a temp dir)",
    )


def run(args: argparse.Namespace) -> int:
    log_dir: Path = args.log_dir or Path(tempfile.mkdtemp(prefix="epp-demo-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    pods = [
        (f"127.0.0.1:{args.first_pod_port + i}", ",".join(models))
        for i, models in enumerate(DEMO_MODELS)
    ]
    replicas = range(args.replicas)
    ports = [args.listen_port, args.admin_port]
    ports += [args.grpc_port + i for i in replicas] + [args.metrics_port + i for i in replicas]
    ports += [args.first_pod_port + i for i in range(len(pods))]
    busy = [port for port in ports if not _port_is_free(port)]
    if busy:
        print(
            f"epp demo: port(s) {', '.join(map(str, busy))} already in use; "
            "stop what holds them (another `make run`?) or pass other ports"
        )
        return 1

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())

    started: list[ManagedProcess] = []
    try:
        sim_args = ["sim", "--max-loras", str(DEMO_MAX_LORAS)] + [
            arg for address, model in pods for arg in ("--pod", f"{address}={model}")
        ]
        sim = start_epp_module("sim", sim_args, log_dir=log_dir)
        started.append(sim)
        for address, _ in pods:
            sim.wait_http(f"http://{address}/health")

        sync_args: list[str] = []
        redis_url = ""
        if args.replicas > 1:
            redis_port = free_port()
            started.append(start_redis(redis_port, log_dir=log_dir))
            redis_url = f"redis://127.0.0.1:{redis_port}/0"
            sync_args = ["--sync-redis-url", redis_url]
        for i in replicas:
            name = "epp" if args.replicas == 1 else f"epp-{i}"
            epp_args = [
                "serve",
                "--grpc-host",
                "127.0.0.1",
                "--grpc-port",
                str(args.grpc_port + i),
                "--grpc-health-port",
                "0",
                "--metrics-host",
                "127.0.0.1",
                "--metrics-port",
                str(args.metrics_port + i),
            ]
            epp_args += [a for address, model in pods for a in ("--endpoint", f"{address}={model}")]
            epp_args += DEMO_MODEL_SELECTION
            if sync_args:
                epp_args += [*sync_args, "--replica-id", name]
            epp = start_epp_module(name, epp_args, log_dir=log_dir)
            started.append(epp)
            epp.wait_http(f"http://127.0.0.1:{args.metrics_port + i}/readyz")

        envoy_ports = EnvoyPorts(
            listen_port=args.listen_port,
            admin_port=args.admin_port,
            epp_port=args.grpc_port,
            more_epp_ports=tuple(args.grpc_port + i for i in replicas[1:]),
        )
        started.append(
            start_envoy(
                envoy_bootstrap(envoy_ports, body_mode=args.body_mode),
                admin_port=args.admin_port,
                log_dir=log_dir,
            )
        )
    except StackError as exc:
        print(f"epp demo: {exc}")
        _stop_all(started)
        return 1

    replicas_text = ""
    if args.replicas > 1:
        replicas_text = _replicas_banner(
            args.replicas, args.grpc_port, args.metrics_port, redis_url
        )
    banner = _banner(
        args.listen_port, args.grpc_port, args.metrics_port, pods, log_dir, replicas_text
    )
    print(banner, flush=True)
    while not stop.wait(0.5):
        for process in started:
            if process.process.poll() is not None:
                print(f"epp demo: {process.name} exited; stopping.\n{process.log_tail()}")
                stop.set()
    print("\nepp demo: stopping Envoy, epp and the simulated pods...", flush=True)
    _stop_all(started)
    print("epp demo: stopped.")
    return 0


def _replica_count(text: str) -> int:
    count = int(text)
    if not 1 <= count <= MAX_DEMO_REPLICAS:
        raise argparse.ArgumentTypeError(f"between 1 and {MAX_DEMO_REPLICAS}, not {count}")
    return count


def _replicas_banner(replicas: int, grpc_port: int, metrics_port: int, redis_url: str) -> str:
    last = replicas - 1
    return (
        f"{replicas} epp replicas (ext_proc :{grpc_port}-:{grpc_port + last}, /metrics "
        f":{metrics_port}-:{metrics_port + last}) share their picks through {redis_url}\n"
        f"  curl -s http://127.0.0.1:{metrics_port}/metrics | grep ^epp_sync_\n"
    )


def _stop_all(processes: list[ManagedProcess]) -> None:
    for process in reversed(processes):
        process.stop()


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _banner(
    listen_port: int,
    grpc_port: int,
    metrics_port: int,
    pods: list[tuple[str, str]],
    log_dir: Path,
    replicas_text: str = "",
) -> str:
    url = f"http://127.0.0.1:{listen_port}"
    fleet = ", ".join(f"{model.split(',')[0]} on {address}" for address, model in pods)
    adapters = sorted({a for _, model in pods for a in model.split(",")[1:]})
    return f"""
epp demo is up: Envoy {url} -> epp (ext_proc :{grpc_port}) -> simulated vLLM pods
  {fleet}
  LoRA adapters of qwen2-1-5b: {", ".join(adapters)}
Logs: {log_dir}
{replicas_text}
Try:
  curl -si {url}/v1/chat/completions -H 'content-type: application/json' \\
    -d '{{"model": "qwen2-1-5b", "messages": [{{"role": "user", "content": "Hello!"}}]}}'
  curl -sN {url}/v1/completions -H 'content-type: application/json' \\
    -d '{{"model": "gemma-2-2b", "prompt": "Once upon a time", "max_tokens": 8, "stream": true}}'
  curl -si {url}/v1/chat/completions -H 'content-type: application/json' \\
    -d '{{"model": "auto", "messages": [{{"role": "user", "content": "Fix this Python bug"}}]}}'
  curl -si {url}/v1/chat/completions -H 'content-type: application/json' \\
    -d '{{"model": "travel-helper-v1", "messages": [{{"role": "user", "content": "Lisbon?"}}]}}'
  curl -s {url}/v1/models
  curl -si {url}/v1/chat/completions -d '{{"model": "no-such-model", "messages": []}}'
  curl -s http://127.0.0.1:{metrics_port}/metrics | grep ^inference_

The x-sim-pod response header names the pod that served each request; for "model":
"auto", x-selected-model names the model epp chose (code questions: gemma-2-2b).
Press Ctrl-C to stop everything.
"""

"""What LOGGED mode's Lua response meter costs Envoy, per request, against no script.

One Envoy, one listener per script, each proxying to a pod (aiohttp, here) that streams
a chat completion the way vLLM does by default: one SSE event per token, each written
on its own (``--tokens``, 100), then the usage event and ``[DONE]``. Rounds alternate
the listeners; each runs ``--seconds`` of 8 concurrent requests and reads Envoy's CPU
from /proc. The table gives the median CPU per request and, per script, what it adds
over the listener without one.

    python benchmarks/bench_response_meter.py                         # this tree's script
    git worktree add /tmp/epp-before HEAD~1
    python benchmarks/bench_response_meter.py --baseline /tmp/epp-before

Writes benchmarks/results/response_meter.json.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from aiohttp import web

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from epp.envoy_response_meter import LUA_SOURCE  # noqa: E402
from epp.stack import free_port, start_envoy  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "response_meter.json"
_TOKEN_EVENT = (
    b'data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"m",'
    b'"choices":[{"index":0,"delta":{"content":"tok%d"},"logprobs":null,'
    b'"finish_reason":null}]}\n\n'
)
_USAGE_EVENT = (
    b'data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"m",'
    b'"choices":[],"usage":{"prompt_tokens":17,"total_tokens":117,"completion_tokens":100}}\n\n'
)
_CONCURRENCY = 8


def _pod(tokens: int) -> web.Application:
    async def stream(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        for i in range(tokens):
            await response.write(_TOKEN_EVENT % i)
            await asyncio.sleep(0.0003)  # a token at a time, as a decode step sends it
        await response.write(_USAGE_EVENT)
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_post("/v1/chat/completions", stream)
    return app


def _listener(name: str, port: int, lua: str | None) -> dict[str, Any]:
    filters: list[dict[str, Any]] = []
    if lua is not None:
        filters.append(
            {
                "name": "envoy.filters.http.lua",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua",
                    "default_source_code": {"inline_string": lua},
                },
            }
        )
    filters.append(
        {
            "name": "envoy.filters.http.router",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
            },
        }
    )
    route = {"match": {"prefix": "/"}, "route": {"cluster": "pod"}}
    manager = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network."
        "http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": name,
        "route_config": {"virtual_hosts": [{"name": name, "domains": ["*"], "routes": [route]}]},
        "http_filters": filters,
    }
    return {
        "name": name,
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [
            {
                "filters": [
                    {
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": manager,
                    }
                ]
            }
        ],
    }


def _bootstrap(
    admin: int, pod: int, listeners: dict[str, tuple[int, str | None]]
) -> dict[str, Any]:
    endpoint = {"address": {"socket_address": {"address": "127.0.0.1", "port_value": pod}}}
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
        "static_resources": {
            "listeners": [_listener(n, port, lua) for n, (port, lua) in listeners.items()],
            "clusters": [
                {
                    "name": "pod",
                    "type": "STATIC",
                    "connect_timeout": "1s",
                    "load_assignment": {
                        "cluster_name": "pod",
                        "endpoints": [{"lb_endpoints": [{"endpoint": endpoint}]}],
                    },
                }
            ],
        },
    }


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _baseline_source(tree: Path) -> str:
    """The LUA_SOURCE of another checkout's epp/envoy_response_meter.py."""
    spec = importlib.util.spec_from_file_location(
        "baseline_response_meter", tree / "epp" / "envoy_response_meter.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return str(module.LUA_SOURCE)


async def _run(args: argparse.Namespace) -> dict[str, list[float]]:
    scripts: dict[str, str | None] = {"none": None, "this tree": LUA_SOURCE}
    if args.baseline is not None:
        scripts["baseline"] = _baseline_source(args.baseline)
    runner = web.AppRunner(_pod(args.tokens))
    await runner.setup()
    pod = free_port()
    await web.TCPSite(runner, "127.0.0.1", pod).start()
    listeners = {name: (free_port(), lua) for name, lua in scripts.items()}
    admin = free_port()
    work = Path(tempfile.mkdtemp(prefix="epp-meter-bench-"))
    envoy = await asyncio.to_thread(
        start_envoy, _bootstrap(admin, pod, listeners), admin_port=admin, log_dir=work
    )
    samples: dict[str, list[float]] = {name: [] for name in scripts}
    try:
        async with httpx.AsyncClient(timeout=30) as client:

            async def one(port: int) -> None:
                response = await client.post(
                    f"http://127.0.0.1:{port}/v1/chat/completions", content=b"{}"
                )
                if response.status_code != 200 or b'"usage"' not in response.content:
                    raise RuntimeError(f"bad answer through port {port}: {response.status_code}")

            for port, _ in listeners.values():  # warm up connections and the Lua states
                await asyncio.gather(*(one(port) for _ in range(20)))
            for _ in range(args.rounds):
                for name, (port, _) in listeners.items():
                    before, count = _cpu_seconds(envoy.process.pid), 0
                    deadline = time.monotonic() + args.seconds
                    while time.monotonic() < deadline:
                        await asyncio.gather(*(one(port) for _ in range(_CONCURRENCY)))
                        count += _CONCURRENCY
                    spent = _cpu_seconds(envoy.process.pid) - before
                    samples[name].append(1000 * spent / count)
    finally:
        envoy.stop()
        await runner.cleanup()
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=100, help="SSE events (chunks) per answer")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=4.0, help="per listener and round")
    parser.add_argument("--baseline", type=Path, help="another checkout, for its script")
    args = parser.parse_args()
    samples = asyncio.run(_run(args))
    medians = {name: statistics.median(values) for name, values in samples.items()}
    print(f"{'script':<10} {'Envoy CPU ms/req':>17} {'over none':>10}")
    for name, median in medians.items():
        print(f"{name:<10} {median:>17.3f} {median - medians['none']:>10.3f}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "benchmark": "LOGGED response meter, Envoy CPU per request",
                "tokens": args.tokens,
                "rounds": args.rounds,
                "baseline": str(args.baseline) if args.baseline else None,
                "median_ms": medians,
                "samples_ms": samples,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()

"""Run simulated pods, one aiohttp server each, in the current event loop.

Example::

    async with SimFleet([PodSpec(models=("m",)), PodSpec(models=("m",))],
                        SimConfig(time_scale=0)) as fleet:
        urls = [f"http://{pod.address}" for pod in fleet.pods]
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType

from aiohttp import web

from vllm_sim.config import SimConfig
from vllm_sim.engine import SimEngine, SleepFn
from vllm_sim.server import create_app

__all__ = ["PodSpec", "RunningPod", "SimFleet", "start_pod"]

# Long enough for a stream to finish its last write, short enough for snappy test teardown.
DEFAULT_SHUTDOWN_TIMEOUT_S = 1.0


@dataclass(frozen=True, slots=True)
class PodSpec:
    """Where one pod listens and what it serves. Port 0 picks a free port."""

    host: str = "127.0.0.1"
    port: int = 0
    models: tuple[str, ...] = ("sim-model",)
    # Reported in x-sim-pod; defaults to the bound "host:port".
    name: str | None = None
    # Overrides the fleet's config for this pod (e.g. one slow pod in a benchmark).
    config: SimConfig | None = None
    # Where each adapter (a model after the first) was loaded from, as vLLM's
    # --lora-modules NAME=PATH gives it; /v1/models reports it as the adapter's root.
    lora_paths: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port out of range: {self.port}")
        if not self.models or any(not m or "," in m for m in self.models):
            raise ValueError(f"models must be non-empty names without commas: {self.models!r}")
        if len(set(self.models)) != len(self.models):
            raise ValueError(f"a model is listed twice: {self.models!r}")
        unknown = [name for name, _ in self.lora_paths if name not in self.models[1:]]
        if unknown:
            raise ValueError(f"paths given for models that are not adapters here: {unknown}")

    @property
    def adapters(self) -> tuple[str, ...]:
        """The LoRA adapters: every model after the first (the base model)."""
        return self.models[1:]


class RunningPod:
    """A listening pod. ``address`` is "host:port" with the port actually bound."""

    def __init__(
        self, spec: PodSpec, engine: SimEngine, runner: web.AppRunner, port: int, name: str
    ) -> None:
        self.spec = spec
        self.engine = engine
        self.port = port
        self.name = name
        self._runner = runner
        host = f"[{spec.host}]" if ":" in spec.host else spec.host
        self.address = f"{host}:{port}"
        self.url = f"http://{self.address}"

    @property
    def models(self) -> tuple[str, ...]:
        """The models this pod serves; the first is the base model."""
        return self.spec.models

    async def close(self) -> None:
        """Stop listening, give in-flight requests a moment, cancel them, stop the engine."""
        try:
            await self._runner.cleanup()
        finally:
            await self.engine.close()


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        # Lets a restarted demo reuse its ports while old connections sit in TIME_WAIT.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


async def start_pod(
    spec: PodSpec,
    config: SimConfig | None = None,
    *,
    sleep: SleepFn | None = None,
    shutdown_timeout_s: float = DEFAULT_SHUTDOWN_TIMEOUT_S,
) -> RunningPod:
    """Bind ``spec``'s address and start serving; raises OSError if the port is taken.

    ``spec.config`` wins over ``config``; ``sleep`` replaces ``asyncio.sleep`` in the
    engine (tests use it to hold requests in flight).
    """
    engine = SimEngine(
        spec.config or config or SimConfig(), sleep=sleep, lora_adapters=spec.adapters
    )
    sock = _bind(spec.host, spec.port)
    port: int = sock.getsockname()[1]
    host = f"[{spec.host}]" if ":" in spec.host else spec.host
    name = spec.name or f"{host}:{port}"
    app = create_app(engine, models=spec.models, name=name, lora_paths=dict(spec.lora_paths))
    # Cancel a handler when its client goes away, so an abandoned request frees its
    # slot like vLLM's abort on disconnect.
    runner = web.AppRunner(
        app, access_log=None, handler_cancellation=True, shutdown_timeout=shutdown_timeout_s
    )
    try:
        await runner.setup()
        await web.SockSite(runner, sock).start()
    except BaseException:
        await runner.cleanup()
        sock.close()
        raise
    return RunningPod(spec, engine, runner, port, name)


class SimFleet:
    """Async context manager that starts every pod on enter and closes them on exit."""

    def __init__(
        self,
        specs: Sequence[PodSpec],
        config: SimConfig | None = None,
        *,
        sleep: SleepFn | None = None,
        shutdown_timeout_s: float = DEFAULT_SHUTDOWN_TIMEOUT_S,
    ) -> None:
        self.specs = tuple(specs)
        self.config = config
        self.pods: list[RunningPod] = []
        self._sleep = sleep
        self._shutdown_timeout_s = shutdown_timeout_s

    @property
    def addresses(self) -> list[str]:
        """The bound "host:port" of every pod, in spec order."""
        return [pod.address for pod in self.pods]

    async def start(self) -> None:
        """Start all pods; if one fails, close the ones already started and re-raise."""
        results = await asyncio.gather(
            *(
                start_pod(
                    s, self.config, sleep=self._sleep, shutdown_timeout_s=self._shutdown_timeout_s
                )
                for s in self.specs
            ),
            return_exceptions=True,
        )
        started = [r for r in results if isinstance(r, RunningPod)]
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            await asyncio.gather(*(pod.close() for pod in started))
            raise errors[0]
        self.pods = started

    async def close(self) -> None:
        """Close every pod."""
        pods, self.pods = self.pods, []
        await asyncio.gather(*(pod.close() for pod in pods))

    async def __aenter__(self) -> SimFleet:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

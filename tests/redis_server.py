"""A real redis-server on a free loopback port, for the tests of replicas sharing state
(epp/sync): started, killed and restarted on the same port."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from epp.stack import ManagedProcess, StackError, free_port, start_redis

__all__ = ["RedisServer", "redis_binary", "started"]


def redis_binary() -> str:
    """The redis-server binary; skips the test when it is missing (CI installs it)."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed (apt-get install -y redis-server)")
    return binary


class RedisServer:
    """redis-server without persistence on 127.0.0.1:``port``."""

    def __init__(self, log_dir: Path) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._log_dir = log_dir
        self._starts = 0
        self.process: ManagedProcess | None = None

    def start(self) -> None:
        self._starts += 1
        redis_binary()  # skips the test when it is missing
        self.process = start_redis(self.port, log_dir=self._log_dir, name=f"redis-{self._starts}")

    def kill(self) -> None:
        """SIGKILL: connections drop without a goodbye, as when Redis crashes."""
        if self.process is not None:
            self.process.process.kill()
            self.process.stop()
            self.process = None

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
            self.process = None


def started(log_dir: Path) -> RedisServer:
    """A started server; stopped again if it does not come up."""
    server = RedisServer(log_dir)
    try:
        server.start()
    except StackError:
        server.stop()
        raise
    return server

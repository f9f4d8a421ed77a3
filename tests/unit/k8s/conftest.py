"""A fake API server per test, and a lightkube client pointed at it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import pytest_asyncio
from lightkube import AsyncClient

from epp.k8s.client import make_client
from tests.kube_fake import FakeKubeAPI


@pytest_asyncio.fixture
async def api() -> AsyncIterator[FakeKubeAPI]:
    async with FakeKubeAPI() as server:
        yield server


@pytest_asyncio.fixture
async def client(api: FakeKubeAPI, tmp_path: Path) -> AsyncIterator[AsyncClient]:
    kubeconfig = api.write_kubeconfig(tmp_path / "kubeconfig")
    client = make_client(str(kubeconfig), timeout_s=2.0)
    yield client
    await client.close()


async def eventually(check: Callable[[], object], timeout_s: float = 10.0) -> None:
    """Wait until ``check()`` is truthy; fail with its last value."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"condition still false after {timeout_s}s: {check!r} -> {value!r}")
        await asyncio.sleep(0.02)

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.redis_server import RedisServer, started


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = started(tmp_path)
    yield server
    server.stop()

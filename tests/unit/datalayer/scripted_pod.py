"""A model server whose every answer is scripted byte for byte, on a real socket, for the
tests of the scraper's HTTP/1.1 client."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

BODY = (
    b'vllm:num_requests_running{engine="0",model_name="m"} 3.0\n'
    b'vllm:num_requests_waiting{engine="0",model_name="m"} 5.0\n'
    b'vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.25\n'
    b'vllm:cache_config_info{block_size="16",num_gpu_blocks="27000"} 1.0\n'
)
OK_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"


def with_length(body: bytes = BODY, head: bytes = OK_HEAD) -> bytes:
    return head + b"Content-Length: %d\r\n\r\n" % len(body) + body


def chunked(body: bytes = BODY, size: int = 100) -> bytes:
    parts = [
        b"%x;ext=1\r\n%s\r\n" % (len(body[i : i + size]), body[i : i + size])
        for i in range(0, len(body), size)
    ]
    return OK_HEAD + b"Transfer-Encoding: chunked\r\n\r\n" + b"".join(parts) + b"0\r\n\r\n"


# What the scripted pod does with each request: a list of (bytes to send, close after).
Script = Callable[[int], tuple[list[bytes], bool]]


class ScriptedPod:
    """A TCP server that answers the n-th request (counted over all connections) as
    ``script(n)`` says: the pieces to write one by one, then whether to close."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.requests = 0
        self.connections = 0
        self.raw_requests: list[bytes] = []
        self._server: asyncio.Server | None = None
        self.port = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                try:
                    request = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                self.raw_requests.append(request)
                pieces, close = self.script(self.requests)
                self.requests += 1
                for piece in pieces:
                    writer.write(piece)
                    await writer.drain()
                    await asyncio.sleep(0)
                if close:
                    return
        finally:
            writer.close()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()


def always(pieces: list[bytes], close: bool = False) -> Script:
    return lambda _n: (pieces, close)

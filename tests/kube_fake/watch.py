"""Watch streams: chunked, newline-delimited JSON events, one handler per open watch.

Each stream gets the store's events through a queue fed from whichever thread wrote (so test
helpers may write from any thread), filters them itself, and can be ended from any thread:
cleanly (as when `timeoutSeconds` runs out) or by closing the connection mid-stream.
"""

from __future__ import annotations

import asyncio
import json
import threading
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from .resources import ResourceType
from .selectors import Predicate, SelectorError, make_filter
from .store import Event, KubeError, Store, bad_request, filter_event

__all__ = ["JSON_HEADERS", "Watches", "hang_up", "request_filter", "truthy"]

Obj = dict[str, Any]

JSON_HEADERS = {"Content-Type": "application/json"}


def truthy(value: str | None) -> bool:
    return value in ("true", "1")


def request_filter(namespace: str | None, labels: str, fields: str) -> Predicate:
    """A request's namespace and selectors as one predicate; a bad selector is a 400."""
    try:
        return make_filter(namespace, labels, fields)
    except SelectorError as exc:
        raise bad_request(str(exc)) from exc


def hang_up(request: web.Request) -> None:
    """Close the connection under the request: the client sees it end mid-response."""
    if request.transport is not None:
        request.transport.close()


class _Signal:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


_DROP = _Signal("DROP")  # close the connection mid-stream
_END = _Signal("END")  # end the stream cleanly
_BOOKMARK = _Signal("BOOKMARK")


@dataclass(eq=False)
class _Stream:
    path: str
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[Event | _Signal] = field(default_factory=asyncio.Queue)

    def send(self, item: Event | _Signal) -> None:
        """Thread-safe: the store calls this from whichever thread wrote."""
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)
        except RuntimeError:  # the loop is gone: the server has stopped
            pass


@dataclass(frozen=True)
class _Options:
    matches: Predicate
    since: int | None  # None: start with the current objects
    initial_events_end: bool  # sendInitialEvents: mark the end of the initial state
    timeout_s: float | None
    bookmarks: bool

    @classmethod
    def parse(cls, query: Any, namespace: str | None) -> _Options:
        matches = request_filter(
            namespace, query.get("labelSelector", ""), query.get("fieldSelector", "")
        )
        initial = truthy(query.get("sendInitialEvents"))
        rv = query.get("resourceVersion")
        try:
            since = None if initial or rv in (None, "", "0") else int(rv)
            timeout_s = float(query.get("timeoutSeconds") or 0) or None  # 0: no limit
        except ValueError:
            raise bad_request("resourceVersion and timeoutSeconds must be numbers") from None
        bookmarks = truthy(query.get("allowWatchBookmarks"))
        return cls(matches, since, initial and bookmarks, timeout_s, bookmarks)


def _line(event_type: str, obj: Obj) -> bytes:
    return json.dumps({"type": event_type, "object": obj}).encode() + b"\n"


def _bookmark(rt: ResourceType, rv: int, annotations: Obj | None = None) -> bytes:
    meta: Obj = {"resourceVersion": str(rv)}
    if annotations:
        meta["annotations"] = annotations
    return _line("BOOKMARK", {"kind": rt.kind, "apiVersion": rt.api_version, "metadata": meta})


class Watches:
    """The open watch streams of one server."""

    def __init__(self, store: Store, bookmark_interval_s: float) -> None:
        self.store = store
        self.bookmark_interval_s = bookmark_interval_s
        self._lock = threading.Lock()
        self._open: set[_Stream] = set()

    def count(self, path_substring: str = "") -> int:
        with self._lock:
            return sum(path_substring in s.path for s in self._open)

    def end_all(self) -> None:
        for stream in self._take():
            stream.send(_END)

    def drop_all(self) -> None:
        for stream in self._take():
            stream.send(_DROP)

    def _take(self) -> tuple[_Stream, ...]:
        """Forget the open streams at once, so `count` no longer sees the ones being ended."""
        with self._lock:
            streams = tuple(self._open)
            self._open.clear()
        return streams

    async def serve(
        self, request: web.Request, rt: ResourceType, namespace: str | None
    ) -> web.StreamResponse:
        options = _Options.parse(request.query, namespace)
        stream = _Stream(request.path, asyncio.get_running_loop())
        response = web.StreamResponse(headers=JSON_HEADERS)
        response.enable_chunked_encoding()
        try:
            sub = self.store.subscribe(rt, options.since, stream.send)
        except KubeError as exc:
            # The real server accepts the watch, then reports the expiry as its only event.
            await response.prepare(request)
            await response.write(_line("ERROR", exc.status()))
            return response

        with self._lock:
            self._open.add(stream)
        ticker = asyncio.create_task(self._tick(stream)) if options.bookmarks else None
        try:
            await response.prepare(request)
            rv = sub.rv  # every event up to here has been sent or filtered out
            for event in sub.initial:
                if seen := filter_event(event, options.matches):
                    await response.write(_line(*seen))
            if options.initial_events_end:  # how client-go's WatchList learns it has all
                await response.write(_bookmark(rt, rv, {"k8s.io/initial-events-end": "true"}))
            async with asyncio.timeout(options.timeout_s):
                while (item := await stream.queue.get()) not in (_DROP, _END):
                    if item is _BOOKMARK:
                        await response.write(_bookmark(rt, rv))
                    elif isinstance(item, Event):
                        rv = item.rv
                        if seen := filter_event(item, options.matches):
                            await response.write(_line(*seen))
                if item is _DROP:
                    hang_up(request)
        except TimeoutError:
            pass  # timeoutSeconds: end the stream cleanly
        finally:
            sub.close()
            with self._lock:
                self._open.discard(stream)
            if ticker:
                ticker.cancel()
        return response

    async def _tick(self, stream: _Stream) -> None:
        while True:
            await asyncio.sleep(self.bookmark_interval_s)
            stream.queue.put_nowait(_BOOKMARK)

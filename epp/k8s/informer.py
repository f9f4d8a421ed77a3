"""A local, always-current copy of one collection of Kubernetes objects.

The informer lists the collection, then watches it from the list's resourceVersion,
applying each event to its copy and calling ``on_change`` with the whole new copy. It
re-lists when the API server says the version is too old (410 Gone) and after any other
watch failure, retrying with capped exponential back-off. While the API server cannot be
reached, the last known copy stays: epp keeps routing to the endpoints it knew.

A watch that stays silent cannot be told apart from a dead connection, so each watch
asks the server to end it after ``watch_timeout_s`` and is abandoned locally a little
after that; the next one resumes from the last resourceVersion seen, without a re-list.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Mapping
from typing import Any

from lightkube import AsyncClient
from lightkube.core.exceptions import ApiError

__all__ = ["Informer", "object_key"]

log = logging.getLogger(__name__)


def object_key(obj: Any) -> str:
    """``namespace/name`` of a lightkube object (typed model or generic dict)."""
    metadata = obj.metadata
    return f"{metadata.namespace or ''}/{metadata.name}"


def _kind_name(resource: type) -> str:
    """``Pod``, or ``InferenceObjective.llm-d.ai``: a kind can live in two groups."""
    definition = resource._api_info.resource  # type: ignore[attr-defined]
    return f"{definition.kind}.{definition.group}" if definition.group else definition.kind


class Informer:
    """Keeps ``objects`` in sync with the API server; see the module docstring.

    ``on_change(objects)`` is called on the event loop after every list and every change;
    it must not block, and must copy what it keeps (the mapping changes in place).
    ``synced`` is set after the first successful list.
    """

    def __init__(
        self,
        client: AsyncClient,
        resource: type,
        *,
        namespace: str | None,
        on_change: Callable[[Mapping[str, Any]], None],
        labels: Mapping[str, str] | None = None,
        fields: Mapping[str, str] | None = None,
        watch_timeout_s: int = 300,
        backoff_initial_s: float = 0.2,
        backoff_max_s: float = 10.0,
    ) -> None:
        self._client = client
        self._resource = resource
        self._namespace = namespace
        self._labels: dict[str, Any] | None = dict(labels) if labels else None
        self._fields: dict[str, Any] | None = dict(fields) if fields else None
        self._on_change = on_change
        self._watch_timeout_s = watch_timeout_s
        self._backoff_initial_s = backoff_initial_s
        self._backoff_max_s = backoff_max_s
        self.objects: dict[str, Any] = {}
        self.synced = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.description = _kind_name(resource) + (f" in {namespace}" if namespace else "")

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"informer {self.description}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

    async def _run(self) -> None:
        backoff = self._backoff_initial_s
        said_missing = False
        while True:
            try:
                version = await self._list()
                backoff = self._backoff_initial_s
                await self._watch_from(version)
            except asyncio.CancelledError:
                raise
            except ApiError as exc:
                if exc.status.code == 410:
                    log.info("%s: watch expired (410 Gone); listing again", self.description)
                    continue
                if exc.status.code == 404 and not self.synced.is_set():
                    # An optional CRD that is not installed: say so once, retry slowly.
                    if not said_missing:
                        log.info(
                            "%s: not found on the API server (CRD not installed?); "
                            "retrying every %gs",
                            self.description,
                            self._backoff_max_s,
                        )
                        said_missing = True
                    backoff = self._backoff_max_s
                    await asyncio.sleep(backoff)
                    continue
                log.warning(
                    "%s: API error %s (%s); keeping the last known state, retrying in %.1fs",
                    self.description,
                    exc.status.code,
                    exc.status.message,
                    backoff,
                )
            except Exception as exc:  # the API server is unreachable or the stream broke
                log.warning(
                    "%s: %s: %s; keeping the last known state, retrying in %.1fs",
                    self.description,
                    type(exc).__name__,
                    exc or "no detail",
                    backoff,
                )
            await asyncio.sleep(backoff * random.uniform(0.8, 1.2))
            backoff = min(backoff * 2, self._backoff_max_s)

    async def _list(self) -> str:
        listing: Any = self._client.list(
            self._resource, namespace=self._namespace, labels=self._labels, fields=self._fields
        )
        objects = {object_key(obj): obj async for obj in listing}
        version: str = listing.resourceVersion
        self.objects = objects
        if not self.synced.is_set():
            log.info("%s: synced, %d objects", self.description, len(objects))
            self.synced.set()  # before on_change, so the listener sees itself synced
        self._on_change(self.objects)
        return version

    async def _watch_from(self, version: str) -> None:
        """Apply watch events until a watch fails; each watch is bounded in time."""
        while True:
            try:
                async with asyncio.timeout(self._watch_timeout_s + 15):
                    version = await self._watch_once(version)
            except TimeoutError:
                log.debug(
                    "%s: watch ended locally after %ds; resuming from %s",
                    self.description,
                    self._watch_timeout_s,
                    version,
                )

    async def _watch_once(self, version: str) -> str:
        events: Any = self._client.watch(
            self._resource,
            namespace=self._namespace,
            labels=self._labels,
            fields=self._fields,
            resource_version=version,
            server_timeout=self._watch_timeout_s,
        )  # lightkube's default on_error raises: the loop in _run decides what follows
        async for event_type, obj in events:
            version = obj.metadata.resourceVersion or version
            key = object_key(obj)
            if event_type == "DELETED":
                if self.objects.pop(key, None) is None:
                    continue
            elif event_type in ("ADDED", "MODIFIED"):
                self.objects[key] = obj
            else:  # BOOKMARK: only the version moves
                continue
            self._on_change(self.objects)
        return version

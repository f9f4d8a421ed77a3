"""Replicas share their routing decisions through Redis pub/sub.

Routing stays local: every replica keeps its own prefix index and in-flight counts and
decides without waiting on anyone. What it decides is published on one channel, in
batches (:mod:`epp.sync.codec`): the prefixes it recorded at its picks, and its
in-flight count on each endpoint whose count changed. Each replica applies the others'
batches: their prefixes go into its own index (``PrefixIndex.add``), their counts onto
the endpoints (``Endpoint.set_remote_inflight``), which the load scorers read.

- Batching: a pick, or a count that grew, wakes the publisher, which waits ``batch_s``
  (a few ms) and sends everything gathered as one message: one publish per burst, not
  per request. A count that only fell (a request finished) waits up to ``10 * batch_s``
  for the next pick to ride with: a finish seen late makes the others avoid a pod a
  little longer, a start seen late lets a burst pile onto it.
- Heartbeat: every ``heartbeat_s`` a full batch (every count) goes out even when idle, so
  a count lost in transit is corrected, and the others know this replica is alive. A
  replica not heard from for ``expire_s`` is forgotten (its counts dropped); one that
  stops cleanly says goodbye with an empty full batch.
- Losing Redis: the replica keeps routing on its own view, logs once, sets
  ``epp_sync_connected`` to 0, drops what it would publish (it would be stale) and
  reconnects with capped exponential back-off. Remote counts expire as their replicas go
  quiet. Requests never wait on Redis: the request path only appends to bounded buffers.
- The subscriber hears this replica's own heartbeats too: a connection that delivers
  nothing for ``expire_s`` is taken as dead even when no error says so.

Every Redis call has a timeout. Anyone who can publish on the channel can steer
routing: keep Redis reachable by the replicas alone (a password in the URL, a
NetworkPolicy).
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from epp.datalayer.endpoint import Endpoint
from epp.datalayer.store import EndpointStore
from epp.scheduling.scheduler import Scheduler
from epp.scheduling.types import SharedIndex
from epp.sync.codec import MAX_MESSAGE_BYTES, Batch, CodecError, Pick, decode, encode
from epp.sync.remote import RemoteLoad

__all__ = ["RedisSync", "SyncStats", "default_replica_id"]

log = logging.getLogger(__name__)

_MAX_PENDING_PICKS = 10_000  # picks waiting for the next batch; more are dropped
_MIN_BACKOFF_S = 0.1
_MAX_BACKOFF_S = 5.0
_POLL_S = 0.5  # how long one subscriber read waits before checking liveness


def default_replica_id() -> str:
    """``hostname-pid``: unique per process, and readable in logs."""
    return f"{socket.gethostname()}-{os.getpid()}"[:255]


@dataclass(slots=True)
class SyncStats:
    """Counters for ``/metrics`` (epp/observability/sync_metrics.py)."""

    published_batches: int = 0
    published_bytes: int = 0
    received_batches: int = 0
    received_picks: int = 0
    invalid_batches: int = 0  # undecodable, or a replica over the cap
    dropped_picks: int = 0  # not published: the buffer was full or Redis unreachable
    disconnects: int = 0


class RedisSync:
    """Shares this replica's decisions with the others over ``channel`` at ``url``.

    Implements :class:`epp.director.LoadSharing`; :meth:`start` once the store and the
    director exist, :meth:`stop` at shutdown.
    """

    def __init__(
        self,
        url: str,
        store: EndpointStore,
        *,
        channel: str = "epp:sync",
        replica_id: str | None = None,
        batch_s: float = 0.005,
        heartbeat_s: float = 1.0,
        expire_s: float = 5.0,
        timeout_s: float = 1.0,
    ) -> None:
        if not 0 < heartbeat_s < expire_s:
            raise ValueError("need 0 < heartbeat_s < expire_s")
        self._url = url
        self._channel = channel
        self.replica_id = replica_id or default_replica_id()
        self._store = store
        self._batch_s = batch_s
        self._heartbeat_s = heartbeat_s
        self._expire_s = expire_s
        self._timeout_s = timeout_s
        self.remote = RemoteLoad(store.get, expire_s=expire_s)
        self.stats = SyncStats()
        self.connected = False
        self._scheduler: Scheduler | None = None
        # The scheduler's shared indexes, found once per scheduler: a runtime Protocol
        # check per plugin per batch cost more than applying the batch.
        self._indexes: dict[str, SharedIndex] = {}
        self._dirty: dict[str, Endpoint] = {}
        self._picks: list[Pick] = []
        self._full_due = True
        self._last_full = 0.0
        self._wake = asyncio.Event()  # something to publish
        self._urgent = asyncio.Event()  # a pick, or a count that grew: publish soon
        self._sent: dict[str, int] = {}  # the counts last published, by address
        self._client: aioredis.Redis | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        self._last_error = ""

    # -- the request path: appends only ---------------------------------------------

    def load_changed(self, endpoint: Endpoint) -> None:
        address = endpoint.address
        self._dirty[address] = endpoint
        if endpoint.local_inflight > self._sent.get(address, 0):
            self._urgent.set()
        self._wake.set()

    def _picked(self, key: str, endpoint: Endpoint, hashes: Sequence[int]) -> None:
        if not self.connected or len(self._picks) >= _MAX_PENDING_PICKS:
            self.stats.dropped_picks += 1
            return
        self._picks.append(Pick(key, endpoint.address, hashes))
        self._urgent.set()
        self._wake.set()

    def scheduler_changed(self, scheduler: Scheduler) -> None:
        if self._scheduler is not None and self._scheduler is not scheduler:
            self._scheduler.set_pick_listener(None)
        self._scheduler = scheduler
        self._indexes = scheduler.shared_indexes()
        scheduler.set_pick_listener(self._picked)

    def counters(self) -> dict[str, int]:
        """The :class:`SyncStats` counters by name, for ``/metrics``."""
        stats = self.stats
        return {name: getattr(stats, name) for name in stats.__slots__}

    def peers(self) -> int:
        """Other replicas heard from within the expiry."""
        return len(self.remote.replicas())

    def endpoints_changed(self, added: list[Endpoint], _removed: list[Endpoint]) -> None:
        """Wire to ``EndpointStore.subscribe``: new endpoints get the known remote load."""
        self.remote.endpoints_added(added)

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        """Start the publisher and subscriber; returns at once, connected or not."""
        self._stopping = False
        self._client = aioredis.Redis.from_url(
            self._url,
            socket_timeout=self._timeout_s,
            socket_connect_timeout=self._timeout_s,
            retry=Retry(NoBackoff(), 0),  # the loops below retry, with back-off
        )
        self._tasks = [
            asyncio.create_task(self._subscribe_loop(), name="epp-sync-subscribe"),
            asyncio.create_task(self._publish_loop(), name="epp-sync-publish"),
        ]

    async def stop(self, *, goodbye: bool = True) -> None:
        """Stop; with ``goodbye`` first tell the others this replica's load is gone."""
        # Bounded: a library call that swallows a cancellation (redis-py's reads have done
        # so) must not hang shutdown. The loops also see the flag at their next turn.
        self._stopping = True
        pending = set(self._tasks)
        for _ in range(3):
            if not pending:
                break
            for task in pending:
                task.cancel()
            _, pending = await asyncio.wait(pending, timeout=self._timeout_s + _POLL_S)
        if pending:
            log.error(
                "shared routing state: %d task(s) did not stop: %s",
                len(pending),
                ", ".join(sorted(t.get_name() for t in pending)),
            )
        self._tasks = []
        if self._scheduler is not None:
            self._scheduler.set_pick_listener(None)
        client, self._client = self._client, None
        if client is None:
            return
        if goodbye and self.connected:
            try:
                async with asyncio.timeout(self._timeout_s):
                    farewell = encode(Batch(self.replica_id, full=True, goodbye=True))
                    await client.publish(self._channel, farewell)
            except (RedisError, OSError, TimeoutError) as exc:
                log.debug("shared routing state: goodbye not sent: %s", exc)
        self.connected = False
        self.remote.forget_all()
        try:
            async with asyncio.timeout(self._timeout_s):
                await client.aclose()
        except (RedisError, OSError, TimeoutError):
            pass

    # -- publishing -----------------------------------------------------------------------

    async def _publish_loop(self) -> None:
        while not self._stopping:
            try:
                async with asyncio.timeout(self._heartbeat_s):
                    await self._wake.wait()
            except TimeoutError:
                pass
            else:
                try:
                    async with asyncio.timeout(10 * self._batch_s):
                        await self._urgent.wait()
                except TimeoutError:
                    pass
                await asyncio.sleep(self._batch_s)  # gather the rest of the burst
            self._wake.clear()
            self._urgent.clear()
            now = time.monotonic()
            for replica in self.remote.expire(now):
                log.warning(
                    "shared routing state: replica %r not heard from for %.1fs; its load "
                    "is no longer counted",
                    replica,
                    self._expire_s,
                )
            if now - self._last_full >= self._heartbeat_s:
                self._full_due = True
            batches = self._take_batches()
            if not self.connected or self._client is None:
                continue
            for batch in batches:
                data = encode(batch)
                try:
                    async with asyncio.timeout(self._timeout_s):
                        await self._client.publish(self._channel, data)
                except (RedisError, OSError, TimeoutError) as exc:
                    self._lost(exc)
                    break
                self.stats.published_batches += 1
                self.stats.published_bytes += len(data)
                if batch.full:
                    self._last_full = now

    def _take_batches(self) -> list[Batch]:
        """What to publish now, split so no message passes the size limit."""
        full = self._full_due
        if full:
            self._full_due = False
            counts = {ep.address: ep.local_inflight for ep in self._store.all()}
            counts = {address: n for address, n in counts.items() if n > 0}
            self._sent = dict(counts)
        else:
            counts = {address: max(0, ep.local_inflight) for address, ep in self._dirty.items()}
            self._sent.update(counts)
        self._dirty = {}
        picks, self._picks = self._picks, []
        if not (full or counts or picks):
            return []
        batches: list[Batch] = []
        chunk: list[Pick] = []
        size = 0
        budget = MAX_MESSAGE_BYTES // 2  # room for the counts and names
        for pick in picks:
            cost = 8 * len(pick.hashes) + 520
            if chunk and size + cost > budget:
                batches.append(Batch(self.replica_id, picks=chunk))
                chunk, size = [], 0
            chunk.append(pick)
            size += cost
        # The counts ride with the last chunk: they are the newest news.
        batches.append(Batch(self.replica_id, counts=counts, picks=chunk, full=full))
        return batches

    # -- subscribing ----------------------------------------------------------------------

    async def _subscribe_loop(self) -> None:
        backoff = _MIN_BACKOFF_S
        while not self._stopping:
            try:
                await self._listen()
            except (RedisError, OSError, TimeoutError, _Silent) as exc:
                self._lost(exc)
            await asyncio.sleep(backoff * (0.5 + random.random()))
            backoff = min(backoff * 2, _MAX_BACKOFF_S)
            if self.connected:
                backoff = _MIN_BACKOFF_S

    async def _listen(self) -> None:
        assert self._client is not None
        pubsub = self._client.pubsub(ignore_subscribe_messages=True)
        try:
            async with asyncio.timeout(self._timeout_s):
                await pubsub.subscribe(self._channel)
            self._up()
            heard_at = time.monotonic()
            while not self._stopping:
                message = await pubsub.get_message(timeout=_POLL_S)
                now = time.monotonic()
                if message is not None and message.get("type") == "message":
                    heard_at = now
                    self._receive(message["data"], now)
                elif now - heard_at > self._expire_s:
                    raise _Silent(f"nothing heard for {self._expire_s:.1f}s, not even itself")
        finally:
            try:
                async with asyncio.timeout(self._timeout_s):
                    await pubsub.aclose()  # type: ignore[no-untyped-call, unused-ignore]
            except (RedisError, OSError, TimeoutError):
                pass

    def _receive(self, data: object, now: float) -> None:
        if not isinstance(data, bytes):
            self.stats.invalid_batches += 1
            return
        try:
            batch = decode(data)
        except CodecError as exc:
            self.stats.invalid_batches += 1
            if self.stats.invalid_batches == 1:  # once: a stream of them must not flood logs
                log.warning("shared routing state: ignoring a message that is no batch: %s", exc)
            return
        if batch.replica == self.replica_id:
            return
        if batch.goodbye:
            self.remote.forget(batch.replica)
            log.info("shared routing state: replica %r stopped", batch.replica)
            return
        if batch.counts or batch.full:
            known = self.remote.apply(batch.replica, batch.counts, full=batch.full, now=now)
        else:
            known = self.remote.heard(batch.replica, now)
        if not known:
            self.stats.invalid_batches += 1
            return
        self.stats.received_batches += 1
        if batch.picks:
            self._index(batch.picks)

    def _index(self, picks: Sequence[Pick]) -> None:
        indexes = self._indexes
        get = self._store.get
        for pick in picks:
            plugin = indexes.get(pick.key)
            endpoint = get(pick.address)
            if plugin is not None and endpoint is not None:
                plugin.index.add(endpoint, pick.hashes)
                self.stats.received_picks += 1

    # -- state ----------------------------------------------------------------------------

    def _up(self) -> None:
        if not self.connected:
            self.connected = True
            self._full_due = True  # the others may have expired this replica meanwhile
            self._wake.set()
            log.info(
                "shared routing state: connected to Redis, channel %r, as replica %r",
                self._channel,
                self.replica_id,
            )

    def _lost(self, exc: BaseException) -> None:
        text = f"{type(exc).__name__}: {exc}"[:300]
        if self.connected or text != self._last_error:
            log.warning(
                "shared routing state: Redis unreachable (%s); routing on this replica's own "
                "view, reconnecting",
                text,
            )
        if self.connected:
            self.stats.disconnects += 1
        self.connected = False
        self._last_error = text
        self._picks = []


class _Silent(Exception):
    """The subscription delivered nothing, not even this replica's own heartbeat."""

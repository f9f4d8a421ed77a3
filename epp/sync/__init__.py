"""Active-active replicas: routing decisions shared through Redis pub/sub (see
:mod:`epp.sync.redis_sync`). The scheduler knows nothing of it: the sync feeds the
prefix indexes (``Scheduler.shared_indexes``) and the endpoints' remote in-flight counts,
and hears of picks through ``Scheduler.set_pick_listener`` and the director's
``LoadSharing``."""

from epp.sync.codec import Batch, CodecError, Pick, decode, encode
from epp.sync.redis_sync import RedisSync, SyncStats, default_replica_id
from epp.sync.remote import RemoteLoad

__all__ = [
    "Batch",
    "CodecError",
    "Pick",
    "RedisSync",
    "RemoteLoad",
    "SyncStats",
    "decode",
    "default_replica_id",
    "encode",
]

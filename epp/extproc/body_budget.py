"""A budget for the request bytes every ext_proc stream holds at once.

Each stream gathers its request's body until it can route it (the model is in the body),
so memory grows with the bodies in flight: a few slow 60 MB uploads would otherwise take
epp to hundreds of megabytes, and enough of them to the kernel's OOM killer. Streams
reserve bytes as chunks arrive and give them back once the body has been handed back to
Envoy (or the stream ends); a chunk that does not fit fails its own request with 503,
never another one.
"""

from __future__ import annotations

__all__ = ["BodyBudget"]


class BodyBudget:
    """Bytes reserved by streams, out of ``limit_bytes`` (0: unlimited). Event-loop only."""

    __slots__ = ("held_bytes", "limit_bytes", "refused")

    def __init__(self, limit_bytes: int) -> None:
        if limit_bytes < 0:
            raise ValueError(f"limit_bytes must not be negative, got {limit_bytes}")
        self.limit_bytes = limit_bytes
        self.held_bytes = 0
        self.refused = 0  # reservations refused since start

    def reserve(self, size: int) -> bool:
        """Take ``size`` bytes if they fit; False (and nothing taken) if they do not."""
        if self.limit_bytes and self.held_bytes + size > self.limit_bytes:
            self.refused += 1
            return False
        self.held_bytes += size
        return True

    def release(self, size: int) -> None:
        self.held_bytes -= size

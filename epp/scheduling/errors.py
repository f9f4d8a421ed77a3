"""Errors the scheduler raises.

ServiceUnavailable (epp.errors, 503)
└── NoCandidates          no endpoint is left to route to (none given, or a filter
                          removed them all); the caller answers 503
ValueError
└── SchedulerConfigError  a plugin or profile cannot be built as configured
"""

from __future__ import annotations

from epp.errors import ServiceUnavailable

__all__ = ["NoCandidates", "SchedulerConfigError"]


class NoCandidates(ServiceUnavailable):
    """No endpoint is left to schedule the request on (HTTP 503)."""

    code = "no_ready_endpoint"


class SchedulerConfigError(ValueError):
    """The scheduler configuration names an unknown plugin, a bad parameter or weight."""

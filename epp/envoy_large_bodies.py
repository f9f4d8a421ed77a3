"""Routes that send large request bodies to epp BUFFERED in a full-duplex bootstrap.

In FULL_DUPLEX_STREAMED an ext_proc filter sends a body in chunks and epp hands each back:
for a 400 KB body that is dozens of messages each way. BUFFERED sends it whole and epp
answers once. One request cannot ask for that itself: Envoy 1.40 ignores a mode_override
in full duplex (see ``_ext_proc_filter``). A route's ``ExtProcPerRoute`` processing mode
does take effect (verified with Envoy 1.40): a filter reads it when it first asks for the
route, before it sends any of the body, and tells epp the mode in the stream's first
message (``protocol_config``), which epp's ``RequestStream`` follows. So each route gets
a twin in front of it that matches a large ``content-length`` and carries that mode.

A body sent without a content-length (chunked) matches no twin and streams as before.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["EXT_PROC_PER_ROUTE", "large_body_routes", "unnamed_model_route"]

EXT_PROC_PER_ROUTE = "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExtProcPerRoute"


def large_body_routes(
    routes: Sequence[dict[str, Any]],
    filter_modes: Mapping[str, Mapping[str, str]],
    *,
    larger_than: int,
    at_most: int,
) -> list[dict[str, Any]]:
    """Each route, preceded by its twin for a content-length over ``larger_than`` and up
    to ``at_most`` bytes, in which every ext_proc filter of ``filter_modes`` (filter
    name -> its own processing mode) takes the request body BUFFERED.

    The twin is a copy, so its cluster and timeouts cannot drift from the route's, and a
    per-route override the route already has (a pool's own epp) is kept. Matching again
    after epp's clear_route_cache lands on the twin or on its route, which differ in
    nothing but the mode of a body already sent.
    """
    shadowed: list[dict[str, Any]] = []
    for route in routes:
        twin = copy.deepcopy(route)
        twin["match"].setdefault("headers", []).append(_content_length(larger_than, at_most))
        _buffer_in(twin, filter_modes)
        shadowed += [twin, route]
    return shadowed


def unnamed_model_route(
    model_header: str,
    filter_modes: Mapping[str, Mapping[str, str]],
    *,
    larger_than: int,
    at_most: int,
) -> dict[str, Any]:
    """For a gateway whose routes match the model header a body-based router sets: a
    large body that has no model header yet (it comes from the body) still needs a route
    when Envoy first matches, for the body-based router to take it BUFFERED.

    Last, and only while the header is absent: once the router has named the model, the
    match lands on that model's route (or on none, Envoy's 404, for a model no route
    names). A request still without one gets 404 here, as it would with no route.
    """
    route: dict[str, Any] = {
        "match": {
            "prefix": "/",
            "headers": [
                {"name": model_header, "present_match": False},
                _content_length(larger_than, at_most),
            ],
        },
        "direct_response": {"status": 404},
    }
    _buffer_in(route, filter_modes)
    return route


def _content_length(larger_than: int, at_most: int) -> dict[str, Any]:
    # Envoy's range is [start, end); a content-length that is no integer matches nothing.
    return {"name": "content-length", "range_match": {"start": larger_than + 1, "end": at_most + 1}}


def _buffer_in(route: dict[str, Any], filter_modes: Mapping[str, Mapping[str, str]]) -> None:
    per_filter = route.setdefault("typed_per_filter_config", {})
    for name, mode in filter_modes.items():
        override = per_filter.setdefault(name, {"@type": EXT_PROC_PER_ROUTE, "overrides": {}})
        # Only the request body differs from the filter's own mode: a buffered body ends
        # without trailers. A dict of its own per route (a shared one would be rendered
        # as a YAML alias).
        override["overrides"]["processing_mode"] = {
            **mode,
            "request_body_mode": "BUFFERED",
            "request_trailer_mode": "SKIP",
        }

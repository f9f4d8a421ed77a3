"""The Gateway API Inference Extension conformance hooks (``--enable-conformance-hooks``).

The GIE conformance suite steers each request to the pods it names and checks which pod
served it. The reference EPP does both with test-only plugins (``header-based-testing-
filter``, ``destination-endpoint-served-verifier``), GIE's lightweight picker always;
epp does them while the hooks are on:

- ``test-epp-endpoint-selection: IP[:port],...`` narrows the candidates to the endpoints
  listed: an entry with a port names one endpoint, a bare IP every endpoint at that IP
  (IPv6 with or without brackets). Nothing listed is eligible: 503, as for a subset hint
  that matches nothing. A request without the header is routed as usual.
- the endpoint that served the request, which the gateway reports in the ext_proc
  metadata ``envoy.lb`` / ``x-gateway-destination-endpoint-served``, is echoed to the
  client as ``x-conformance-test-served-endpoint`` (or the reference's ``fail: …`` text
  when the gateway reported none).

Both values are bounded before use: the header by length and entry count (400 past
them), the echoed address by length and alphabet.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from epp.datalayer.endpoint import Endpoint
from epp.errors import BadRequest

__all__ = [
    "MAX_SELECTION_CHARS",
    "MAX_SELECTION_ENTRIES",
    "SELECTION_HEADER",
    "SERVED_HEADER",
    "selected_endpoints",
    "served_header_value",
]

SELECTION_HEADER = "test-epp-endpoint-selection"
SERVED_HEADER = "x-conformance-test-served-endpoint"
MAX_SELECTION_CHARS = 4096
MAX_SELECTION_ENTRIES = 64
# An ip:port as Envoy writes an upstream address: IPv4, or bracketed IPv6, and a port.
_ADDRESS = re.compile(r"[0-9A-Fa-f.:\[\]]{1,64}")


def _host_port(entry: str) -> tuple[str, str]:
    """``(host, port)`` of ``IP``, ``IP:port``, ``[v6]``, ``[v6]:port`` or a bare ``v6``."""
    if entry.startswith("["):
        host, _, rest = entry[1:].partition("]")
        return host, rest.removeprefix(":")
    if entry.count(":") == 1:
        host, _, port = entry.partition(":")
        return host, port
    return entry, ""  # IPv4 without a port, or IPv6 without brackets (and so no port)


def selected_endpoints(value: str, endpoints: Sequence[Endpoint]) -> list[Endpoint]:
    """The endpoints of ``endpoints`` the header value names, in the header's order.

    Raises ``BadRequest`` for a value over ``MAX_SELECTION_CHARS`` or with more than
    ``MAX_SELECTION_ENTRIES`` entries.
    """
    if len(value) > MAX_SELECTION_CHARS:
        raise BadRequest(
            f"header {SELECTION_HEADER} is over {MAX_SELECTION_CHARS} characters",
            code="invalid_header",
        )
    entries = [entry.strip() for entry in value.split(",") if entry.strip()]
    if len(entries) > MAX_SELECTION_ENTRIES:
        raise BadRequest(
            f"header {SELECTION_HEADER} lists over {MAX_SELECTION_ENTRIES} endpoints",
            code="invalid_header",
        )
    by_host: dict[str, list[tuple[str, Endpoint]]] = {}
    for endpoint in endpoints:
        host, port = _host_port(endpoint.address)
        by_host.setdefault(host, []).append((port, endpoint))
    chosen: dict[str, Endpoint] = {}  # by address: each endpoint once
    for entry in entries:
        host, port = _host_port(entry)
        for endpoint_port, endpoint in by_host.get(host, ()):
            if not port or port == endpoint_port:
                chosen.setdefault(endpoint.address, endpoint)
    return list(chosen.values())


def served_header_value(served: str | None) -> str:
    """What ``x-conformance-test-served-endpoint`` says for the gateway's report:
    ``None`` no ``envoy.lb`` metadata, ``""`` no served endpoint in it."""
    if served is None:
        return "fail: missing envoy lb metadata"
    if not served:
        return "fail: missing destination endpoint served metadata"
    if _ADDRESS.fullmatch(served) is None:
        return "fail: invalid destination endpoint served metadata"
    return served

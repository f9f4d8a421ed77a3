"""Discovery from a fixed list: the ``--endpoint ADDR[=MODEL,...]`` flags.

Example::

    specs = [parse_endpoint_flag("10.0.0.7:8000=llama-3-8b"), parse_endpoint_flag("10.0.0.8:8000")]
    await StaticDiscovery(store, specs).start()   # store now holds both
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from epp.datalayer.store import EndpointSpec, EndpointStore

__all__ = ["StaticDiscovery", "format_address", "parse_endpoint_flag"]


class StaticDiscovery:
    """Puts a fixed list of endpoints into the store once, at :meth:`start`."""

    def __init__(self, store: EndpointStore, endpoints: Iterable[EndpointSpec]) -> None:
        specs = list(endpoints)
        seen: set[str] = set()
        for address, _ in specs:
            if address in seen:
                raise ValueError(f"endpoint {address} is listed more than once")
            seen.add(address)
        self._store = store
        self.endpoints: tuple[EndpointSpec, ...] = tuple(specs)

    async def start(self) -> None:
        """Replace the store's contents with the configured endpoints."""
        self._store.replace(self.endpoints)

    async def stop(self) -> None:
        """Nothing to stop; here so every discovery has the same lifecycle."""


def parse_endpoint_flag(text: str) -> EndpointSpec:
    """Parse ``ADDR=MODEL[,MODEL...]`` or a bare ``ADDR`` (serves any model).

    ``ADDR`` is ``IPv4:PORT`` or ``[IPv6]:PORT``. A host name is refused: the address is
    sent to Envoy in ``x-gateway-destination-endpoint``, and Envoy's ORIGINAL_DST cluster
    takes only IP addresses. Raises ``ValueError`` saying what is wrong.
    """
    raw = text.strip()
    address_text, sep, models_text = raw.partition("=")
    address = format_address(address_text.strip(), flag=text)
    if not sep:
        return address, None
    models = [model.strip() for model in models_text.split(",")]
    if not models_text.strip() or any(not model for model in models):
        raise ValueError(
            f"endpoint {text!r}: empty model name; expected ADDR=MODEL[,MODEL...] or ADDR"
        )
    return address, frozenset(models)


def format_address(address: str, *, flag: str | None = None) -> str:
    """Validate ``IP:PORT`` / ``[IPv6]:PORT`` and return it in canonical form."""
    where = f"endpoint {(flag if flag is not None else address)!r}"
    if address.startswith("["):
        close = address.find("]")
        if close < 0 or address[close + 1 : close + 2] != ":":
            raise ValueError(f"{where}: expected [IPv6]:PORT, got {address!r}")
        host, port_text = address[1:close], address[close + 2 :]
    else:
        host, colon, port_text = address.rpartition(":")
        if not colon or not host:
            raise ValueError(f"{where}: missing port; expected IP:PORT, e.g. 10.0.0.7:8000")
        if ":" in host:
            raise ValueError(f"{where}: put an IPv6 address in brackets, e.g. [{host}]:PORT")
    if not port_text.isascii() or not port_text.isdigit():
        raise ValueError(f"{where}: port {port_text!r} is not a number")
    port = int(port_text)
    if not 1 <= port <= 65535:
        raise ValueError(f"{where}: port {port} is out of range 1-65535")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(
            f"{where}: {host!r} is not an IP address (Envoy's ORIGINAL_DST needs one; "
            "use 127.0.0.1 rather than localhost)"
        ) from None
    if ip.version == 6:
        return f"[{ip.compressed}]:{port}"
    return f"{ip}:{port}"

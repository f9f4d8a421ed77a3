"""Which layer of epp may import which: the table, and a walk of every import against it.

A layer is a package of ``epp`` (``epp/scheduling/``) or a top-level module
(``epp/director.py``). Every module is parsed (not imported) and every ``import`` and
``from ... import`` in it, anywhere in the file, is an edge from its layer to the layer
it names. Imports under ``if TYPE_CHECKING:`` count too: a type from a layer is a
dependency on that layer all the same, and a layer that needs only the shape of
something declares a Protocol it owns (``epp.routing.Router``,
``epp.observability.scheduler_metrics.SchedulerView``) instead.

``epp/sim`` is left out: the simulator is a program of its own, on its way out of the
package.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

EPP = Path(__file__).resolve().parents[2] / "epp"
SKIPPED = frozenset({"sim"})
ANY = None  # the layer may import every other one

# What each layer may import from epp besides itself. A new package or top-level module
# fails test_every_layer_is_in_the_table until it is placed here.
LAYERS: dict[str, frozenset[str] | None] = {
    # Vocabulary every layer may share: it imports no other layer.
    "errors": frozenset(),
    "distribution": frozenset(),
    "api": frozenset({"errors"}),
    # The Kubernetes client, informers and leader election: no requests, no scoring. The
    # data layer and request control turn what it sees into epp's own types.
    "k8s": frozenset(),
    # Endpoints, discovery and scraping: knows nothing of requests.
    "datalayer": frozenset({"k8s"}),
    # Filters, scorers and pickers over endpoints: pure. What it measures is plain data
    # (scheduling/stats.py) that observability exports.
    "scheduling": frozenset({"datalayer", "distribution", "errors"}),
    # Per-request policy; it counts its events (ejections) in observability's metrics.
    "requestcontrol": frozenset({"api", "datalayer", "errors", "k8s", "observability"}),
    # The contract between extproc and the director: decisions and the Router protocol.
    "routing": frozenset({"api", "datalayer", "scheduling"}),
    "director": frozenset(
        {"api", "datalayer", "errors", "observability", "requestcontrol", "routing", "scheduling"}
    ),
    # Reads every layer's state for /metrics and logs; never the director or extproc.
    "observability": frozenset({"datalayer", "distribution", "errors", "routing", "scheduling"}),
    # Envoy's side: routes through epp.routing.Router, not the director module. It reads
    # what the response meter leaves in Envoy's access log by the meter's own names.
    "extproc": frozenset(
        {"api", "envoy_response_meter", "errors", "observability", "requestcontrol", "routing"}
    ),
    # The Pick API: routes through epp.routing.Router as extproc does, and shares its
    # body memory budget (ONLY_MODULES). Knows no scores' formulas, only their values.
    "pickapi": frozenset({"api", "errors", "extproc", "observability", "routing", "v1"}),
    # protoc's output for proto/epp/v1 (the Pick API's messages and stubs).
    "v1": frozenset(),
    # The Pick API's Python client, for callers: the protocol and nothing of the server.
    "client": frozenset({"v1"}),
    "tls": frozenset(),
    # Replicas sharing decisions (Redis pub/sub): feeds the scheduler's prefix indexes and
    # the endpoints' remote in-flight counts; knows no requests, no Envoy, no metrics.
    "sync": frozenset({"datalayer", "scheduling"}),
    # The Lua script Envoy runs in LOGGED mode, and the names it writes under.
    "envoy_response_meter": frozenset(),
    "envoy_config": frozenset({"envoy_response_meter"}),
    "stack": frozenset({"envoy_config"}),
    "demo": frozenset({"envoy_config", "stack"}),
    "__init__": frozenset(),
    # Wiring: the configuration, which names every layer's settings, and the entry points
    # that build the layers from it.
    "config": ANY,
    "server": ANY,
    "cli": ANY,
    # The supervisor of ``epp serve --workers``: processes only.
    "workers": frozenset(),
    # gRPC core's environment, set before grpc is imported: nothing of epp.
    "grpc_env": frozenset(),
    "__main__": ANY,
}

# Where a layer may import only some modules of another: observability reads the
# scheduler through its contracts and knows no plugin (no isinstance of a scorer class).
ONLY_MODULES: dict[tuple[str, str], tuple[str, ...]] = {
    ("observability", "scheduling"): ("epp.scheduling.types", "epp.scheduling.stats"),
    ("pickapi", "extproc"): ("epp.extproc.body_budget",),
}

# Libraries that tie code to the wire (gRPC, Envoy's protobufs) or to a metrics backend,
# and the layers that must not import them.
_WIRE_AND_METRICS = ("prometheus_client", "grpc", "grpc_health", "envoy", "google.protobuf")
# Redis is the sync layer's alone: the request path never waits on it.
FORBIDDEN_LIBRARIES: dict[str, tuple[str, ...]] = {
    "sync": _WIRE_AND_METRICS,
} | {
    layer: (*_WIRE_AND_METRICS, "redis")
    for layer in (
        "errors",
        "distribution",
        "api",
        "k8s",
        "datalayer",
        "scheduling",
        "requestcontrol",
        "routing",
        "director",
    )
}


def layer_of(path: Path) -> str:
    """The layer of a module file under ``epp/``."""
    parts = path.relative_to(EPP).parts
    return parts[0] if len(parts) > 1 else path.stem


def _is_layer(name: str) -> bool:
    return (EPP / name).is_dir() or (EPP / f"{name}.py").is_file()


def imported(tree: ast.AST, package: str) -> Iterator[tuple[int, str]]:
    """(line, dotted name) of everything ``tree`` imports; ``package`` resolves relative
    imports. ``from a import b`` yields ``a.b``, which may be a module or a name in one."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                yield node.lineno, f"{base}.{alias.name}"


def target_layer(name: str) -> str | None:
    """The epp layer a dotted name is in; None outside epp."""
    parts = name.split(".")
    if parts[0] != "epp":
        return None
    if len(parts) < 2 or not _is_layer(parts[1]):
        return "__init__"  # a name defined in epp/__init__.py (__version__)
    return parts[1]


def violations(layer: str, where: str, tree: ast.AST, package: str) -> list[str]:
    """Every import of ``tree`` (in ``layer``, at ``where``) the table does not allow."""
    allowed = LAYERS.get(layer, frozenset())
    libraries = FORBIDDEN_LIBRARIES.get(layer, ())
    found = []
    for line, name in imported(tree, package):
        target = target_layer(name)
        if target is None:
            banned = [lib for lib in libraries if name == lib or name.startswith(f"{lib}.")]
            if banned:
                found.append(f"{where}:{line} imports {name}: {layer} may not use {banned[0]}")
        elif allowed is not ANY and target != layer and target not in allowed:
            permitted = ", ".join(sorted(allowed)) or "nothing"
            found.append(
                f"{where}:{line} imports {name}: {layer} may not import {target} "
                f"(it may import {permitted})"
            )
        elif (modules := ONLY_MODULES.get((layer, target))) is not None and not any(
            name == module or name.startswith(f"{module}.") for module in modules
        ):
            found.append(f"{where}:{line} imports {name}: {layer} may use only {modules}")
    return found


def modules() -> list[Path]:
    return sorted(
        path for path in EPP.rglob("*.py") if path.relative_to(EPP).parts[0] not in SKIPPED
    )


def _package(path: Path) -> str:
    parts = path.relative_to(EPP.parent).with_suffix("").parts
    return ".".join(parts if path.name == "__init__.py" else parts[:-1])


def test_every_layer_is_in_the_table_and_every_entry_is_a_layer() -> None:
    layers = {layer_of(path) for path in modules()}
    assert layers - LAYERS.keys() == set(), "place the new layer in LAYERS"
    assert LAYERS.keys() - layers == set(), "a layer in LAYERS no longer exists"
    for allowed in LAYERS.values():
        assert allowed is ANY or allowed <= LAYERS.keys()


def test_no_layer_imports_what_the_table_forbids() -> None:
    found: list[str] = []
    for path in modules():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        where = str(path.relative_to(EPP.parent))
        found += violations(layer_of(path), where, tree, _package(path))
    assert len(modules()) > 50  # the walk saw the tree
    assert found == []


def test_the_walk_sees_every_kind_of_import() -> None:
    source = """
from typing import TYPE_CHECKING
import prometheus_client.core
from epp.datalayer.endpoint import Endpoint
from epp import distribution
from . import stats
if TYPE_CHECKING:
    from epp.director import Director
def late():
    from epp.extproc import messages
    import grpc
"""
    found = violations("scheduling", "x.py", ast.parse(source), "epp.scheduling.scorers")
    assert [line.split(":")[1].split(" ")[0] for line in found] == ["3", "8", "10", "11"]
    assert "scheduling may not import director" in found[1]
    assert "scheduling may not use grpc" in found[3]
    plugin = "from epp.scheduling.scorers.prefix_cache import PrefixCacheScorer"
    assert violations("observability", "y.py", ast.parse(plugin), "epp.observability")
    contract = "from epp.scheduling.stats import PrefixStats"
    assert not violations("observability", "y.py", ast.parse(contract), "epp.observability")
    assert target_layer("epp.scheduling.scorers.stats") == "scheduling"
    assert list(imported(ast.parse("from .. import types"), "epp.scheduling.scorers")) == [
        (1, "epp.scheduling.types")
    ]

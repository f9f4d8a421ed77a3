"""The parts of a reference ``EndpointPickerConfig`` that are not scheduling plugins.

llm-d-router (v0.10) and GIE (v1.5) configs list data-layer and parser plugins beside the
scheduling ones and point at them from sections of their own::

    plugins:
    - {type: metrics-data-source, parameters: {scheme: http, path: /metrics}}
    - {type: core-metrics-extractor}
    - {type: openai-parser}
    dataLayer:
      sources: [{pluginRef: metrics-data-source, extractors: [{pluginRef: core-metrics-extractor}]}]
    parser: {pluginRef: openai-parser}                  # GIE v1.5
    requestHandler: {parsers: [{pluginRef: openai-parser}]}   # llm-d-router v0.10
    featureGates: [enableLegacyMetrics]

epp does each of these itself (it scrapes ``/metrics`` over HTTP and reads vLLM's and
SGLang's names; it parses OpenAI bodies), so they are accepted where they describe what
epp does, and feed epp's own settings where they set one (``metrics-data-source``'s
``path`` is ``dataLayer.metricsPath``, its ``interval`` ``dataLayer.
refreshMetricsInterval``). Where they ask for something else (HTTPS scraping, another
engine's metric names, a gRPC or pass-through parser) start-up fails, naming the plugin
and what to do instead. Every other plugin goes to the scheduler, whose registry knows
the rest (and names the reference's scheduling plugins epp lacks).

The reference's conformance plugins, ``header-based-testing-filter`` (a filter that
keeps the endpoints ``test-epp-endpoint-selection`` names) and
``destination-endpoint-served-verifier`` (which echoes the served endpoint), are what
GIE's conformance suite configures. Naming either turns on epp's conformance hooks
(``server.enableConformanceHooks``), which do both for every profile; their references
in ``schedulingProfiles`` are dropped, since the hooks narrow the candidates before any
profile runs.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from epp.config.settings import ConfigError
from epp.config.values import Given

__all__ = [
    "CONFORMANCE_PLUGINS",
    "DATA_LAYER_KEYS",
    "DOCUMENT_KEYS",
    "ReferencePlugins",
    "read_reference_plugins",
]

METRICS_SOURCE = "metrics-data-source"
METRICS_EXTRACTOR = "core-metrics-extractor"
OPENAI_PARSER = "openai-parser"
# GIE's test-only plugins (its conformance/resources/base.yaml names both).
CONFORMANCE_PLUGINS = ("header-based-testing-filter", "destination-endpoint-served-verifier")
_HANDLED_HERE = frozenset({METRICS_SOURCE, METRICS_EXTRACTOR, OPENAI_PARSER, *CONFORMANCE_PLUGINS})
# Top-level keys of the reference's config that this module reads.
DOCUMENT_KEYS = ("parser", "requestHandler", "featureGates")
# Keys of the reference's dataLayer section (beside epp's own option keys there).
DATA_LAYER_KEYS = ("sources", "injectDefaults", "discovery")

_OPENAI_ONLY = (
    "epp parses OpenAI-style JSON bodies (openai-parser) and speaks HTTP to model servers; "
    "use openai-parser or leave the parser out"
)
_MODELS_FROM_METRICS = (
    "epp reads a pod's models from its metrics (the model_name label, vLLM's LoRA info), "
    "not from its /v1/models; leave it out"
)
# Reference plugins outside scheduling that epp does not implement, and what to do.
NOT_IMPLEMENTED: Mapping[str, str] = {
    "vllmgrpc-parser": _OPENAI_ONLY,
    "vllmhttp-parser": _OPENAI_ONLY,
    "passthrough-parser": _OPENAI_ONLY,
    "anthropic-parser": _OPENAI_ONLY,
    "vertexai-parser": _OPENAI_ONLY,
    "models-data-source": _MODELS_FROM_METRICS,
    "models-extractor": _MODELS_FROM_METRICS,
    "file-discovery": "use epp's endpoints list (--endpoint, or endpoints: in this file)",
    "endpoint-notification-source": "leave it out: epp watches the pool's pods itself",
    "k8s-notification-source": "leave it out: epp watches the pool's pods itself",
}
# Engines whose metric names epp reads (the reference also has trtllm-serve and triton).
_ENGINES = ("vllm", "sglang")
# The reference's feature gates: those epp's behaviour already matches, and the rest.
_GATES_ACCEPTED = ("enableLegacyMetrics", "haPopulateNonLeaderDatastore", "dataLayer")
_GATES_REFUSED = {"flowControl": "epp has no flow-control queue; its admission sheds instead"}


@dataclass(frozen=True, slots=True)
class ReferencePlugins:
    """The file's plugins split: ``scheduling`` entries (with their index in the file's
    list) go to the scheduler; ``option_values`` are the settings the others feed (by
    ``Option.dest``); ``conformance`` names the conformance plugins, whose references
    profiles drop."""

    scheduling: list[tuple[int, Mapping[str, Any]]] = field(default_factory=list)
    option_values: dict[str, Given] = field(default_factory=dict)
    conformance: frozenset[str] = frozenset()


def read_reference_plugins(document: Mapping[str, Any], where: str | None) -> ReferencePlugins:
    """Split ``document``'s plugins and check its reference sections (see the module)."""
    entries = document.get("plugins") or []
    if not isinstance(entries, list):
        raise ConfigError(f"{where}: plugins and schedulingProfiles must be lists")
    scheduling: list[tuple[int, Mapping[str, Any]]] = []
    others: dict[str, str] = {}  # name -> type of each plugin handled here
    values: dict[str, Given] = {}
    for index, entry in enumerate(entries):
        if not isinstance(entry, Mapping) or not isinstance(entry.get("type"), str):
            raise ConfigError(f"{where}: plugins[{index}] needs a 'type'")
        kind = entry["type"]
        here = f"{where}: plugins[{index}] ({kind})"
        if kind in NOT_IMPLEMENTED:
            raise ConfigError(
                f"{here}: the reference EPP's {kind!r} is not implemented by epp; "
                f"{NOT_IMPLEMENTED[kind]}"
            )
        if kind not in _HANDLED_HERE:
            scheduling.append((index, entry))
            continue
        extra = sorted(set(entry) - {"type", "name", "parameters"})
        if extra:
            raise ConfigError(f"{here}: unknown key {extra[0]!r} (known: name, parameters, type)")
        parameters = entry.get("parameters") or {}
        if not isinstance(parameters, Mapping):
            raise ConfigError(f"{here}: parameters must be a mapping")
        if kind == METRICS_SOURCE:
            values.update(_metrics_source(parameters, here))
        elif kind == METRICS_EXTRACTOR:
            _metrics_extractor(parameters, here)
        elif parameters:
            raise ConfigError(f"{here}: takes no parameters")
        if kind in CONFORMANCE_PLUGINS:
            values["server_conformance_hooks"] = (True, here)
        others[str(entry.get("name") or kind)] = kind
    _check_parsers(document, others, where)
    _check_data_layer(document, others, where)
    _check_feature_gates(document.get("featureGates"), where)
    conformance = frozenset(name for name, kind in others.items() if kind in CONFORMANCE_PLUGINS)
    return ReferencePlugins(scheduling, values, conformance)


def _metrics_source(parameters: Mapping[str, Any], where: str) -> dict[str, Given]:
    _known(parameters, ("scheme", "path", "insecureSkipVerify", "interval", *_TLS_KEYS), where)
    scheme = parameters.get("scheme", "http")
    if scheme != "http":
        raise ConfigError(
            f"{where}: scheme {scheme!r}: epp scrapes model servers over plain HTTP only"
        )
    for key in _TLS_KEYS:
        if parameters.get(key):
            raise ConfigError(f"{where}: {key}: epp scrapes over plain HTTP; leave it out")
    skip = parameters.get("insecureSkipVerify", True)
    if not isinstance(skip, bool):
        raise ConfigError(f"{where}: insecureSkipVerify must be true or false, got {skip!r}")
    values: dict[str, Given] = {}
    path = parameters.get("path")
    if path is not None:
        if not isinstance(path, str) or not path.startswith("/"):
            raise ConfigError(f"{where}: path must start with '/', got {path!r}")
        values["data_layer_metrics_path"] = (path, f"{where}.parameters.path")
    interval = parameters.get("interval")
    if interval is not None:
        values["data_layer_refresh_metrics_interval_s"] = (
            interval,
            f"{where}.parameters.interval",
        )
    return values


_TLS_KEYS = ("caCertPath", "clientCertPath", "clientKeyPath")


def _metrics_extractor(parameters: Mapping[str, Any], where: str) -> None:
    _known(parameters, ("engineLabelKey", "defaultEngine", "engineConfigs"), where)
    engine = parameters.get("defaultEngine", "vllm")
    if engine not in _ENGINES:
        raise ConfigError(
            f"{where}: defaultEngine {engine!r}: epp reads the metrics of "
            f"{' and '.join(_ENGINES)} only (dataLayer.engine)"
        )
    if parameters.get("engineConfigs"):
        raise ConfigError(
            f"{where}: engineConfigs: epp's metric names are built in (vLLM, SGLang, "
            "chosen per scrape); leave engineConfigs out"
        )
    label = parameters.get("engineLabelKey", "")
    if not isinstance(label, str):
        raise ConfigError(f"{where}: engineLabelKey must be a string, got {label!r}")


def _check_parsers(
    document: Mapping[str, Any], others: Mapping[str, str], where: str | None
) -> None:
    refs: list[tuple[Any, str]] = []
    parser = document.get("parser")
    if parser is not None:
        refs.append((parser, f"{where}: parser"))
    handler = document.get("requestHandler")
    if handler is not None:
        if not isinstance(handler, Mapping):
            raise ConfigError(f"{where}: requestHandler must be a mapping")
        _known(handler, ("parsers",), f"{where}: requestHandler")
        parsers = handler.get("parsers") or []
        if not isinstance(parsers, list):
            raise ConfigError(f"{where}: requestHandler.parsers must be a list")
        refs += [(p, f"{where}: requestHandler.parsers[{i}]") for i, p in enumerate(parsers)]
    for ref, here in refs:
        _plugin_ref(ref, others, (OPENAI_PARSER,), here)


def _check_data_layer(
    document: Mapping[str, Any], others: Mapping[str, str], where: str | None
) -> None:
    section = document.get("dataLayer")
    if not isinstance(section, Mapping):
        return  # absent; a malformed one is file.py's to report
    here = f"{where}: dataLayer"
    if section.get("discovery") is not None:
        raise ConfigError(
            f"{here}.discovery: epp finds endpoints from --pool-name, --endpoint-selector or "
            "the endpoints list; leave it out"
        )
    inject = section.get("injectDefaults")
    if inject is not None and not isinstance(inject, bool):
        raise ConfigError(f"{here}.injectDefaults must be true or false, got {inject!r}")
    sources = section.get("sources")
    if sources is None:
        return
    if not isinstance(sources, list):
        raise ConfigError(f"{here}.sources must be a list")
    for index, source in enumerate(sources):
        at = f"{here}.sources[{index}]"
        if not isinstance(source, Mapping):
            raise ConfigError(f"{at} must be a mapping")
        _plugin_ref(source, others, (METRICS_SOURCE,), at, ("pluginRef", "extractors"))
        extractors = source.get("extractors") or []
        if not isinstance(extractors, list):
            raise ConfigError(f"{at}.extractors must be a list")
        for j, extractor in enumerate(extractors):
            _plugin_ref(extractor, others, (METRICS_EXTRACTOR,), f"{at}.extractors[{j}]")


def _plugin_ref(
    ref: Any,
    others: Mapping[str, str],
    kinds: Sequence[str],
    where: str,
    keys: Sequence[str] = ("pluginRef",),
) -> None:
    if not isinstance(ref, Mapping) or not isinstance(ref.get("pluginRef"), str):
        raise ConfigError(f"{where} needs a 'pluginRef'")
    _known(ref, keys, where)
    name = ref["pluginRef"]
    if others.get(name) not in kinds:
        raise ConfigError(f"{where}: pluginRef {name!r} names no {' or '.join(kinds)} in plugins")


def _check_feature_gates(gates: Any, where: str | None) -> None:
    if gates is None:
        return
    if not isinstance(gates, list) or not all(isinstance(g, str) for g in gates):
        raise ConfigError(f"{where}: featureGates must be a list of names")
    for gate in gates:
        name, _, value = gate.partition("=")
        enabled = value.strip().lower() not in ("false", "0", "f")
        if value and value.strip().lower() not in ("true", "false", "1", "0", "t", "f"):
            raise ConfigError(f"{where}: featureGates: {value!r} is not a boolean ({gate!r})")
        if name in _GATES_REFUSED and enabled:
            raise ConfigError(f"{where}: featureGates: {name}: {_GATES_REFUSED[name]}")
        if name not in _GATES_ACCEPTED and name not in _GATES_REFUSED:
            known = ", ".join(sorted((*_GATES_ACCEPTED, *_GATES_REFUSED)))
            raise ConfigError(f"{where}: featureGates: unknown gate {name!r} (known: {known})")


def _known(node: Mapping[str, Any], keys: Iterable[str], where: str) -> None:
    allowed = set(keys)
    for key in node:
        if key not in allowed:
            raise ConfigError(f"{where}: unknown key {key!r} (known: {', '.join(sorted(allowed))})")

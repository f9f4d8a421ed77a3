"""Configuration: one typed ``Config``, filled from defaults, a YAML file, env and flags.

Precedence, lowest first: built-in defaults, the config file (``--config-file``), then
each option's environment variable (``EPP_`` + the flag in upper snake case, e.g.
``EPP_GRPC_PORT``), then the flag itself. Every option is declared once, in ``OPTIONS``;
the argparse flags, the env names and the file keys all come from that table.

The file is shaped like the reference EPP's ``EndpointPickerConfig`` (``plugins`` and
``schedulingProfiles``), with epp's own sections beside them::

    apiVersion: epp.dev/v1alpha1
    kind: EndpointPickerConfig
    server: {grpcPort: 9002, metricsPort: 9090}
    dataLayer: {refreshMetricsInterval: 50ms, metricsStalenessThreshold: 2s}
    endpoints:
      - {address: 127.0.0.1:8001, models: [qwen2-1-5b]}
    saturationDetector: {queueDepthThreshold: 5, kvCacheUtilThreshold: 0.8}
    admission: {retryAfter: 1s, endpointMaxInflight: 0}
    passiveHealth: {backoff: 1s, maxBackoff: 30s}
    modelFallbacks: {qwen2-7b: [qwen2-1-5b]}
    objectives: {batch: -1, chat: 10}
    plugins:
      - {type: queue-scorer}
      - {type: max-score-picker}
    schedulingProfiles:
      - name: default
        plugins: [{pluginRef: queue-scorer, weight: 2}, {pluginRef: max-score-picker}]
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from epp.datalayer.static_discovery import parse_endpoint_flag
from epp.datalayer.store import EndpointSpec
from epp.scheduling.scheduler import (
    PluginSpec,
    ProfilePluginRef,
    ProfileSpec,
    SchedulerConfig,
    default_scheduler_config,
)

__all__ = [
    "OPTIONS",
    "Config",
    "ConfigError",
    "DataLayerConfig",
    "KubernetesConfig",
    "RequestControlConfig",
    "ServerConfig",
    "add_serve_arguments",
    "check_endpoint_source",
    "load_config",
    "parse_duration_s",
]

MiB = 1024 * 1024


class ConfigError(ValueError):
    """The configuration is invalid; the message names the option and the source."""


@dataclass(frozen=True, slots=True)
class ServerConfig:
    # None: all interfaces in the Kubernetes modes or with TLS (gateways dial the pod),
    # loopback otherwise: plaintext ext_proc lets whoever reaches it steer routing.
    grpc_host: str | None = None
    grpc_port: int = 9002
    metrics_host: str = "0.0.0.0"
    metrics_port: int = 9090  # Prometheus /metrics; 0 turns it off
    max_body_bytes: int = 64 * MiB  # larger bodies get 413 from epp
    # Request bytes all streams together may hold (0: no budget); past it, 503 overloaded.
    # 240 bodies of 400 KB (100k-token prompts) at once, or one of the largest size. Peak
    # memory is about: epp's own ~80 MB + this + twice the body being parsed (JSON
    # parsers hold a long string twice while building it): ~300 MB with the defaults.
    max_buffered_body_bytes: int = 96 * MiB
    graceful_timeout_s: float = 10.0  # in-flight streams get this long on SIGTERM
    destination_fallbacks: int = 0  # endpoints listed after the primary
    grpc_health_port: int = 9003  # grpc.health.v1 for probes; 0 turns it off
    # TLS on the ext_proc port. None: on in the Kubernetes modes (as the reference EPP,
    # which gateways dial with TLS), off beside a standalone Envoy.
    secure_serving: bool | None = None
    cert_path: str | None = None  # directory with tls.crt and tls.key; else self-signed
    cert_reload: bool = False  # pick up a rotated tls.crt/tls.key on new connections
    body_based_routing: bool = False  # only set X-Gateway-Model-Name; pick no endpoint
    # Add stream_options.include_usage to streamed chat/completions requests without it
    # (so their usage is measured) and remove the extra usage event from the response.
    inject_stream_usage: bool = False


@dataclass(frozen=True, slots=True)
class DataLayerConfig:
    refresh_metrics_interval_s: float = 0.05  # the reference EPP polls every 50 ms
    scrape_timeout_s: float = 1.0
    metrics_staleness_s: float = 2.0  # older metrics count as stale
    metrics_path: str = "/metrics"
    engine: str = "auto"  # vllm | sglang | auto
    unready_after_failures: int = 3  # consecutive failed scrapes before an endpoint leaves
    # Bounds on one scrape's work (0: no limit); the same defaults as the scraper's own
    # (epp/datalayer/scraper.py says why).
    scrape_max_bytes: int = 4 * MiB
    scrape_max_samples: int = 1000
    # The longest pause between scrapes of an endpoint that is idle and unchanged (None:
    # twice refresh_metrics_interval_s); epp/datalayer/scraper.py says why.
    scrape_idle_interval_s: float | None = None


@dataclass(frozen=True, slots=True)
class KubernetesConfig:
    """Discovery on Kubernetes: an InferencePool (``pool_name``) or a label selector."""

    pool_name: str | None = None
    pool_namespace: str | None = None  # None: $POD_NAMESPACE, else "default"
    pool_group: str = "inference.networking.k8s.io"
    endpoint_selector: tuple[tuple[str, str], ...] = ()
    endpoint_target_ports: tuple[int, ...] = ()
    kubeconfig: str | None = None  # None: in-cluster, else $KUBECONFIG or ~/.kube/config
    sync_timeout_s: float = 60.0  # how long serving waits for the first complete view
    leader_election: bool = False
    lease_name: str | None = None  # None: epp-<pool-name>
    lease_duration_s: float = 15.0
    renew_deadline_s: float = 10.0
    retry_period_s: float = 2.0

    @property
    def enabled(self) -> bool:
        return self.pool_name is not None or bool(self.endpoint_selector)

    @property
    def namespace(self) -> str:
        return self.pool_namespace or "default"


@dataclass(frozen=True, slots=True)
class RequestControlConfig:
    """Admission, model fallback and passive health; the saturation thresholds and their
    file keys (``saturationDetector``) are the reference EPP's."""

    saturation_queue_threshold: float = 5.0  # waiting requests that make an endpoint full
    saturation_kv_threshold: float = 0.8  # KV-cache use that makes an endpoint full
    retry_after_s: int = 1  # the retry-after header of 429 answers
    endpoint_max_inflight: int = 0  # requests epp may have in flight per endpoint; 0: no cap
    failure_backoff_s: float = 1.0  # first back-off after a failed request; 0: off
    failure_max_backoff_s: float = 30.0  # the back-off doubles up to this
    model_fallbacks: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    objectives: Mapping[str, int] = field(default_factory=dict)  # name -> priority
    # Honour x-gateway-model-name-rewrite from the request: only where the gateway sets
    # it and strips clients' copies, or any client picks the model it is served by.
    trust_model_rewrite_header: bool = False


@dataclass(frozen=True, slots=True)
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    data_layer: DataLayerConfig = field(default_factory=DataLayerConfig)
    kubernetes: KubernetesConfig = field(default_factory=KubernetesConfig)
    request_control: RequestControlConfig = field(default_factory=RequestControlConfig)
    endpoints: tuple[EndpointSpec, ...] = ()
    scheduler: SchedulerConfig = field(default_factory=default_scheduler_config)
    log_level: str = "info"
    log_format: str = "text"  # text | json
    # The per-request lines: all | errors | off. Errors only by default: a line costs
    # ~15 µs (several % of max throughput), and Envoy's access log covers the rest.
    request_log: str = "errors"
    # Distinct model names (and model/target pairs) with metric series of their own;
    # the rest are counted as __other__. Each pair is ~240 lines of /metrics.
    max_model_series: int = 64
    # Reference-EPP flags given that epp accepts but does not act on: (flag, value, why).
    ignored_flags: tuple[tuple[str, str, str], ...] = ()

    @property
    def secure_serving(self) -> bool:
        if self.server.secure_serving is not None:
            return self.server.secure_serving
        return self.kubernetes.enabled

    @property
    def grpc_host(self) -> str:
        """Where ext_proc (and gRPC health) listen: see ``ServerConfig.grpc_host``."""
        if self.server.grpc_host is not None:
            return self.server.grpc_host
        return "0.0.0.0" if self.kubernetes.enabled or self.secure_serving else "127.0.0.1"


# -- value parsers ----------------------------------------------------------------------

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_duration_s(value: Any) -> float:
    """Seconds from a number (seconds) or a Go-style duration string: 50ms, 2s, 1m."""
    if isinstance(value, bool):
        raise ValueError(f"not a duration: {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        match = _DURATION.match(str(value))
        if match is None:
            raise ValueError(f"not a duration: {value!r} (use e.g. 50ms, 2s, 1m)")
        seconds = float(match.group(1)) * _UNIT_S[match.group(2)]
    if seconds < 0:
        raise ValueError(f"duration must not be negative: {value!r}")
    return seconds


def _port(value: Any) -> int:
    port = _int(value)
    if not 0 <= port <= 65535:
        raise ValueError(f"port out of range: {value!r}")
    return port


def _int(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError(f"not an integer: {value!r}")
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ValueError(f"not an integer: {value!r}") from None


def _choice(*allowed: str) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        text = str(value).lower()
        if text not in allowed:
            raise ValueError(f"{value!r} is not one of {', '.join(allowed)}")
        return text

    return parse


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off"):
        return False
    raise ValueError(f"not a boolean: {value!r} (use true or false)")


def _label_selector(value: Any) -> tuple[tuple[str, str], ...]:
    """``app=vllm,env=prod`` (the reference EPP's format: key=value pairs only)."""
    if isinstance(value, Mapping):
        return tuple(sorted((str(k), str(v)) for k, v in value.items()))
    pairs = []
    for part in str(value).split(","):
        key, sep, label = part.strip().partition("=")
        if not sep or not key.strip():
            raise ValueError(f"expected key=value[,key=value...], got {value!r}")
        pairs.append((key.strip(), label.strip()))
    return tuple(sorted(pairs))


def _ports(value: Any) -> tuple[int, ...]:
    """``8000,8001`` or a list of numbers."""
    parts = value if isinstance(value, list | tuple) else str(value).split(",")
    ports = tuple(_port(part.strip() if isinstance(part, str) else part) for part in parts)
    if not ports or 0 in ports:
        raise ValueError(f"expected port numbers 1-65535, got {value!r}")
    return ports


def _optional_str(value: Any) -> str | None:
    text = str(value).strip()
    return text or None


def _positive_duration(value: Any) -> float:
    seconds = parse_duration_s(value)
    if seconds == 0:
        raise ValueError("must be greater than zero")
    return seconds


def _whole_seconds(value: Any) -> int:
    """A duration rounded up to whole seconds, as HTTP's retry-after takes them."""
    return math.ceil(parse_duration_s(value))


def _positive_float(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError(f"not a number: {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"not a number: {value!r}") from None
    if not number > 0:  # also refuses NaN
        raise ValueError(f"must be greater than zero, got {value!r}")
    return number


def _positive_int(value: Any) -> int:
    number = _int(value)
    if number < 1:
        raise ValueError(f"must be at least 1, got {value!r}")
    return number


def _non_negative_int(value: Any) -> int:
    number = _int(value)
    if number < 0:
        raise ValueError(f"must not be negative, got {value!r}")
    return number


# -- the option table -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Option:
    """One scalar setting: its flag, its key in the file, where it lands in ``Config``."""

    flag: str  # "--grpc-port"; env is EPP_GRPC_PORT
    path: tuple[str, ...]  # ("server", "grpc_port")
    file_key: tuple[str, ...]  # ("server", "grpcPort")
    parse: Callable[[Any], Any]
    help: str
    aliases: tuple[str, ...] = ()  # older flag names that still work

    @property
    def env(self) -> str:
        return "EPP_" + self.flag.removeprefix("--").replace("-", "_").upper()

    @property
    def dest(self) -> str:
        return "_".join(self.path)


OPTIONS: tuple[Option, ...] = (
    Option(
        "--grpc-host",
        ("server", "grpc_host"),
        ("server", "grpcHost"),
        _optional_str,
        "address the ext_proc and gRPC health servers listen on (default: 0.0.0.0 with "
        "Kubernetes discovery or TLS, else 127.0.0.1)",
    ),
    Option(
        "--grpc-port",
        ("server", "grpc_port"),
        ("server", "grpcPort"),
        _port,
        "ext_proc gRPC port (Envoy connects here)",
    ),
    Option(
        "--metrics-host",
        ("server", "metrics_host"),
        ("server", "metricsHost"),
        str,
        "address of the Prometheus /metrics listener",
    ),
    Option(
        "--metrics-port",
        ("server", "metrics_port"),
        ("server", "metricsPort"),
        _port,
        "Prometheus /metrics port; 0 turns it off",
    ),
    Option(
        "--max-body-bytes",
        ("server", "max_body_bytes"),
        ("server", "maxBodyBytes"),
        _int,
        "largest request body epp gathers; larger ones get 413",
    ),
    Option(
        "--max-buffered-body-bytes",
        ("server", "max_buffered_body_bytes"),
        ("server", "maxBufferedBodyBytes"),
        _non_negative_int,
        "request body bytes all requests together may hold in epp; a request whose "
        "body does not fit gets 503 overloaded; 0: no limit",
    ),
    Option(
        "--graceful-timeout",
        ("server", "graceful_timeout_s"),
        ("server", "gracefulTimeout"),
        parse_duration_s,
        "how long in-flight requests may finish on SIGTERM (e.g. 10s)",
    ),
    Option(
        "--destination-fallbacks",
        ("server", "destination_fallbacks"),
        ("server", "destinationFallbacks"),
        _int,
        "fallback endpoints to list after the primary in the destination",
    ),
    Option(
        "--refresh-metrics-interval",
        ("data_layer", "refresh_metrics_interval_s"),
        ("dataLayer", "refreshMetricsInterval"),
        _positive_duration,
        "how often each endpoint's /metrics is scraped (e.g. 50ms)",
    ),
    Option(
        "--scrape-timeout",
        ("data_layer", "scrape_timeout_s"),
        ("dataLayer", "scrapeTimeout"),
        _positive_duration,
        "timeout of one metrics scrape",
    ),
    Option(
        "--metrics-staleness-threshold",
        ("data_layer", "metrics_staleness_s"),
        ("dataLayer", "metricsStalenessThreshold"),
        _positive_duration,
        "metrics older than this are stale; fresh endpoints are preferred",
    ),
    Option(
        "--model-server-metrics-path",
        ("data_layer", "metrics_path"),
        ("dataLayer", "metricsPath"),
        str,
        "path of the model servers' metrics",
        aliases=("--endpoint-metrics-path",),
    ),
    Option(
        "--engine",
        ("data_layer", "engine"),
        ("dataLayer", "engine"),
        _choice("auto", "vllm", "sglang"),
        "metric names to read: vllm, sglang or auto",
    ),
    Option(
        "--unready-after-failures",
        ("data_layer", "unready_after_failures"),
        ("dataLayer", "unreadyAfterFailures"),
        _int,
        "consecutive failed scrapes after which an endpoint gets no traffic",
    ),
    Option(
        "--scrape-max-bytes",
        ("data_layer", "scrape_max_bytes"),
        ("dataLayer", "scrapeMaxBytes"),
        _non_negative_int,
        "largest /metrics body epp reads from a model server; a larger one fails the "
        "scrape; 0: no limit",
    ),
    Option(
        "--scrape-max-samples",
        ("data_layer", "scrape_max_samples"),
        ("dataLayer", "scrapeMaxSamples"),
        _non_negative_int,
        "most series of the metrics epp reads (queue, KV cache) one /metrics page may "
        "hold; more fails the scrape; 0: no limit",
    ),
    Option(
        "--scrape-idle-interval",
        ("data_layer", "scrape_idle_interval_s"),
        ("dataLayer", "scrapeIdleInterval"),
        _positive_duration,
        "longest pause between scrapes of an endpoint with nothing waiting or running, "
        "no requests from epp and unchanged numbers (default: twice the refresh "
        "interval; at most the refresh interval turns the slower pace off). How late "
        "epp may notice work sent to an idle pod past it (another epp replica)",
    ),
    Option(
        "--grpc-health-port",
        ("server", "grpc_health_port"),
        ("server", "grpcHealthPort"),
        _port,
        "grpc.health.v1 port for liveness/readiness probes; 0 turns it off",
    ),
    Option(
        "--secure-serving",
        ("server", "secure_serving"),
        ("server", "secureServing"),
        _bool,
        "TLS on the ext_proc port (default: on with Kubernetes discovery, off with --endpoint)",
    ),
    Option(
        "--cert-path",
        ("server", "cert_path"),
        ("server", "certPath"),
        _optional_str,
        "directory holding tls.crt and tls.key; without it a self-signed "
        "certificate is generated at start",
    ),
    Option(
        "--enable-cert-reload",
        ("server", "cert_reload"),
        ("server", "certReload"),
        _bool,
        "with --cert-path: serve a rotated certificate (e.g. from cert-manager) to new "
        "connections without a restart",
    ),
    Option(
        "--body-based-routing",
        ("server", "body_based_routing"),
        ("server", "bodyBasedRouting"),
        _bool,
        "gateway-level mode: set X-Gateway-Model-Name from the body and pick no endpoint",
    ),
    Option(
        "--inject-stream-usage",
        ("server", "inject_stream_usage"),
        ("server", "injectStreamUsage"),
        _bool,
        "ask streamed chat/completions requests for usage (stream_options.include_usage) "
        "so token metrics cover them; the extra usage event is kept from the client",
    ),
    Option(
        "--pool-name",
        ("kubernetes", "pool_name"),
        ("kubernetes", "poolName"),
        _optional_str,
        "the InferencePool whose pods epp routes to",
    ),
    Option(
        "--pool-namespace",
        ("kubernetes", "pool_namespace"),
        ("kubernetes", "poolNamespace"),
        _optional_str,
        "namespace of the InferencePool (default: $POD_NAMESPACE, else default)",
    ),
    Option(
        "--pool-group",
        ("kubernetes", "pool_group"),
        ("kubernetes", "poolGroup"),
        _choice("inference.networking.k8s.io", "inference.networking.x-k8s.io"),
        "API group of the InferencePool: inference.networking.k8s.io (v1) or "
        "inference.networking.x-k8s.io (v1alpha2)",
    ),
    Option(
        "--endpoint-selector",
        ("kubernetes", "endpoint_selector"),
        ("kubernetes", "endpointSelector"),
        _label_selector,
        "without an InferencePool: route to pods matching key=value[,key=value]",
    ),
    Option(
        "--endpoint-target-ports",
        ("kubernetes", "endpoint_target_ports"),
        ("kubernetes", "endpointTargetPorts"),
        _ports,
        "with --endpoint-selector: the pods' serving ports, e.g. 8000,8001",
    ),
    Option(
        "--kubeconfig",
        ("kubernetes", "kubeconfig"),
        ("kubernetes", "kubeconfig"),
        _optional_str,
        "kubeconfig file (default: in-cluster, else $KUBECONFIG)",
    ),
    Option(
        "--pool-sync-timeout",
        ("kubernetes", "sync_timeout_s"),
        ("kubernetes", "syncTimeout"),
        _positive_duration,
        "how long to wait at start for the pool's first complete view",
    ),
    Option(
        "--ha-enable-leader-election",
        ("kubernetes", "leader_election"),
        ("kubernetes", "leaderElection"),
        _bool,
        "leader election on a Lease: only the leader reports ready",
    ),
    Option(
        "--leader-election-lease-name",
        ("kubernetes", "lease_name"),
        ("kubernetes", "leaseName"),
        _optional_str,
        "name of the Lease (default: epp-<pool-name>)",
    ),
    Option(
        "--leader-election-lease-duration",
        ("kubernetes", "lease_duration_s"),
        ("kubernetes", "leaseDuration"),
        _positive_duration,
        "how long a leader's lease lasts without renewal",
    ),
    Option(
        "--leader-election-renew-deadline",
        ("kubernetes", "renew_deadline_s"),
        ("kubernetes", "renewDeadline"),
        _positive_duration,
        "a leader that cannot renew for this long steps down",
    ),
    Option(
        "--leader-election-retry-period",
        ("kubernetes", "retry_period_s"),
        ("kubernetes", "retryPeriod"),
        _positive_duration,
        "how often candidates try to acquire, and the leader renews",
    ),
    Option(
        "--saturation-queue-threshold",
        ("request_control", "saturation_queue_threshold"),
        ("saturationDetector", "queueDepthThreshold"),
        _positive_float,
        "waiting requests at which an endpoint counts as full (sheddable requests get "
        "429 while the pool is saturated)",
    ),
    Option(
        "--saturation-kv-threshold",
        ("request_control", "saturation_kv_threshold"),
        ("saturationDetector", "kvCacheUtilThreshold"),
        _positive_float,
        "KV-cache use (0-1) at which an endpoint counts as full",
    ),
    Option(
        "--retry-after",
        ("request_control", "retry_after_s"),
        ("admission", "retryAfter"),
        _whole_seconds,
        "retry-after of 429 answers, rounded up to whole seconds",
    ),
    Option(
        "--endpoint-max-inflight",
        ("request_control", "endpoint_max_inflight"),
        ("admission", "endpointMaxInflight"),
        _non_negative_int,
        "requests epp may have in flight on one endpoint; 0: no cap",
    ),
    Option(
        "--trust-model-rewrite-header",
        ("request_control", "trust_model_rewrite_header"),
        ("modelRewrite", "trustHeader"),
        _bool,
        "honour x-gateway-model-name-rewrite on requests (it overrides every rewrite "
        "rule); only if your gateway sets it and removes clients' copies",
    ),
    Option(
        "--failure-backoff",
        ("request_control", "failure_backoff_s"),
        ("passiveHealth", "backoff"),
        parse_duration_s,
        "how long an endpoint is avoided after a failed request (5xx); doubles on "
        "repeated failure; 0 turns passive health off",
    ),
    Option(
        "--failure-max-backoff",
        ("request_control", "failure_max_backoff_s"),
        ("passiveHealth", "maxBackoff"),
        _positive_duration,
        "the longest an endpoint is avoided after failed requests",
    ),
    Option(
        "--log-level",
        ("log_level",),
        ("logging", "level"),
        _choice("debug", "info", "warning", "error"),
        "log level",
    ),
    Option(
        "--log-format",
        ("log_format",),
        ("logging", "format"),
        _choice("text", "json"),
        "log format: text or json (one object per line)",
    ),
    Option(
        "--request-log",
        ("request_log",),
        ("logging", "requests"),
        _choice("all", "errors", "off"),
        "the line logged at info for each finished request: all, errors (only those "
        "that did not complete below 400) or off",
    ),
    Option(
        "--max-model-series",
        ("max_model_series",),
        ("metrics", "maxModelSeries"),
        _positive_int,
        "distinct model names with metric series of their own; the rest "
        "count as __other__ (each costs ~240 lines of /metrics)",
    ),
)


def _fallback_chain(value: Any) -> tuple[str, ...]:
    """``small,tiny`` or a list of model names."""
    parts = value if isinstance(value, list | tuple) else str(value).split(",")
    chain = tuple(str(part).strip() for part in parts if str(part).strip())
    if not chain:
        raise ValueError("expected one or more fallback model names")
    return chain


@dataclass(frozen=True, slots=True)
class MappingOption:
    """A setting that maps names to values: a repeatable ``--flag NAME=VALUE``, an env
    variable of space-separated ``NAME=VALUE`` pairs, and a mapping in the file. They
    merge by name: the file's entries, then the environment's, then the flags'."""

    flag: str
    path: tuple[str, ...]
    file_key: str
    parse: Callable[[Any], Any]  # one value, as text (flag, env) or YAML (file)
    metavar: str
    help: str

    @property
    def env(self) -> str:
        return "EPP_" + self.path[-1].upper()

    @property
    def dest(self) -> str:
        return "_".join(self.path)


_MAPPINGS: tuple[MappingOption, ...] = (
    MappingOption(
        "--model-fallback",
        ("request_control", "model_fallbacks"),
        "modelFallbacks",
        _fallback_chain,
        "MODEL=FALLBACK[,FALLBACK...]",
        "models to serve MODEL's requests with, in order, when no ready, healthy "
        "endpoint serves it; repeat for more models (env EPP_MODEL_FALLBACKS, "
        "space-separated)",
    ),
    MappingOption(
        "--objective",
        ("request_control", "objectives"),
        "objectives",
        _int,
        "NAME=PRIORITY",
        "the priority of requests naming objective NAME in "
        "x-gateway-inference-objective (negative: sheddable), for deployments "
        "without InferenceObjectives; repeatable (env EPP_OBJECTIVES)",
    ),
)


# Flags of the reference EPP that epp accepts so its manifests and charts work unchanged,
# but does not act on; each one given is logged once at start with the reason.
REFERENCE_ONLY_FLAGS: dict[str, str] = {
    "--tracing": "epp does not emit traces",
    "--enable-pprof": "Go profiling; use py-spy on epp",
    "--metrics-endpoint-auth": "/metrics has no authentication; restrict it with a NetworkPolicy",
    "--health-checking": "epp always serves grpc.health.v1",
    "--refresh-prometheus-metrics-interval": "epp computes pool metrics when scraped",
    "--model-server-metrics-port": "metrics are read from each endpoint's own port",
    "--model-server-metrics-scheme": "metrics are scraped over http",
    "--model-server-metrics-https-insecure-skip-verify": "metrics are scraped over http",
    "--total-queued-requests-metric": "metric names follow --engine (vllm, sglang, auto)",
    "--total-running-requests-metric": "metric names follow --engine (vllm, sglang, auto)",
    "--kv-cache-usage-percentage-metric": "metric names follow --engine (vllm, sglang, auto)",
    "--lora-info-metric": "metric names follow --engine (vllm, sglang, auto)",
    "--cache-info-metric": "metric names follow --engine (vllm, sglang, auto)",
    "--zap-encoder": "use --log-format",
    "--zap-log-level": "use --log-level",
}


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """Add every option as a flag; each also reads its EPP_* environment variable."""
    parser.add_argument(
        "--config-file",
        metavar="PATH",
        default=os.environ.get("EPP_CONFIG_FILE"),
        help="YAML EndpointPickerConfig (env EPP_CONFIG_FILE)",
    )
    parser.add_argument(
        "--config-text",
        metavar="YAML",
        default=os.environ.get("EPP_CONFIG_TEXT"),
        help="the config file's content, inline, instead of --config-file (env EPP_CONFIG_TEXT)",
    )
    parser.add_argument(
        "--v",
        dest="verbosity",
        type=int,
        metavar="N",
        default=None,
        help="the reference EPP's log verbosity: 4 or more is --log-level debug",
    )
    reference = parser.add_argument_group(
        "accepted for compatibility with the reference EPP, not acted on (logged at start)"
    )
    for flag in REFERENCE_ONLY_FLAGS:
        reference.add_argument(
            flag,
            dest="reference_" + flag[2:].replace("-", "_"),
            nargs="?",
            const="true",
            default=None,
            metavar="VALUE",
            help=argparse.SUPPRESS,
        )
    parser.add_argument(
        "--endpoint",
        dest="endpoints",
        action="append",
        metavar="ADDR[=MODEL,...]",
        help="a model server, e.g. 10.0.0.5:8000=llama-3-8b; repeat for more "
        "(replaces the file's list; env EPP_ENDPOINTS, space-separated)",
    )
    parser.add_argument(
        "--scorer-weight",
        dest="scorer_weights",
        action="append",
        metavar="PLUGIN=WEIGHT",
        help="override one scorer's weight in the profile, e.g. prefix-cache-scorer=3",
    )
    for mapping in _MAPPINGS:
        parser.add_argument(
            mapping.flag,
            dest=mapping.dest,
            action="append",
            metavar=mapping.metavar,
            help=mapping.help,
        )
    metavars: dict[Callable[[Any], Any], str] = {
        _port: "PORT",
        _int: "N",
        parse_duration_s: "DURATION",
        _positive_duration: "DURATION",
        str: "TEXT",
        _whole_seconds: "DURATION",
        _positive_float: "NUMBER",
        _non_negative_int: "N",
        _positive_int: "N",
    }
    groups: dict[str, argparse._ArgumentGroup] = {}
    for option in OPTIONS:
        title = _HELP_SECTIONS.get(option.path[0], "logging")
        group = groups.get(title) or groups.setdefault(title, parser.add_argument_group(title))
        if option.parse is _bool:  # Go-style: --flag, --flag=true, --flag=false
            group.add_argument(
                option.flag,
                *option.aliases,
                dest=option.dest,
                default=None,
                nargs="?",
                const="true",
                metavar="BOOL",
                help=f"{option.help} (env {option.env})",
            )
            continue
        group.add_argument(
            option.flag,
            *option.aliases,
            dest=option.dest,
            default=None,
            metavar=metavars.get(option.parse, "VALUE"),
            help=f"{option.help} (env {option.env})",
        )


# `epp serve --help` groups the options by the part of Config they set.
_HELP_SECTIONS = {
    "server": "serving (ext_proc, health, metrics, TLS)",
    "data_layer": "model-server metrics",
    "kubernetes": "Kubernetes: InferencePool or selector discovery, leader election",
    "request_control": "admission, passive health",
}


def load_config(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> Config:
    """Build the ``Config`` from defaults, the file, the environment and the flags."""
    env = os.environ if environ is None else environ
    document: dict[str, Any] = {}
    config_file = getattr(args, "config_file", None)
    config_text = getattr(args, "config_text", None)
    if config_file and config_text:
        raise ConfigError("give --config-file or --config-text, not both")
    if config_file:
        document = _read_file(Path(config_file))
    elif config_text:
        config_file = "--config-text"
        document = _parse_document(config_text, config_file)
    values: dict[tuple[str, ...], Any] = {}
    for option in OPTIONS:
        raw = _lookup(document, option.file_key)
        source = f"{config_file}: {'.'.join(option.file_key)}"
        if option.env in env:
            raw, source = env[option.env], f"environment {option.env}"
        if getattr(args, option.dest, None) is not None:
            raw, source = getattr(args, option.dest), f"flag {option.flag}"
        if raw is None:
            continue
        try:
            values[option.path] = option.parse(raw)
        except ValueError as exc:
            raise ConfigError(f"{source}: {exc}") from exc

    endpoints = _endpoints(args, document, env, config_file)
    scheduler = _scheduler(document, config_file)
    scheduler = _apply_weight_overrides(scheduler, getattr(args, "scorer_weights", None) or [])
    config = Config(endpoints=endpoints, scheduler=scheduler)
    for mapping in _MAPPINGS:
        config = _replace_path(
            config, mapping.path, _mapping_values(mapping, args, document, env, config_file)
        )
    for path, value in values.items():
        config = _replace_path(config, path, value)
    verbosity = getattr(args, "verbosity", None)
    if verbosity is not None and getattr(args, "log_level", None) is None:
        config = dataclasses.replace(config, log_level="debug" if verbosity >= 4 else "info")
    ignored = tuple(
        (flag, str(value), why)
        for flag, why in REFERENCE_ONLY_FLAGS.items()
        if (value := getattr(args, "reference_" + flag[2:].replace("-", "_"), None)) is not None
    )
    if ignored:
        config = dataclasses.replace(config, ignored_flags=ignored)
    if config.kubernetes.pool_namespace is None:
        config = _replace_path(
            config, ("kubernetes", "pool_namespace"), env.get("POD_NAMESPACE") or "default"
        )
    _check_modes(config)
    return config


def _check_modes(config: Config) -> None:
    """One source of endpoints, and what each needs, with errors that say how to fix it."""
    kube = config.kubernetes
    sources = [
        name
        for name, used in (
            ("--endpoint", bool(config.endpoints)),
            ("--pool-name", kube.pool_name is not None),
            ("--endpoint-selector", bool(kube.endpoint_selector)),
        )
        if used
    ]
    if len(sources) > 1:
        raise ConfigError(f"choose one source of endpoints, not {' and '.join(sources)}")
    if kube.endpoint_selector and not kube.endpoint_target_ports:
        raise ConfigError("--endpoint-selector needs --endpoint-target-ports, e.g. 8000")
    if kube.endpoint_target_ports and not kube.endpoint_selector:
        raise ConfigError("--endpoint-target-ports is only used with --endpoint-selector")
    if kube.leader_election and kube.pool_name is None:
        raise ConfigError("--ha-enable-leader-election needs --pool-name (the Lease is per pool)")
    if kube.leader_election and not (
        kube.retry_period_s < kube.renew_deadline_s < kube.lease_duration_s
    ):
        raise ConfigError("leader election needs retry period < renew deadline < lease duration")
    server = config.server
    if 0 < server.max_buffered_body_bytes < server.max_body_bytes:
        raise ConfigError(
            "--max-buffered-body-bytes must be 0 or at least --max-body-bytes "
            "(else the largest bodies allowed could never be gathered)"
        )
    control = config.request_control
    if control.failure_max_backoff_s < control.failure_backoff_s:
        raise ConfigError("--failure-max-backoff must not be shorter than --failure-backoff")
    for model, chain in control.model_fallbacks.items():
        if model in chain:
            raise ConfigError(f"--model-fallback: model {model!r} lists itself as a fallback")


def check_endpoint_source(config: Config) -> None:
    """Serving needs somewhere to route (``load_config`` alone allows none, for tools)."""
    if not (config.endpoints or config.kubernetes.enabled or config.server.body_based_routing):
        raise ConfigError(
            "no endpoints: give --pool-name (an InferencePool), --endpoint-selector with "
            "--endpoint-target-ports, --endpoint ADDR=MODEL (static), or --body-based-routing"
        )


def _read_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
    return _parse_document(text, f"config file {path}")


def _parse_document(text: str, where: str) -> dict[str, Any]:
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where} is not valid YAML: {exc}") from exc
    if document is None:
        return {}
    if not isinstance(document, dict):
        raise ConfigError(f"{where} must hold a mapping at the top level")
    kind = document.get("kind", "EndpointPickerConfig")
    if kind != "EndpointPickerConfig":
        raise ConfigError(f"{where}: kind must be EndpointPickerConfig, not {kind!r}")
    return document


def _lookup(document: Mapping[str, Any], keys: Sequence[str]) -> Any:
    node: Any = document
    for key in keys:
        if not isinstance(node, Mapping) or key not in node:
            return None
        node = node[key]
    return node


def _replace_path(obj: Any, path: Sequence[str], value: Any) -> Any:
    if len(path) == 1:
        return dataclasses.replace(obj, **{path[0]: value})
    child = getattr(obj, path[0])
    return dataclasses.replace(obj, **{path[0]: _replace_path(child, path[1:], value)})


def _endpoints(
    args: argparse.Namespace,
    document: Mapping[str, Any],
    env: Mapping[str, str],
    config_file: str | None,
) -> tuple[EndpointSpec, ...]:
    flags = getattr(args, "endpoints", None)
    if flags:
        return tuple(_parse_endpoint(text, "flag --endpoint") for text in flags)
    if env.get("EPP_ENDPOINTS"):
        return tuple(
            _parse_endpoint(text, "environment EPP_ENDPOINTS")
            for text in env["EPP_ENDPOINTS"].split()
        )
    entries = document.get("endpoints") or []
    if not isinstance(entries, list):
        raise ConfigError(f"{config_file}: endpoints must be a list")
    specs: list[EndpointSpec] = []
    for index, entry in enumerate(entries):
        where = f"{config_file}: endpoints[{index}]"
        if isinstance(entry, str):
            specs.append(_parse_endpoint(entry, where))
            continue
        if not isinstance(entry, Mapping) or "address" not in entry:
            raise ConfigError(f"{where}: expected {{address: HOST:PORT, models: [...]}}")
        address, _ = _parse_endpoint(str(entry["address"]), where)
        models = entry.get("models")
        if models is not None and (
            not isinstance(models, list) or not all(isinstance(m, str) for m in models)
        ):
            raise ConfigError(f"{where}: models must be a list of model names")
        specs.append((address, frozenset(models) if models else None))
    return tuple(specs)


def _mapping_values(
    option: MappingOption,
    args: argparse.Namespace,
    document: Mapping[str, Any],
    env: Mapping[str, str],
    config_file: str | None,
) -> dict[str, Any]:
    values: dict[str, Any] = {}
    entries = document.get(option.file_key) or {}
    if not isinstance(entries, Mapping):
        raise ConfigError(f"{config_file}: {option.file_key} must be a mapping of names")
    pairs: list[tuple[str, Any, str]] = [
        (str(name), value, f"{config_file}: {option.file_key}.{name}")
        for name, value in entries.items()
    ]
    for text in env.get(option.env, "").split():
        name, sep, value = text.partition("=")
        pairs.append((name if sep else "", value, f"environment {option.env}"))
    for text in getattr(args, option.dest, None) or []:
        name, sep, value = text.partition("=")
        pairs.append((name if sep else "", value, f"flag {option.flag}"))
    for name, value, source in pairs:
        if not name.strip():
            raise ConfigError(f"{source}: expected {option.metavar}")
        try:
            values[name.strip()] = option.parse(value)
        except ValueError as exc:
            raise ConfigError(f"{source}: {exc}") from exc
    return values


def _parse_endpoint(text: str, where: str) -> EndpointSpec:
    try:
        return parse_endpoint_flag(text)
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from exc


def _scheduler(document: Mapping[str, Any], config_file: str | None) -> SchedulerConfig:
    if "plugins" not in document and "schedulingProfiles" not in document:
        return default_scheduler_config()
    plugins_doc = document.get("plugins") or []
    profiles_doc = document.get("schedulingProfiles") or []
    if not isinstance(plugins_doc, list) or not isinstance(profiles_doc, list):
        raise ConfigError(f"{config_file}: plugins and schedulingProfiles must be lists")
    plugins: list[PluginSpec] = []
    for index, entry in enumerate(plugins_doc):
        if not isinstance(entry, Mapping) or not isinstance(entry.get("type"), str):
            raise ConfigError(f"{config_file}: plugins[{index}] needs a 'type'")
        parameters = entry.get("parameters") or {}
        if not isinstance(parameters, Mapping):
            raise ConfigError(f"{config_file}: plugins[{index}].parameters must be a mapping")
        plugins.append(
            PluginSpec(
                type=entry["type"],
                name=str(entry.get("name") or entry["type"]),
                parameters=dict(parameters),
            )
        )
    profiles: list[ProfileSpec] = []
    for index, entry in enumerate(profiles_doc):
        if not isinstance(entry, Mapping) or not isinstance(entry.get("plugins"), list):
            raise ConfigError(f"{config_file}: schedulingProfiles[{index}] needs 'plugins'")
        refs = []
        for ref_index, ref in enumerate(entry["plugins"]):
            if not isinstance(ref, Mapping) or not isinstance(ref.get("pluginRef"), str):
                raise ConfigError(
                    f"{config_file}: schedulingProfiles[{index}].plugins[{ref_index}]"
                    " needs a 'pluginRef'"
                )
            weight = ref.get("weight")
            if weight is not None and (
                isinstance(weight, bool) or not isinstance(weight, int | float)
            ):
                raise ConfigError(
                    f"{config_file}: schedulingProfiles[{index}].plugins[{ref_index}]"
                    ".weight must be a number"
                )
            refs.append(
                ProfilePluginRef(
                    plugin_ref=ref["pluginRef"], weight=None if weight is None else float(weight)
                )
            )
        profiles.append(ProfileSpec(name=str(entry.get("name", "default")), plugins=refs))
    return SchedulerConfig(plugins=plugins, profiles=profiles)


def _apply_weight_overrides(
    scheduler: SchedulerConfig, overrides: Sequence[str]
) -> SchedulerConfig:
    if not overrides:
        return scheduler
    weights: dict[str, float] = {}
    for text in overrides:
        name, sep, weight = text.partition("=")
        try:
            weights[name.strip()] = float(weight)
        except ValueError:
            sep = ""
        if not sep:
            raise ConfigError(f"flag --scorer-weight: expected PLUGIN=WEIGHT, got {text!r}")
    profiles = []
    seen: set[str] = set()
    for profile in scheduler.profiles:
        refs = []
        for ref in profile.plugins:
            if ref.plugin_ref in weights:
                seen.add(ref.plugin_ref)
                ref = dataclasses.replace(ref, weight=weights[ref.plugin_ref])
            refs.append(ref)
        profiles.append(dataclasses.replace(profile, plugins=refs))
    unknown = sorted(set(weights) - seen)
    if unknown:
        raise ConfigError(
            f"flag --scorer-weight: no scorer named {', '.join(unknown)} in the profile"
        )
    return dataclasses.replace(scheduler, profiles=profiles)

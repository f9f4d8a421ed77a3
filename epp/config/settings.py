"""The settings epp runs with: one typed ``Config`` and its defaults.

Every default lives here (the flags, the environment and the file only override them),
so this module is what to read to learn what epp does when told nothing. The metrics
staleness threshold is named from the data layer (``DEFAULT_STALENESS_S``), where the
scraper, admission and the prefer-fresh filter use the same value when built alone.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from epp.datalayer.endpoint import DEFAULT_STALENESS_S
from epp.datalayer.store import EndpointSpec
from epp.requestcontrol.model_selection import SelectionRule
from epp.scheduling.spec import SchedulerConfig, default_scheduler_config

__all__ = [
    "Config",
    "ConfigError",
    "DataLayerConfig",
    "KubernetesConfig",
    "ModelSelectionConfig",
    "RequestControlConfig",
    "ServerConfig",
    "SyncConfig",
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
    # After SIGTERM (NotServing, leadership released), new streams are still accepted
    # this long, for gateways that have not yet seen the pod leave (the reference's 30 s
    # drain window; 0: stop accepting at once).
    drain_timeout_s: float = 0.0
    # gRPC message limits of the ext_proc port. None: the largest body plus 1 MiB, at
    # least 4 MiB (Envoy sends a buffered body as one message).
    grpc_max_recv_msg_bytes: int | None = None
    grpc_max_send_msg_bytes: int | None = None
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
    # The model servers add usage to streams that did not ask for it (vLLM
    # --enable-force-include-usage): LOGGED mode's meter then reads every stream.
    servers_add_stream_usage: bool = False
    # Gateway API Inference Extension conformance hooks: honour test-epp-endpoint-selection
    # and echo x-conformance-test-served-endpoint (epp/requestcontrol/conformance.py).
    # Test setups only: any client could pick its pod.
    conformance_hooks: bool = False
    # The Pick API (epp/pickapi): a pick not finished this long after it was made is
    # released (its caller crashed or forgot), so its endpoint's in-flight count heals.
    # Longer than any generation should take: a live request released early only
    # under-counts its endpoint's load until it ends.
    pick_timeout_s: float = 600.0
    # Unfinished picks epp keeps (about 1 KB each); past it the oldest is released.
    pick_max_outstanding: int = 10_000
    # Processes serving the ext_proc port together (SO_REUSEPORT); > 1 needs a sync.
    workers: int = 1


@dataclass(frozen=True, slots=True)
class DataLayerConfig:
    refresh_metrics_interval_s: float = 0.05  # the reference EPP polls every 50 ms
    scrape_timeout_s: float = 1.0
    metrics_staleness_s: float = DEFAULT_STALENESS_S  # older metrics count as stale
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
    # Where the scraper runs: "process" (a child process, off the routing loop) or
    # "inline" (on it); epp/datalayer/scrape_process.py says why process is the default.
    scrape_mode: str = "process"


@dataclass(frozen=True, slots=True)
class KubernetesConfig:
    """Discovery on Kubernetes: an InferencePool (``pool_name``) or a label selector."""

    pool_name: str | None = None
    pool_namespace: str | None = None  # None: $NAMESPACE, else $POD_NAMESPACE, else "default"
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
    # Honour x-llm-d-model-name-rewrite (or x-gateway-model-name-rewrite) from the request:
    # only where the gateway sets it and strips clients' copies, or any client picks the
    # model it is served by.
    trust_model_rewrite_header: bool = False


@dataclass(frozen=True, slots=True)
class ModelSelectionConfig:
    """``"model": "auto"``: epp chooses the model (epp/requestcontrol/model_selection.py).

    Off until a default model is set; rules and a function are tried before it."""

    selector_name: str = "auto"  # the model name that asks epp to choose
    default_model: str | None = None  # None: selection is off
    rules: tuple[SelectionRule, ...] = ()
    function: str | None = None  # module:function, imported at start
    # A function call over this is counted as slow, its answer dropped.
    function_budget_s: float = 0.005
    # How much of the last user message keyword and regex rules read: bounds their cost.
    max_text_chars: int = 1024

    @property
    def enabled(self) -> bool:
        return self.default_model is not None


@dataclass(frozen=True, slots=True)
class SyncConfig:
    """Replicas sharing their routing decisions (epp/sync): off without a Redis URL."""

    redis_url: str | None = None
    channel: str = "epp:sync"
    replica_id: str | None = None  # None: hostname-pid
    heartbeat_s: float = 1.0
    expire_s: float = 5.0  # five heartbeats missed
    batch_s: float = 0.005

    @property
    def enabled(self) -> bool:
        return self.redis_url is not None


@dataclass(frozen=True, slots=True)
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    data_layer: DataLayerConfig = field(default_factory=DataLayerConfig)
    kubernetes: KubernetesConfig = field(default_factory=KubernetesConfig)
    request_control: RequestControlConfig = field(default_factory=RequestControlConfig)
    model_selection: ModelSelectionConfig = field(default_factory=ModelSelectionConfig)
    sync: SyncConfig = field(default_factory=SyncConfig)
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
    # Export the deprecated metric names (inference_objective_*, inference_pool_*,
    # inference_extension_*) beside the current llm_d_epp_* ones; until epp 1.0.
    legacy_metric_names: bool = True
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

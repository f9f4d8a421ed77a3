"""The option table: each setting's flag, environment variable, file key and parser.

Flags (``flags``), the environment and the config file (``file``) all read this table,
so a setting is declared once and has the same meaning, and the same checks, in each.
The settings that map names to values are in ``mappings``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from epp.config import values as v

__all__ = ["OPTIONS", "Option"]


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
        v.optional_text,
        "address the ext_proc and gRPC health servers listen on (default: 0.0.0.0 with "
        "Kubernetes discovery or TLS, else 127.0.0.1)",
    ),
    Option(
        "--grpc-port",
        ("server", "grpc_port"),
        ("server", "grpcPort"),
        v.port,
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
        v.port,
        "Prometheus /metrics port; 0 turns it off",
    ),
    Option(
        "--max-body-bytes",
        ("server", "max_body_bytes"),
        ("server", "maxBodyBytes"),
        v.integer,
        "largest request body epp gathers; larger ones get 413",
    ),
    Option(
        "--grpc-max-recv-msg-size",
        ("server", "grpc_max_recv_msg_bytes"),
        ("server", "grpcMaxRecvMsgSize"),
        v.byte_size,
        "largest gRPC message the ext_proc port accepts (4194304, 10Mi, 25MB; default: "
        "--max-body-bytes plus 1 MiB, at least 4 MiB)",
    ),
    Option(
        "--grpc-max-send-msg-size",
        ("server", "grpc_max_send_msg_bytes"),
        ("server", "grpcMaxSendMsgSize"),
        v.byte_size,
        "largest gRPC message the ext_proc port sends (default as the receive limit)",
    ),
    Option(
        "--max-buffered-body-bytes",
        ("server", "max_buffered_body_bytes"),
        ("server", "maxBufferedBodyBytes"),
        v.non_negative_int,
        "request body bytes all requests together may hold in epp; a request whose "
        "body does not fit gets 503 overloaded; 0: no limit",
    ),
    Option(
        "--graceful-timeout",
        ("server", "graceful_timeout_s"),
        ("server", "gracefulTimeout"),
        v.parse_duration_s,
        "how long in-flight requests may finish on SIGTERM (e.g. 10s)",
    ),
    Option(
        "--drain-timeout",
        ("server", "drain_timeout_s"),
        ("server", "drainTimeout"),
        v.parse_duration_s,
        "after SIGTERM, keep accepting ext_proc streams this long while reporting NOT_SERVING "
        "(the reference EPP's drain window; default 0: stop accepting at once), then give "
        "in-flight ones --graceful-timeout",
    ),
    Option(
        "--pick-timeout",
        ("server", "pick_timeout_s"),
        ("server", "pickTimeout"),
        v.positive_duration_s,
        "Pick API: a pick not finished this long after it was made is released (e.g. 10m)",
    ),
    Option(
        "--pick-max-outstanding",
        ("server", "pick_max_outstanding"),
        ("server", "pickMaxOutstanding"),
        v.positive_int,
        "Pick API: unfinished picks epp keeps; past it the oldest is released",
    ),
    Option(
        "--destination-fallbacks",
        ("server", "destination_fallbacks"),
        ("server", "destinationFallbacks"),
        v.integer,
        "fallback endpoints to list after the primary in the destination",
    ),
    Option(
        "--refresh-metrics-interval",
        ("data_layer", "refresh_metrics_interval_s"),
        ("dataLayer", "refreshMetricsInterval"),
        v.positive_duration_s,
        "how often each endpoint's /metrics is scraped (e.g. 50ms)",
    ),
    Option(
        "--scrape-timeout",
        ("data_layer", "scrape_timeout_s"),
        ("dataLayer", "scrapeTimeout"),
        v.positive_duration_s,
        "timeout of one metrics scrape",
    ),
    Option(
        "--metrics-staleness-threshold",
        ("data_layer", "metrics_staleness_s"),
        ("dataLayer", "metricsStalenessThreshold"),
        v.positive_duration_s,
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
        v.one_of("auto", "vllm", "sglang"),
        "metric names to read: vllm, sglang or auto",
    ),
    Option(
        "--unready-after-failures",
        ("data_layer", "unready_after_failures"),
        ("dataLayer", "unreadyAfterFailures"),
        v.integer,
        "consecutive failed scrapes after which an endpoint gets no traffic",
    ),
    Option(
        "--scrape-max-bytes",
        ("data_layer", "scrape_max_bytes"),
        ("dataLayer", "scrapeMaxBytes"),
        v.non_negative_int,
        "largest /metrics body epp reads from a model server; a larger one fails the "
        "scrape; 0: no limit",
    ),
    Option(
        "--scrape-max-samples",
        ("data_layer", "scrape_max_samples"),
        ("dataLayer", "scrapeMaxSamples"),
        v.non_negative_int,
        "most series of the metrics epp reads (queue, KV cache) one /metrics page may "
        "hold; more fails the scrape; 0: no limit",
    ),
    Option(
        "--scrape-idle-interval",
        ("data_layer", "scrape_idle_interval_s"),
        ("dataLayer", "scrapeIdleInterval"),
        v.positive_duration_s,
        "longest pause between scrapes of an endpoint with nothing waiting or running, "
        "no requests from epp and unchanged numbers (default: twice the refresh "
        "interval; at most the refresh interval turns the slower pace off). How late "
        "epp may notice work sent to an idle pod past it (another epp replica)",
    ),
    Option(
        "--scrape-mode",
        ("data_layer", "scrape_mode"),
        ("dataLayer", "scrapeMode"),
        v.one_of("process", "inline"),
        "where the scraper runs: process (default; a child process, so scraping never "
        "delays routing) or inline (on the event loop that routes: one process, for "
        "a handful of pods)",
    ),
    Option(
        "--grpc-health-port",
        ("server", "grpc_health_port"),
        ("server", "grpcHealthPort"),
        v.port,
        "grpc.health.v1 port for liveness/readiness probes; 0 turns it off",
    ),
    Option(
        "--secure-serving",
        ("server", "secure_serving"),
        ("server", "secureServing"),
        v.boolean,
        "TLS on the ext_proc port (default: on with Kubernetes discovery, off with --endpoint)",
    ),
    Option(
        "--cert-path",
        ("server", "cert_path"),
        ("server", "certPath"),
        v.optional_text,
        "directory holding tls.crt and tls.key; without it a self-signed "
        "certificate is generated at start",
    ),
    Option(
        "--enable-cert-reload",
        ("server", "cert_reload"),
        ("server", "certReload"),
        v.boolean,
        "with --cert-path: serve a rotated certificate (e.g. from cert-manager) to new "
        "connections without a restart",
    ),
    Option(
        "--body-based-routing",
        ("server", "body_based_routing"),
        ("server", "bodyBasedRouting"),
        v.boolean,
        "gateway-level mode: set X-Gateway-Model-Name from the body and pick no endpoint",
    ),
    Option(
        "--inject-stream-usage",
        ("server", "inject_stream_usage"),
        ("server", "injectStreamUsage"),
        v.boolean,
        "ask streamed chat/completions requests for usage (stream_options.include_usage) "
        "so token metrics cover them; the extra usage event is kept from the client",
    ),
    Option(
        "--servers-add-stream-usage",
        ("server", "servers_add_stream_usage"),
        ("server", "serversAddStreamUsage"),
        v.boolean,
        "the model servers add usage to streams that did not ask for it (vLLM "
        "--enable-force-include-usage): Envoy's response meter (LOGGED) reads every stream, "
        "not only those that asked",
    ),
    Option(
        "--enable-conformance-hooks",
        ("server", "conformance_hooks"),
        ("server", "enableConformanceHooks"),
        v.boolean,
        "for the Gateway API Inference Extension conformance suite only: route to the "
        "endpoints the test-epp-endpoint-selection header names and echo the served "
        "endpoint in x-conformance-test-served-endpoint (any client could pick its pod)",
    ),
    Option(
        "--pool-name",
        ("kubernetes", "pool_name"),
        ("kubernetes", "poolName"),
        v.optional_text,
        "the InferencePool whose pods epp routes to",
    ),
    Option(
        "--pool-namespace",
        ("kubernetes", "pool_namespace"),
        ("kubernetes", "poolNamespace"),
        v.optional_text,
        "namespace of the InferencePool (default: $NAMESPACE, else $POD_NAMESPACE, else default)",
    ),
    Option(
        "--pool-group",
        ("kubernetes", "pool_group"),
        ("kubernetes", "poolGroup"),
        v.one_of("inference.networking.k8s.io", "inference.networking.x-k8s.io"),
        "API group of the InferencePool: inference.networking.k8s.io (v1) or "
        "inference.networking.x-k8s.io (v1alpha2)",
    ),
    Option(
        "--endpoint-selector",
        ("kubernetes", "endpoint_selector"),
        ("kubernetes", "endpointSelector"),
        v.label_selector,
        "without an InferencePool: route to pods matching key=value[,key=value]",
    ),
    Option(
        "--endpoint-target-ports",
        ("kubernetes", "endpoint_target_ports"),
        ("kubernetes", "endpointTargetPorts"),
        v.ports,
        "with --endpoint-selector: the pods' serving ports, e.g. 8000,8001",
    ),
    Option(
        "--kubeconfig",
        ("kubernetes", "kubeconfig"),
        ("kubernetes", "kubeconfig"),
        v.optional_text,
        "kubeconfig file (default: in-cluster, else $KUBECONFIG)",
    ),
    Option(
        "--pool-sync-timeout",
        ("kubernetes", "sync_timeout_s"),
        ("kubernetes", "syncTimeout"),
        v.positive_duration_s,
        "how long to wait at start for the pool's first complete view",
    ),
    Option(
        "--ha-enable-leader-election",
        ("kubernetes", "leader_election"),
        ("kubernetes", "leaderElection"),
        v.boolean,
        "leader election on a Lease: only the leader reports ready",
    ),
    Option(
        "--leader-election-lease-name",
        ("kubernetes", "lease_name"),
        ("kubernetes", "leaseName"),
        v.optional_text,
        "name of the Lease (default: epp-<pool-name>)",
    ),
    Option(
        "--leader-election-lease-duration",
        ("kubernetes", "lease_duration_s"),
        ("kubernetes", "leaseDuration"),
        v.positive_duration_s,
        "how long a leader's lease lasts without renewal",
    ),
    Option(
        "--leader-election-renew-deadline",
        ("kubernetes", "renew_deadline_s"),
        ("kubernetes", "renewDeadline"),
        v.positive_duration_s,
        "a leader that cannot renew for this long steps down",
    ),
    Option(
        "--leader-election-retry-period",
        ("kubernetes", "retry_period_s"),
        ("kubernetes", "retryPeriod"),
        v.positive_duration_s,
        "how often candidates try to acquire, and the leader renews",
    ),
    Option(
        "--saturation-queue-threshold",
        ("request_control", "saturation_queue_threshold"),
        ("saturationDetector", "queueDepthThreshold"),
        v.positive_float,
        "waiting requests at which an endpoint counts as full (sheddable requests get "
        "429 while the pool is saturated)",
    ),
    Option(
        "--saturation-kv-threshold",
        ("request_control", "saturation_kv_threshold"),
        ("saturationDetector", "kvCacheUtilThreshold"),
        v.positive_float,
        "KV-cache use (0-1) at which an endpoint counts as full",
    ),
    Option(
        "--retry-after",
        ("request_control", "retry_after_s"),
        ("admission", "retryAfter"),
        v.whole_seconds,
        "retry-after of 429 answers, rounded up to whole seconds",
    ),
    Option(
        "--endpoint-max-inflight",
        ("request_control", "endpoint_max_inflight"),
        ("admission", "endpointMaxInflight"),
        v.non_negative_int,
        "requests epp may have in flight on one endpoint; 0: no cap",
    ),
    Option(
        "--trust-model-rewrite-header",
        ("request_control", "trust_model_rewrite_header"),
        ("modelRewrite", "trustHeader"),
        v.boolean,
        "honour x-llm-d-model-name-rewrite (or x-gateway-model-name-rewrite) on requests "
        "(it overrides every rewrite rule); only if your gateway sets it and removes "
        "clients' copies",
    ),
    Option(
        "--failure-backoff",
        ("request_control", "failure_backoff_s"),
        ("passiveHealth", "backoff"),
        v.parse_duration_s,
        "how long an endpoint is avoided after a failed request (5xx); doubles on "
        "repeated failure; 0 turns passive health off",
    ),
    Option(
        "--failure-max-backoff",
        ("request_control", "failure_max_backoff_s"),
        ("passiveHealth", "maxBackoff"),
        v.positive_duration_s,
        "the longest an endpoint is avoided after failed requests",
    ),
    Option(
        "--model-selection-default",
        ("model_selection", "default_model"),
        ("modelSelection", "defaultModel"),
        v.optional_model_name,
        'turns model selection on: requests for the selector model ("auto") get the model '
        "of the first rule that matches, else this one",
    ),
    Option(
        "--model-selection-selector",
        ("model_selection", "selector_name"),
        ("modelSelection", "selector"),
        v.model_name,
        "the model name with which a request asks epp to choose its model",
    ),
    Option(
        "--model-selection-rules",
        ("model_selection", "rules"),
        ("modelSelection", "rules"),
        v.selection_rules,
        "the rules, in order, as a YAML or JSON list (the file's modelSelection.rules): "
        "[{name, model, keywords: [...], regex, minPromptTokens, maxPromptTokens, "
        "hasTools, hasImages, header: {name, value}}]; every condition a rule gives must hold",
    ),
    Option(
        "--model-selection-function",
        ("model_selection", "function"),
        ("modelSelection", "function"),
        v.optional_text,
        "module:function that chooses first: given the request, it returns a model name "
        "or None (then the rules decide); imported at start, run on the event loop, so "
        "it must be fast and never block",
    ),
    Option(
        "--model-selection-function-budget",
        ("model_selection", "function_budget_s"),
        ("modelSelection", "functionBudget"),
        v.positive_duration_s,
        "a function call that takes longer is counted as slow, its answer dropped, and "
        "the function left out for 10s",
    ),
    Option(
        "--model-selection-max-text-chars",
        ("model_selection", "max_text_chars"),
        ("modelSelection", "maxTextChars"),
        v.positive_int,
        "characters of the last user message that keyword and regex rules read (bounds "
        "their cost; a regex that could backtrack too long over them is refused)",
    ),
    Option(
        "--sync-redis-url",
        ("sync", "redis_url"),
        ("sync", "redisUrl"),
        v.optional_text,
        "share routing decisions (prefixes picked, requests in flight) with the other "
        "replicas through this Redis, e.g. redis://redis:6379/0 (a password goes in the "
        "URL); unset: this replica routes on its own view alone",
    ),
    Option(
        "--sync-channel",
        ("sync", "channel"),
        ("sync", "channel"),
        str,
        "the Redis pub/sub channel the replicas of one pool share",
    ),
    Option(
        "--replica-id",
        ("sync", "replica_id"),
        ("sync", "replicaId"),
        v.optional_text,
        "this replica's name to the others (default: hostname-pid)",
    ),
    Option(
        "--sync-heartbeat-interval",
        ("sync", "heartbeat_s"),
        ("sync", "heartbeatInterval"),
        v.positive_duration_s,
        "how often a replica publishes all its in-flight counts, even when idle",
    ),
    Option(
        "--sync-expiry",
        ("sync", "expire_s"),
        ("sync", "expiry"),
        v.positive_duration_s,
        "a replica not heard from for this long is forgotten, its in-flight counts dropped",
    ),
    Option(
        "--sync-batch-window",
        ("sync", "batch_s"),
        ("sync", "batchWindow"),
        v.positive_duration_s,
        "decisions gathered into one Redis publish: how long the first waits for others",
    ),
    Option(
        "--workers",
        ("server", "workers"),
        ("server", "workers"),
        v.positive_int,
        "ext_proc worker processes sharing the gRPC port (SO_REUSEPORT); over 1 needs "
        "--sync-redis-url. Worker i serves /metrics on --metrics-port + i",
    ),
    Option(
        "--log-level",
        ("log_level",),
        ("logging", "level"),
        v.one_of("debug", "info", "warning", "error"),
        "log level",
    ),
    Option(
        "--log-format",
        ("log_format",),
        ("logging", "format"),
        v.one_of("text", "json"),
        "log format: text or json (one object per line)",
    ),
    Option(
        "--request-log",
        ("request_log",),
        ("logging", "requests"),
        v.one_of("all", "errors", "off"),
        "the line logged at info for each finished request: all, errors (only those "
        "that did not complete below 400) or off",
    ),
    Option(
        "--max-model-series",
        ("max_model_series",),
        ("metrics", "maxModelSeries"),
        v.positive_int,
        "distinct model names with metric series of their own; the rest "
        "count as __other__ (each costs ~240 lines of /metrics)",
    ),
    Option(
        "--legacy-metric-names",
        ("legacy_metric_names",),
        ("metrics", "legacyNames"),
        v.boolean,
        "also export the deprecated metric names (inference_objective_*, inference_pool_*, "
        "inference_extension_*) beside the llm_d_epp_* ones; kept until epp 1.0",
    ),
)

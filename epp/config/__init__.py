"""Configuration: one typed ``Config``, filled from defaults, a YAML file, env and flags.

Precedence, lowest first: built-in defaults, the config file (``--config-file``), then
each option's environment variable (``EPP_`` + the flag in upper snake case, e.g.
``EPP_GRPC_PORT``), then the flag itself. One module per concern:

- ``settings``: the ``Config`` dataclasses and every default;
- ``options``: the option table, each setting's flag, variable, file key and parser
  (``mappings``: the settings that map names to values; ``values``: the parsers);
- ``flags``: ``epp serve``'s arguments and the ``EPP_*`` environment;
- ``file``: the YAML file; ``profiles``: its ``plugins`` and ``schedulingProfiles``, the
  routing strategies' profiles, and ``build_scheduler_from_config``;
- ``load``: ``load_config``, which merges them and checks the whole;
- ``selection``: ``build_model_selector``, which imports the model-selection function.

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
    modelSelection:
      defaultModel: qwen2-1-5b
      rules: [{name: coding, model: qwen-coder, keywords: [python, bug]}]
    plugins:
      - {type: queue-scorer}
      - {type: max-score-picker}
    schedulingProfiles:
      - name: default
        plugins: [{pluginRef: queue-scorer, weight: 2}, {pluginRef: max-score-picker}]
"""

from epp.config.flags import add_serve_arguments
from epp.config.load import check_endpoint_source, load_config
from epp.config.options import OPTIONS
from epp.config.profiles import ROUTING_STRATEGIES, build_scheduler_from_config
from epp.config.selection import build_model_selector
from epp.config.settings import (
    Config,
    ConfigError,
    DataLayerConfig,
    KubernetesConfig,
    ModelSelectionConfig,
    RequestControlConfig,
    ServerConfig,
    SyncConfig,
)
from epp.config.values import parse_duration_s

__all__ = [
    "OPTIONS",
    "ROUTING_STRATEGIES",
    "Config",
    "ConfigError",
    "DataLayerConfig",
    "KubernetesConfig",
    "ModelSelectionConfig",
    "RequestControlConfig",
    "ServerConfig",
    "SyncConfig",
    "add_serve_arguments",
    "build_model_selector",
    "build_scheduler_from_config",
    "check_endpoint_source",
    "load_config",
    "parse_duration_s",
]

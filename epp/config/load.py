"""``load_config``: the file, the environment and the flags, merged onto one ``Config``.

Precedence, lowest first: the defaults (``settings``), the config file, each option's
environment variable, then its flag. Settings that map names to values (model
fallbacks, objectives) merge by name in the same order; the endpoint list is taken
whole from the highest source that gives one.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Mapping, Sequence
from typing import Any

from epp.config import flags
from epp.config.file import ConfigDocument, read_document
from epp.config.mappings import MAPPINGS, MappingOption
from epp.config.options import OPTIONS
from epp.config.profiles import apply_weight_overrides, scheduler_config
from epp.config.settings import Config, ConfigError, ModelSelectionConfig
from epp.config.values import parsed
from epp.requestcontrol.model_selection import check_rules

__all__ = ["check_endpoint_source", "load_config"]


def load_config(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> Config:
    """Build the ``Config`` from defaults, the file, the environment and the flags."""
    env = os.environ if environ is None else environ
    document = read_document(getattr(args, "config_file", None), getattr(args, "config_text", None))
    given = {**document.option_values(), **flags.option_values(args, env)}
    values = {
        option.path: parsed(option.parse, given[option.dest])
        for option in OPTIONS
        if option.dest in given
    }
    endpoints = flags.endpoints(args, env)
    if endpoints is None:
        endpoints = document.endpoints()
    scheduler = apply_weight_overrides(scheduler_config(document), flags.weight_overrides(args))
    config = Config(endpoints=endpoints, scheduler=scheduler)
    for mapping in MAPPINGS:
        config = _replace_path(config, mapping.path, _mapping(mapping, document, args, env))
    for path, value in values.items():
        config = _replace_path(config, path, value)
    if (log_level := flags.verbosity_log_level(args)) is not None:
        config = dataclasses.replace(config, log_level=log_level)
    zap_format, zap_level = flags.zap_logging(args)
    if zap_format is not None:
        config = dataclasses.replace(config, log_format=zap_format)
    if zap_level is not None:
        config = dataclasses.replace(config, log_level=zap_level)
    if ignored := flags.ignored_flags(args):
        config = dataclasses.replace(config, ignored_flags=ignored)
    if config.kubernetes.pool_namespace is None:
        # NAMESPACE is what the reference EPP and its chart set; POD_NAMESPACE, epp's own
        # manifests (the downward API's usual name).
        namespace = env.get("NAMESPACE") or env.get("POD_NAMESPACE") or "default"
        config = _replace_path(config, ("kubernetes", "pool_namespace"), namespace)
    _check_modes(config)
    return config


def check_endpoint_source(config: Config) -> None:
    """Serving needs somewhere to route (``load_config`` alone allows none, for tools)."""
    if not (config.endpoints or config.kubernetes.enabled or config.server.body_based_routing):
        raise ConfigError(
            "no endpoints: give --pool-name (an InferencePool), --endpoint-selector with "
            "--endpoint-target-ports, --endpoint ADDR=MODEL (static), or --body-based-routing"
        )


def _mapping(
    option: MappingOption,
    document: ConfigDocument,
    args: argparse.Namespace,
    env: Mapping[str, str],
) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for name, raw, source in [
        *document.mapping_entries(option),
        *flags.mapping_entries(option, args, env),
    ]:
        if not name.strip():
            raise ConfigError(f"{source}: expected {option.metavar}")
        values[name.strip()] = parsed(option.parse, (raw, source))
    return values


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
    sync = config.sync
    if not 0 < sync.heartbeat_s < sync.expire_s:
        raise ConfigError("--sync-expiry must be longer than --sync-heartbeat-interval")
    if config.server.workers > 1 and not sync.enabled:
        raise ConfigError(
            f"--workers {config.server.workers} needs --sync-redis-url: each worker keeps its "
            "own prefix index and in-flight counts, and without a shared Redis they would "
            "each see a fraction of the traffic"
        )
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
    _check_model_selection(config.model_selection)


def _check_model_selection(selection: ModelSelectionConfig) -> None:
    if not selection.enabled:
        if selection.rules or selection.function:
            raise ConfigError(
                "model selection needs a default model (--model-selection-default, "
                "modelSelection.defaultModel): the model when no rule matches"
            )
        return
    chosen = [selection.default_model, *(rule.model for rule in selection.rules)]
    if selection.selector_name in chosen:
        raise ConfigError(
            f"model selection: {selection.selector_name!r} is the selector name; a rule or "
            "the default must name a model that serves requests"
        )
    try:
        check_rules(selection.rules, selection.max_text_chars)
    except ValueError as exc:
        raise ConfigError(f"model selection: {exc}") from None


def _replace_path(obj: Any, path: Sequence[str], value: Any) -> Any:
    if len(path) == 1:
        return dataclasses.replace(obj, **{path[0]: value})
    child = getattr(obj, path[0])
    return dataclasses.replace(obj, **{path[0]: _replace_path(child, path[1:], value)})

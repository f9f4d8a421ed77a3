"""``epp serve``'s flags and the ``EPP_*`` environment: what each gives, and from where.

Every option of the table (``options``) becomes a flag and reads its environment
variable; where both are given the flag wins. Options and mappings come back as raw
text with their source, for ``load`` to parse and merge over the file.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Mapping
from typing import Any

from epp.config import values as v
from epp.config.mappings import MAPPINGS, MappingOption
from epp.config.options import OPTIONS
from epp.config.settings import ConfigError
from epp.config.values import Given
from epp.datalayer.static_discovery import parse_endpoint_flag
from epp.datalayer.store import EndpointSpec

__all__ = [
    "REFERENCE_ONLY_FLAGS",
    "add_serve_arguments",
    "endpoints",
    "ignored_flags",
    "mapping_entries",
    "option_values",
    "verbosity_log_level",
    "weight_overrides",
    "zap_logging",
]

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
    "--allow-experimental-plugins": "epp has no experimental plugins to allow",
    "--enable-grpc-stream-metrics": "epp counts stream errors in epp_extproc_stream_errors_total",
    "--metrics-client-ca-file": "/metrics serves plaintext; restrict it with a NetworkPolicy",
    "--metrics-cert-dir": "/metrics serves plaintext; restrict it with a NetworkPolicy",
    "--disable-endpoint-subset-filter": "epp always keeps to Envoy's endpoint subset hint",
    "--tls-min-version": "epp's gRPC server (grpcio's BoringSSL) never accepts below TLS 1.2",
}

# --tls-min-version's values that epp already enforces; grpcio's Python API sets no other
# minimum, so asking for TLS 1.3 (or an older one) is an error rather than a silent no.
_TLS_MIN_VERSIONS = {"1.2", "VersionTLS12"}

# The reference's zap logging flags, which epp maps onto its own (see zap_logging).
_ZAP_ENCODERS = {"json": "json", "console": "text"}
_ZAP_LEVELS = {
    "debug": "debug",
    "info": "info",
    "warn": "warning",
    "error": "error",
    "dpanic": "error",
    "panic": "error",
    "fatal": "error",
}

# `epp serve --help` groups the options by the part of Config they set.
_HELP_SECTIONS = {
    "server": "serving (ext_proc, health, metrics, TLS)",
    "data_layer": "model-server metrics",
    "kubernetes": "Kubernetes: InferencePool or selector discovery, leader election",
    "request_control": "admission, passive health",
    "model_selection": 'model selection: "model": "auto"',
}

_METAVARS: dict[Callable[[Any], Any], str] = {
    v.port: "PORT",
    v.integer: "N",
    v.parse_duration_s: "DURATION",
    v.positive_duration_s: "DURATION",
    str: "TEXT",
    v.whole_seconds: "DURATION",
    v.positive_float: "NUMBER",
    v.non_negative_int: "N",
    v.positive_int: "N",
    v.model_name: "MODEL",
    v.optional_model_name: "MODEL",
    v.selection_rules: "YAML",
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
    parser.add_argument(
        "--zap-encoder",
        dest="zap_encoder",
        metavar="json|console",
        default=None,
        help="the reference EPP's log encoding: json is --log-format json, console is text",
    )
    parser.add_argument(
        "--zap-log-level",
        dest="zap_log_level",
        metavar="LEVEL",
        default=None,
        help="the reference EPP's log level: debug, info, warn, error (or an integer "
        "verbosity, 1 or more: debug)",
    )
    reference = parser.add_argument_group(
        "accepted for compatibility with the reference EPP, not acted on (logged at start)"
    )
    for flag in REFERENCE_ONLY_FLAGS:
        reference.add_argument(
            flag,
            dest=_reference_dest(flag),
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
    for mapping in MAPPINGS:
        parser.add_argument(
            mapping.flag,
            dest=mapping.dest,
            action="append",
            metavar=mapping.metavar,
            help=mapping.help,
        )
    groups: dict[str, argparse._ArgumentGroup] = {}
    for option in OPTIONS:
        title = _HELP_SECTIONS.get(option.path[0], "logging")
        group = groups.get(title) or groups.setdefault(title, parser.add_argument_group(title))
        if option.parse is v.boolean:  # Go-style: --flag, --flag=true, --flag=false
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
            metavar=_METAVARS.get(option.parse, "VALUE"),
            help=f"{option.help} (env {option.env})",
        )


def option_values(args: argparse.Namespace, env: Mapping[str, str]) -> dict[str, Given]:
    """Each option's raw value by ``Option.dest``: its flag's, else its variable's."""
    given: dict[str, Given] = {}
    for option in OPTIONS:
        if option.env in env:
            given[option.dest] = (env[option.env], f"environment {option.env}")
        if getattr(args, option.dest, None) is not None:
            given[option.dest] = (getattr(args, option.dest), f"flag {option.flag}")
    return given


def mapping_entries(
    option: MappingOption, args: argparse.Namespace, env: Mapping[str, str]
) -> list[tuple[str, Any, str]]:
    """(name, raw value, source) of ``option``: the variable's pairs, then the flags'."""
    entries: list[tuple[str, Any, str]] = []
    for text in env.get(option.env, "").split():
        name, sep, value = text.partition("=")
        entries.append((name if sep else "", value, f"environment {option.env}"))
    for text in getattr(args, option.dest, None) or []:
        name, sep, value = text.partition("=")
        entries.append((name if sep else "", value, f"flag {option.flag}"))
    return entries


def endpoints(args: argparse.Namespace, env: Mapping[str, str]) -> tuple[EndpointSpec, ...] | None:
    """The ``--endpoint`` flags, else ``EPP_ENDPOINTS``; None when neither is given."""
    if flags := getattr(args, "endpoints", None):
        given = [(text, "flag --endpoint") for text in flags]
    elif texts := env.get("EPP_ENDPOINTS"):
        given = [(text, "environment EPP_ENDPOINTS") for text in texts.split()]
    else:
        return None
    return tuple(v.parsed(parse_endpoint_flag, each) for each in given)


def weight_overrides(args: argparse.Namespace) -> dict[str, float]:
    """``--scorer-weight PLUGIN=WEIGHT`` flags by plugin name (the last one wins)."""
    weights: dict[str, float] = {}
    for text in getattr(args, "scorer_weights", None) or []:
        name, sep, weight = text.partition("=")
        try:
            weights[name.strip()] = float(weight)
        except ValueError:
            sep = ""
        if not sep:
            raise ConfigError(f"flag --scorer-weight: expected PLUGIN=WEIGHT, got {text!r}")
    return weights


def verbosity_log_level(args: argparse.Namespace) -> str | None:
    """The log level the reference EPP's ``--v`` asks for, unless ``--log-level`` is given."""
    verbosity = getattr(args, "verbosity", None)
    if verbosity is None or getattr(args, "log_level", None) is not None:
        return None
    return "debug" if verbosity >= 4 else "info"


def zap_logging(args: argparse.Namespace) -> tuple[str | None, str | None]:
    """(log format, log level) the reference's ``--zap-encoder`` and ``--zap-log-level``
    ask for, each None when not given or when epp's own flag is.

    Raises ConfigError for a value zap would refuse too.
    """
    log_format = log_level = None
    encoder = getattr(args, "zap_encoder", None)
    if encoder is not None and getattr(args, "log_format", None) is None:
        if encoder not in _ZAP_ENCODERS:
            raise ConfigError(f"--zap-encoder must be json or console, got {encoder!r}")
        log_format = _ZAP_ENCODERS[encoder]
    level = getattr(args, "zap_log_level", None)
    if level is not None and getattr(args, "log_level", None) is None:
        if level.isdigit() and int(level) > 0:
            log_level = "debug"  # zap: an integer above 0 is a verbosity, more than debug
        elif level in _ZAP_LEVELS:
            log_level = _ZAP_LEVELS[level]
        else:
            raise ConfigError(
                f"--zap-log-level must be debug, info, warn, error, dpanic, panic, fatal "
                f"or an integer > 0, got {level!r}"
            )
    return log_format, log_level


def ignored_flags(args: argparse.Namespace) -> tuple[tuple[str, str, str], ...]:
    """(flag, value, why) of each reference-EPP flag given that epp does not act on.

    Raises :class:`ConfigError` for a ``--tls-min-version`` epp cannot honour."""
    tls_min = getattr(args, _reference_dest("--tls-min-version"), None)
    if tls_min is not None and tls_min not in _TLS_MIN_VERSIONS:
        raise ConfigError(
            f"--tls-min-version {tls_min!r}: epp serves TLS 1.2 and 1.3 and cannot raise the "
            "minimum (grpcio's Python API has no such setting); give 1.2 or leave it out"
        )
    return tuple(
        (flag, str(value), why)
        for flag, why in REFERENCE_ONLY_FLAGS.items()
        if (value := getattr(args, _reference_dest(flag), None)) is not None
    )


def _reference_dest(flag: str) -> str:
    return "reference_" + flag[2:].replace("-", "_")

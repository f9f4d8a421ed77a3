from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from epp.cli import main
from epp.envoy_config import (
    EPP_TIMEOUT_ERROR,
    EPP_UNAVAILABLE_ERROR,
    EnvoyPorts,
    EnvoyTimeouts,
    envoy_bootstrap,
    render_bootstrap,
)

# Every routing stream of this bootstrap tells epp how large a body chunk Envoy takes back.
CHUNK_METADATA = {"key": "x-epp-body-chunk-bytes", "value": "1048576"}
DEPLOYED = Path(__file__).resolve().parents[2] / "deploy" / "envoy" / "envoy.yaml"


def test_deploy_file_is_the_rendered_default() -> None:
    # deploy/envoy/envoy.yaml is what `make run` and users start Envoy with.
    assert DEPLOYED.read_text() == render_bootstrap(envoy_bootstrap(EnvoyPorts()))


def _ext_proc(bootstrap: dict[str, Any]) -> dict[str, Any]:
    manager = bootstrap["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    filters = manager["typed_config"]["http_filters"]
    return next(f for f in filters if f["name"] == "envoy.filters.http.ext_proc")["typed_config"]


@pytest.mark.parametrize("mode", ["FULL_DUPLEX_STREAMED", "BUFFERED"])
def test_processing_mode(mode: str) -> None:
    ext_proc = _ext_proc(yaml.safe_load(render_bootstrap(envoy_bootstrap(body_mode=mode))))
    assert ext_proc["processing_mode"]["request_body_mode"] == mode
    assert ext_proc["failure_mode_allow"] is False
    # Response trailers keep the stream open until the response ends (load accounting).
    assert ext_proc["processing_mode"]["response_trailer_mode"] == "SEND"


def test_rejects_unknown_mode() -> None:
    with pytest.raises(ValueError, match="body_mode"):
        envoy_bootstrap(body_mode="STREAMED")


def _filters(bootstrap: dict[str, Any]) -> list[dict[str, Any]]:
    return _manager(bootstrap)["http_filters"]


def test_response_bodies_are_measured_by_envoy_by_default() -> None:
    assert envoy_bootstrap() == envoy_bootstrap(response_body_mode="LOGGED")


def test_the_served_endpoint_reaches_epp_in_envoy_lb_metadata() -> None:
    # Where the routing filter gets response headers: with them, in envoy.lb metadata.
    bootstrap = envoy_bootstrap(send_response_headers=True)
    route_config = _manager(bootstrap)["route_config"]
    (added,) = route_config["response_headers_to_add"]
    assert added["header"] == {
        "key": "x-gateway-destination-endpoint-served",
        "value": "%UPSTREAM_REMOTE_ADDRESS%",
    }
    assert added["append_action"] == "OVERWRITE_IF_EXISTS_OR_ADD"  # not a pod's own copy
    filters = _filters(bootstrap)
    assert filters[-2]["name"] == "epp.served_endpoint"  # right before the router
    (rule,) = filters[-2]["typed_config"]["response_rules"]
    assert rule["on_header_present"]["metadata_namespace"] == "envoy.lb"
    assert rule["remove"] is True  # the client never sees the header
    forwarded = _ext_proc(bootstrap)["metadata_options"]["forwarding_namespaces"]
    assert forwarded == {"untyped": ["envoy.lb"]}
    quiet = envoy_bootstrap(report_served_endpoint=False, send_response_headers=True)
    assert "response_headers_to_add" not in _manager(quiet)["route_config"]
    # What LOGGED mode lets epp tell its Lua meter, and nothing else.
    assert _ext_proc(quiet)["metadata_options"] == {
        "receiving_namespaces": {"untyped": ["epp.response"]}
    }
    timed = envoy_bootstrap(
        report_served_endpoint=False, response_body_mode="TIMED", send_response_headers=True
    )
    assert "metadata_options" not in _ext_proc(timed)
    assert "epp.served_endpoint" not in [f["name"] for f in _filters(quiet)]
    # Without response headers (LOGGED and TIMED by default) the access log's upstream
    # address is the report: none of the above.
    for mode in ("LOGGED", "TIMED"):
        skipped = envoy_bootstrap(response_body_mode=mode)
        assert "response_headers_to_add" not in _manager(skipped)["route_config"]
        assert "epp.served_endpoint" not in [f["name"] for f in _filters(skipped)]
        assert "forwarding_namespaces" not in _ext_proc(skipped)["metadata_options"]


@pytest.mark.parametrize(
    ("mode", "script"), [("LOGGED", "epp.response_meter"), ("TIMED", "epp.response_headers")]
)
def test_logged_and_timed_skip_response_headers_and_a_script_sets_epps(
    mode: str, script: str
) -> None:
    bootstrap = envoy_bootstrap(response_body_mode=mode)
    routing = _ext_proc(bootstrap)
    assert routing["processing_mode"]["response_header_mode"] == "SKIP"
    # The stream still lasts as long as the response: its end releases the load.
    assert routing["processing_mode"]["response_trailer_mode"] == "SEND"
    assert {"key": "x-epp-response-headers", "value": "skipped"} in routing["grpc_service"][
        "initial_metadata"
    ]
    # epp's headers for the client reach the script through this namespace.
    assert routing["metadata_options"] == {"receiving_namespaces": {"untyped": ["epp.response"]}}
    filters = _filters(bootstrap)
    assert [f["name"] for f in filters] == [
        "envoy.filters.http.ext_proc",
        script,
        "envoy.filters.http.router",
    ]
    source = filters[1]["typed_config"]["default_source_code"]["inline_string"]
    assert 'told["response_headers"]' in source and "headers:replace(name, value)" in source
    assert "envoy_on_request" not in source  # nothing on the request path
    sent = _ext_proc(envoy_bootstrap(response_body_mode=mode, send_response_headers=True))
    assert sent["processing_mode"]["response_header_mode"] == "SEND"
    assert "x-epp-response-headers" not in str(sent["grpc_service"]["initial_metadata"])


def test_observed_response_bodies_go_to_an_observing_filter() -> None:
    bootstrap = envoy_bootstrap(response_body_mode="OBSERVED")
    names = [f["name"] for f in _filters(bootstrap)]
    # The observer comes after the routing filter, so it sees each response first.
    assert names == [
        "envoy.filters.http.ext_proc",
        "epp.response_observer",
        "epp.served_endpoint",
        "envoy.filters.http.router",
    ]
    routing = _ext_proc(bootstrap)["processing_mode"]
    assert routing["response_body_mode"] == "NONE"
    assert routing["response_header_mode"] == "SEND"  # status, fallback header
    observer = _filters(bootstrap)[1]["typed_config"]
    assert observer["observability_mode"] is True
    assert observer["failure_mode_allow"] is True  # never fails a response
    assert observer["response_attributes"] == ["request.id"]
    assert observer["processing_mode"]["response_body_mode"] == "STREAMED"
    assert observer["processing_mode"]["request_header_mode"] == "SKIP"
    assert observer["grpc_service"]["envoy_grpc"] == {"cluster_name": "epp"}
    # The routing streams tell epp that readings come from the observer.
    assert _ext_proc(bootstrap)["grpc_service"]["initial_metadata"] == [
        CHUNK_METADATA,
        {"key": "x-epp-response-readings", "value": "observed"},
    ]
    assert "access_log" not in _manager(bootstrap)


def test_logged_responses_are_measured_by_envoy_and_sent_with_its_access_log() -> None:
    bootstrap = envoy_bootstrap(response_body_mode="LOGGED", send_response_headers=True)
    filters = _filters(bootstrap)
    assert [f["name"] for f in filters] == [
        "envoy.filters.http.ext_proc",
        "epp.response_meter",
        "epp.served_endpoint",
        "envoy.filters.http.router",
    ]
    assert (
        "function envoy_on_response"
        in filters[1]["typed_config"]["default_source_code"]["inline_string"]
    )
    routing = _ext_proc(bootstrap)
    assert routing["processing_mode"]["response_body_mode"] == "NONE"
    assert routing["grpc_service"]["initial_metadata"] == [
        CHUNK_METADATA,
        {"key": "x-epp-response-readings", "value": "logged"},
    ]
    (access_log,) = _manager(bootstrap)["access_log"]
    common = access_log["typed_config"]["common_config"]
    assert common["grpc_service"]["envoy_grpc"] == {"cluster_name": "epp"}
    assert common["transport_api_version"] == "V3"
    assert common["buffer_flush_interval"] == "0.1s"


def test_timed_responses_have_no_script_and_an_access_log_that_times_the_body() -> None:
    bootstrap = envoy_bootstrap(response_body_mode="TIMED", send_response_headers=True)
    assert [f["name"] for f in _filters(bootstrap)] == [
        "envoy.filters.http.ext_proc",
        "epp.served_endpoint",
        "envoy.filters.http.router",
    ]
    routing = _ext_proc(bootstrap)
    assert routing["processing_mode"]["response_body_mode"] == "NONE"
    assert routing["grpc_service"]["initial_metadata"] == [
        CHUNK_METADATA,
        {"key": "x-epp-response-readings", "value": "timed"},
    ]
    (access_log,) = _manager(bootstrap)["access_log"]
    common = access_log["typed_config"]["common_config"]
    assert common["custom_tags"] == [
        {
            "tag": "epp.first_body_us",
            "value": "%COMMON_DURATION(DS_RX_BEG:US_RX_BODY_BEG:us)%",
        }
    ]
    # LOGGED's access log carries it too: the time of the first token of a stream the
    # Lua meter was told to leave alone.
    logged = envoy_bootstrap(response_body_mode="LOGGED")
    logged_common = _manager(logged)["access_log"][0]["typed_config"]["common_config"]
    assert logged_common["custom_tags"] == common["custom_tags"]


@pytest.mark.parametrize("mode", ["FULL_DUPLEX_STREAMED", "NONE"])
def test_other_response_modes_have_no_observer(mode: str) -> None:
    bootstrap = envoy_bootstrap(response_body_mode=mode)
    assert [f["name"] for f in _filters(bootstrap)] == [
        "envoy.filters.http.ext_proc",
        "epp.served_endpoint",
        "envoy.filters.http.router",
    ]
    routing = _ext_proc(bootstrap)["processing_mode"]
    assert routing["response_body_mode"] == mode
    assert routing["response_trailer_mode"] == "SEND"  # Envoy requires it in full duplex
    assert _ext_proc(bootstrap)["grpc_service"]["initial_metadata"] == [CHUNK_METADATA]
    assert "access_log" not in _manager(bootstrap)


def test_rejects_unknown_response_mode() -> None:
    with pytest.raises(ValueError, match="response_body_mode"):
        envoy_bootstrap(response_body_mode="BUFFERED")


def _manager(bootstrap: dict[str, Any]) -> dict[str, Any]:
    listener = bootstrap["static_resources"]["listeners"][0]
    return listener["filter_chains"][0]["filters"][0]["typed_config"]


def _epp_tls(bootstrap: dict[str, Any]) -> dict[str, Any] | None:
    epp = next(c for c in bootstrap["static_resources"]["clusters"] if c["name"] == "epp")
    socket = epp.get("transport_socket")
    return None if socket is None else socket["typed_config"]


def _cli(capsys: pytest.CaptureFixture[str], *flags: str) -> dict[str, Any]:
    assert main(["envoy-config", *flags]) == 0
    return yaml.safe_load(capsys.readouterr().out)


def test_the_cli_prints_the_deploy_file(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["envoy-config"]) == 0
    assert capsys.readouterr().out == DEPLOYED.read_text()


def test_the_cli_prints_the_fail_open_deploy_file(capsys: pytest.CaptureFixture[str]) -> None:
    # deploy/envoy/envoy-fail-open.yaml: `make run`'s layout, failing open over the pool of
    # its qwen pods (deploy/README.md shows this command).
    assert main(["envoy-config", "--fail-open", "127.0.0.1:8001,127.0.0.1:8002"]) == 0
    assert capsys.readouterr().out == DEPLOYED.with_name("envoy-fail-open.yaml").read_text()


def test_epp_failures_fail_closed_with_503() -> None:
    ext_proc = _ext_proc(envoy_bootstrap())
    assert ext_proc["failure_mode_allow"] is False
    assert ext_proc["status_on_error"] == {"code": 503}
    mappers = _manager(envoy_bootstrap())["local_reply_config"]["mappers"]
    # First match wins: the timeouts before the catch-all for ext_proc failures.
    assert [(m["status_code"], m["body_format_override"]["json_format"]) for m in mappers] == [
        (504, {"error": EPP_TIMEOUT_ERROR}),
        (503, {"error": EPP_UNAVAILABLE_ERROR}),
    ]


def test_timeouts_and_http_10() -> None:
    manager = _manager(envoy_bootstrap())
    assert (
        manager["request_headers_timeout"],
        manager["request_timeout"],
        manager["stream_idle_timeout"],
    ) == ("10s", "60s", "300s")
    assert manager["common_http_protocol_options"] == {"idle_timeout": "300s"}
    assert manager["http_protocol_options"]["accept_http_10"] is True
    short = envoy_bootstrap(timeouts=EnvoyTimeouts(request_headers_s=0.5, epp_message_s=2))
    assert _manager(short)["request_headers_timeout"] == "0.5s"
    assert _ext_proc(short)["message_timeout"] == "2s"


def test_epp_tls_alone_stays_unverified_in_the_python_api() -> None:
    # What gateways do with the picker's self-signed certificate (and test_pool_mode uses).
    tls = _epp_tls(envoy_bootstrap(epp_tls=True))
    assert tls is not None
    assert tls["common_tls_context"] == {"alpn_protocols": ["h2"]}
    assert _epp_tls(envoy_bootstrap()) is None


def test_a_ca_file_verifies_epp_and_a_server_name_is_sent_and_matched(
    capsys: pytest.CaptureFixture[str],
) -> None:
    tls = _epp_tls(_cli(capsys, "--epp-ca-file", "/etc/epp/ca.crt"))
    assert tls is not None
    assert tls["common_tls_context"]["validation_context"] == {
        "trusted_ca": {"filename": "/etc/epp/ca.crt"}
    }
    assert "sni" not in tls

    tls = _epp_tls(
        _cli(
            capsys,
            "--epp-tls",
            "--epp-ca-file",
            "/etc/epp/ca.crt",
            "--epp-server-name",
            "epp.inference.svc",
        )
    )
    assert tls is not None
    assert tls["sni"] == "epp.inference.svc"
    assert tls["common_tls_context"]["validation_context"]["match_typed_subject_alt_names"] == [
        {"san_type": "DNS", "matcher": {"exact": "epp.inference.svc"}}
    ]

    # An address is matched as one, and never sent as SNI (which carries host names).
    tls = _epp_tls(_cli(capsys, "--epp-ca-file", "ca.crt", "--epp-server-name", "10.0.0.7"))
    assert tls is not None
    assert "sni" not in tls
    assert tls["common_tls_context"]["validation_context"]["match_typed_subject_alt_names"] == [
        {"san_type": "IP_ADDRESS", "matcher": {"exact": "10.0.0.7"}}
    ]


def test_skipping_verification_is_explicit(capsys: pytest.CaptureFixture[str]) -> None:
    tls = _epp_tls(_cli(capsys, "--epp-tls-insecure-skip-verify"))
    assert tls is not None
    assert "validation_context" not in tls["common_tls_context"]


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--epp-tls"], "add --epp-ca-file PATH"),
        (["--epp-tls"], "--epp-tls-insecure-skip-verify"),
        (["--epp-server-name", "epp"], "add --epp-ca-file PATH"),
        (["--epp-server-name", "epp", "--epp-tls-insecure-skip-verify"], "add --epp-ca-file"),
        (["--epp-ca-file", "ca.crt", "--epp-tls-insecure-skip-verify"], "contradict"),
    ],
    ids=[
        "tls-alone-names-ca",
        "tls-alone-names-skip",
        "name-without-ca",
        "name-while-skipping",
        "ca-and-skip",
    ],
)
def test_tls_flags_that_do_not_say_how_to_trust_epp_are_refused(
    capsys: pytest.CaptureFixture[str], flags: list[str], message: str
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["envoy-config", *flags])
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


def test_a_server_name_needs_a_ca_in_the_python_api_too() -> None:
    with pytest.raises(ValueError, match="epp_ca_file"):
        envoy_bootstrap(epp_tls=True, epp_server_name="epp")


def test_fail_open_routes_on_epps_pick_else_round_robin_over_the_pool(
    capsys: pytest.CaptureFixture[str],
) -> None:
    bootstrap = _cli(capsys, "--fail-open", "10.0.0.1:8000,10.0.0.2:8000")
    ext_proc = _ext_proc(bootstrap)
    assert ext_proc["failure_mode_allow"] is True
    assert ext_proc["route_cache_action"] == "CLEAR"  # routes see epp's answer
    assert ext_proc["processing_mode"]["request_body_mode"] == "BUFFERED"
    assert _filters(bootstrap)[0]["name"] == "epp.drop_client_destination"
    routes = _manager(bootstrap)["route_config"]["virtual_hosts"][0]["routes"]
    assert routes[0]["match"]["headers"] == [
        {"name": "x-gateway-destination-endpoint", "present_match": True}
    ]
    assert [r["route"]["cluster"] for r in routes] == ["original_destination", "pool_fail_open"]
    pool = next(
        c for c in bootstrap["static_resources"]["clusters"] if c["name"] == "pool_fail_open"
    )
    hosts = [
        e["endpoint"]["address"]["socket_address"]
        for e in pool["load_assignment"]["endpoints"][0]["lb_endpoints"]
    ]
    assert hosts == [
        {"address": "10.0.0.1", "port_value": 8000},
        {"address": "10.0.0.2", "port_value": 8000},
    ]
    closed = envoy_bootstrap()
    assert _ext_proc(closed)["failure_mode_allow"] is False
    assert "route_cache_action" not in _ext_proc(closed)


def test_fail_open_cannot_stream_bodies_in_full_duplex() -> None:
    with pytest.raises(ValueError, match="BUFFERED"):
        envoy_bootstrap(fail_open=["10.0.0.1:8000"])
    with pytest.raises(SystemExit):
        main(
            ["envoy-config", "--fail-open", "10.0.0.1:8000", "--body-mode", "FULL_DUPLEX_STREAMED"]
        )
    with pytest.raises(SystemExit):
        main(["envoy-config", "--fail-open", "no-port"])


def test_model_routes_put_a_body_based_router_before_a_route_per_model() -> None:
    bootstrap = envoy_bootstrap(
        EnvoyPorts(epp_port=9002), response_body_mode="NONE", model_routes={"a": 9102, "b": 9103}
    )
    manager = bootstrap["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    config = manager["typed_config"]
    names = [f["name"] for f in config["http_filters"]]
    assert names.index("epp.body_based_router") < names.index("envoy.filters.http.ext_proc")
    routes = config["route_config"]["virtual_hosts"][0]["routes"]
    matched = [route["match"]["headers"][0]["string_match"]["exact"] for route in routes]
    assert matched == ["a", "b"]  # and nothing else: an unknown model gets Envoy's 404
    pickers = [
        route["typed_per_filter_config"]["envoy.filters.http.ext_proc"]["overrides"]
        for route in routes
    ]
    clusters = {c["name"]: c for c in bootstrap["static_resources"]["clusters"]}
    ports = [
        clusters[p["grpc_service"]["envoy_grpc"]["cluster_name"]]["load_assignment"]["endpoints"][
            0
        ]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]["port_value"]
        for p in pickers
    ]
    assert ports == [9102, 9103]
    router = clusters["epp"]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]
    assert router["endpoint"]["address"]["socket_address"]["port_value"] == 9002


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"model_routes": {"a": 1}}, "NONE or FULL_DUPLEX_STREAMED"),
        ({"model_routes": {}, "response_body_mode": "NONE"}, "at least one model"),
        (
            {
                "model_routes": {"a": 1},
                "response_body_mode": "NONE",
                "fail_open": ["10.0.0.1:80"],
                "body_mode": "BUFFERED",
            },
            "cannot fail open",
        ),
    ],
)
def test_model_routes_refuse_what_cannot_work(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        envoy_bootstrap(EnvoyPorts(), **options)


def test_more_epp_replicas_become_endpoints_of_the_epp_cluster(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["envoy-config", "--epp-port", "9002", "--more-epp-port", "9012"]) == 0
    bootstrap = yaml.safe_load(capsys.readouterr().out)
    (epp,) = [c for c in bootstrap["static_resources"]["clusters"] if c["name"] == "epp"]
    (locality,) = epp["load_assignment"]["endpoints"]
    ports = [
        e["endpoint"]["address"]["socket_address"]["port_value"] for e in locality["lb_endpoints"]
    ]
    assert ports == [9002, 9012]
    one = envoy_bootstrap(EnvoyPorts(epp_port=9002))
    (single,) = [c for c in one["static_resources"]["clusters"] if c["name"] == "epp"]
    assert len(single["load_assignment"]["endpoints"][0]["lb_endpoints"]) == 1


def test_routing_streams_avoid_a_dead_epp_replica() -> None:
    # A stream that cannot reach its replica is retried on another (never the same one
    # again), and a replica Envoy cannot connect to leaves the rotation at the first
    # failure: kill -9 of one replica fails only the streams in flight on it
    # (tests/integration/test_replicas.py).
    bootstrap = envoy_bootstrap(EnvoyPorts(epp_port=9002, more_epp_ports=(9012,)))
    retry = _ext_proc(bootstrap)["grpc_service"]["retry_policy"]
    assert set(retry["retry_on"].split(",")) == {"connect-failure", "refused-stream", "reset"}
    assert retry["num_retries"] >= 1
    (predicate,) = retry["retry_host_predicate"]
    assert predicate["name"] == "envoy.retry_host_predicates.previous_hosts"
    # Envoy aborts on the first stream when the predicate has no typed_config.
    assert predicate["typed_config"]["@type"].endswith(".PreviousHostsPredicate")
    # One replica has no other to retry on: no policy (Envoy would keep every stream's
    # messages for a replay that finds the same epp).
    assert "retry_policy" not in _ext_proc(envoy_bootstrap(EnvoyPorts()))["grpc_service"]
    pools = envoy_bootstrap(
        EnvoyPorts(epp_port=9002, more_epp_ports=(9012,)),
        model_routes={"m": 9102},
        response_body_mode="NONE",
    )
    assert "retry_policy" not in _ext_proc(pools)["grpc_service"]
    (epp,) = [c for c in bootstrap["static_resources"]["clusters"] if c["name"] == "epp"]
    outlier = epp["outlier_detection"]
    assert outlier["consecutive_gateway_failure"] == 1
    assert outlier["enforcing_consecutive_gateway_failure"] == 100
    # The default 10 % would never eject one replica of two.
    assert outlier["max_ejection_percent"] == 100

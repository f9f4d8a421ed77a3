from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from epp.config import Config, ConfigError, add_serve_arguments, load_config, parse_duration_s


def parse(argv: list[str], env: dict[str, str] | None = None) -> Config:
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    return load_config(parser.parse_args(argv), environ=env or {})


def test_defaults() -> None:
    config = parse([])
    assert config.server.grpc_port == 9002
    assert config.server.metrics_port == 9090
    assert config.data_layer.refresh_metrics_interval_s == 0.05
    assert config.data_layer.metrics_staleness_s == 2.0
    weights = {ref.plugin_ref: ref.weight for ref in config.scheduler.profiles[0].plugins}
    # Tuned with benchmarks/routing; the reference EPP uses queue 2, KV 2, prefix 3.
    assert weights == {
        "candidate-sample-filter": None,
        "prefer-fresh-filter": None,
        "queue-scorer": 1.0,
        "prefix-cache-scorer": 3.0,
        "inflight-load-scorer": 4.0,
        "lora-affinity-scorer": 1.0,
        "no-hit-lru-scorer": 0.5,
        "max-score-picker": None,
    }


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("50ms", 0.05), ("2s", 2.0), ("1m", 60.0), ("1.5", 1.5), (3, 3.0)],
)
def test_durations(text: object, seconds: float) -> None:
    assert parse_duration_s(text) == pytest.approx(seconds)


def test_file_then_env_then_flag(tmp_path: Path) -> None:
    path = tmp_path / "epp.yaml"
    path.write_text(
        "kind: EndpointPickerConfig\n"
        "server: {grpcPort: 7000, metricsPort: 7001}\n"
        "dataLayer: {refreshMetricsInterval: 100ms}\n"
        "endpoints:\n"
        "  - {address: '10.0.0.1:8000', models: [llama]}\n"
        "  - '10.0.0.2:8000'\n"
    )
    config = parse(["--config-file", str(path)])
    assert (config.server.grpc_port, config.server.metrics_port) == (7000, 7001)
    assert config.data_layer.refresh_metrics_interval_s == pytest.approx(0.1)
    assert config.endpoints == (("10.0.0.1:8000", frozenset({"llama"})), ("10.0.0.2:8000", None))

    config = parse(["--config-file", str(path)], env={"EPP_GRPC_PORT": "7100"})
    assert config.server.grpc_port == 7100
    config = parse(
        ["--config-file", str(path), "--grpc-port", "7200"], env={"EPP_GRPC_PORT": "7100"}
    )
    assert config.server.grpc_port == 7200
    config = parse(["--config-file", str(path), "--endpoint", "10.0.0.9:9000=x,y"])
    assert config.endpoints == (("10.0.0.9:9000", frozenset({"x", "y"})),)


def test_scheduling_profile_from_file_and_weight_flag(tmp_path: Path) -> None:
    path = tmp_path / "epp.yaml"
    path.write_text(
        "plugins:\n"
        "  - {type: prefix-cache-scorer, parameters: {blockSize: 32}}\n"
        "  - {type: max-score-picker}\n"
        "schedulingProfiles:\n"
        "  - name: default\n"
        "    plugins:\n"
        "      - {pluginRef: prefix-cache-scorer, weight: 1}\n"
        "      - {pluginRef: max-score-picker}\n"
    )
    config = parse(["--config-file", str(path), "--scorer-weight", "prefix-cache-scorer=5"])
    assert config.scheduler.plugins[0].parameters == {"blockSize": 32}
    assert config.scheduler.profiles[0].plugins[0].weight == 5.0


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        (["--grpc-port", "70000"], {}, "flag --grpc-port: port out of range"),
        (["--refresh-metrics-interval", "soon"], {}, "not a duration"),
        ([], {"EPP_LOG_FORMAT": "xml"}, "environment EPP_LOG_FORMAT"),
        (["--endpoint", "no-port"], {}, "flag --endpoint"),
        (["--scorer-weight", "nope"], {}, "PLUGIN=WEIGHT"),
        (["--scorer-weight", "missing-scorer=1"], {}, "no scorer named missing-scorer"),
        (["--config-file", "/nonexistent/epp.yaml"], {}, "cannot read config file"),
    ],
    ids=[
        "port",
        "duration",
        "env-choice",
        "endpoint",
        "weight-syntax",
        "weight-unknown",
        "missing-file",
    ],
)
def test_errors_name_their_source(argv: list[str], env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse(argv, env)


def test_file_must_be_an_endpoint_picker_config(tmp_path: Path) -> None:
    path = tmp_path / "epp.yaml"
    path.write_text("kind: Deployment\n")
    with pytest.raises(ConfigError, match="kind must be EndpointPickerConfig"):
        parse(["--config-file", str(path)])


@pytest.mark.parametrize(
    "api_version",
    ["epp.dev/v1alpha1", "llm-d.ai/v1alpha1", "inference.networking.x-k8s.io/v1alpha1"],
)
def test_the_references_api_versions_load(api_version: str) -> None:
    text = f"apiVersion: {api_version}\nkind: EndpointPickerConfig\nserver: {{grpcPort: 9100}}\n"
    assert parse(["--config-text", text]).server.grpc_port == 9100


def test_an_unknown_api_version_is_an_error() -> None:
    text = "apiVersion: inference.networking.x-k8s.io/v1\nkind: EndpointPickerConfig\n"
    with pytest.raises(ConfigError, match="apiVersion must be one of"):
        parse(["--config-text", text])


def test_pool_mode_flags_match_the_reference_epp() -> None:
    config = parse(
        ["--pool-name", "llama", "--ha-enable-leader-election", "--cert-path", "/c"],
        env={"POD_NAMESPACE": "inference"},
    )
    kube = config.kubernetes
    assert (kube.pool_name, kube.namespace, kube.pool_group) == (
        "llama",
        "inference",
        "inference.networking.k8s.io",
    )
    assert kube.leader_election and config.server.cert_path == "/c"
    assert config.server.grpc_health_port == 9003
    assert config.secure_serving  # on by default with Kubernetes discovery, as the reference
    assert not parse(["--pool-name", "llama", "--secure-serving=false"]).secure_serving
    assert parse(["--pool-name", "p"]).kubernetes.namespace == "default"
    assert not parse(["--endpoint", "10.0.0.1:8000"]).secure_serving


def test_selector_mode_parses_pairs_and_ports() -> None:
    config = parse(
        ["--endpoint-selector", "app=vllm,env=prod", "--endpoint-target-ports", "8000,8001"]
    )
    assert dict(config.kubernetes.endpoint_selector) == {"app": "vllm", "env": "prod"}
    assert config.kubernetes.endpoint_target_ports == (8000, 8001)


def test_boolean_flags_take_go_style_values() -> None:
    assert parse(["--body-based-routing=true"]).server.body_based_routing
    assert not parse(["--body-based-routing", "false"]).server.body_based_routing
    assert parse([], env={"EPP_BODY_BASED_ROUTING": "1"}).server.body_based_routing
    with pytest.raises(ConfigError, match="not a boolean"):
        parse(["--body-based-routing=maybe"])


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--pool-name", "p", "--endpoint", "10.0.0.1:8000"], "choose one source"),
        (["--endpoint-selector", "app=x"], "needs --endpoint-target-ports"),
        (["--endpoint-target-ports", "8000"], "only used with --endpoint-selector"),
        (["--endpoint-selector", "app"], "key=value"),
        (["--endpoint-selector", "a=b", "--endpoint-target-ports", "0"], "port"),
        (["--ha-enable-leader-election"], "needs --pool-name"),
        (
            [
                "--pool-name",
                "p",
                "--ha-enable-leader-election",
                "--leader-election-renew-deadline",
                "20s",
            ],
            "retry period < renew deadline",
        ),
        (["--pool-name", "p", "--pool-group", "example.com"], "is not one of"),
        (["--workers", "2"], "needs --sync-redis-url"),
        (["--workers", "0"], "workers"),
        (
            ["--sync-redis-url", "redis://r", "--sync-heartbeat-interval", "5s"],
            "longer than --sync-heartbeat-interval",
        ),
    ],
)
def test_inconsistent_modes_are_refused(argv: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse(argv)


def test_old_metrics_path_flag_still_works() -> None:
    assert parse(["--endpoint-metrics-path", "/m"]).data_layer.metrics_path == "/m"
    assert parse(["--model-server-metrics-path", "/n"]).data_layer.metrics_path == "/n"


def test_reference_epp_command_lines_are_accepted() -> None:
    text = "kind: EndpointPickerConfig\nserver: {grpcPort: 9100}\n"
    config = parse(
        [
            "--pool-name",
            "p",
            "--v=4",
            "--tracing=false",
            "--enable-pprof",
            "--total-queued-requests-metric",
            "vllm:num_requests_waiting",
            "--config-text",
            text,
        ]
    )
    assert config.server.grpc_port == 9100
    assert config.log_level == "debug"
    assert [flag for flag, _, _ in config.ignored_flags] == [
        "--tracing",
        "--enable-pprof",
        "--total-queued-requests-metric",
    ]
    assert parse(["--v", "2"]).log_level == "info"
    assert parse(["--v", "5", "--log-level", "warning"]).log_level == "warning"
    with pytest.raises(ConfigError, match="not both"):
        parse(["--config-text", text, "--config-file", "/x.yaml"])


def test_the_reference_charts_namespace_variable_is_honoured() -> None:
    # The reference chart sets NAMESPACE; epp's own manifests set POD_NAMESPACE.
    assert parse(["--pool-name", "p"], env={"NAMESPACE": "ml"}).kubernetes.namespace == "ml"
    both = {"NAMESPACE": "ml", "POD_NAMESPACE": "other"}
    assert parse(["--pool-name", "p"], env=both).kubernetes.namespace == "ml"
    flagged = parse(["--pool-name", "p", "--pool-namespace", "given"], env=both)
    assert flagged.kubernetes.namespace == "given"


@pytest.mark.parametrize(
    ("argv", "log_format", "log_level"),
    [
        (["--zap-encoder", "json"], "json", "info"),
        (["--zap-encoder=console"], "text", "info"),
        (["--zap-log-level", "debug"], "text", "debug"),
        (["--zap-log-level", "warn"], "text", "warning"),
        (["--zap-log-level", "3"], "text", "debug"),
        (["--zap-encoder", "json", "--log-format", "text"], "text", "info"),
        (["--zap-log-level", "debug", "--log-level", "error"], "text", "error"),
    ],
)
def test_zap_logging_flags_map_onto_epps(argv: list[str], log_format: str, log_level: str) -> None:
    config = parse(argv)
    assert (config.log_format, config.log_level) == (log_format, log_level)
    assert config.ignored_flags == ()


@pytest.mark.parametrize(
    "argv", [["--zap-encoder", "yaml"], ["--zap-log-level", "loud"], ["--zap-log-level", "0"]]
)
def test_zap_values_zap_would_refuse_are_errors(argv: list[str]) -> None:
    with pytest.raises(ConfigError, match="--zap-"):
        parse(argv)


def test_grpc_message_limits_take_the_references_sizes() -> None:
    server = parse(["--grpc-max-recv-msg-size", "10MiB", "--grpc-max-send-msg-size", "25MB"]).server
    assert (server.grpc_max_recv_msg_bytes, server.grpc_max_send_msg_bytes) == (
        10 * 2**20,
        25 * 10**6,
    )
    assert parse([]).server.grpc_max_recv_msg_bytes is None
    text = "kind: EndpointPickerConfig\nserver: {grpcMaxRecvMsgSize: 8Mi}\n"
    assert parse(["--config-text", text]).server.grpc_max_recv_msg_bytes == 8 * 2**20
    for bad in ("lots", "0", "-1Mi", "10XB"):
        with pytest.raises(ConfigError, match="--grpc-max-recv-msg-size"):
            parse([f"--grpc-max-recv-msg-size={bad}"])


def test_newer_reference_flags_are_accepted_and_reported() -> None:
    config = parse(
        [
            "--allow-experimental-plugins",
            "--enable-grpc-stream-metrics=true",
            "--disable-endpoint-subset-filter",
            "--tls-min-version=1.2",
        ]
    )
    assert [flag for flag, _, _ in config.ignored_flags] == [
        "--allow-experimental-plugins",
        "--enable-grpc-stream-metrics",
        "--disable-endpoint-subset-filter",
        "--tls-min-version",
    ]


@pytest.mark.parametrize("version", ["1.3", "VersionTLS13", "1.0", "1.1"])
def test_a_tls_minimum_epp_cannot_enforce_is_refused(version: str) -> None:
    # grpcio's Python server always takes TLS 1.2 and 1.3: any other minimum would be a lie.
    with pytest.raises(ConfigError, match="--tls-min-version"):
        parse([f"--tls-min-version={version}"])
    assert parse(["--tls-min-version", "VersionTLS12"]).ignored_flags[0][0] == "--tls-min-version"


def test_stream_usage_injection_is_off_unless_asked(tmp_path: Path) -> None:
    assert not parse([]).server.inject_stream_usage
    assert parse(["--inject-stream-usage"]).server.inject_stream_usage
    assert parse([], env={"EPP_INJECT_STREAM_USAGE": "true"}).server.inject_stream_usage
    path = tmp_path / "epp.yaml"
    path.write_text("server: {injectStreamUsage: true}\n")
    assert parse(["--config-file", str(path)]).server.inject_stream_usage


def test_servers_adding_stream_usage_is_off_unless_said(tmp_path: Path) -> None:
    assert not parse([]).server.servers_add_stream_usage
    assert parse(["--servers-add-stream-usage"]).server.servers_add_stream_usage
    env = {"EPP_SERVERS_ADD_STREAM_USAGE": "true"}
    assert parse([], env=env).server.servers_add_stream_usage
    path = tmp_path / "epp.yaml"
    path.write_text("server: {serversAddStreamUsage: true}\n")
    assert parse(["--config-file", str(path)]).server.servers_add_stream_usage


def test_request_log_mode() -> None:
    assert parse([]).request_log == "errors"
    assert parse(["--request-log", "all"]).request_log == "all"
    with pytest.raises(ConfigError, match="request-log"):
        parse(["--request-log", "some"])


@pytest.mark.parametrize(
    ("argv", "host"),
    [
        (["--endpoint", "10.0.0.5:8000"], "127.0.0.1"),  # plaintext beside Envoy
        (["--endpoint", "10.0.0.5:8000", "--secure-serving"], "0.0.0.0"),
        (["--pool-name", "p"], "0.0.0.0"),  # Kubernetes: gateways dial the pod
        (["--pool-name", "p", "--secure-serving=false"], "0.0.0.0"),
        (["--endpoint", "10.0.0.5:8000", "--grpc-host", "0.0.0.0"], "0.0.0.0"),
        (["--pool-name", "p", "--grpc-host", "10.1.2.3"], "10.1.2.3"),
    ],
    ids=["static", "static-tls", "pool", "pool-plaintext", "explicit", "explicit-pool"],
)
def test_ext_proc_listens_on_loopback_unless_reachable_on_purpose(
    argv: list[str], host: str
) -> None:
    assert parse(argv).grpc_host == host


def test_hostile_client_limits_and_their_checks() -> None:
    config = parse([])
    assert config.server.max_buffered_body_bytes == 96 * 1024 * 1024
    assert config.request_control.trust_model_rewrite_header is False
    assert config.max_model_series == 64
    config = parse(
        [
            "--max-buffered-body-bytes",
            "0",
            "--trust-model-rewrite-header",
            "--max-model-series",
            "8",
        ]
    )
    assert config.server.max_buffered_body_bytes == 0  # no budget
    assert config.request_control.trust_model_rewrite_header is True
    assert config.max_model_series == 8
    with pytest.raises(ConfigError, match="at least --max-body-bytes"):
        parse(["--max-buffered-body-bytes", "1000", "--max-body-bytes", "2000"])
    with pytest.raises(ConfigError, match="at least 1"):
        parse(["--max-model-series", "0"])


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("grpcPort: 7000\n", r"--config-text: unknown key 'grpcPort' \(known: admission, "),
        ("server: {grpcport: 7000}\n", r"--config-text: server: unknown key 'grpcport'"),
        ("server: 7000\n", "--config-text: server must be a mapping"),
        (
            "endpoints: [{address: '10.0.0.1:8000', model: [x]}]\n",
            r"endpoints\[0\]: unknown key 'model' \(known: address, models\)",
        ),
        (
            "plugins: [{type: queue-scorer, params: {}}]\nschedulingProfiles: []\n",
            r"plugins\[0\]: unknown key 'params' \(known: name, parameters, type\)",
        ),
        (
            "plugins: []\nschedulingProfiles: [{name: a, plugins: [], handler: x}]\n",
            r"schedulingProfiles\[0\]: unknown key 'handler'",
        ),
        (
            "plugins: []\nschedulingProfiles: [{plugins: [{pluginRef: q, wieght: 1}]}]\n",
            r"schedulingProfiles\[0\]\.plugins\[0\]: unknown key 'wieght'",
        ),
    ],
    ids=[
        "top-level",
        "in-section",
        "section-not-a-mapping",
        "endpoint",
        "plugin",
        "profile",
        "ref",
    ],
)
def test_unknown_keys_in_the_file_are_errors(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse(["--config-text", text])


def test_pick_api_limits_from_flags_env_and_file() -> None:
    default = parse([]).server
    assert (default.pick_timeout_s, default.pick_max_outstanding) == (600.0, 10_000)
    flags = parse(["--pick-timeout", "90s", "--pick-max-outstanding", "5"]).server
    assert (flags.pick_timeout_s, flags.pick_max_outstanding) == (90.0, 5)
    assert parse([], env={"EPP_PICK_TIMEOUT": "2m"}).server.pick_timeout_s == 120.0
    text = "kind: EndpointPickerConfig\nserver: {pickTimeout: 30s, pickMaxOutstanding: 7}\n"
    file = parse(["--config-text", text]).server
    assert (file.pick_timeout_s, file.pick_max_outstanding) == (30.0, 7)


@pytest.mark.parametrize(
    "argv", [["--pick-timeout", "0s"], ["--pick-max-outstanding", "0"]], ids=["timeout", "cap"]
)
def test_pick_api_limits_must_be_positive(argv: list[str]) -> None:
    with pytest.raises(ConfigError):
        parse(argv)


def test_replica_sync_settings_from_file_and_flags(tmp_path: Path) -> None:
    assert not parse([]).sync.enabled
    path = tmp_path / "epp.yaml"
    path.write_text(
        "kind: EndpointPickerConfig\n"
        "sync: {redisUrl: 'redis://r:6379/0', channel: pool-a, expiry: 3s}\n"
        "server: {workers: 2}\n"
    )
    config = parse(["--config-file", str(path), "--replica-id", "epp-0"])
    assert config.sync.redis_url == "redis://r:6379/0"
    assert (config.sync.channel, config.sync.expire_s, config.sync.replica_id) == (
        "pool-a",
        3.0,
        "epp-0",
    )
    assert config.server.workers == 2
    path.write_text("kind: EndpointPickerConfig\nsync: {redisURL: x}\n")
    with pytest.raises(ConfigError, match="redisURL"):
        parse(["--config-file", str(path)])

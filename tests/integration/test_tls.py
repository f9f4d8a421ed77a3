"""The ext_proc port over TLS: a mounted certificate, and its rotation without a restart."""

from __future__ import annotations

import os
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from epp.stack import ManagedProcess, free_port, start_epp_module
from epp.tls import self_signed_certificate


def write_pair(directory: Path, pair: tuple[bytes, bytes], stamp: float) -> None:
    key, cert = pair
    for name, data in (("tls.key", key), ("tls.crt", cert)):
        path = directory / name
        path.write_bytes(data)
        os.utime(path, (stamp, stamp))  # distinct mtimes whatever the clock's resolution


def health_over_tls(port: int, trusted_cert: bytes) -> str:
    """SERVING, or the gRPC error of a fresh connection that trusts only ``trusted_cert``."""
    credentials = grpc.ssl_channel_credentials(root_certificates=trusted_cert)
    with grpc.secure_channel(f"127.0.0.1:{port}", credentials,
                             options=[("grpc.ssl_target_name_override", "localhost")]) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=5)
        except grpc.RpcError as exc:
            return str(exc.code().name)
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))


def wait_for(check: object, expected: str, timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while (value := check()) != expected:  # type: ignore[operator]
        if time.monotonic() > deadline:
            pytest.fail(f"expected {expected}, still {value}")
        time.sleep(0.1)


def test_a_rotated_certificate_is_served_to_new_connections(tmp_path: Path) -> None:
    certs = tmp_path / "tls"
    certs.mkdir()
    first, second = self_signed_certificate(), self_signed_certificate()
    write_pair(certs, first, 1_000_000)
    grpc_port, metrics_port = free_port(), free_port()
    epp: ManagedProcess = start_epp_module("epp-tls", [
        "serve", "--endpoint", f"127.0.0.1:{free_port()}", "--secure-serving",
        "--cert-path", str(certs), "--enable-cert-reload",
        "--grpc-host", "127.0.0.1", "--grpc-port", str(grpc_port), "--grpc-health-port", "0",
        "--metrics-host", "127.0.0.1", "--metrics-port", str(metrics_port)], log_dir=tmp_path)
    try:
        wait_for(lambda: health_over_tls(grpc_port, first[1]), "SERVING")
        assert health_over_tls(grpc_port, second[1]) == "UNAVAILABLE"  # not trusted yet

        write_pair(certs, second, 2_000_000)
        wait_for(lambda: health_over_tls(grpc_port, second[1]), "SERVING")
        assert health_over_tls(grpc_port, first[1]) == "UNAVAILABLE"
        assert "serving the rotated certificate" in epp.log_tail()
    finally:
        assert epp.stop() == 0, epp.log_tail()

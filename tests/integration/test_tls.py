"""The ext_proc port over TLS: a mounted certificate, its rotation without a restart, and
Envoy verifying it."""

from __future__ import annotations

import datetime
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc

from epp.cli import main
from epp.envoy_config import EPP_UNAVAILABLE_ERROR
from epp.stack import ManagedProcess, free_port, loopback_serve_args, start_envoy, start_epp_module
from epp.tls import self_signed_certificate
from tests.integration.helpers import chat
from tests.integration.resilience import Rig


def write_pair(directory: Path, pair: tuple[bytes, bytes], stamp: float) -> None:
    key, cert = pair
    for name, data in (("tls.key", key), ("tls.crt", cert)):
        path = directory / name
        path.write_bytes(data)
        os.utime(path, (stamp, stamp))  # distinct mtimes whatever the clock's resolution


def health_over_tls(port: int, trusted_cert: bytes) -> str:
    """SERVING, or the gRPC error of a fresh connection that trusts only ``trusted_cert``."""
    credentials = grpc.ssl_channel_credentials(root_certificates=trusted_cert)
    with grpc.secure_channel(
        f"127.0.0.1:{port}", credentials, options=[("grpc.ssl_target_name_override", "localhost")]
    ) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=5
            )
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
    epp: ManagedProcess = start_epp_module(
        "epp-tls",
        [
            *loopback_serve_args(grpc_port, metrics_port),
            "--endpoint",
            f"127.0.0.1:{free_port()}",
            "--secure-serving",
            "--cert-path",
            str(certs),
            "--enable-cert-reload",
        ],
        log_dir=tmp_path,
    )
    try:
        wait_for(lambda: health_over_tls(grpc_port, first[1]), "SERVING")
        assert health_over_tls(grpc_port, second[1]) == "UNAVAILABLE"  # not trusted yet

        write_pair(certs, second, 2_000_000)
        wait_for(lambda: health_over_tls(grpc_port, second[1]), "SERVING")
        assert health_over_tls(grpc_port, first[1]) == "UNAVAILABLE"
        assert "serving the rotated certificate" in epp.log_tail()
    finally:
        assert epp.stop() == 0, epp.log_tail()


# --- Envoy verifying epp's certificate (epp envoy-config --epp-ca-file/--epp-server-name)


def certificate_authority(name: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return key, certificate


def issue(
    authority: tuple[ec.EllipticCurvePrivateKey, x509.Certificate], dns_name: str
) -> tuple[bytes, bytes]:
    """(key PEM, certificate PEM) for ``dns_name``, signed by ``authority``."""
    ca_key, ca_certificate = authority
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, dns_name)]))
        .issuer_name(ca_certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(dns_name)]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return key_pem, certificate.public_bytes(serialization.Encoding.PEM)


def pem(authority: tuple[ec.EllipticCurvePrivateKey, x509.Certificate], path: Path) -> str:
    path.write_bytes(authority[1].public_bytes(serialization.Encoding.PEM))
    return str(path)


@dataclass(frozen=True)
class VerifiedEpp:
    rig: Rig
    grpc_port: int
    pod: str
    ca_file: str  # the CA that signed epp's certificate, for "epp.test"
    other_ca_file: str  # a CA that signed nothing epp serves


@pytest.fixture(scope="module")
def verified_epp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VerifiedEpp]:
    directory = tmp_path_factory.mktemp("epp-ca")
    authority = certificate_authority("epp test CA")
    certs = directory / "tls"
    certs.mkdir()
    write_pair(certs, issue(authority, "epp.test"), 1_000_000)
    rig = Rig(directory)
    try:
        (pod,) = rig.sims("sim", ["m"])
        grpc_port = rig.start_epp({pod: "m"}, "--secure-serving", "--cert-path", str(certs))
        yield VerifiedEpp(
            rig,
            grpc_port,
            pod,
            pem(authority, directory / "ca.pem"),
            pem(certificate_authority("another CA"), directory / "other.pem"),
        )
    finally:
        rig.stop()


def envoy_config(capsys: pytest.CaptureFixture[str], *flags: str) -> dict[str, Any]:
    """What ``epp envoy-config FLAGS`` prints, as a bootstrap."""
    assert main(["envoy-config", *flags]) == 0
    bootstrap: dict[str, Any] = yaml.safe_load(capsys.readouterr().out)
    return bootstrap


@pytest.mark.parametrize(
    ("trust", "server_name", "served"),
    [
        ("ca", "epp.test", True),
        ("ca", None, True),  # the chain is verified, the name is not checked
        ("other", "epp.test", False),
        ("ca", "not-epp.test", False),
    ],
    ids=["right-ca-and-name", "right-ca", "wrong-ca", "wrong-name"],
)
def test_envoy_verifies_epps_certificate(
    verified_epp: VerifiedEpp,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    trust: str,
    server_name: str | None,
    served: bool,
) -> None:
    ca_file = verified_epp.ca_file if trust == "ca" else verified_epp.other_ca_file
    listen, admin = free_port(), free_port()
    flags = [
        "--listen-port",
        str(listen),
        "--admin-port",
        str(admin),
        "--epp-port",
        str(verified_epp.grpc_port),
        "--epp-ca-file",
        ca_file,
    ]
    if server_name:
        flags += ["--epp-server-name", server_name]
    envoy = start_envoy(envoy_config(capsys, *flags), admin_port=admin, log_dir=tmp_path)
    try:
        response = httpx.post(
            f"http://127.0.0.1:{listen}/v1/chat/completions",
            json=chat("m", "hi", max_tokens=2),
            timeout=30,
        )
    finally:
        envoy.stop()
    if served:
        assert response.status_code == 200, response.text
        assert response.headers["x-sim-pod"] == verified_epp.pod
    else:
        # Envoy refuses the handshake: the client gets the JSON error for epp down.
        assert response.status_code == 503
        assert response.json() == {"error": EPP_UNAVAILABLE_ERROR}

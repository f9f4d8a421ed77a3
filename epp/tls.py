"""TLS for the ext_proc port (``--secure-serving``).

Gateways dial the reference EPP with TLS and skip verification, so a self-signed
certificate made at start is enough by default; ``--cert-path`` points at a directory
with ``tls.crt`` and ``tls.key`` (a mounted Kubernetes TLS Secret) for a real one.
"""

from __future__ import annotations

import datetime
import logging
import socket
from pathlib import Path

import grpc

__all__ = ["load_certificate", "reloading_credentials", "self_signed_certificate"]

log = logging.getLogger(__name__)


def load_certificate(cert_path: str) -> tuple[bytes, bytes]:
    """(private key PEM, certificate chain PEM) from ``cert_path``/tls.{key,crt}."""
    directory = Path(cert_path)
    try:
        return (directory / "tls.key").read_bytes(), (directory / "tls.crt").read_bytes()
    except OSError as exc:
        raise OSError(
            f"--cert-path {cert_path}: cannot read {exc.filename}: {exc.strerror} "
            "(expected tls.crt and tls.key, as in a kubernetes.io/tls Secret)"
        ) from exc


def reloading_credentials(cert_path: str) -> grpc.ServerCredentials:
    """Server credentials that follow ``cert_path``/tls.{crt,key} as they are rotated.

    gRPC asks the fetcher on each new connection; it re-reads the files only when their
    modification times changed, and keeps the current pair if the new one cannot be read
    (a rotation caught half-written is retried on the next connection).
    """
    directory = Path(cert_path)
    seen: list[tuple[int, int]] = [_mtimes(directory)]
    initial = grpc.ssl_server_certificate_configuration([load_certificate(cert_path)])

    def fetch() -> grpc.ServerCertificateConfiguration | None:
        try:
            mtimes = _mtimes(directory)
            if mtimes == seen[0]:
                return None
            pair = load_certificate(cert_path)
        except OSError as exc:
            log.warning("--cert-path %s: keeping the current certificate: %s", cert_path, exc)
            return None
        seen[0] = mtimes
        log.info("--cert-path %s: serving the rotated certificate", cert_path)
        return grpc.ssl_server_certificate_configuration([pair])

    return grpc.dynamic_ssl_server_credentials(initial, fetch)


def _mtimes(directory: Path) -> tuple[int, int]:
    return ((directory / "tls.crt").stat().st_mtime_ns, (directory / "tls.key").stat().st_mtime_ns)


def self_signed_certificate(valid_days: int = 365) -> tuple[bytes, bytes]:
    """(private key PEM, certificate PEM): a fresh ECDSA P-256 key, self-signed."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "epp"),
            x509.NameAttribute(NameOID.COMMON_NAME, "epp"),
        ]
    )
    now = datetime.datetime.now(datetime.UTC)
    hostnames = sorted({"localhost", socket.gethostname()})
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=valid_days))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName(host) for host in hostnames]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return key_pem, certificate.public_bytes(serialization.Encoding.PEM)

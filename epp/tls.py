"""TLS for the ext_proc port (``--secure-serving``).

Gateways dial the reference EPP with TLS and skip verification, so a self-signed
certificate made at start is enough by default; ``--cert-path`` points at a directory
with ``tls.crt`` and ``tls.key`` (a mounted Kubernetes TLS Secret) for a real one.
"""

from __future__ import annotations

import datetime
import socket
from pathlib import Path

__all__ = ["load_certificate", "self_signed_certificate"]


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


def self_signed_certificate(valid_days: int = 365) -> tuple[bytes, bytes]:
    """(private key PEM, certificate PEM): a fresh ECDSA P-256 key, self-signed."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "epp"),
        x509.NameAttribute(NameOID.COMMON_NAME, "epp"),
    ])
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

"""A self-signed certificate for 127.0.0.1, generated locally with ``cryptography``, for the stand-in's TLS option.

With TLS on, the handshake's round trips and bytes are part of what ``compare`` measures, as they are for a real
cloud API. The client trusts exactly this certificate (``--cacert``), never a disabled check.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from pathlib import Path

from .._fs import write_bytes

__all__ = ["self_signed"]


def self_signed(folder: Path, days: int = 7) -> tuple[Path, Path]:
    """Write ``cert.pem`` and ``key.pem`` (mode 0600) for 127.0.0.1 / localhost into ``folder``; return both."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())  # P-256: the curve every TLS 1.3 client supports
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "edgeslm cloud stand-in")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    folder = Path(folder)
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    write_bytes(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    write_bytes(
        key_path,
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
    )
    os.chmod(key_path, 0o600)
    return cert_path, key_path

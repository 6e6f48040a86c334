"""Throw-away TLS material for the emulator's ``https://`` and ``wss://`` endpoints.

A tiny private CA signs one server certificate for ``127.0.0.1``, ``::1`` and ``localhost``.
Clients trust the CA (:meth:`CertificateBundle.client_context`, ``cafile=``, or Chromium's
``--ignore-certificate-errors-spki-list`` with :attr:`CertificateBundle.spki_sha256`). The JS
SDK only accepts ``wss://`` endpoints, which is why browser tests need this.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import ipaddress
import ssl
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["CertificateBundle", "generate_certificate"]

_VALIDITY = dt.timedelta(days=30)  # well under browsers' 398-day cap for server certificates


@dataclass(frozen=True, slots=True)
class CertificateBundle:
    """PEM-encoded CA certificate, server certificate and server key."""

    ca_pem: bytes
    cert_pem: bytes
    key_pem: bytes

    @property
    def spki_sha256(self) -> str:
        """Base64 SHA-256 of the server key's SubjectPublicKeyInfo (Chromium's SPKI pin format)."""
        cert = x509.load_pem_x509_certificate(self.cert_pem)
        spki = cert.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return base64.b64encode(hashlib.sha256(spki).digest()).decode()

    def write(self, directory: str | Path) -> tuple[Path, Path, Path]:
        """Write ``ca.pem``, ``cert.pem`` and ``key.pem`` (mode 0600) into ``directory``.

        Returns:
            The three paths, in that order.
        """
        directory = Path(directory)
        paths = (directory / "ca.pem", directory / "cert.pem", directory / "key.pem")
        for path, data in zip(paths, (self.ca_pem, self.cert_pem, self.key_pem), strict=True):
            path.write_bytes(data)
            path.chmod(0o600)
        return paths

    def server_context(self) -> ssl.SSLContext:
        """An SSL context serving the server certificate."""
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        # load_cert_chain only reads files; keep the key on disk just long enough.
        with tempfile.TemporaryDirectory(prefix="kvs-peer-tls-") as tmp:
            _, cert, key = self.write(tmp)
            context.load_cert_chain(cert, key)
        return context

    def client_context(self) -> ssl.SSLContext:
        """A client SSL context that trusts only this bundle's CA."""
        return ssl.create_default_context(cadata=self.ca_pem.decode("ascii"))


def generate_certificate(
    hosts: Sequence[str] = ("127.0.0.1", "::1", "localhost"),
    *,
    now: dt.datetime | None = None,
) -> CertificateBundle:
    """Generate a CA and a server certificate for ``hosts`` (IP addresses or DNS names)."""
    now = now or dt.datetime.now(dt.UTC)
    not_before = now - dt.timedelta(days=1)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kvs-peer local emulator CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(now + _VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(now + _VALIDITY)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    return CertificateBundle(
        ca_pem=ca_cert.public_bytes(pem),
        cert_pem=cert.public_bytes(pem),
        key_pem=key.private_bytes(
            pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ),
    )

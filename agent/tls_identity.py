"""The agent's TLS identity for its sealed front (``agent.front``): a self-signed certificate.

One per agent (so per instance): an EC P-256 key and a self-signed certificate, created on first
use and kept in the state directory (``tls/key.pem`` mode 0600, ``tls/cert.pem``) so that a
restarted agent keeps the fingerprint it reported at registration; without a state directory,
in a private temporary directory removed at exit. Nobody verifies a chain: the control plane
learns the certificate's SHA-256 fingerprint over the authenticated agent channel
(``RegisterRequest.tls_fingerprint``, every heartbeat) and the gateways pin exactly that.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import shutil
import ssl
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

VALIDITY = timedelta(days=3650)  # pinned, not chain-verified: expiry is not what protects it


@dataclass(frozen=True)
class TlsIdentity:
    cert_path: Path
    key_path: Path
    fingerprint: str  # SHA-256 of the DER certificate, 64 lowercase hex digits
    temporary: bool = False  # created in a temporary directory: remove it with ``discard``

    def server_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(self.cert_path, self.key_path)
        return context

    def discard(self) -> None:
        """Remove a temporary identity's directory (a kept one stays)."""
        if self.temporary:
            shutil.rmtree(self.cert_path.parent, ignore_errors=True)


def fingerprint_of(cert_pem: bytes) -> str:
    der = x509.load_pem_x509_certificate(cert_pem).public_bytes(serialization.Encoding.DER)
    return hashlib.sha256(der).hexdigest()


def create_certificate(common_name: str, hosts: list[str]) -> tuple[bytes, bytes]:
    """``(cert_pem, key_pem)``: a fresh self-signed certificate for ``hosts`` (names or IPs)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name[:64] or "agent")])
    alt_names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            alt_names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            alt_names.append(x509.DNSName(host))
    now = datetime.now(UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
    )
    if alt_names:
        builder = builder.add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
    cert = builder.sign(key, hashes.SHA256())
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def _write_replace(path: Path, data: bytes) -> None:
    """``path`` holds ``data`` whole or keeps what it held (a temporary file in the same
    directory, mode 0600, then renamed over it)."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _kept_fingerprint(cert_path: Path, key_path: Path) -> str | None:
    """The kept pair's fingerprint, or None when either file cannot be read or the key is not
    the certificate's (a crash between the two renames): ``load_cert_chain`` would fail."""
    try:
        cert_pem = cert_path.read_bytes()
        cert = x509.load_pem_x509_certificate(cert_pem)
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError):
        return None
    public = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(*public) != cert.public_key().public_bytes(*public):
        return None
    return fingerprint_of(cert_pem)


def load_or_create(
    state_dir: Path | None, *, common_name: str = "inventiv-agent", hosts: list[str] | None = None
) -> TlsIdentity:
    """The identity kept in ``state_dir/tls`` (created there on first use), or a temporary one.

    A kept pair that cannot be read (a half-written file) or whose key is not the certificate's
    (a crash between writing one and the other) is replaced by a new one: the new fingerprint
    reaches the control plane with the next heartbeat."""
    temporary = state_dir is None
    if state_dir is None:
        directory = Path(tempfile.mkdtemp(prefix="inventiv-tls-"))
    else:
        if not state_dir.exists():  # as agent.state makes it: private to the agent's user
            state_dir.mkdir(mode=0o700, parents=True)
            os.chmod(state_dir, 0o700)
        directory = state_dir / "tls"
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(directory, 0o700)  # mkdir's mode is subject to the umask
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    if not temporary:
        kept = _kept_fingerprint(cert_path, key_path)
        if kept is not None:
            return TlsIdentity(cert_path, key_path, kept)
    cert_pem, key_pem = create_certificate(common_name, hosts or [])
    _write_replace(key_path, key_pem)
    _write_replace(cert_path, cert_pem)
    return TlsIdentity(cert_path, key_path, fingerprint_of(cert_pem), temporary=temporary)

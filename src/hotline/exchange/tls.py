"""The exchange's TLS certificate: creation, fingerprint, and the contexts that use it.

The certificate is self-signed; no certificate authority is trusted. Terminals pin it by
fingerprint, ``"sha256:" + hex(SHA-256(DER certificate))``, which the line's charter lists
for each exchange. This is one of the few modules that imports ``cryptography.hazmat``.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import ipaddress
import os
import ssl
import stat
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from hotline.errors import KeyStorageError, TLSPinMismatch, UsageError

CERT_FILE = "tls-cert.pem"
KEY_FILE = "tls-key.pem"
FINGERPRINT_PREFIX = "sha256:"
#: validity of a new certificate; pinning, not dates, is what terminals check
CERT_VALIDITY_DAYS = 3650


def fingerprint_der(der: bytes) -> str:
    return FINGERPRINT_PREFIX + hashlib.sha256(der).hexdigest()


def fingerprint_pem(pem: bytes) -> str:
    cert = x509.load_pem_x509_certificate(pem)
    return fingerprint_der(cert.public_bytes(serialization.Encoding.DER))


def parse_fingerprint(text: str) -> bytes:
    """The 32 digest bytes of a ``sha256:<64 hex>`` fingerprint (colons allowed)."""
    prefix, _, digits = text.partition(":")
    digits = digits.replace(":", "").lower()
    if prefix.lower() != "sha256" or len(digits) != 64:
        raise UsageError(f"TLS fingerprint {text!r}: expected sha256: and 64 hex digits")
    try:
        return bytes.fromhex(digits)
    except ValueError as exc:
        raise UsageError(f"TLS fingerprint {text!r}: not hex") from exc


def check_pin(der: bytes, pinned: str) -> None:
    """Raise :class:`TLSPinMismatch` unless the certificate has the pinned fingerprint."""
    if not hmac.compare_digest(hashlib.sha256(der).digest(), parse_fingerprint(pinned)):
        raise TLSPinMismatch("the exchange's TLS certificate is not the one the charter pins")


def create_certificate(directory: Path, hosts: tuple[str, ...] = ("127.0.0.1", "localhost")) -> str:
    """Create ``directory`` (0700) with a new self-signed certificate and its private key
    (0600). Refuses to overwrite. Returns the fingerprint."""
    cert_path, key_path = directory / CERT_FILE, directory / KEY_FILE
    if cert_path.exists() or key_path.exists():
        raise UsageError(f"{directory}: already holds a TLS certificate; refusing to overwrite")
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hotline exchange")])
    now = datetime.datetime.now(datetime.UTC)
    sans: list[x509.GeneralName] = []
    for host in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            sans.append(x509.DNSName(host))
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=CERT_VALIDITY_DAYS))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(key_pem)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return fingerprint_der(cert.public_bytes(serialization.Encoding.DER))


def load_fingerprint(directory: Path) -> str:
    cert_path = directory / CERT_FILE
    try:
        return fingerprint_pem(cert_path.read_bytes())
    except FileNotFoundError as exc:
        raise UsageError(
            f"{directory}: no TLS certificate; run `hotline exchange init --dir {directory}`"
        ) from exc
    except ValueError as exc:
        raise KeyStorageError(f"{cert_path}: not a valid PEM certificate") from exc


def load_not_after(directory: Path) -> float:
    """The end of validity (unix seconds) of the certificate in ``directory``."""
    cert_path = directory / CERT_FILE
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    except FileNotFoundError as exc:
        raise UsageError(
            f"{directory}: no TLS certificate; run `hotline exchange init --dir {directory}`"
        ) from exc
    except ValueError as exc:
        raise KeyStorageError(f"{cert_path}: not a valid PEM certificate") from exc
    return cert.not_valid_after_utc.timestamp()


def server_context(directory: Path) -> ssl.SSLContext:
    """A TLS 1.3 server context with the certificate in ``directory``."""
    cert_path, key_path = directory / CERT_FILE, directory / KEY_FILE
    try:
        st = key_path.stat()
    except FileNotFoundError as exc:
        raise UsageError(
            f"{directory}: no TLS key; run `hotline exchange init --dir {directory}`"
        ) from exc
    if st.st_mode & 0o077:
        raise KeyStorageError(
            f"{key_path}: permissions {stat.S_IMODE(st.st_mode):04o} let others read the "
            f"exchange's TLS key; run: chmod 600 {key_path}"
        )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    try:
        context.load_cert_chain(cert_path, key_path)
    except (OSError, ssl.SSLError) as exc:
        raise KeyStorageError(f"{directory}: cannot load the TLS certificate: {exc}") from exc
    return context

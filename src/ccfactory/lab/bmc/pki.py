"""The lab CA and the BMCs' server certificates (``cryptography``, EC P-256).

Clients verify a lab BMC exactly as a real one with a site CA:
``sushy.Sushy(url, verify=str(ensure_lab_ca(lab_dir)))``. Keys are written 0600 and
never leave the lab directory.

Example::

    >>> ca = ensure_lab_ca(lab_dir)                       # <lab>/pki/ca.pem
    >>> cert, key = ensure_server_cert(lab_dir, "node1-bmc", "10.199.1.11", cert_dir)
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import ipaddress
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ccfactory.lab.errors import LabError

CA_NAME = "ccfactory lab CA"
CA_DAYS = 3650
SERVER_DAYS = 825
RENEW_BEFORE = dt.timedelta(days=30)


def pki_dir(lab_dir: Path) -> Path:
    return Path(lab_dir) / "pki"


def ca_paths(lab_dir: Path) -> tuple[Path, Path]:
    """(certificate, key) of the lab CA."""
    d = pki_dir(lab_dir)
    return d / "ca.pem", d / "ca.key"


@contextlib.contextmanager
def _pki_lock(lab_dir: Path) -> Iterator[None]:
    d = pki_dir(lab_dir)
    d.mkdir(parents=True, exist_ok=True)
    fd = os.open(d / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _write(path: Path, data: bytes, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _valid(cert: x509.Certificate) -> bool:
    return cert.not_valid_before_utc <= _now() < cert.not_valid_after_utc - RENEW_BEFORE


def _load_ca(lab_dir: Path) -> tuple[x509.Certificate, Any] | None:
    """The lab CA, or None if it must be (re)created (missing or about to expire).

    Other lab services may share this CA, so an existing but unreadable one is an error,
    never silently replaced.
    """
    cert_path, key_path = ca_paths(lab_dir)
    if not cert_path.is_file() or not key_path.is_file():
        return None
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except ValueError:
        raise LabError(f"lab CA in {pki_dir(lab_dir)} is unreadable; delete ca.pem and ca.key to recreate it") \
            from None
    if not isinstance(key, (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey)):
        raise LabError(f"lab CA key {key_path} must be an EC or RSA key")
    return (cert, key) if _valid(cert) else None


def ensure_lab_ca(lab_dir: Path) -> Path:
    """Create the lab CA once (idempotent); returns the path of ``ca.pem``.

    Example: ``sushy.Sushy(url, auth=auth, verify=str(ensure_lab_ca(lab_dir)))``
    """
    with _pki_lock(lab_dir):
        if _load_ca(lab_dir) is None:
            _create_ca(lab_dir)
    return ca_paths(lab_dir)[0]


def _create_ca(lab_dir: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "ccfactory lab"),
                      x509.NameAttribute(NameOID.COMMON_NAME, CA_NAME)])
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_now() - dt.timedelta(minutes=5))
        .not_valid_after(_now() + dt.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = ca_paths(lab_dir)
    _write(key_path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()), 0o600)
    _write(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)


def ensure_server_cert(lab_dir: Path, name: str, address: str, cert_dir: Path) -> tuple[Path, Path]:
    """A server certificate for ``address`` (IP SAN) and ``name`` (DNS SAN), signed by the lab CA.

    Re-issued when missing, expiring, for another address, or signed by an older CA.
    Returns ``(cert.pem, key.pem)`` in ``cert_dir`` (key 0600).

    Example: ``ensure_server_cert(lab_dir, "node1-bmc", "10.199.1.11", lab_dir / "bmc/node1/tls")``
    """
    ensure_lab_ca(lab_dir)
    with _pki_lock(lab_dir):
        loaded = _load_ca(lab_dir)
        if loaded is None:
            raise LabError(f"lab CA in {pki_dir(lab_dir)} is unreadable; delete the directory to recreate it")
        ca_cert, ca_key = loaded
        cert_path, key_path = cert_dir / "cert.pem", cert_dir / "key.pem"
        ip = ipaddress.ip_address(address)
        if _server_cert_ok(cert_path, key_path, ca_cert, ip):
            return cert_path, key_path
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(_now() - dt.timedelta(minutes=5))
            .not_valid_after(_now() + dt.timedelta(days=SERVER_DAYS))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ip), x509.DNSName(name)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True, content_commitment=False, key_encipherment=False,
                    data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
                    encipher_only=False, decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
            )
            .sign(ca_key, hashes.SHA256())
        )
        _write(key_path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()), 0o600)
        _write(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
        return cert_path, key_path


def _server_cert_ok(cert_path: Path, key_path: Path, ca_cert: x509.Certificate, ip: object) -> bool:
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (FileNotFoundError, ValueError):
        return False
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        cert.verify_directly_issued_by(ca_cert)
    except (x509.ExtensionNotFound, ValueError, TypeError, InvalidSignature):  # any doubt: re-issue
        return False
    same_key = key.public_key().public_numbers() == cert.public_key().public_numbers()  # type: ignore[union-attr]
    return _valid(cert) and ip in sans.get_values_for_type(x509.IPAddress) and same_key

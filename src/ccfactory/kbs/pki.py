"""Keys and certificates of a site's KBS, made and kept on the controller.

One directory per site (default ``~/.ccfactory/sites/<site>/pki``, mode 0700; private
keys 0600; a private key readable by others is refused, not used)::

    ca.key / ca.crt              site CA (ECDSA P-256, 10 years): signs the KBS HTTPS
                                 certificate (unless the operator brings one); what HTTPS
                                 clients trust (kbs_ca_cert)
    token-ca.key / token-ca.crt  attestation-token CA (P-256, 10 years): signs only the
                                 token signer; the only certificate the KBS trusts for
                                 tokens. Trustee accepts any token whose header x5c chains
                                 to a trusted certificate (trustee@v0.21.0:kbs/src/crypto/
                                 jwt.rs:180-252), so an anchor that also signed the HTTPS
                                 certificate would let its key holder mint tokens
    https.key / https.crt        KBS HTTPS server key and certificate (P-256, 1 year),
                                 SANs = the KBS host's names and every kbs_url host
    admin.key / admin.pub        Ed25519 admin key (Trustee v0.21.0 admin auth: bearer JWT,
                                 EdDSA, verified against the PEM public key); the private
                                 key never leaves the controller
    token.key / token.crt        attestation-token (EAR) signer (P-256, 1 year), chain in
    token-chain.pem              token.crt + token-ca.crt (the KBS checks the token header's x5c)

``ensure_pki`` is idempotent: existing keys are reused; a certificate is re-issued (same
key) only when it no longer fits (names, issuer, fewer than 30 days left). Keys change only
through ``rotate`` (an explicit operator action; old files go to ``retired/``). Operators
may bring their own TLS CA (``ca_cert`` + ``ca_key``: it issues the HTTPS certificate),
their own HTTPS certificate and key (``server_cert`` + ``server_key`` + ``ca_cert``: checked
against the CA and kbs_url, never modified) and their own admin key (``admin_key``).

Example::

    pki = ensure_pki("~/.ccfactory/sites/prod/pki", site="prod",
                     names=["kbs-01", "10.0.0.5"], kbs_url="https://kbs-01:8443")
    pki.tls_ca_cert   # give this to the workers as kbs_ca_cert
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import shutil
import stat
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ccfactory.kbs.errors import PkiError, SanMismatch

CA_DAYS = 3650
LEAF_DAYS = 365
RENEW_BEFORE_DAYS = 30
KINDS = ("ca", "server", "admin", "token")


@dataclass(frozen=True)
class PkiLayout:
    root: Path

    def __getattr__(self, name: str) -> Path:  # ca_key, https_crt ... -> root/ca.key ...
        files = {
            "ca_key": "ca.key", "ca_cert": "ca.crt", "server_key": "https.key", "server_cert": "https.crt",
            "admin_key": "admin.key", "admin_pub": "admin.pub", "token_key": "token.key",
            "token_cert": "token.crt", "token_chain": "token-chain.pem", "token_ca_key": "token-ca.key",
            "token_ca_cert": "token-ca.crt",
        }  # fmt: skip
        if name in files:
            return self.root / files[name]
        raise AttributeError(name)


@dataclass(frozen=True)
class PkiSources:
    """Operator-supplied files (controller-side paths); None: ccfactory makes its own."""

    ca_cert: str | None = None  # TLS CA certificate (kbs_ca_cert)
    ca_key: str | None = None  # its private key (kbs_ca_key_file): ccfactory issues the HTTPS cert
    server_cert: str | None = None  # kbs_tls_cert_file
    server_key: str | None = None  # kbs_tls_key_file
    admin_key: str | None = None  # kbs_admin_key_file (Ed25519, PKCS#8 PEM)


@dataclass(frozen=True)
class KbsPki:
    """Paths the stage uses. ``created`` names what this call made or re-issued."""

    root: Path
    tls_ca_cert: Path  # what HTTPS clients trust (site CA or the operator's)
    server_cert: Path
    server_key: Path
    admin_key: Path  # controller only
    admin_pub: Path
    token_ca_cert: Path  # trusted by the KBS for attestation tokens
    token_key: Path
    token_chain: Path
    created: tuple[str, ...] = field(default=())


# ------------------------------------------------------------------ helpers


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def _not_after(cert: x509.Certificate) -> datetime.datetime:
    if hasattr(cert, "not_valid_after_utc"):
        return cert.not_valid_after_utc
    return cert.not_valid_after.replace(tzinfo=datetime.timezone.utc)


def _check_private_mode(path: Path, what: str = "private key") -> None:
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise PkiError(f"{what} {path} is readable by others (mode {mode:04o}); fix: chmod 600 {path}")


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise PkiError(f"{what} {path} does not exist on the controller; fix the path") from None
    except OSError as exc:
        raise PkiError(f"{what} {path} cannot be read: {exc.strerror}") from None


def load_private_key(path: str | Path, what: str = "private key"):
    path = Path(path).expanduser()
    data = _read(path, what)
    _check_private_mode(path, what)
    try:
        return serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise PkiError(f"{what} {path} is not an unencrypted PEM private key ({exc})") from None


def load_cert(path: str | Path, what: str = "certificate") -> x509.Certificate:
    path = Path(path).expanduser()
    data = _read(path, what)
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError as exc:
        raise PkiError(f"{what} {path} is not a PEM certificate ({exc})") from None


def _write_private(path: Path, key) -> None:
    data = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    tmp.replace(path)


def _write_public(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_bytes(data)
    tmp.chmod(0o644)
    tmp.replace(path)


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _same_key(private_key, public_key) -> bool:
    fmt = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return private_key.public_key().public_bytes(*fmt) == public_key.public_bytes(*fmt)


def signed_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    if cert.issuer != issuer.subject:
        return False
    key = issuer.public_key()
    try:
        if isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(cert.signature_hash_algorithm))
        elif isinstance(key, rsa.RSAPublicKey):
            key.verify(cert.signature, cert.tbs_certificate_bytes, padding.PKCS1v15(), cert.signature_hash_algorithm)
        elif isinstance(key, ed25519.Ed25519PublicKey):
            key.verify(cert.signature, cert.tbs_certificate_bytes)
        else:
            return False
    except InvalidSignature:
        return False
    return True


def cert_sans(cert: x509.Certificate) -> tuple[list[str], list[str]]:
    """(DNS names, IP addresses) of the certificate's subjectAltName."""
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return [], []
    return ext.get_values_for_type(x509.DNSName), [str(ip) for ip in ext.get_values_for_type(x509.IPAddress)]


def _host_of(url: str) -> str:
    host = urlsplit(url).hostname
    if not host:
        raise PkiError(f"kbs_url {url!r} has no host")
    return host


def _dns_match(pattern: str, name: str) -> bool:
    pattern, name = pattern.lower().rstrip("."), name.lower().rstrip(".")
    if pattern.startswith("*."):
        head, _, tail = name.partition(".")
        return bool(head) and tail == pattern[2:]
    return pattern == name


def covers(cert: x509.Certificate, host: str) -> bool:
    dns, ips = cert_sans(cert)
    try:
        return str(ipaddress.ip_address(host)) in ips
    except ValueError:
        return any(_dns_match(pattern, host) for pattern in dns)


def check_sans_cover(cert: x509.Certificate, url: str, *, cert_path: str | Path = "the KBS certificate") -> None:
    """Raise ``SanMismatch`` unless the certificate's SANs cover the host of ``url``."""
    host = _host_of(url)
    if not covers(cert, host):
        dns, ips = cert_sans(cert)
        names = ", ".join(dns + ips) or "none"
        raise SanMismatch(
            f"{cert_path}: SANs ({names}) do not cover {host}, the host of kbs_url {url}; fix: issue the "
            f"certificate for {host}, or use a kbs_url whose host is one of its names"
        )


def _name(common_name: str, site: str) -> x509.Name:
    return x509.Name(
        [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "ccfactory"), x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, site),
         x509.NameAttribute(NameOID.COMMON_NAME, common_name)]  # fmt: skip
    )


def _san(names: list[str]) -> x509.SubjectAlternativeName:
    entries: list[x509.GeneralName] = []
    for name in dict.fromkeys(names):
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            entries.append(x509.DNSName(name))
    return x509.SubjectAlternativeName(entries)


def _issue(subject_key, subject: x509.Name, issuer_cert, issuer_key, *, days: int, ca: bool, sans=None, eku=None):
    now = _now()
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_cert.subject if issuer_cert is not None else subject)
        .public_key(subject_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=0 if ca else None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(subject_key.public_key()), critical=False)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
    else:
        builder = builder.add_extension(
            x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True
        )
    if issuer_cert is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_cert.public_key()), critical=False
        )
    if sans:
        builder = builder.add_extension(_san(sans), critical=False)
    if eku:
        builder = builder.add_extension(x509.ExtendedKeyUsage(eku), critical=False)
    return builder.sign(issuer_key if issuer_key is not None else subject_key, hashes.SHA256())


def _fresh(cert: x509.Certificate) -> bool:
    return _not_after(cert) - _now() > datetime.timedelta(days=RENEW_BEFORE_DAYS)


def _prepare_root(root: Path) -> None:
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = root.stat()
    if st.st_uid != os.getuid():
        raise PkiError(f"PKI directory {root} belongs to uid {st.st_uid}, not to this user; fix the owner or use another kbs_pki_dir")
    if stat.S_IMODE(st.st_mode) != 0o700:
        root.chmod(0o700)


# ------------------------------------------------------------------ the site PKI


def _ensure_key(path: Path, make, created: list[str], label: str):
    if path.exists():
        return load_private_key(path, f"{label} key")
    key = make()
    _write_private(path, key)
    created.append(f"{label} key")
    return key


def ensure_pki(
    root: str | os.PathLike,
    *,
    site: str,
    names: list[str],
    kbs_url: str,
    extra_urls: list[str] | tuple[str, ...] = (),
    sources: PkiSources = PkiSources(),
) -> KbsPki:
    """Make or reuse the site's KBS keys and certificates (see the module doc)."""
    layout = PkiLayout(Path(root).expanduser())
    _prepare_root(layout.root)
    created: list[str] = []
    urls = [kbs_url, *extra_urls]
    wanted_names = list(dict.fromkeys([*names, *(_host_of(u) for u in urls)]))

    # site CA: always ours; it anchors the attestation-token chain (and TLS, by default)
    ca_key = _ensure_key(layout.ca_key, lambda: ec.generate_private_key(ec.SECP256R1()), created, "site CA")
    ca_cert = load_cert(layout.ca_cert, "site CA certificate") if layout.ca_cert.exists() else None
    if ca_cert is None or not _same_key(ca_key, ca_cert.public_key()) or not _fresh(ca_cert):
        ca_cert = _issue(ca_key, _name(f"ccfactory KBS CA ({site})", site), None, None, days=CA_DAYS, ca=True)
        _write_public(layout.ca_cert, _pem(ca_cert))
        created.append("site CA certificate")

    # TLS: operator certificate, operator CA, or the site CA
    if bool(sources.server_cert) != bool(sources.server_key):
        raise PkiError("kbs_tls_cert_file and kbs_tls_key_file go together; set both or neither")
    if sources.server_cert:
        if not sources.ca_cert:
            raise PkiError("kbs_tls_cert_file needs kbs_ca_cert (the CA that issued it), so clients can verify the KBS")
        server_cert_path, server_key_path = Path(sources.server_cert).expanduser(), Path(sources.server_key).expanduser()
        tls_ca_path = Path(sources.ca_cert).expanduser()
        tls_ca = load_cert(tls_ca_path, "kbs_ca_cert")
        cert = load_cert(server_cert_path, "kbs_tls_cert_file")
        key = load_private_key(server_key_path, "kbs_tls_key_file")
        if not _same_key(key, cert.public_key()):
            raise PkiError(f"kbs_tls_key_file {server_key_path} is not the key of kbs_tls_cert_file {server_cert_path}")
        if not signed_by(cert, tls_ca):
            raise PkiError(f"kbs_tls_cert_file {server_cert_path} was not issued by kbs_ca_cert {tls_ca_path}")
        if _not_after(cert) < _now():
            raise PkiError(f"kbs_tls_cert_file {server_cert_path} has expired; renew it")
        for url in urls:
            check_sans_cover(cert, url, cert_path=server_cert_path)
    else:
        if sources.ca_cert and sources.ca_key:
            tls_ca_path = Path(sources.ca_cert).expanduser()
            tls_ca = load_cert(tls_ca_path, "kbs_ca_cert")
            tls_ca_key = load_private_key(sources.ca_key, "kbs_ca_key_file")
            if not _same_key(tls_ca_key, tls_ca.public_key()):
                raise PkiError(f"kbs_ca_key_file {sources.ca_key} is not the key of kbs_ca_cert {sources.ca_cert}")
        elif sources.ca_cert:
            tls_ca_path, tls_ca, tls_ca_key = layout.ca_cert, ca_cert, ca_key
            if load_cert(sources.ca_cert, "kbs_ca_cert").fingerprint(hashes.SHA256()) != ca_cert.fingerprint(hashes.SHA256()):
                raise PkiError(
                    f"kbs_ca_cert {sources.ca_cert} is not the site CA {layout.ca_cert} and no kbs_ca_key_file was "
                    "given to issue the KBS certificate with it; fix: set kbs_ca_key_file, or bring the certificate "
                    "(kbs_tls_cert_file/kbs_tls_key_file), or point kbs_ca_cert at the site CA"
                )
        else:
            tls_ca_path, tls_ca, tls_ca_key = layout.ca_cert, ca_cert, ca_key
        server_cert_path, server_key_path = layout.server_cert, layout.server_key
        key = _ensure_key(server_key_path, lambda: ec.generate_private_key(ec.SECP256R1()), created, "KBS HTTPS")
        cert = load_cert(server_cert_path, "KBS HTTPS certificate") if server_cert_path.exists() else None
        fits = (
            cert is not None
            and _same_key(key, cert.public_key())
            and signed_by(cert, tls_ca)
            and _fresh(cert)
            and all(covers(cert, n) for n in wanted_names)
        )
        if not fits:
            cert = _issue(key, _name(wanted_names[0], site), tls_ca, tls_ca_key, days=LEAF_DAYS, ca=False,
                          sans=wanted_names, eku=[ExtendedKeyUsageOID.SERVER_AUTH])  # fmt: skip
            _write_public(server_cert_path, _pem(cert))
            created.append("KBS HTTPS certificate")
        for url in urls:
            check_sans_cover(cert, url, cert_path=server_cert_path)

    # admin key (Ed25519): the operator's, or ours
    if sources.admin_key:
        admin_key_path = Path(sources.admin_key).expanduser()
        admin_key = load_private_key(admin_key_path, "kbs_admin_key_file")
    else:
        admin_key_path = layout.admin_key
        admin_key = _ensure_key(admin_key_path, ed25519.Ed25519PrivateKey.generate, created, "admin")
    if not isinstance(admin_key, ed25519.Ed25519PrivateKey):
        raise PkiError(f"admin key {admin_key_path} is not an Ed25519 key (Trustee's admin tokens are EdDSA)")
    admin_pub = admin_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    if not layout.admin_pub.exists() or layout.admin_pub.read_bytes() != admin_pub:
        _write_public(layout.admin_pub, admin_pub)
        created.append("admin public key")

    # attestation-token CA: its own root, signing nothing but the token signer
    token_ca_key = _ensure_key(layout.token_ca_key, lambda: ec.generate_private_key(ec.SECP256R1()), created,
                               "attestation-token CA")  # fmt: skip
    token_ca = load_cert(layout.token_ca_cert, "token CA certificate") if layout.token_ca_cert.exists() else None
    if token_ca is None or not _same_key(token_ca_key, token_ca.public_key()) or not _fresh(token_ca):
        token_ca = _issue(token_ca_key, _name(f"ccfactory KBS attestation-token CA ({site})", site), None, None,
                          days=CA_DAYS, ca=True)  # fmt: skip
        _write_public(layout.token_ca_cert, _pem(token_ca))
        created.append("attestation-token CA certificate")
    # attestation-token signer, chained to the token CA only
    token_key = _ensure_key(layout.token_key, lambda: ec.generate_private_key(ec.SECP256R1()), created, "token signer")
    token_cert = load_cert(layout.token_cert, "token signer certificate") if layout.token_cert.exists() else None
    if not (token_cert and _same_key(token_key, token_cert.public_key()) and signed_by(token_cert, token_ca)
            and _fresh(token_cert)):  # fmt: skip
        token_cert = _issue(token_key, _name("ccfactory KBS attestation token signer", site), token_ca, token_ca_key,
                            days=LEAF_DAYS, ca=False)  # fmt: skip
        _write_public(layout.token_cert, _pem(token_cert))
        created.append("token signer certificate")
    chain = _pem(token_cert) + _pem(token_ca)
    if not layout.token_chain.exists() or layout.token_chain.read_bytes() != chain:
        _write_public(layout.token_chain, chain)

    return KbsPki(
        root=layout.root,
        tls_ca_cert=tls_ca_path,
        server_cert=server_cert_path,
        server_key=server_key_path,
        admin_key=admin_key_path,
        admin_pub=layout.admin_pub,
        token_ca_cert=layout.token_ca_cert,
        token_key=layout.token_key,
        token_chain=layout.token_chain,
        created=tuple(created),
    )


def rotate(root: str | os.PathLike, what: str) -> list[Path]:
    """Retire the site's ``what`` (ca, server, admin, token) so the next run makes new ones.

    Explicit operator action only (``ccfactory kbs rotate``, not part of a deploy). Rotating
    the CA retires everything it signed. The retired files move to ``retired/<time>/``
    (0700), never deleted. Returns the retired paths.
    """
    if what not in KINDS:
        raise PkiError(f"unknown key kind {what!r}; one of {', '.join(KINDS)}")
    layout = PkiLayout(Path(root).expanduser())
    groups = {
        "ca": ["ca_key", "ca_cert", "server_cert"],
        "server": ["server_key", "server_cert"],
        "admin": ["admin_key", "admin_pub"],
        "token": ["token_ca_key", "token_ca_cert", "token_key", "token_cert", "token_chain"],
    }
    stamp = _now().strftime("%Y%m%dT%H%M%SZ")
    dest = layout.root / "retired" / f"{stamp}-{what}"
    moved = []
    for attr in groups[what]:
        path = getattr(layout, attr)
        if path.exists():
            dest.mkdir(mode=0o700, parents=True, exist_ok=True)
            (layout.root / "retired").chmod(0o700)
            shutil.move(str(path), dest / path.name)
            moved.append(dest / path.name)
    return moved

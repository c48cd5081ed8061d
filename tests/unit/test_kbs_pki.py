"""KBS keys and certificates on the controller: modes, reuse, SAN checks, operator material, rotation."""

from __future__ import annotations

import datetime
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from ccfactory.kbs.cli import cli_main
from ccfactory.kbs.errors import PkiError, SanMismatch
from ccfactory.kbs.pki import PkiSources, cert_sans, ensure_pki, load_cert, rotate, signed_by

URL = "https://kbs-01.example:8443"


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def make(tmp_path, **kw):
    kw.setdefault("names", ["kbs-01", "10.0.0.5"])
    kw.setdefault("kbs_url", URL)
    return ensure_pki(tmp_path / "pki", site="prod", **kw)


def test_first_run_makes_everything_with_tight_modes(tmp_path):
    pki = make(tmp_path)
    assert mode(pki.root) == 0o700
    for key in (pki.admin_key, pki.server_key, pki.token_key, pki.root / "ca.key"):
        assert mode(key) == 0o600, key
    for public in (pki.admin_pub, pki.server_cert, pki.token_chain, pki.tls_ca_cert):
        assert mode(public) == 0o644, public
    assert set(pki.created) >= {"site CA key", "KBS HTTPS key", "admin key", "token signer key", "KBS HTTPS certificate"}
    admin = serialization.load_pem_private_key(pki.admin_key.read_bytes(), None)
    assert isinstance(admin, ed25519.Ed25519PrivateKey)
    assert b"BEGIN PUBLIC KEY" in pki.admin_pub.read_bytes()  # SPKI PEM, what DecodingKey::from_ed_pem reads
    cert = load_cert(pki.server_cert)
    dns, ips = cert_sans(cert)
    assert dns == ["kbs-01", "kbs-01.example"] and ips == ["10.0.0.5"]
    assert x509.ExtendedKeyUsageOID.SERVER_AUTH in cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    ca = load_cert(pki.tls_ca_cert)
    assert signed_by(cert, ca) and ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    chain = pki.token_chain.read_bytes()
    assert chain.count(b"BEGIN CERTIFICATE") == 2 and chain.endswith(pki.token_ca_cert.read_bytes())
    token_key = serialization.load_pem_private_key(pki.token_key.read_bytes(), None)
    assert isinstance(token_key, ec.EllipticCurvePrivateKey) and token_key.curve.name == "secp256r1"


def test_rerun_reuses_every_key_and_certificate(tmp_path):
    first = make(tmp_path)
    before = {p.name: p.read_bytes() for p in first.root.iterdir() if p.is_file()}
    second = make(tmp_path)
    assert second.created == ()
    assert {p.name: p.read_bytes() for p in second.root.iterdir() if p.is_file()} == before


def test_new_names_reissue_the_certificate_with_the_same_key(tmp_path):
    first = make(tmp_path)
    key = first.server_key.read_bytes()
    second = make(tmp_path, extra_urls=["https://kbs.lab.example"])
    assert second.created == ("KBS HTTPS certificate",)
    assert second.server_key.read_bytes() == key
    assert "kbs.lab.example" in cert_sans(load_cert(second.server_cert))[0]


def test_a_certificate_close_to_expiry_is_renewed(tmp_path, monkeypatch):
    make(tmp_path)
    from ccfactory.kbs import pki as pki_mod

    later = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=340)
    monkeypatch.setattr(pki_mod, "_now", lambda: later)
    again = make(tmp_path)
    assert "KBS HTTPS certificate" in again.created and "token signer certificate" in again.created
    assert "admin key" not in again.created


def test_a_private_key_readable_by_others_is_refused(tmp_path):
    pki = make(tmp_path)
    pki.admin_key.chmod(0o644)
    with pytest.raises(PkiError, match=r"admin key .*admin.key is readable by others \(mode 0644\); fix: chmod 600"):
        make(tmp_path)


def test_operator_certificate_must_cover_kbs_url(tmp_path):
    site = make(tmp_path / "theirs", names=["other-host"], kbs_url="https://other-host")
    with pytest.raises(SanMismatch) as err:
        make(tmp_path, sources=PkiSources(ca_cert=str(site.tls_ca_cert), server_cert=str(site.server_cert),
                                          server_key=str(site.server_key)))  # fmt: skip
    message = str(err.value)
    assert "SANs (other-host) do not cover kbs-01.example, the host of kbs_url https://kbs-01.example:8443" in message
    assert "fix:" in message


def test_operator_certificate_is_used_as_is_when_it_fits(tmp_path):
    theirs = make(tmp_path / "theirs", names=["kbs-01.example"], kbs_url=URL)
    ours = make(tmp_path, sources=PkiSources(ca_cert=str(theirs.tls_ca_cert), server_cert=str(theirs.server_cert),
                                             server_key=str(theirs.server_key)))  # fmt: skip
    assert ours.server_cert == theirs.server_cert and ours.tls_ca_cert == theirs.tls_ca_cert
    assert not (ours.root / "https.crt").exists()


def test_operator_certificate_needs_its_ca_and_key(tmp_path):
    theirs = make(tmp_path / "theirs")
    with pytest.raises(PkiError, match="needs kbs_ca_cert"):
        make(tmp_path, sources=PkiSources(server_cert=str(theirs.server_cert), server_key=str(theirs.server_key)))
    with pytest.raises(PkiError, match="go together"):
        make(tmp_path, sources=PkiSources(server_cert=str(theirs.server_cert)))
    other = make(tmp_path / "other")
    with pytest.raises(PkiError, match="was not issued by kbs_ca_cert"):
        make(tmp_path, sources=PkiSources(ca_cert=str(other.tls_ca_cert), server_cert=str(theirs.server_cert),
                                          server_key=str(theirs.server_key)))  # fmt: skip


def test_operator_ca_with_its_key_issues_the_https_certificate(tmp_path):
    theirs = make(tmp_path / "theirs")
    ours = make(tmp_path, sources=PkiSources(ca_cert=str(theirs.tls_ca_cert), ca_key=str(theirs.root / "ca.key")))
    assert ours.tls_ca_cert == theirs.tls_ca_cert
    assert signed_by(load_cert(ours.server_cert), load_cert(theirs.tls_ca_cert))
    # the attestation-token chain stays on the site's own token CA
    assert ours.token_ca_cert == ours.root / "token-ca.crt"


def test_the_token_anchor_signs_nothing_but_the_token_signer(tmp_path):
    """Trustee trusts any token whose header x5c chains to trusted_certs_paths
    (trustee@v0.21.0:kbs/src/crypto/jwt.rs:180-252): if the HTTPS certificate chained to the
    same anchor, whoever holds https.key could mint attestation tokens."""
    pki = make(tmp_path)
    token_ca = load_cert(pki.token_ca_cert)
    assert not signed_by(load_cert(pki.server_cert), token_ca)
    assert token_ca.fingerprint(hashes.SHA256()) != load_cert(pki.tls_ca_cert).fingerprint(hashes.SHA256())
    chain = pki.token_chain.read_bytes()
    assert chain.count(b"BEGIN CERTIFICATE") == 2 and chain.endswith(pki.token_ca_cert.read_bytes())
    assert (pki.root / "token-ca.key").stat().st_mode & 0o777 == 0o600


def test_operator_ca_without_key_is_refused_with_the_ways_out(tmp_path):
    theirs = make(tmp_path / "theirs")
    with pytest.raises(PkiError, match="no kbs_ca_key_file was given.*kbs_tls_cert_file"):
        make(tmp_path, sources=PkiSources(ca_cert=str(theirs.tls_ca_cert)))


def test_operator_admin_key_must_be_ed25519_and_private(tmp_path):
    rsa_like = tmp_path / "admin.pem"
    key = ec.generate_private_key(ec.SECP256R1())
    rsa_like.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))  # fmt: skip
    rsa_like.chmod(0o600)
    with pytest.raises(PkiError, match="not an Ed25519 key"):
        make(tmp_path, sources=PkiSources(admin_key=str(rsa_like)))
    with pytest.raises(PkiError, match="does not exist on the controller"):
        make(tmp_path, sources=PkiSources(admin_key=str(tmp_path / "missing.pem")))


def test_rotation_is_explicit_and_keeps_the_old_files(tmp_path):
    first = make(tmp_path)
    old_admin = first.admin_key.read_bytes()
    old_https = first.server_key.read_bytes()
    moved = rotate(first.root, "admin")
    assert {p.name for p in moved} == {"admin.key", "admin.pub"}
    assert mode(first.root / "retired") == 0o700 and moved[0].read_bytes() == old_admin
    second = make(tmp_path)
    assert second.admin_key.read_bytes() != old_admin and second.server_key.read_bytes() == old_https
    with pytest.raises(PkiError, match="unknown key kind"):
        rotate(first.root, "everything")


def test_ca_rotation_reissues_what_it_signed(tmp_path):
    first = make(tmp_path)
    old_ca = load_cert(first.tls_ca_cert).fingerprint(hashes.SHA256())
    rotate(first.root, "ca")
    second = make(tmp_path)
    ca = load_cert(second.tls_ca_cert)
    assert ca.fingerprint(hashes.SHA256()) != old_ca
    assert signed_by(load_cert(second.server_cert), ca)
    assert "KBS HTTPS certificate" in second.created
    assert "token signer certificate" not in second.created  # the token chain has its own CA
    assert signed_by(load_cert(second.token_chain), load_cert(second.token_ca_cert))


def test_cli_makes_and_rotates_without_printing_keys(tmp_path, capsys):
    root = tmp_path / "pki"
    assert cli_main(["pki", "--pki-dir", str(root), "--site", "s", "--kbs-url", URL]) == 0
    out = capsys.readouterr().out
    assert "kbs_ca_cert (give to workers)" in out and "PRIVATE KEY" not in out
    assert cli_main(["rotate", "token", "--pki-dir", str(root)]) == 0
    assert "retired" in capsys.readouterr().out

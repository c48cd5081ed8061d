"""Lab CA and BMC server certificates (cryptography, no network)."""

from __future__ import annotations

import ipaddress
import stat

from cryptography import x509

from ccfactory.lab.bmc.pki import ca_paths, ensure_lab_ca, ensure_server_cert


def test_lab_ca_is_created_once_with_a_private_key(tmp_path):
    ca = ensure_lab_ca(tmp_path)
    cert_path, key_path = ca_paths(tmp_path)
    assert ca == cert_path
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    cert = x509.load_pem_x509_certificate(ca.read_bytes())
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
    before = ca.read_bytes()
    assert ensure_lab_ca(tmp_path).read_bytes() == before  # idempotent


def test_server_cert_has_the_ip_san_is_signed_by_the_ca_and_reissued_on_address_change(tmp_path):
    ca = x509.load_pem_x509_certificate(ensure_lab_ca(tmp_path).read_bytes())
    cert_path, key_path = ensure_server_cert(tmp_path, "node1-bmc", "10.199.1.11", tmp_path / "tls")
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    cert.verify_directly_issued_by(ca)
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.199.1.11")]
    assert sans.get_values_for_type(x509.DNSName) == ["node1-bmc"]
    same = ensure_server_cert(tmp_path, "node1-bmc", "10.199.1.11", tmp_path / "tls")[0].read_bytes()
    assert same == cert_path.read_bytes()
    moved = ensure_server_cert(tmp_path, "node1-bmc", "10.199.1.12", tmp_path / "tls")[0]
    sans = x509.load_pem_x509_certificate(moved.read_bytes()).extensions.get_extension_for_class(
        x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.199.1.12")]

"""TDX values pinned on first use from an approved EAR token (ccfactory.roles.kbs.tdx_pin)."""

from __future__ import annotations

import base64
import datetime
import sys
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import trustee_claims  # noqa: E402

from ccfactory.kbs import refvalues as rv  # noqa: E402
from ccfactory.roles.kbs import tdx_pin  # noqa: E402
from ccfactory.kbs.jose import jwt_sign  # noqa: E402

POLICY = (trustee_claims.FIXTURES / "ear_default_policy_cpu.rego").read_text()


def _cert(subject: str, key, issuer_name: str, issuer_key, ca: bool) -> x509.Certificate:
    now = datetime.datetime.now(datetime.timezone.utc)
    return (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer_name)]))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
            .sign(issuer_key, hashes.SHA256()))  # fmt: skip


def site(tmp_path: Path, name: str = "site") -> tuple[Path, ec.EllipticCurvePrivateKey, x509.Certificate]:
    ca_key, signer_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = _cert(f"{name} token CA", ca_key, f"{name} token CA", ca_key, True)
    signer = _cert(f"{name} token signer", signer_key, f"{name} token CA", ca_key, False)
    path = tmp_path / f"{name}-token-ca.crt"
    path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    return path, signer_key, signer


def ear_token(signer_key, signer: x509.Certificate, evidence: dict) -> str:
    """An EAR token as Trustee's broker signs it: ES256, header jwk with x5c (broker.rs:321-432)."""
    claims = trustee_claims.token(cpu0=("contraindicated", "tdx"))
    claims["submods"]["cpu0"]["ear.veraison.annotated-evidence"]["tdx"] = evidence
    claims |= {"iat": 1_700_000_000, "exp": 1_700_000_300}  # long expired: irrelevant for a recording
    x5c = [base64.b64encode(signer.public_bytes(serialization.Encoding.DER)).decode()]
    return jwt_sign({"alg": "ES256", "typ": "JWT", "jwk": {"kty": "EC", "alg": "ES256", "x5c": x5c}}, claims, signer_key)


def tdx_evidence(debug: bool) -> dict:
    claims = trustee_claims.tdx_verified_claims()
    claims.pop("init_data"), claims.pop("report_data")  # moved out of the TEE object (broker.rs:462-515)
    claims["td_attributes"] = dict(claims["td_attributes"], debug=debug)
    return claims


def test_pinned_from_an_approved_token_and_affirming_then(tmp_path):
    ca_path, key, signer = site(tmp_path)
    token = tmp_path / "w2.jwt"
    token.write_text(ear_token(key, signer, tdx_evidence(debug=False)))
    refs, problems = tdx_pin.pinned_values({"w2": str(token)}, ca_path)
    assert problems == []
    assert {r.origin for r in refs} == {rv.PINNED} and f"kbs_tdx_first_use[w2] ({token})" in refs[0].source
    values = rv.ReferenceSet(refs).values()
    claims = trustee_claims.tdx_verified_claims()
    claims["td_attributes"] = dict(claims["td_attributes"], debug=False)
    assert rv.appraise(POLICY, rv.as_policy_input("tdx", claims), values).status == "affirming"


def test_a_debug_td_a_foreign_token_and_a_non_tdx_token_are_refused(tmp_path):
    ca_path, key, signer = site(tmp_path)
    _, other_key, other_signer = site(tmp_path, "another-site")
    debug, foreign, snp = tmp_path / "debug.jwt", tmp_path / "foreign.jwt", tmp_path / "snp.jwt"
    debug.write_text(ear_token(key, signer, tdx_evidence(debug=True)))  # upstream's real TD ran with debug on
    foreign.write_text(ear_token(other_key, other_signer, tdx_evidence(debug=False)))
    snp_token = trustee_claims.token(cpu0=("contraindicated", "snp"))
    x5c = [base64.b64encode(signer.public_bytes(serialization.Encoding.DER)).decode()]
    snp.write_text(jwt_sign({"alg": "ES256", "jwk": {"x5c": x5c}}, snp_token, key))
    refs, problems = tdx_pin.pinned_values({"a": str(debug), "b": str(foreign), "c": str(snp), "d": str(tmp_path / "no")},
                                           ca_path)  # fmt: skip
    assert refs == []
    assert "kbs_tdx_first_use[a]" in problems[0] and "debug" in problems[0]
    assert "not issued by this site's KBS" in problems[1]
    assert "no submods.cpu0 TDX evidence" in problems[2]
    assert "cannot read it" in problems[3]


def test_a_tampered_token_is_refused(tmp_path):
    ca_path, key, signer = site(tmp_path)
    token = ear_token(key, signer, tdx_evidence(debug=False))
    head, body, sig = token.split(".")
    tampered = tmp_path / "t.jwt"
    tampered.write_text(".".join((head, body[:-4] + ("AAAA" if body[-4:] != "AAAA" else "BBBB"), sig)))
    _, problems = tdx_pin.pinned_values({"w2": str(tampered)}, ca_path)
    assert len(problems) == 1 and "not a valid EAR token" in problems[0]


def test_nothing_approved_pins_nothing(tmp_path):
    assert tdx_pin.pinned_values({}, tmp_path / "absent.crt") == ([], [])

"""The lab CDH stand-in (ccfactory.lab.standins.cdh) and the Trustee stand-in's DELETE.

Its standard-library crypto is checked against ``cryptography``; its REST endpoint and KBS
protocol run against the lab Trustee stand-in on 127.0.0.1 (tests/unit/test_standin_trustee_helpers.py);
the last test runs the attestation check's busybox workload through both stand-ins.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from busybox_helpers import busybox_bin
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from test_standin_trustee_helpers import free_port, start_kbs

from ccfactory.coco.initdata import CocoSettings, gzip_base64, render_initdata
from ccfactory.kbs import jose
from ccfactory.kbs.errors import AdminAuthError, KbsHttpError
from ccfactory.kbs.pki import ensure_pki
from ccfactory.kbs.client import Ledger
from ccfactory.kbs.policy import PolicySpec, render_resource_policy
from ccfactory.lab.standins import cdh
from ccfactory.verify import attestation as att

STRICT = render_resource_policy(PolicySpec("strict", cpu_tees=("snp",)))
PERMISSIVE = render_resource_policy(PolicySpec("lab-permissive"))
PATH = "ccfactory-verify/attestation-smoke-snp/w1-0011223344556677"


# ------------------------------------------------------------------ crypto (standard library only)


def test_aes256_block_is_fips_197():
    # FIPS-197 appendix C.3
    key, plain = bytes(range(32)), bytes.fromhex("00112233445566778899aabbccddeeff")
    assert cdh.Aes256(key).encrypt_block(plain).hex() == "8ea2b7ca516745bfeafc49904b496089"


@pytest.mark.parametrize("size", [0, 1, 15, 16, 17, 64, 1000])
def test_aes_gcm_decrypts_what_cryptography_encrypts_and_refuses_tampering(size):
    key, iv, aad, plain = os.urandom(32), os.urandom(12), os.urandom(size % 37), os.urandom(size)
    sealed = AESGCM(key).encrypt(iv, plain, aad)
    assert cdh.aes256_gcm_decrypt(key, iv, sealed[:-16], sealed[-16:], aad) == plain
    for bad in (bytes(16), sealed[-16:][::-1]):
        with pytest.raises(ValueError, match="tag mismatch"):
            cdh.aes256_gcm_decrypt(key, iv, sealed[:-16], bad, aad)
    with pytest.raises(ValueError):
        cdh.aes256_gcm_decrypt(key, iv, sealed[:-16], sealed[-16:], aad + b"x")


@pytest.fixture(scope="module")
def rsa_key():
    return cdh.RsaKey.generate()


def test_rsa_key_and_oaep_sha256(rsa_key):
    public = rsa.RSAPublicNumbers(rsa_key.e, rsa_key.n).public_key()
    assert public.key_size == 2048 and rsa_key.e == 65537
    cek = os.urandom(32)
    sealed = public.encrypt(cek, padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None))
    assert rsa_key.decrypt_oaep_sha256(sealed) == cek
    with pytest.raises(ValueError):
        rsa_key.decrypt_oaep_sha256(bytes(len(sealed)))
    jwk = rsa_key.public_jwk()
    assert jwk["alg"] == "RSA-OAEP-256" and jose.rsa_public_from_jwk(jwk).public_numbers().n == rsa_key.n


def test_jwe_from_ccfactorys_jose_and_the_runtime_data_digest(rsa_key):
    jwe = jose.jwe_encrypt(rsa_key.public_jwk(), b"model key bytes")
    assert cdh.jwe_decrypt(rsa_key, jwe) == b"model key bytes"
    data = {"tee-pubkey": rsa_key.public_jwk(), "nonce": "bm9uY2U=", "additional-evidence": ""}
    assert cdh.runtime_data_digest(data) == jose.runtime_data_digest(data)


# ------------------------------------------------------------------ settings from initdata, the lab guard


def test_kbc_settings_come_from_the_initdata_cdh_toml(tmp_path):
    ca = ensure_pki(tmp_path, site="t", names=["localhost"], kbs_url="https://localhost:1").tls_ca_cert.read_text()
    doc = render_initdata(CocoSettings(kbs_url="https://10.199.0.13:8443/", kbs_cert=ca), tee="snp")
    url, pem = cdh.kbc_settings(doc.annotation)
    assert url == "https://10.199.0.13:8443" and pem.strip() == ca.strip()
    import tomli_w

    other = gzip_base64(tomli_w.dumps({"version": "0.1.0", "algorithm": "sha256",
                                       "data": {"cdh.toml": '[kbc]\nname = "offline_fs_kbc"\n'}}))  # fmt: skip
    with pytest.raises(cdh.KbsError, match="no usable"):
        cdh.kbc_settings(other)


def test_token_tees():
    def token(evidence):
        claims = {"submods": {"cpu0": {"ear.veraison.annotated-evidence": evidence}}}
        return "e30." + jose.b64url(json.dumps(claims).encode()) + ".c2ln"

    assert cdh.token_tees(token({"sample": {}, "runtime_data_claims": {}})) == ["sample"]
    assert cdh.token_tees(token({"snp": {}, "init_data_claims": {}, "runtime_data_claims": {}})) == ["snp"]


def test_refuses_to_run_outside_a_lab_node(tmp_path):
    (tmp_path / "initdata").write_text("x")
    r = subprocess.run([sys.executable, cdh.__file__, "--initdata-file", str(tmp_path / "initdata")],
                       env={**os.environ, cdh.LAB_MARKER_ENV: str(tmp_path / "no-such-marker")},
                       capture_output=True, text=True, timeout=30)  # fmt: skip
    assert r.returncode == 3 and "only runs on ccfactory lab nodes" in r.stderr


def test_program_source_is_this_module_and_stdlib_only():
    import ast

    text = cdh.program_source()
    assert text == Path(cdh.__file__).read_text() and "LAB STAND-IN" in text
    imported = {a.name.split(".")[0] for n in ast.walk(ast.parse(text)) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(ast.parse(text)) if isinstance(n, ast.ImportFrom) and n.module}
    assert imported <= set(sys.stdlib_module_names) | {"__future__"}, imported


# ------------------------------------------------------------------ against the Trustee stand-in


@pytest.fixture(scope="module")
def kbs(tmp_path_factory):
    running = start_kbs(tmp_path_factory.mktemp("kbs"))
    running.ledger = Ledger(tmp_path_factory.mktemp("ledger") / "ledger.json", "cdh-tests")
    running.client().set_resource_policy(STRICT, running.ledger)
    yield running
    running.stop()


class Endpoint:
    def __init__(self, kbs, tmp: Path, features: str = ""):
        (tmp / "initdata").write_text(render_initdata(
            CocoSettings(kbs_url=kbs.url, kbs_cert=kbs.pki.tls_ca_cert.read_text()), tee="snp").annotation)  # fmt: skip
        (tmp / "marker").write_text("{}")
        self.port, self.log = free_port(), tmp / "cdh.log"
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen([sys.executable, cdh.__file__, "--initdata-file", str(tmp / "initdata"),
                                      "--listen", f"127.0.0.1:{self.port}", "--log", str(self.log), "--timeout", "120",
                                      "--ready-file", str(tmp / "ready"),
                                      *(["--features", features] if features else [])],
                                     env={**os.environ, cdh.LAB_MARKER_ENV: str(tmp / "marker")})  # fmt: skip
        deadline = time.monotonic() + 20
        while not (tmp / "ready").exists():
            assert time.monotonic() < deadline and self.proc.poll() is None, "the stand-in did not start"
            time.sleep(0.05)

    def get(self, path: str, method: str = "GET") -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(urllib.request.Request(self.url + path, method=method), timeout=60) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def events(self) -> list[dict]:
        return [json.loads(line) for line in self.log.read_text().splitlines()]

    def stop(self):
        from support import exit_code

        self.proc.terminate()
        exit_code(self.proc, 30)


@pytest.fixture()
def endpoint(kbs, tmp_path):
    e = Endpoint(kbs, tmp_path)
    yield e
    e.stop()


def test_strict_policy_denies_sample_evidence_and_says_so(kbs, endpoint):
    client = kbs.client()
    client.set_resource(PATH, os.urandom(32))
    status, body = endpoint.get(f"/cdh/resource/{PATH}")
    assert status == 500 and b"401 PolicyDeny" in body
    # upstream's default feature is `resource`: no token endpoint (api-server-rest router.rs:150-156)
    assert endpoint.get("/aa/token?token_type=kbs") == (404, b"Attestation Feature Not Enabled")
    events = endpoint.events()
    assert events[0]["event"] == "start" and events[0]["kbs_url"] == kbs.url and events[0]["feature"] == "resource"
    assert {k: events[1][k] for k in ("event", "path", "outcome", "kbs_status", "kbs_error", "evidence", "token_tees")} == {
        "event": "resource", "path": PATH, "outcome": "denied", "kbs_status": 401, "kbs_error": "PolicyDeny",
        "evidence": "sample", "token_tees": ["sample"]}  # fmt: skip
    assert events[2]["event"] == "aa" and events[2]["outcome"] == "not-enabled"
    client.delete_resource(PATH)


def test_the_attestation_feature_serves_the_token(kbs, tmp_path):
    e = Endpoint(kbs, tmp_path, features="all")
    try:
        status, body = e.get("/aa/token?token_type=kbs")
        assert status == 200 and set(json.loads(body)) == {"token"}
        assert cdh.token_tees(json.loads(body)["token"]) == ["sample"]
        assert e.get("/aa/token?token_type=coco_as")[0] == 500
        status, body = e.get("/info")
        assert json.loads(body) == {"version": cdh.VERSION, "feature": "all", "tee": "sample"}
        assert e.events()[-1]["outcome"] == "error"
    finally:
        e.stop()


def test_permissive_policy_releases_the_exact_bytes(kbs, endpoint):
    client = kbs.client()
    value = os.urandom(48)
    client.set_resource(PATH, value)
    client.set_resource_policy(PERMISSIVE, kbs.ledger)
    try:
        status, body = endpoint.get(f"/cdh/resource/{PATH}")
    finally:
        client.set_resource_policy(STRICT, kbs.ledger)
    assert status == 200 and body == value
    last = endpoint.events()[-1]
    assert last["outcome"] == "released" and last["token_tees"] == ["sample"] and value.hex() not in endpoint.log.read_text()
    client.delete_resource(PATH)


def test_rest_rules(endpoint):
    assert endpoint.get("/cdh/resource/only/two")[0] == 500
    assert endpoint.get("/cdh/resource/a/b/c", method="POST")[0] == 405
    assert endpoint.get("/aa/token?token_type=coco_as")[0] == 404
    assert endpoint.get("/nothing")[0] == 404
    status, body = endpoint.get("/info")
    assert status == 200 and json.loads(body) == {"version": cdh.VERSION, "feature": "resource"}  # no AA: no tee
    status, _ = endpoint.get("/cdh/resource/ccfactory-verify/attestation-smoke-snp/missing-00")
    assert status == 500  # denied before the lookup: the policy is evaluated first


def test_trustee_standin_deletes_resources_for_the_admin_only(kbs):
    from cryptography.hazmat.primitives.asymmetric import ed25519

    client = kbs.client()
    client.set_resource(PATH, b"x" * 32)
    stranger = kbs.client(admin_key=ed25519.Ed25519PrivateKey.generate())
    with pytest.raises(AdminAuthError):
        stranger.delete_resource(PATH)
    client.delete_resource(PATH)
    with pytest.raises(KbsHttpError) as again:  # v0.21-era KV backend: absent is an error (trustee PR #1601 changed it later)
        client.delete_resource(PATH)
    assert (again.value.status, again.value.kind) == (401, "PluginInternalError")  # detail hides the cause upstream
    assert "deleted" in kbs.logs()


# ------------------------------------------------------------------ the whole lab chain, without a node


@pytest.fixture(scope="module")
def busybox(tmp_path_factory) -> Path:
    """Debian's busybox-static (what the smoke image holds)."""
    return busybox_bin(tmp_path_factory.mktemp("busybox"))


def test_workload_through_both_lab_stand_ins(busybox, kbs, endpoint):
    client = kbs.client()
    value = os.urandom(32)
    client.set_resource(PATH, value)

    def workload() -> int:
        env = {"PATH": str(busybox), "RES": PATH, "EXPECT": hashlib.sha256(value).hexdigest(), "TEE": "snp", "WAIT": "5",
               "CDH": endpoint.url}  # fmt: skip
        return subprocess.run([str(busybox / "sh"), "-c", att.WORKLOAD], env=env, capture_output=True, timeout=120).returncode

    strict = workload()
    client.set_resource_policy(PERMISSIVE, kbs.ledger)
    try:
        permissive = workload()
    finally:
        client.set_resource_policy(STRICT, kbs.ledger)
    client.delete_resource(PATH)
    assert att.decode_verdict(strict) == att.LAB_EXPECTED  # denied to a token of type sample
    assert att.decode_verdict(permissive) == (0, 0)  # released (lab-permissive), bytes match
    outcomes = [(e["outcome"], e.get("kbs_status")) for e in endpoint.events() if e["event"] == "resource"]
    assert outcomes == [("denied", 401), ("released", 200)]

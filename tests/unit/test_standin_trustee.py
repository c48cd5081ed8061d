"""The lab Trustee stand-in: artifact layout, CLI, config refusal, protocol, tokens, persistence.

It runs as a node runs it: ``python3 bin/kbs --config-file FILE`` (Debian 12's python3
and python3-cryptography 38 when this machine has them).
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import subprocess
import tarfile
import tomllib

import pytest
from cryptography import x509
from test_standin_trustee_helpers import PYTHON, free_port, start_kbs

from ccfactory.kbs import KBS_PROTOCOL_VERSION, jose
from ccfactory.kbs.client import Ledger
from ccfactory.kbs.errors import KbsHttpError, PolicyDenied
from ccfactory.kbs.policy import PolicySpec, render_resource_policy
from ccfactory.kbs.render import render_kbs_config
from ccfactory.lab.standins import trustee

STRICT = render_resource_policy(PolicySpec("strict", cpu_tees=("snp",)))


# ------------------------------------------------------------------ the artifact


def test_tarball_is_deterministic_with_the_real_layout(tmp_path):
    path = trustee.build_trustee_standin(tmp_path)
    assert path.name == trustee.FILENAME == "trustee-v0.21.0-ccfactory-lab.1.tar.gz"
    first = path.read_bytes()
    assert trustee.build_trustee_standin(tmp_path).read_bytes() == first == trustee.tarball_bytes()
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(first))) as tar:
        members = {m.name: m for m in tar.getmembers()}
    top = trustee.TOP_DIR
    assert members[f"{top}/bin/kbs"].mode == 0o755
    assert {f"{top}/README.md", f"{top}/lib/ccflab_trustee/__init__.py", f"{top}/lib/ccflab_trustee/app.py",
            f"{top}/lib/ccflab_trustee/policy.py", f"{top}/lib/ccflab_trustee/jose.py",
            f"{top}/lib/ccflab_trustee/schema.py"} <= set(members)  # fmt: skip
    assert all(m.uid == 0 and m.mtime == members[f"{top}/bin/kbs"].mtime for m in members.values())


def test_the_stand_in_shares_ccfactorys_policy_and_schema_code():
    from importlib import resources

    files = trustee.program_files()
    for name in trustee.SHARED_MODULES:
        assert files[f"lib/ccflab_trustee/{name}.py"] == resources.files("ccfactory.kbs").joinpath(f"{name}.py").read_bytes()
    assert b"NOT Trustee" in files["README.md"] and b"NOT OPA" in files["README.md"]


def test_standin_entry_for_the_artifact_server():
    s = trustee.standin()
    assert (s.name, s.version, s.filename, s.top_dir) == ("trustee", trustee.VERSION, trustee.FILENAME, trustee.TOP_DIR)
    assert s.executables == frozenset({"bin/kbs"}) and "lab only" in s.note


# ------------------------------------------------------------------ CLI and config


def run_kbs(tmp_path, *args, config: str | None = None, timeout=15):
    kbs = trustee.install_tree(tmp_path / "opt")
    argv = [PYTHON, str(kbs), *args]
    if config is not None:
        path = tmp_path / "kbs-config.toml"
        path.write_text(config)
        argv += ["--config-file", str(path)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout)


def base_config(tmp_path) -> str:
    return render_kbs_config(socket=f"127.0.0.1:{free_port()}", insecure_http=False, nvidia_verifier=None,
                             keys_dir=str(tmp_path / "keys"), storage_dir=str(tmp_path / "storage"))  # fmt: skip


def test_cli_version_and_required_config(tmp_path):
    r = run_kbs(tmp_path, "--version")
    assert r.returncode == 0 and r.stdout.strip() == f"kbs {trustee.VERSION}"
    r = run_kbs(tmp_path)
    assert r.returncode == 2 and "--config-file" in r.stderr


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda t: t.replace("payload_request_size = 2", "payload_request_size = 2\nworkers = 4"),
         "http_server: unknown field `workers`"),  # fmt: skip
        (lambda t: t.replace('authorization_mode = "AuthenticatedAuthorization"', 'type = "Simple"'),
         "admin.authorization_mode: unknown variant"),  # fmt: skip
        (lambda t: t.replace("insecure_header_jwk = false", "insecure_key = false"),
         "attestation_token: unknown field `insecure_key`"),  # fmt: skip
        (lambda t: t.replace('type = "coco_as_builtin"', 'type = "coco_as_grpc"\nas_addr = "http://as:50004"', 1)
         .replace("[attestation_service.attestation_token_broker]\nduration_min = 5\n", "")
         .split("[attestation_service.attestation_token_broker.signer]")[0] + "[admin]" + t.split("[admin]", 1)[1],
         "does not simulate: attestation_service.type 'coco_as_grpc'"),  # fmt: skip
        (lambda t: t + "\n[[plugins]]\nname = \"sample\"\nitem = \"x\"\n", "does not simulate: plugin 'sample'"),
        (lambda t: t.replace("sockets", "socket"), "unknown field `socket`"),
        (lambda t: "this is = not toml ]", "is not TOML"),
    ],
)
def test_config_is_refused_like_the_release_refuses_it(tmp_path, edit, message):
    r = run_kbs(tmp_path, config=edit(base_config(tmp_path)))
    assert r.returncode == 1
    assert r.stderr.strip().splitlines()[-1].startswith("Error: ")
    assert message in r.stderr


def test_missing_key_files_stop_it(tmp_path):
    r = run_kbs(tmp_path, config=base_config(tmp_path))
    assert r.returncode == 1 and "KBS initialization failed" in r.stderr


# ------------------------------------------------------------------ protocol


@pytest.fixture(scope="module")
def kbs(tmp_path_factory):
    running = start_kbs(tmp_path_factory.mktemp("standin"))
    running.client().set_resource_policy(STRICT)
    yield running
    running.stop()


def post(client, path, body, headers=None):
    return client.request("POST", path, json.dumps(body).encode(), {"Content-Type": "application/json", **(headers or {})})


def test_plain_http_to_the_https_port_gets_nothing(kbs):
    import http.client

    port = int(kbs.url.rsplit(":", 1)[1])
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    with pytest.raises((http.client.HTTPException, ConnectionError, OSError)):
        conn.request("GET", "/kbs/v0/resource-policy")
        conn.getresponse().read()
    conn.close()


def test_protocol_version_and_tee_are_checked(kbs):
    c = kbs.client()
    r = post(c, "/kbs/v0/auth", {"version": "0.1.1", "tee": "sample", "extra-params": {}})
    assert r.status == 401 and r.error()[0] == "AttestationError" and "expect =0.4.0" in r.error()[1]
    r = post(c, "/kbs/v0/auth", {"version": KBS_PROTOCOL_VERSION, "tee": "snp", "extra-params": {}})
    assert r.status == 200 and r.headers["set-cookie"].startswith("kbs-session-id=")
    cookie = r.headers["set-cookie"].split(";")[0].split("=", 1)[1]
    challenge = r.json()
    assert set(challenge) == {"nonce", "extra-params"} and len(base64.b64decode(challenge["nonce"])) == 32
    r = post(c, "/kbs/v0/attest", {"runtime-data": {"nonce": challenge["nonce"], "tee-pubkey": {}},
                                   "tee-evidence": {"primary_evidence": {}, "additional_evidence": ""}},
             {"Cookie": f"kbs-session-id={cookie}"})  # fmt: skip
    assert r.status == 401 and "cannot verify snp evidence" in r.error()[1]


def test_sample_evidence_must_bind_the_runtime_data(kbs):
    c = kbs.client()
    r = post(c, "/kbs/v0/auth", {"version": KBS_PROTOCOL_VERSION, "tee": "sample", "extra-params": {}})
    cookie = r.headers["set-cookie"].split(";")[0].split("=", 1)[1]
    nonce = r.json()["nonce"]
    evidence = {"svn": "1", "report_data": base64.b64encode(hashlib.sha384(b"something else").digest()).decode()}
    body = {"runtime-data": {"nonce": nonce, "tee-pubkey": {"kty": "RSA"}},
            "tee-evidence": {"primary_evidence": evidence, "additional_evidence": ""}}  # fmt: skip
    r = post(c, "/kbs/v0/attest", body, {"Cookie": f"kbs-session-id={cookie}"})
    assert r.status == 401 and "Evidence's identity verification error" in r.error()[1]
    body["runtime-data"]["nonce"] = "stale"
    r = post(c, "/kbs/v0/attest", body, {"Cookie": f"kbs-session-id={cookie}"})
    assert "nonce in the handshake session is different" in r.error()[1]


def test_ear_token_is_signed_by_the_site_chain(kbs):
    session = kbs.client().attest_sample()
    header, claims = jose.jwt_unverified(session.token)
    assert header["alg"] == "ES256" and len(header["jwk"]["x5c"]) == 2
    leaf = x509.load_der_x509_certificate(base64.b64decode(header["jwk"]["x5c"][0]))
    assert leaf == x509.load_pem_x509_certificate(kbs.pki.token_chain.read_bytes())
    assert jose.jwt_verify(session.token, leaf.public_key())["eat_profile"].startswith("tag:github.com,2024:")
    cpu = claims["submods"]["cpu0"]
    assert cpu["ear.status"] in ("warning", "affirming")
    assert cpu["ear.veraison.annotated-evidence"]["sample"]["svn"] == "1"
    assert cpu["ear.veraison.annotated-evidence"]["runtime_data_claims"]["tee-pubkey"]["alg"] == "RSA-OAEP-256"


def test_resource_needs_a_token_and_takes_a_bearer_token(kbs, tmp_path):
    c = kbs.client()
    r = c.request("GET", "/kbs/v0/resource/models/llama/key")
    assert r.status == 401 and r.error()[0] == "TokenNotFound"
    token = c.attest_sample().token
    r = c.request("GET", "/kbs/v0/resource/models/llama/key", headers={"Authorization": f"Bearer {token}"})
    assert r.status == 403 and r.error() == ("PolicyDeny", "Access denied by policy")
    r = c.request("GET", "/kbs/v0/resource/models/llama/key", headers={"Authorization": "Bearer a.b.c"})
    assert r.status == 401 and r.error()[0] == "TokenVerifierError"


def test_tokens_from_another_signer_are_not_trusted(kbs, tmp_path):
    other = start_kbs(tmp_path)  # its own site CA
    try:
        foreign = other.client().attest_sample().token
    finally:
        other.stop()
    r = kbs.client().request("GET", "/kbs/v0/resource/models/llama/key", headers={"Authorization": f"Bearer {foreign}"})
    assert r.status == 401 and "JWK cannot be validated by trust anchor" in r.error()[1]


def test_policies_it_cannot_evaluate_are_refused(kbs):
    c = kbs.client()
    body = json.dumps({"policy": jose.b64url(b"package policy\nallow if { input.x }\n")}).encode()
    r = c._admin("POST", "/kbs/v0/resource-policy", body)
    assert r.status == 401 and "not OPA" in r.error()[1]
    assert c.get_resource_policy() == STRICT


def test_unknown_endpoints(kbs):
    c = kbs.client()
    assert c.request("GET", "/kbs/v0/nebula-ca/x").error()[0] == "PluginNotFound"
    assert c.request("GET", "/metrics").status == 404


def test_state_survives_a_restart(tmp_path):
    port = free_port()
    first = start_kbs(tmp_path, port=port)
    client = first.client()
    try:
        client.set_resource_policy(render_resource_policy(PolicySpec("lab-permissive")))
        secret = tmp_path / "s"
        secret.write_bytes(b"persisted")
        client.ensure_resource("models/llama/key", secret, Ledger(tmp_path / "l.json", "i"))
    finally:
        first.stop()
    stored = list(first.storage.rglob("*"))
    assert any(p.name == "models\\x2Fllama\\x2Fkey" for p in stored)
    assert all(p.stat().st_mode & 0o077 == 0 for p in stored)
    second = start_kbs(tmp_path, pki=first.pki, port=port)
    try:
        c = second.client()
        assert c.get_resource(c.attest_sample(), "models/llama/key") == b"persisted"
    finally:
        second.stop()


def test_admin_deny_all(tmp_path):
    import tomli_w

    port = free_port()
    config = tomllib.loads(render_kbs_config(socket=f"127.0.0.1:{port}", insecure_http=False, nvidia_verifier=None,
                                             keys_dir=str(tmp_path / "node" / "etc-trustee-keys"),
                                             storage_dir=str(tmp_path / "storage")))  # fmt: skip
    config["admin"] = {"authorization_mode": "DenyAll"}
    running = start_kbs(tmp_path, config_text=tomli_w.dumps(config), port=port)
    try:
        r = running.client()._admin("GET", "/kbs/v0/resource-policy")
        assert r.status == 401 and "admin APIs are disabled" in r.error()[1]
    finally:
        running.stop()


def test_role_not_in_the_acl_is_refused(kbs):
    from ccfactory.kbs.client import KbsClient

    outsider = KbsClient(kbs.url, ca_cert=kbs.pki.tls_ca_cert, admin_key=kbs.pki.admin_key, role="auditor")
    with pytest.raises(KbsHttpError) as err:
        outsider.get_resource_policy()
    assert err.value.status == 401 and "role not allowed" in err.value.detail
    with pytest.raises(PolicyDenied):
        kbs.client().get_resource(kbs.client().attest_sample(), "models/llama/key")

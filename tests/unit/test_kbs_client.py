"""The KBS admin client against the lab Trustee stand-in on 127.0.0.1 (real HTTPS, real processes).

The stand-in's behaviour is traced to Trustee v0.21.0 in docs/trustee-standin.md; the client's
handling of upstream-shaped and broken answers is in test_kbs_client_upstream.py.
"""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from test_standin_trustee_helpers import start_kbs

from ccfactory.kbs.client import KbsClient, Ledger
from ccfactory.kbs.errors import (
    AdminAuthError,
    HealthCheckFailed,
    KbsError,
    KbsUnreachable,
    PolicyDenied,
    ResourceFileError,
    ResourcePathError,
)
from ccfactory.roles.kbs.operations import AdminSpec, apply_admin_state, check_health, plan_admin_state
from ccfactory.kbs.pki import ensure_pki
from ccfactory.kbs.policy import PolicySpec, render_resource_policy

from trustee_claims import FIXTURES  # noqa: E402

UPSTREAM_CPU_POLICY = (FIXTURES / "ear_default_policy_cpu.rego").read_text()  # trustee@v0.21.0, verbatim
STRICT = render_resource_policy(PolicySpec("strict", cpu_tees=("snp", "tdx"), gpu_paths=("*",)))
PERMISSIVE = render_resource_policy(PolicySpec("lab-permissive"))


@pytest.fixture(scope="module")
def kbs(tmp_path_factory):
    running = start_kbs(tmp_path_factory.mktemp("kbs"))
    yield running
    running.stop()


@pytest.fixture
def ledger(tmp_path):
    return Ledger(tmp_path / "ledger.json", "instance-1")


@pytest.fixture
def client(kbs, ledger):
    c = kbs.client()
    c.set_resource_policy(STRICT, ledger)
    return c


def secret_file(tmp_path, content=b"top secret model key"):
    path = tmp_path / "model.key"
    path.write_bytes(content)
    path.chmod(0o600)
    return path


def test_policy_set_is_idempotent(client, ledger):
    assert client.list_resource_policies() == ["resource-policy"]
    assert client.set_resource_policy(STRICT, ledger) is False
    assert client.set_resource_policy(PERMISSIVE, ledger) is True
    assert client.set_resource_policy(STRICT, ledger) is True


def test_resource_upload_is_idempotent_by_content(client, tmp_path):
    ledger = Ledger(tmp_path / "ledger.json", "instance-1")
    source = secret_file(tmp_path)
    assert client.ensure_resource("models/llama/key", source, ledger) is True
    assert client.ensure_resource("models/llama/key", source, ledger) is False
    assert (tmp_path / "ledger.json").stat().st_mode & 0o777 == 0o600
    assert b"top secret" not in (tmp_path / "ledger.json").read_bytes()
    source.write_bytes(b"rotated model key")
    assert client.ensure_resource("models/llama/key", source, ledger) is True
    # a KBS that lost its storage gets a new instance id: everything is uploaded again
    assert client.ensure_resource("models/llama/key", source, Ledger(tmp_path / "ledger.json", "instance-2")) is True


def test_sample_attestation_is_denied_by_the_strict_policy(client, tmp_path):
    client.ensure_resource("models/llama/key", secret_file(tmp_path), Ledger(tmp_path / "l.json", "i"))
    session = client.attest_sample()
    with pytest.raises(PolicyDenied) as err:
        client.get_resource(session, "models/llama/key")
    assert err.value.status == 401 and err.value.kind == "PolicyDeny" and err.value.detail == "Access denied by policy"
    assert client.negative_health_check() == "sample evidence is denied by the resource policy (401 PolicyDeny)"


def test_affirming_sample_evidence_is_still_denied(client, tmp_path):
    # with the reference values upstream's default_cpu policy checks, sample evidence is
    # appraised affirming: the strict policy still refuses it, because it is not SNP/TDX evidence
    client.ensure_reference_values({"svn": ["1"], "launch_digest": ["abcde"], "major_version": 1,
                                    "minimum_minor_version": 0})  # fmt: skip
    session = client.attest_sample()
    from ccfactory.kbs import jose

    _, claims = jose.jwt_unverified(session.token)
    assert claims["submods"]["cpu0"]["ear.status"] == "affirming"
    with pytest.raises(PolicyDenied):
        client.get_resource(session, "models/llama/key")


def test_allowed_only_with_the_lab_permissive_policy(client, tmp_path, ledger):
    client.ensure_resource("models/llama/key", secret_file(tmp_path, b"the key"), Ledger(tmp_path / "l.json", "i"))
    client.set_resource_policy(PERMISSIVE, ledger)
    try:
        assert client.get_resource(client.attest_sample(), "models/llama/key") == b"the key"
        with pytest.raises(HealthCheckFailed, match="released ccfactory/health/probe|expected a PolicyDeny"):
            client.negative_health_check()
        assert client.negative_health_check(expect_denial=False).startswith("LAB PERMISSIVE")
    finally:
        client.set_resource_policy(STRICT, ledger)


def test_wrong_admin_key_is_rejected(kbs, tmp_path):
    stranger = kbs.client(admin_key=ed25519.Ed25519PrivateKey.generate())
    with pytest.raises(AdminAuthError) as err:
        stranger.set_resource_policy(PERMISSIVE, Ledger(tmp_path / "stranger.json", "i"))
    message = str(err.value)
    assert err.value.status == 401 and err.value.kind == "AdminAuthAccess" and "refused the admin credential" in message
    assert "admin.pub" in message and "admin.key" in message
    # the KBS still holds a policy that denies sample evidence
    assert kbs.client().negative_health_check().endswith("PolicyDeny)")


def test_admin_key_not_matching_the_deployed_public_key(kbs, tmp_path):
    other = ensure_pki(tmp_path / "other-site", site="other", names=["localhost"], kbs_url=kbs.url)
    with pytest.raises(AdminAuthError, match="refused the admin credential"):
        KbsClient(kbs.url, ca_cert=kbs.pki.tls_ca_cert, admin_key=other.admin_key).list_resource_policies()


def test_admin_auth_check(client):
    assert client.check_admin_auth().startswith("admin API accepts the site key and refuses an unknown key (401")


def test_https_is_verified_with_the_site_ca(kbs, tmp_path):
    other = ensure_pki(tmp_path / "other-site", site="other", names=["localhost"], kbs_url=kbs.url)
    with pytest.raises(KbsUnreachable, match="certificate is not trusted"):
        KbsClient(kbs.url, ca_cert=other.tls_ca_cert, admin_key=kbs.pki.admin_key).list_resource_policies()


def test_a_url_the_certificate_does_not_name_is_refused(tmp_path):
    from test_standin_trustee_helpers import free_port

    port = free_port()
    pki = ensure_pki(tmp_path / "pki", site="t", names=["localhost"], kbs_url=f"https://localhost:{port}")
    running = start_kbs(tmp_path, pki=pki, port=port)
    try:
        assert KbsClient(f"https://localhost:{port}", ca_cert=pki.tls_ca_cert).served_certificate()
        with pytest.raises(KbsUnreachable, match="certificate is not trusted.*IP address mismatch"):
            KbsClient(f"https://127.0.0.1:{port}", ca_cert=pki.tls_ca_cert).served_certificate()
    finally:
        running.stop()


def test_served_certificate_is_the_deployed_one(kbs):
    from cryptography import x509

    der = kbs.client().served_certificate()
    assert x509.load_der_x509_certificate(der) == x509.load_pem_x509_certificate(kbs.pki.server_cert.read_bytes())


def test_http_url_refused_outside_the_lab():
    with pytest.raises(KbsError, match="plain HTTP: refused outside the lab"):
        KbsClient("http://kbs-01:8080")
    KbsClient("http://kbs-01:8080", lab=True)  # the lab may


def test_bad_resource_inputs(client, tmp_path):
    ledger = Ledger(tmp_path / "l.json", "i")
    with pytest.raises(ResourceFileError, match="does not exist on the controller; fix kbs_resources"):
        client.ensure_resource("models/llama/key", tmp_path / "missing", ledger)
    with pytest.raises(ResourceFileError, match="cannot be read"):
        client.ensure_resource("models/llama/key", tmp_path, ledger)  # a directory
    with pytest.raises(ResourcePathError, match="breaks the KBS rule"):
        client.ensure_resource("models/llama", secret_file(tmp_path), ledger)


def test_admin_state_plan_apply_and_health(kbs, tmp_path):
    spec = AdminSpec(
        url=kbs.url, ca_cert=str(kbs.pki.tls_ca_cert), admin_key=str(kbs.pki.admin_key),
        server_cert=str(kbs.pki.server_cert), ledger=str(tmp_path / "ledger.json"), instance_file="/n/a", lab=False,
        resource_policy=STRICT, attestation_policy=UPSTREAM_CPU_POLICY, reference_values={"snp_launch_measurement": ["ab"]},
        resources={"apps/web/token": str(secret_file(tmp_path))},
    )  # fmt: skip
    client = spec.client()
    ledger = Ledger(spec.ledger, "inst")
    planned = plan_admin_state(spec, client, ledger)
    assert planned == ["resource policy", "attestation policy default_cpu", "reference value snp_launch_measurement",
                       "resource apps/web/token"]  # fmt: skip
    assert apply_admin_state(spec, client, ledger) == planned
    assert plan_admin_state(spec, client, Ledger(spec.ledger, "inst")) == []
    assert apply_admin_state(spec, client, Ledger(spec.ledger, "inst")) == []
    passed = check_health(spec, client)
    assert passed[0] == "HTTPS with the deployed certificate" and "PolicyDeny" in passed[2]

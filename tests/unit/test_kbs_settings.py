"""KBS stage settings from the inventory: every bad input is refused with the host, key and fix."""

from __future__ import annotations

import inspect
import re

import pytest

from ccfactory.config import KbsConfig, load_node_config
from ccfactory.kbs.errors import KbsSettingsError, ResourcePathError
from ccfactory.kbs.settings import check_resource_path, kbs_settings, server_names


def kbs_cfg(url="https://kbs-01:8443", lab=False):
    """A KBS host's NodeConfig; ``url`` and ``lab`` set directly (the inventory validator
    already refuses http outside the lab: the stage checks again, defence in depth)."""
    cfg = load_node_config("kbs-01", ["kbs"], {}, check_files=False)
    return cfg.model_copy(update={"lab": lab, "kbs": KbsConfig(url=url)})


def problems(cfg, data, **kw) -> str:
    with pytest.raises(KbsSettingsError) as err:
        kbs_settings(cfg, data, **kw)
    return str(err.value)


def test_defaults(tmp_path, monkeypatch):
    monkeypatch.delenv("CCFACTORY_HOME", raising=False)
    s = kbs_settings(kbs_cfg(), {})
    assert (s.scheme, s.port, s.socket, s.insecure_http) == ("https", 8443, "0.0.0.0:8443", False)
    assert str(s.pki_dir).endswith(".ccfactory/sites/kbs-01/pki")
    assert s.resources == {} and not s.lab_permissive and s.nvidia_verifier == "Remote"
    assert kbs_settings(kbs_cfg("https://kbs-01"), {}).port == 443
    monkeypatch.setenv("CCFACTORY_HOME", str(tmp_path))
    assert kbs_settings(kbs_cfg(), {}).pki_dir == tmp_path / "sites" / "kbs-01" / "pki"


def test_resources_are_checked_on_the_controller(tmp_path):
    key = tmp_path / "llama.key"
    key.write_bytes(b"k")
    s = kbs_settings(kbs_cfg(), {"kbs_resources": {"models/llama-3/key": str(key)}})
    assert s.resources == {"models/llama-3/key": key}
    text = problems(kbs_cfg(), {"kbs_resources": {"models/llama/key": str(tmp_path / "missing.key")}})
    assert f"kbs-01: kbs_resources[models/llama/key]: file {tmp_path / 'missing.key'} does not exist on the controller" in text
    text = problems(kbs_cfg(), {"kbs_resources": {"models/llama/key": str(tmp_path)}})
    assert "is not a regular file" in text  # a directory is not a resource file


@pytest.mark.parametrize("path", ["models/key", "models/llama/key/v1", ".hidden/llama/key", "models/ll ama/key",
                                  "/models/llama/key", "models//key", "mo?dels/llama/key"])  # fmt: skip
def test_resource_paths_must_follow_the_kbs_rule(tmp_path, path):
    key = tmp_path / "k"
    key.write_bytes(b"k")
    text = problems(kbs_cfg(), {"kbs_resources": {path: str(key)}})
    assert f"kbs_resources: {path!r} breaks the KBS path rule <repo>/<type>/<tag>" in text
    with pytest.raises(ResourcePathError, match="breaks the KBS rule <repo>/<type>/<tag>"):
        check_resource_path(path)


def test_http_kbs_url_only_in_the_lab():
    text = problems(kbs_cfg("http://kbs-01:8080"), {})
    assert "kbs-01: kbs_url: http://kbs-01:8080 is not https; plain HTTP is only for the lab; fix: use https://" in text
    s = kbs_settings(kbs_cfg("http://kbs-01:8080", lab=True), {})
    assert s.insecure_http and s.port == 8080
    assert "a worker uses http://kbs-01" in problems(kbs_cfg(), {}, fleet_urls=("http://kbs-01:8443",))


def test_the_kbs_host_needs_its_own_url():
    assert "the KBS host needs its own kbs_url" in problems(kbs_cfg(url=None), {})
    assert "has a path" in problems(kbs_cfg("https://kbs-01:8443/kbs"), {})


def test_permissive_policy_is_refused_outside_the_lab():
    text = problems(kbs_cfg(), {"kbs_lab_permissive": True})
    assert "kbs_lab_permissive: a permissive resource policy releases keys without TEE attestation" in text
    assert "refused outside the lab" in text
    assert kbs_settings(kbs_cfg(lab=True), {"kbs_lab_permissive": True}).lab_permissive


def test_policy_and_reference_value_files(tmp_path):
    rv = tmp_path / "rv.toml"
    rv.write_text('snp_launch_measurement = ["aa"]\nallowed_driver_versions = "580.95.05"\n')
    s = kbs_settings(kbs_cfg(), {"kbs_reference_values_file": str(rv), "kbs_reference_values": {"mr_td": ["bb"]}})
    assert s.reference_values == {"snp_launch_measurement": ["aa"], "allowed_driver_versions": ["580.95.05"], "mr_td": ["bb"]}
    bad = tmp_path / "bad.toml"
    bad.write_text("= broken")
    assert "kbs_reference_values_file" in problems(kbs_cfg(), {"kbs_reference_values_file": str(bad)})
    assert "or a non-empty list of them" in problems(kbs_cfg(), {"kbs_reference_values": {"x": []}})
    assert "kbs_policy_file: file" in problems(kbs_cfg(), {"kbs_policy_file": str(tmp_path / "nope.rego")})


def test_reference_values_take_the_shape_the_attestation_policy_compares(tmp_path):
    """`in` names become lists, `==` names stay one value (a one-item list is unwrapped): the
    default policy's strict configuration checks compare scalars (ear_default_policy_cpu.rego:128-133)."""
    given = {"snp_smt_enabled": True, "snp_guest_abi_minor": [31], "snp_launch_measurement": "ab" * 48,
             "snp_microcode": 115}  # fmt: skip
    s = kbs_settings(kbs_cfg(), {"kbs_reference_values": given})
    assert s.reference_values == {"snp_smt_enabled": True, "snp_guest_abi_minor": 31,
                                  "snp_launch_measurement": ["ab" * 48], "snp_microcode": [115]}  # fmt: skip
    said = problems(kbs_cfg(), {"kbs_reference_values": {"snp_smt_enabled": [True, False]}})
    assert "snp_smt_enabled: the attestation policy compares it with `==`, so it takes one value, not 2" in said
    # the operator's own attestation policy decides the shapes
    policy = tmp_path / "cpu.rego"
    policy.write_text('package policy\nimport rego.v1\nok if input.snp.platform_smt_enabled in query_reference_value("snp_smt_enabled")\n')
    s = kbs_settings(kbs_cfg(), {"kbs_reference_values": {"snp_smt_enabled": True}, "kbs_attestation_policy_file": str(policy)})
    assert s.reference_values == {"snp_smt_enabled": [True]}


@pytest.mark.parametrize(
    "name, content, said",
    [
        ("rv.json", b'["aa", "bb"]', "must be a JSON table of name = [values], not a list"),
        ("rv.json", b"\xff\xfe not text", "not valid JSON"),
        ("rv.toml", b"\xff\xfe = 1", "not valid TOML"),
    ],
)
def test_reference_value_files_of_the_wrong_shape_are_refused_by_name(tmp_path, name, content, said):
    rv = tmp_path / name
    rv.write_bytes(content)
    text = problems(kbs_cfg(), {"kbs_reference_values_file": str(rv)})
    assert "kbs_reference_values_file" in text and said in text, text
    # and through inventory validation: a problem of the host, not a crash
    from ccfactory.config import InventoryError

    with pytest.raises(InventoryError, match="kbs_reference_values_file"):
        load_node_config("kbs-01", ["kbs"], {"kbs_url": "https://kbs-01:8443", "kbs_reference_values_file": str(rv)})


def test_operator_pki_paths_are_checked(tmp_path):
    text = problems(kbs_cfg(), {"kbs_tls_cert_file": str(tmp_path / "c.pem"), "kbs_admin_key_file": str(tmp_path / "a")})
    assert "kbs_tls_cert_file: file" in text and "kbs_admin_key_file: file" in text
    key = tmp_path / "ca.key"
    key.write_text("x")
    assert "kbs_ca_key_file: set without kbs_ca_cert" in problems(kbs_cfg(), {"kbs_ca_key_file": str(key)})


def test_every_problem_at_once():
    text = problems(kbs_cfg("http://kbs-01"), {"kbs_lab_permissive": True, "kbs_nvidia_verifier": "Cloud"})
    assert text.count("\n  - ") == 3


def test_every_kbs_key_is_declared_once_with_its_meaning_in_the_stages_options():
    """roles/kbs/options.py is the one declaration: each key the settings read has a meaning there,
    and HostData (what inventories are validated against) takes them from it."""
    from ccfactory.config import HostData
    from ccfactory.roles.kbs.options import KbsOptions

    read = set(re.findall(r'get\("(kbs_[a-z_]+)"', inspect.getsource(kbs_settings)))
    assert read and read <= set(KbsOptions.model_fields) | {"kbs_url", "kbs_ca_cert"}
    assert all(KbsOptions.model_fields[k].description for k in KbsOptions.model_fields)
    mine, flat = KbsOptions.model_fields, HostData.model_fields
    assert all((flat[k].description, flat[k].default) == (mine[k].description, mine[k].default) for k in mine)


def test_server_names():
    assert server_names("kbs-01", {"ssh_hostname": "10.0.0.5"}) == ["kbs-01", "10.0.0.5"]
    assert server_names("10.199.0.13", {}) == ["10.199.0.13"]


def test_tdx_first_use_files_must_be_readable(tmp_path):
    token = tmp_path / "w2.jwt"
    token.write_text("a.b.c")
    s = kbs_settings(kbs_cfg(), {"kbs_tdx_first_use": {"w2": str(token)}})
    assert s.tdx_first_use == {"w2": str(token)}
    said = problems(kbs_cfg(), {"kbs_tdx_first_use": {"w3": str(tmp_path / "missing.jwt")}})
    assert "kbs_tdx_first_use[w3]: file" in said and "does not exist on the controller" in said

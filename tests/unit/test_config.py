"""Host data validation: every bad input gives a clear error naming host, field and fix."""

from __future__ import annotations

import pytest

from ccfactory.config import InventoryError, load_fleet, load_node_config

WORKER = ("workers", "snp", "gpu")
GOOD = {
    "bmc_vendor": "dell",
    "bmc_address": "10.0.0.5",
    "bmc_username": "root",
    "bmc_password_env": "BMC_PASSWORD_W1",
    "gpu_count": 8,
    "gpu_model": "H100",
}


def problems(data, groups=WORKER, host="w1"):
    with pytest.raises(InventoryError) as info:
        load_node_config(host, groups, data, check_files=False)
    return [str(p) for p in info.value.problems]


def test_good_worker_config():
    cfg = load_node_config("w1", WORKER, GOOD, check_files=False)
    assert cfg.tee == "snp"
    assert cfg.is_worker and not cfg.is_kbs
    assert cfg.gpu.count == 8 and cfg.gpu.cc_mode == "on"
    assert cfg.bmc is not None and cfg.bmc.base_url == "https://10.0.0.5:443"
    assert cfg.bmc.verify_tls is True
    assert cfg.reboot.timeout == 1800


@pytest.mark.parametrize(
    "data, graceful",
    [({}, 300), ({"reboot_timeout": 120}, 60), ({"reboot_timeout": 120, "reboot_graceful_timeout": 90}, 90)],
)
def test_graceful_reboot_grace_defaults_below_the_reboot_timeout(data, graceful):
    cfg = load_node_config("w1", WORKER, {**GOOD, **data}, check_files=False)
    assert cfg.reboot.graceful_timeout == graceful < cfg.reboot.timeout


def test_config_is_frozen():
    cfg = load_node_config("w1", WORKER, GOOD, check_files=False)
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="frozen"):
        cfg.tee = "tdx"  # type: ignore[misc]


def test_connector_and_global_keys_are_pyinfra_s():
    cfg = load_node_config("w1", WORKER, {**GOOD, "ssh_user": "root", "ssh_port": 22, "_sudo": True}, check_files=False)
    assert cfg.name == "w1"


@pytest.mark.parametrize(
    ("data", "groups", "expected"),
    [
        ({**GOOD, "bmc_adress": "x"}, WORKER, "w1: bmc_adress: unknown key; fix: did you mean 'bmc_address'?"),
        ({**GOOD, "colour": "red"}, WORKER, "w1: colour: unknown key"),
        ({**GOOD, "gpu_count": "eight"}, WORKER, "w1: gpu_count: Input should be a valid integer"),
        ({**GOOD, "bmc_port": 70000}, WORKER, "w1: bmc_port: Input should be less than or equal to 65535"),
        ({**GOOD, "bmc_password": "hunter2"}, WORKER, "w1: bmc_password: a literal secret is not allowed"),
        ({**GOOD, "kbs_admin_private_key": "-----BEGIN"}, WORKER, "kbs_admin_private_key: a literal secret"),
        ({**GOOD, "tee": "tdx"}, WORKER, "w1: tee: tee is 'tdx' but the host is in group 'snp'"),
        ({**GOOD, "tee": "sgx"}, WORKER, "w1: tee: Input should be 'snp', 'tdx' or 'none'"),
        (GOOD, ("workers", "snp", "tdx", "gpu"), "w1: tee: host is in both the snp and tdx groups"),
        ({**GOOD, "tee": "none"}, ("workers",), "w1: tee: a worker needs a TEE"),
        ({**GOOD, "gpu_cc_mode": "ppcie", "gpu_model": "B200"}, WORKER, "ppcie needs an HGX Hopper GPU; B200"),
        ({**GOOD, "gpu_cc_mode": "ppcie", "gpu_count": 1}, WORKER, "gpu_cc_mode: ppcie protects multi-GPU"),
        ({**GOOD, "gpu_cc_mode": "full"}, WORKER, "w1: gpu_cc_mode: Input should be 'on', 'devtools', 'off' or 'ppcie'"),
        ({**GOOD, "gpu_model": "A100"}, WORKER, "w1: gpu_model: unknown GPU model 'A100'; fix: use one of H100"),
        ({**GOOD, "gpu_count": 0}, WORKER, "w1: gpu_count: host is in group gpu but gpu_count is 0"),
        ({**GOOD, "gpu_model": None}, WORKER, "w1: gpu_model: gpu_count is set but gpu_model is not"),
        ({**GOOD, "bmc_vendor": "acme"}, WORKER, "w1: bmc_vendor: unknown vendor 'acme'"),
        ({**GOOD, "bmc_vendor": None}, WORKER, "w1: bmc_vendor: missing while bmc_address is set"),
        ({**GOOD, "bmc_password_env": None}, WORKER, "w1: bmc_password_env: no BMC password reference"),
        ({**GOOD, "bmc_password_env": "s3cr3t pass!"}, WORKER, "bmc_password_env: is not an environment variable name"),
        ({**GOOD, "bmc_password_file": "/x"}, WORKER, "both bmc_password_env and bmc_password_file are set"),
        ({**GOOD, "bmc_address": "https://10.0.0.5/redfish"}, WORKER, "w1: bmc_address: not a host name or IP"),
        ({**GOOD, "bmc_verify_tls": False}, WORKER, "TLS verification may only be turned off in the lab"),
        ({**GOOD, "kbs_url": "http://kbs:8080"}, WORKER, "w1: kbs_url: must use https; fix: plain http is only for the lab"),
        ({**GOOD, "kbs_url": "kbs:8080"}, WORKER, "w1: kbs_url: not an http(s) URL with a host"),
        ({**GOOD, "kbs_url": "https://kbs:99999"}, WORKER, "w1: kbs_url: not a valid URL"),
        ({**GOOD, "artifact_source": "mirror"}, WORKER, "artifact_mirror_url: artifact_source is mirror but no URL"),
        ({**GOOD, "artifact_source": "local"}, WORKER, "w1: artifact_dir: artifact_source is local but no directory"),
        ({**GOOD, "artifact_source": "ftp"}, WORKER, "w1: artifact_source: Input should be 'upstream', 'mirror' or 'local'"),
        ({**GOOD, "reboot_timeout": 5}, WORKER, "w1: reboot_timeout: Input should be greater than or equal to 30"),
        ({**GOOD, "reboot_batch_size": 0}, WORKER, "w1: reboot_batch_size: Input should be greater than or equal to 1"),
        ({**GOOD, "reboot_timeout": 600, "reboot_graceful_timeout": 600}, WORKER,
         "w1: reboot_graceful_timeout: 600s is not below reboot_timeout (600s)"),
        ({**GOOD, "reboot_graceful_timeout": 5}, WORKER,
         "w1: reboot_graceful_timeout: 5s is too short: a host still stopping its services would be reset hard"),
        ({**GOOD, "lab": True}, WORKER, "w1: lab: lab is true but lab_dir is not set"),
        ({"tee": "none", "gpu_count": 2, "gpu_model": "H100"}, ("kbs",), "GPU CC mode needs a CPU TEE"),
        ({"bmc_password_file": "/etc/x"}, ("kbs",), "a BMC password reference is set but no bmc_address"),
    ],
)
def test_bad_host_data_is_named(data, groups, expected):
    found = problems(data, groups)
    assert any(expected in p for p in found), found


def test_every_problem_reported_at_once():
    found = problems({**GOOD, "bmc_password": "x", "tee": "tdx", "gpu_model": "A100", "colour": 1})
    fields = {p.split(": ")[1] for p in found}
    assert {"bmc_password", "colour"} <= fields  # structural errors stop before cross-field checks


def test_secret_never_echoed_in_error():
    with pytest.raises(InventoryError) as info:
        load_node_config("w1", WORKER, {**GOOD, "bmc_password": "hunter2-secret"}, check_files=False)
    assert "hunter2-secret" not in str(info.value)


def test_lab_flag_needs_running_lab(tmp_path, live_lab):
    live_lab(tmp_path, {"node1": "10.199.0.11"})
    lab = {"tee": "none", "lab": True, "lab_dir": str(tmp_path)}
    assert load_node_config("10.199.0.11", ("kbs",), lab, check_files=False).lab
    assert load_node_config("node1", ("kbs",), {**lab, "ssh_hostname": "10.199.0.11"}, check_files=False).lab
    found = problems(lab, ("kbs",), host="prod-7")
    assert any("has no node prod-7" in p for p in found)
    # a lab.json the stood-in lab does not know changes nothing: another directory has no lab
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "lab.json").write_text('{"nodes": {"node1": {"address": "10.199.0.11"}}}')
    other = {**lab, "lab_dir": str(tmp_path / "other")}
    assert any("holds no running lab" in p for p in problems(other, ("kbs",), host="10.199.0.11"))


def test_lab_allows_plain_http_kbs(tmp_path, live_lab):
    live_lab(tmp_path, {"node1": "10.199.0.11", "node3": "10.199.0.13"})
    data = {"tee": "none", "lab": True, "lab_dir": str(tmp_path), "kbs_url": "http://10.199.0.13:8080"}
    cfg = load_node_config("10.199.0.11", ("kbs",), data, check_files=False)
    assert cfg.kbs.url.startswith("http://")
    # the same data for a host outside the lab is refused, http and all
    found = problems({**data, "lab": False}, ("kbs",), host="10.199.0.11")
    assert any("kbs_url: must use https" in p for p in found), found


def test_controller_files_must_exist(tmp_path):
    data = {**GOOD, "bmc_ca_bundle": str(tmp_path / "missing.pem")}
    with pytest.raises(InventoryError) as info:
        load_node_config("w1", WORKER, data)
    assert "bmc_ca_bundle: file" in str(info.value)


def test_fleet_lists_problems_of_all_hosts_and_shared_bmc():
    hosts = [
        ("w1", WORKER, GOOD),
        ("w2", WORKER, {**GOOD, "bmc_password_env": "BMC_W2"}),  # same BMC address as w1
        ("w3", WORKER, {**GOOD, "gpu_count": -1}),
    ]
    with pytest.raises(InventoryError) as info:
        load_fleet(hosts, check_files=False)
    text = str(info.value)
    assert "w2: bmc_address: same BMC as host w1" in text
    assert "w3: gpu_count" in text
    assert "no host was touched" in text


def test_secret_ref_reveal_and_problem(tmp_path, monkeypatch):
    from ccfactory.config import SecretRef

    monkeypatch.setenv("CCF_TEST_SECRET", "s3")
    assert SecretRef(env="CCF_TEST_SECRET").reveal() == "s3"
    assert SecretRef(env="CCF_TEST_UNSET_VAR").problem() == "environment variable CCF_TEST_UNSET_VAR is not set or empty"
    path = tmp_path / "pw"
    path.write_text("pw-from-file\n")
    path.chmod(0o600)
    assert SecretRef(file=str(path)).reveal() == "pw-from-file"
    assert SecretRef(file=str(path)).problem() is None
    assert "does not exist" in SecretRef(file=str(tmp_path / "nope")).problem()
    # a secret file must be private: 0600 or stricter, a regular file, not a symlink
    path.chmod(0o640)
    assert "has mode 0640" in SecretRef(file=str(path)).problem()
    with pytest.raises(ValueError, match="0600 or stricter"):
        SecretRef(file=str(path)).reveal()
    path.chmod(0o600)
    link = tmp_path / "pw-link"
    link.symlink_to(path)
    assert "symbolic link" in SecretRef(file=str(link)).problem()
    with pytest.raises(ValueError, match="symbolic link"):
        SecretRef(file=str(link)).reveal()


def test_cross_field_checks_run_beside_type_errors():
    found = problems({**GOOD, "gpu_count": "2", "gpu_model": "B200", "gpu_cc_mode": "ppcie", "bmc_port": "x"})
    assert any("bmc_port" in p for p in found)
    assert any("ppcie needs an HGX Hopper GPU" in p for p in found)


def test_fleet_needs_one_reboot_batch_size():
    hosts = [("w1", WORKER, GOOD), ("w2", WORKER, {**GOOD, "bmc_address": "10.0.0.6", "reboot_batch_size": 4})]
    with pytest.raises(InventoryError, match="w2: reboot_batch_size: 4 differs from 1 on w1"):
        load_fleet(hosts, check_files=False)


def test_every_runtime_option_reaches_the_runtime_config():
    from ccfactory.config import HostData, RuntimeConfig

    keys = {k for k in HostData.model_fields if k.startswith("runtime_")} | {"template_overlay_dirs", "coco_resource_uris"}
    assert {k.removeprefix("runtime_") for k in keys} == set(RuntimeConfig.model_fields)
    cfg = load_node_config(
        "w1", WORKER,
        {**GOOD, "runtime_kata_memory": 4096, "runtime_shims": ["qemu-snp"], "coco_resource_uris": ["kbs:///a/b/c"]},
        check_files=False,
    )
    assert (cfg.runtime.kata_memory, cfg.runtime.shims, cfg.runtime.coco_resource_uris) == (4096, ("qemu-snp",), ("kbs:///a/b/c",))
    assert cfg.runtime.kata_gpu_memory == HostData.model_fields["runtime_kata_gpu_memory"].default


@pytest.mark.parametrize("address", ["fd00::5", "2001:db8::7", "10.0.0.5", "node1.example.net", "bücher.example"])
def test_ssh_hostname_takes_names_and_bare_ip_addresses(address):
    assert load_node_config("w1", WORKER, {**GOOD, "ssh_hostname": address}, check_files=False).name == "w1"


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("[fd00::5]", "w1: ssh_hostname: an IPv6 address in brackets: SSH takes it bare; fix: use fd00::5"),
        ("fd00::5%eth0", "w1: ssh_hostname: not a host name or IP address (IPv6 zone indexes are not supported)"),
        ("ssh://node1", "w1: ssh_hostname: not a host name or IP address (it looks like a URL)"),
        (22, "w1: ssh_hostname: is not a string (int)"),
    ],
)
def test_ssh_hostname_refusals_name_the_fix(address, expected):
    found = problems({**GOOD, "ssh_hostname": address})
    assert any(p.startswith(expected) and "; fix: " in p for p in found), found

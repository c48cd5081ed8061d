"""Bad input to the firmware role becomes a clear failure of that host alone (in-process lab BMCs):
an attribute the BMC does not have, a read-only attribute after its prerequisite stage, a value
outside the registry's list or bounds, wrong credentials, an untrusted certificate, an unknown
vendor. Messages name the BMC and the fix and never carry the password."""

from __future__ import annotations

import json
import textwrap

import pytest
from firmware_harness import Harness

from ccfactory import cli
from ccfactory.config import InventoryError, load_node_config
from ccfactory.lab.bmc.pki import ensure_lab_ca


@pytest.fixture
def harness(tmp_path, monkeypatch):
    h = Harness(tmp_path, monkeypatch)
    yield h
    h.close()


def write_profile(directory, stages: str):
    """An OEM ``dell.toml`` (shadows the packaged one) with the given [snp] stages."""
    directory.mkdir(exist_ok=True)
    (directory / "dell.toml").write_text('vendor = "dell"\n[snp]\n' + textwrap.dedent(stages))
    return str(directory)


def test_attribute_the_bmc_does_not_have_names_bmc_setting_candidates_and_suggestions(harness, tmp_path):
    node = harness.add("node1", "dell", "snp")
    other = harness.add("node2", "hpe", "snp")
    profiles = write_profile(
        tmp_path / "oem",
        """
        [[snp.stages]]
        name = "sme"
        [snp.stages.settings.smee]
        names = ["Smee", "SmeEnable"]
        value = "Enabled"
        source = "test"
        """,
    )
    result = harness.run(data={"bios_profile_dirs": [profiles]})
    assert result.failed == {"node1"}
    text = result.host_log("node1")
    assert f"(BMC {node.url})" in text
    assert "BIOS setting 'smee'" in text and "tried names Smee, SmeEnable" in text
    assert "closest on this BMC: Sme" in text
    assert node.writes() == []  # nothing written, no reboot
    assert other.tee_on()  # the other host converged


def test_read_only_attribute_after_its_prerequisite_stage_fails_without_a_loop(harness, tmp_path):
    # wrong order: Rmp stays read-only until Snp is applied, but this profile asks for it first
    node = harness.add("node1", "dell", "snp")
    profiles = write_profile(
        tmp_path / "oem",
        """
        [[snp.stages]]
        name = "sme"
        [snp.stages.settings.smee]
        names = ["Sme"]
        value = "Enabled"
        source = "test"
        [[snp.stages]]
        name = "rmp"
        [snp.stages.settings.snp_rmp_coverage]
        names = ["Rmp"]
        value = "Enabled"
        source = "test"
        [[snp.stages]]
        name = "snp"
        [snp.stages.settings.snp]
        names = ["Snp"]
        value = "Enabled"
        source = "test"
        """,
    )
    result = harness.run(data={"bios_profile_dirs": [profiles]})
    assert result.failed == {"node1"}
    text = result.host_log("node1")
    # the hinted order puts Rmp before Snp, but Rmp is read-only until Snp is applied: no
    # schedule exists, and the plan says so before anything is written
    assert "[setting 'snp_rmp_coverage'] cannot be set to 'Enabled' after pass(es) 1-1: read-only while" in text
    assert node.patches() == 0 and node.resets() == 0


@pytest.mark.parametrize(
    ("overrides", "expected", "patches"),
    [
        ({"tsme": "Maybe"}, "[setting 'tsme']: value 'Maybe' is not one the BMC allows; allowed: Enabled, Disabled", 0),
        ({"min_sev_asid": 600}, "[setting 'min_sev_asid']: value 600 is outside 1..510", 0),
    ],
)
def test_value_outside_the_registry_is_refused_before_it_is_written(harness, overrides, expected, patches):
    node = harness.add("node1", "dell", "snp")
    result = harness.run(data={"bios_overrides": overrides})
    assert result.failed == {"node1"}
    assert expected in result.log
    assert "fix: correct the value in bios_overrides or the profile" in result.log
    assert node.patches() == patches  # the stage with the bad value is never patched


def test_wrong_password_is_a_clear_failure_without_any_secret(harness, tmp_path):
    node = harness.add("node1", "lenovo", "snp")
    good = harness.add("node2", "generic", "snp")
    wrong = "Wr0ng-pw-never-shown"
    bad_file = tmp_path / "wrong.password"
    bad_file.write_text(wrong + "\n")
    bad_file.chmod(0o600)
    node.data["bmc_password_file"] = str(bad_file)
    result = harness.run()
    assert result.failed == {"node1"}
    text = result.host_log("node1")
    assert f"the BMC refused the credentials of user '{node.bmc.username}' (HTTP 401)" in text
    assert f"fix: check bmc_username and the password in file {bad_file}" in text
    for secret in (wrong, node.bmc.password, good.bmc.password):
        assert secret not in result.log
    assert good.tee_on() and node.writes() == []


def test_tls_verified_against_the_bmc_ca_and_an_untrusted_certificate_fails_clearly(harness, tmp_path):
    trusted = harness.add("node1", "supermicro", "snp", tls=True)
    untrusted = harness.add("node2", "generic", "snp", tls=True)
    untrusted.data["bmc_ca_bundle"] = str(ensure_lab_ca(tmp_path / "other-ca"))
    result = harness.run()
    assert result.failed == {"node2"}
    assert trusted.tee_on()
    text = result.host_log("node2")
    assert "TLS failure on GET /redfish/v1/" in text
    assert "fix: give the BMC's CA in bmc_ca_bundle (TLS verification stays on)" in text
    assert untrusted.bmc.password not in result.log


def test_unknown_vendor_is_refused_before_any_connection():
    with pytest.raises(InventoryError) as err:
        load_node_config(
            "gpu-01",
            ["workers", "snp"],
            {"bmc_vendor": "acme", "bmc_address": "10.0.0.5", "bmc_username": "root", "bmc_password_env": "BMC_PW"},
        )
    assert "bmc_vendor: unknown vendor 'acme'" in str(err.value)
    assert "add <vendor>.toml to bios_profile_dirs" in str(err.value)


def _inventory(tmp_path, harness, **extra) -> str:
    hosts = []
    for name, node in harness.nodes.items():
        data = {**{k: v for k, v in node.data.items() if not k.startswith("fake_")}, **extra}
        hosts.append(f"    ({name!r}, {data!r}),")
    path = tmp_path / "fw_inventory.py"
    tees = {t: [n for n, node in harness.nodes.items() if node.tee == t] for t in ("snp", "tdx")}
    path.write_text(
        "workers = [\n" + "\n".join(hosts) + "\n]\n" + "".join(f"{t} = {names!r}\n" for t, names in tees.items())
    )
    return str(path)


def test_cli_plan_prints_the_diff_and_writes_nothing(harness, tmp_path, capsys):
    node = harness.add("node1", "dell", "snp")
    done = harness.add("node2", "hpe", "snp")
    assert harness.run(hosts=["node2"]).failed == set()
    writes = len(done.writes())
    assert cli.main(["firmware", "plan", _inventory(tmp_path, harness)]) == 0
    out = capsys.readouterr().out
    assert "node1 (BMC " in out and "pass 1/3 'sme': patch and reboot" in out
    assert "to compliance: 3 reboot(s)" in out
    assert "compliant, every BIOS setting applied; no reboot" in out
    assert "2 host(s) planned, 3 reboot(s) to compliance" in out
    assert node.writes() == [] and len(done.writes()) == writes
    assert cli.main(["firmware", "plan", _inventory(tmp_path, harness), "--json", "--limit", "node1"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert list(data) == ["node1"]
    assert data["node1"]["stage"] == "sme" and data["node1"]["expected_reboots"] == 3
    assert data["node1"]["patch"] == {"Sme": "Enabled"} and data["node1"]["requests"] > 0


def test_cli_plan_reports_a_bad_password_per_host(harness, tmp_path, capsys):
    node = harness.add("node1", "dell", "snp")
    bad = tmp_path / "bad.password"
    bad.write_text("nope-not-it\n")
    bad.chmod(0o600)
    assert cli.main(["firmware", "plan", _inventory(tmp_path, harness, bmc_password_file=str(bad))]) == 1
    out = capsys.readouterr().out
    assert "node1: ERROR: " in out and "HTTP 401" in out and "nope-not-it" not in out
    assert node.bmc.password not in out
    # nothing was planned: the summary says so (it said "1 host(s) planned ... 1 failed")
    assert "0 host(s) planned, 0 reboot(s) to compliance, 1 failed" in out


def test_cli_plan_refuses_an_invalid_inventory(tmp_path, capsys):
    path = tmp_path / "bad.py"
    path.write_text(
        "workers = [('gpu-01', {'bmc_vendor': 'acme', 'bmc_address': '10.0.0.5', "
        "'bmc_username': 'root', 'bmc_password_env': 'BMC_PW'})]\nsnp = ['gpu-01']\n"
    )
    assert cli.main(["firmware", "plan", str(path)]) == 2
    assert "unknown vendor 'acme'" in capsys.readouterr().err

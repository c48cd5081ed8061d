"""What the firmware role adds to the planner and the client: one-shots deferred until their
trigger is applied and fired in a follow-up pass, the dry run's reboot forecast, the BMC's
settings result, and the per-host figures."""

from __future__ import annotations

import pytest

from ccfactory.clients.redfish import BiosSnapshot
from ccfactory.firmware import PlanError, bios_profile_for, plan_firmware, render_plan, resolve_settings
from ccfactory.firmware.driver import RunReport
from ccfactory.roles.firmware.operations import judge_tee, passes_needed
from ccfactory.parsers.tee import parse_tee_sections
from test_firmware_plan import HPE_BIOS, HPE_REGISTRY, HPE_STAGE1, greyed_until_sgx

HPE_STAGE2 = {**HPE_STAGE1, "MkTme": "Enabled", "SgxEnable": "Enabled", "SgxFactoryReset": "Disabled"}


def plan(current, pending=None, registry=None, due=()):
    profile = bios_profile_for("hpe", "tdx")
    registry = registry or HPE_REGISTRY
    resolved = resolve_settings(profile, registry, current, bmc="dl380a")
    return plan_firmware(profile, resolved, current, pending or {}, registry, due)


def test_a_locked_one_shot_is_deferred_to_the_next_pass():
    p = plan(HPE_STAGE1, registry=greyed_until_sgx(HPE_REGISTRY))
    assert p.stage == "sgx" and dict(p.patch) == {"MkTme": "Enabled", "SgxEnable": "Enabled"}
    assert p.deferred_one_shots == ("sgx_factory_reset",)
    assert any("it is sent once sgx is applied, with the next pass" in w for w in p.warnings)
    # the one-shot joins the pass that TdxEnable needs anyway: no reboot of its own
    assert p.passes == (("tme_mt", "sgx"), ("tdx", "seam_loader", "sgx_factory_reset"))
    assert p.expected_reboots() == 2


def test_a_due_one_shot_is_sent_with_the_next_pass_once_its_trigger_is_applied():
    registry = greyed_until_sgx(HPE_REGISTRY)
    p = plan(HPE_STAGE2, registry=registry, due={"sgx_factory_reset"})
    assert p.firing == ("sgx_factory_reset",)
    assert dict(p.patch) == {"TdxEnable": "Enabled", "TdxSeamldrEnable": "Enabled", "SgxFactoryReset": "Enabled"}
    # without the run's memory it never fires again
    assert "SgxFactoryReset" not in plan(HPE_STAGE2, registry=registry).patch
    # already pending (a re-run after the PATCH): not patched again, still a reboot
    p = plan(HPE_STAGE2, {"SgxFactoryReset": "Enabled"}, registry, due={"sgx_factory_reset"})
    assert "SgxFactoryReset" not in p.patch and p.reboot


def test_a_due_one_shot_whose_trigger_was_reverted_waits_for_it_again():
    registry = greyed_until_sgx(HPE_REGISTRY)
    p = plan({**HPE_STAGE2, "SgxEnable": "Disabled", "MkTme": "Enabled"}, registry=registry, due={"sgx_factory_reset"})
    assert "SgxFactoryReset" not in p.patch and p.patch["SgxEnable"] == "Enabled"
    assert "sgx_factory_reset" in p.passes[1]


def test_an_override_that_keeps_a_prerequisite_off_names_it_before_any_write():
    registry = greyed_until_sgx(HPE_REGISTRY)
    profile = bios_profile_for("hpe", "tdx", overrides={"sgx": "Disabled"})
    state = {**HPE_STAGE2, "SgxEnable": "Disabled"}
    resolved = resolve_settings(profile, registry, state, bmc="dl380a")
    with pytest.raises(PlanError, match=r"TdxEnable \"Trust Domain Extension \(TDX\)\" \(ServerSecurity > "
                       r"IntelSecurityOptions\) \[setting 'tdx'\] cannot be set to 'Enabled'.*greyed out while SgxEnable"
                       r".*fix: the profile's own 'sgx' \(SgxEnable\) cannot take a value that lifts the rule"):
        plan_firmware(profile, resolved, state, {}, registry, {"sgx_factory_reset"})


def test_due_names_must_be_one_shots():
    with pytest.raises(ValueError, match="not one-shot settings"):
        plan(HPE_STAGE1, due={"sgx"})


def test_the_forecast_is_the_computed_passes():
    p = plan(HPE_BIOS)
    assert p.unapplied == ("tme", "sgx", "tdx") and p.expected_reboots() == 3
    assert "to compliance: 3 reboot(s) (passes tme, sgx, tdx; computed from the BMC's registry)" in render_plan(p)
    p = plan(HPE_BIOS, registry=greyed_until_sgx(HPE_REGISTRY))
    assert p.expected_reboots() == 3 and p.passes[-1][-1] == "sgx_factory_reset"
    done = plan({**HPE_STAGE2, "TdxEnable": "Enabled", "TdxSeamldrEnable": "Enabled"})
    assert done.compliant and done.expected_reboots() == 0 and done.to_dict()["expected_reboots"] == 0


def test_passes_needed_bounds_the_passes():
    assert passes_needed(bios_profile_for("hpe", "tdx")) == 9
    assert passes_needed(bios_profile_for("hpe", "snp")) == 5


def test_settings_result_messages_other_than_success_are_reported():
    snap = BiosSnapshot(
        attributes={},
        pending={},
        registry=None,
        bios_path="/b",
        settings_path="/b/s",
        etag=None,
        settings_messages=(
            {"MessageId": "Base.1.0.Success", "Message": "Successfully Completed Request", "Severity": "OK"},
            {
                "MessageId": "Base.1.0.SettingsFailed",
                "Message": "Settings update failed.",
                "RelatedProperties": ["#/Attributes/Snp"],
            },
        ),
    )
    assert snap.failed_messages() == ("Base.1.0.SettingsFailed: Settings update failed. (#/Attributes/Snp)",)


def test_run_report_summary_is_one_parseable_line():
    r = RunReport(started=100.0)
    r.stages += ["tme", "sgx", "sgx one-shot"]
    r.stage_seconds += [10.0, 11.5, 9.0]
    r.reboots = 3
    assert r.summary(87, now=131.0) == (
        "ccfactory firmware: 2 stage(s) + 1 one-shot pass(es) applied (tme, sgx, sgx one-shot), 3 reboot(s), "
        "87 Redfish request(s), 31.0 s; passes 30.5 s: tme 10.0s, sgx 11.5s, sgx one-shot 9.0s"
    )
    assert RunReport(started=0.0).summary(9, now=0.5) == (
        "ccfactory firmware: 0 stage(s) applied, 0 reboot(s), 9 Redfish request(s), 0.5 s"
    )


def test_tee_verdict_splits_bios_causes_from_kernel_ones():
    tdx_bios_on_kvm_off = parse_tee_sections(
        {
            "cpuflags": ("flags : fpu vmx tdx_host_platform",),
            "modules": ("kvm_intel 409600 0 - Live 0x0",),
            "params": ("/sys/module/kvm_intel/parameters/tdx=N",),
            "dmesg-source": ("/var/log/ccfactory-lab/dmesg",),
            "dmesg": ("[0.6] virt/tdx: BIOS enabled: private KeyID range [64, 128)",),
        }
    )
    v = judge_tee(tdx_bios_on_kvm_off, "tdx", ["tdx_keyids"])
    assert not v.active and v.bios_failed == () and v.bios_ok == ("tdx_keyids",)
    assert "kvm_intel_tdx" in {c.name for c in v.others}
    off = parse_tee_sections({"cpuflags": ("flags : fpu",), "dmesg-source": ("dmesg",), "dmesg": ("[0.1] x",)})
    v = judge_tee(off, "snp", ["cpu_sev_snp", "rmp_table", "sev_es_asids"])
    assert [c.name for c in v.bios_failed][:1] == ["cpu_sev_snp"]

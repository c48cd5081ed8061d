"""Lab BMC fault switches (Flask test client): 5xx bursts, slow responses, a failing config
job, a reset that never completes, a BIOS value that reverts after reset."""

from __future__ import annotations

import time

import pytest

from ccfactory.lab.bmc.faults import clear_faults, get_faults, set_faults
from ccfactory.lab.bmc.state import StateStore, platform_features_for
from ccfactory.lab.bmc.testing import PowerRecorder, make_bmc
from ccfactory.lab.errors import LabError


@pytest.fixture
def power() -> PowerRecorder:
    return PowerRecorder()


def test_next_n_requests_fail_then_recover(tmp_path, power):
    bmc = make_bmc(tmp_path, vendor="generic", tee="snp", power_fn=power)
    set_faults(tmp_path, "node1", fail_next_requests=2)
    first, second, third = (bmc.get(bmc.paths.bios) for _ in range(3))
    assert (first.status_code, second.status_code, third.status_code) == (503, 503, 200)
    assert first.headers["Retry-After"] == "1"
    assert first.json["error"]["code"] == "Base.1.0.ServiceTemporarilyUnavailable"
    assert get_faults(tmp_path, "node1").fail_next_requests == 0
    set_faults(tmp_path, "node1", fail_next_requests=1, fail_status=500)
    r = bmc.get("/redfish/v1/", auth=None)  # even the public root fails: the BMC is sick
    assert r.status_code == 500 and r.json["error"]["code"] == "Base.1.0.InternalError"


def test_slow_responses(tmp_path, power):
    bmc = make_bmc(tmp_path, vendor="dell", tee="snp", power_fn=power)
    set_faults(tmp_path, "node1", delay_seconds=0.3)
    t0 = time.monotonic()
    assert bmc.get(bmc.paths.bios).status_code == 200
    assert time.monotonic() - t0 >= 0.3
    clear_faults(tmp_path, "node1")
    t0 = time.monotonic()
    bmc.get(bmc.paths.bios)
    assert time.monotonic() - t0 < 0.3


def test_next_config_job_fails_dell(tmp_path, power):
    bmc = make_bmc(tmp_path, vendor="dell", tee="snp", power_fn=power)
    set_faults(tmp_path, "node1", fail_next_job=True)
    r = bmc.patch(bmc.paths.settings, {"Attributes": {"Sme": "Enabled"},
                                       "@Redfish.SettingsApplyTime": {"ApplyTime": "OnReset"}})
    job_url = r.headers["Location"]
    bmc.reset("ForceRestart")
    bmc.wait_power("On")
    job = bmc.get(job_url).json
    assert job["JobState"] == "Failed"
    assert bmc.get(bmc.paths.bios).json["Attributes"]["Sme"] == "Disabled"
    assert bmc.get(bmc.paths.settings).json["Attributes"] == {}
    assert get_faults(tmp_path, "node1").fail_next_job is False  # one-shot
    bmc.stage_and_apply({"Sme": "Enabled"})  # the retry works
    assert platform_features_for(tmp_path, "node1").smee is True


def test_next_apply_fails_generic_reports_settings_failed(tmp_path, power):
    bmc = make_bmc(tmp_path, vendor="generic", tee="snp", power_fn=power)
    set_faults(tmp_path, "node1", fail_next_job=True)
    bmc.stage_and_apply({"CbsCmnCpuSmee": "CbsCmnCpuSmeeEnabled"})
    messages = bmc.get(bmc.paths.bios).json["@Redfish.Settings"]["Messages"]
    assert messages[0]["MessageId"] == "Base.1.0.SettingsFailed"
    assert messages[0]["RelatedProperties"] == ["#/Attributes/CbsCmnCpuSmee"]
    assert platform_features_for(tmp_path, "node1").smee is False


@pytest.mark.parametrize(("mode", "stuck"), [("off", "Off"), ("on", "On")])
def test_reset_that_never_completes(tmp_path, mode, stuck):
    power = PowerRecorder()
    bmc = make_bmc(tmp_path, vendor="dell", tee="snp", power_fn=power)
    set_faults(tmp_path, "node1", reset_hang=mode)
    r = bmc.patch(bmc.paths.settings, {"Attributes": {"Sme": "Enabled"},
                                       "@Redfish.SettingsApplyTime": {"ApplyTime": "OnReset"}})
    bmc.reset("ForceRestart")
    time.sleep(0.3)
    assert bmc.power_state() == stuck
    assert power.actions() == ["force-off"]  # the node went down and stays down
    assert power.on is False
    assert bmc.get(r.headers["Location"]).json["JobState"] == "Running"
    assert platform_features_for(tmp_path, "node1").smee is False  # POST never ran
    # repair: clear the fault, reset again -> the job finishes, the setting applies
    clear_faults(tmp_path, "node1")
    bmc.reset("ForceRestart")
    assert bmc.wait_power("On") == "On"
    assert bmc.get(r.headers["Location"]).json["JobState"] == "Completed"
    assert platform_features_for(tmp_path, "node1").smee is True
    assert power.actions() == ["force-off", "on"]


def test_bios_value_reverts_after_reset(tmp_path, power):
    bmc = make_bmc(tmp_path, vendor="hpe", tee="snp", power_fn=power)
    set_faults(tmp_path, "node1", revert_after_reset=["AmdSecureMemoryEncryption"])
    bmc.stage_and_apply({"AmdSecureMemoryEncryption": "Enabled", "TransparentSecureMemoryEncryption": "Enabled"})
    attrs = bmc.get(bmc.paths.bios).json["Attributes"]
    assert attrs["AmdSecureMemoryEncryption"] == "Disabled"  # silently reverted
    assert attrs["TransparentSecureMemoryEncryption"] == "Enabled"
    assert bmc.get(bmc.paths.bios).json["@Redfish.Settings"]["Messages"][0]["MessageId"] == "Base.1.0.Success"
    assert any(e["kind"] == "reverted" for e in StateStore(tmp_path, "node1").load().events)
    set_faults(tmp_path, "node1", revert_after_reset=["*"])
    bmc.stage_and_apply({"Sriov": "Disabled"})
    assert bmc.get(bmc.paths.bios).json["Attributes"]["Sriov"] == "Enabled"


def test_fault_switch_api_validates(tmp_path, power):
    make_bmc(tmp_path, vendor="dell", tee="snp", power_fn=power)
    with pytest.raises(LabError, match="unknown fault switch"):
        set_faults(tmp_path, "node1", explode=True)
    with pytest.raises(LabError, match="fail_status"):
        set_faults(tmp_path, "node1", fail_status=404)
    with pytest.raises(LabError, match="reset_hang"):
        set_faults(tmp_path, "node1", reset_hang="sometimes")
    assert set_faults(tmp_path, "node1", delay_seconds=1.5).delay_seconds == 1.5
    assert get_faults(tmp_path, "node1").delay_seconds == 1.5  # other switches kept, file persisted
    clear_faults(tmp_path, "node1")
    assert get_faults(tmp_path, "node1").delay_seconds == 0

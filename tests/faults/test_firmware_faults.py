"""BMC faults during the firmware stage, on in-process lab BMCs (no root needed): 5xx then
recovery, a BMC that never answers, a configuration job that fails, a value the BIOS reverts at
the reset, a reset that never completes, a GracefulRestart the OS ignores. The faulty host fails alone with the reason; the
others converge; nothing loops. (The same faults against the real lab: tests/lab/test_firmware_stage.py.)"""

from __future__ import annotations

import logging

import pytest
from firmware_harness import Harness

from ccfactory.firmware.driver import FirmwareDriver
from ccfactory.lab.bmc.faults import set_faults


@pytest.fixture
def harness(tmp_path, monkeypatch):
    h = Harness(tmp_path, monkeypatch)
    yield h
    h.close()


def fault(node, **switches):
    set_faults(node.lab_dir, node.name, **switches)


def test_5xx_for_a_while_is_retried_and_the_host_converges(harness, caplog):
    node = harness.add("node1", "generic", "snp")
    fault(node, fail_next_requests=2, fail_status=503)  # at the start (planning)

    def mid_run(n, reboots):  # and again while the host boots after stage 1
        if reboots == 1:
            fault(n, fail_next_requests=2, fail_status=500)

    harness.on_reboot = mid_run
    with caplog.at_level(logging.WARNING, logger="ccfactory.redfish"):
        result = harness.run(data={"bmc_retries": 4})
    assert result.failed == set(), result.log
    assert node.tee_on() and result.passes["node1"] == 3
    retries = [r.getMessage() for r in caplog.records if "retry" in r.getMessage()]
    assert any("HTTP 503" in m for m in retries) and any("HTTP 500" in m for m in retries)
    served_5xx = 4
    assert len(node.seen) >= served_5xx  # retries are requests too: counted in the summary


def test_a_bmc_that_keeps_failing_fails_its_host_and_the_others_converge(harness):
    bad = harness.add("node1", "dell", "snp")
    good = harness.add("node2", "lenovo", "snp")
    fault(bad, fail_next_requests=100000, fail_status=503)
    result = harness.run(data={"bmc_retries": 2})
    assert result.failed == {"node1"}
    assert "HTTP 503 after 2 attempt(s)" in result.host_log("node1")
    assert good.tee_on() and not bad.tee_on()
    assert bad.state().boots == 0


def test_a_bmc_that_never_answers_times_out_and_only_its_host_fails(harness):
    bad = harness.add("node1", "supermicro", "snp")
    good = harness.add("node2", "hpe", "snp")
    fault(bad, delay_seconds=3.0)
    bad.data["bmc_timeout"] = 0.5
    result = harness.run(data={"bmc_retries": 2})
    assert result.failed == {"node1"}
    assert "no answer within 0.5s after 2 attempt(s)" in result.host_log("node1")
    assert good.tee_on()


def test_dell_job_that_ends_failed_fails_the_host_once(harness):
    node = harness.add("node1", "dell", "snp")
    fault(node, fail_next_job=True)
    result = harness.run()
    assert result.failed == {"node1"}
    text = result.host_log("node1")
    assert "BIOS job JID_" in text and "Failed: Job failed (lab fault injection)" in text
    assert node.patches() == 1 and node.resets() == 1


def test_an_apply_the_bios_refuses_at_post_is_reported_with_the_bmc_messages(harness):
    node = harness.add("node1", "hpe", "snp")
    fault(node, fail_next_job=True)
    result = harness.run()
    assert result.failed == {"node1"}
    text = result.host_log("node1")
    assert "BIOS pass 1/2 'sme' is not applied after the reset" in text
    assert "the BMC reports AmdSecureMemoryEncryption=Disabled (wanted Enabled)" in text
    assert "SettingsFailed" in text
    assert node.patches() == 1 and node.resets() == 1


@pytest.mark.parametrize(("revert", "patches"), [(["*"], 1), (["Snp"], 2)])
def test_a_value_reverted_at_the_reset_fails_loudly_without_a_loop(harness, revert, patches):
    node = harness.add("node1", "dell", "snp")
    other = harness.add("node2", "generic", "snp")
    fault(node, revert_after_reset=revert)
    result = harness.run()
    assert result.failed == {"node1"}
    text = result.host_log("node1")
    assert "is not applied after the reset: the BMC reports" in text
    assert "Nothing is patched again (no loop)" in text
    assert node.patches() == patches and node.resets() == patches  # one PATCH and one reset per stage reached
    assert other.tee_on()
    second = harness.run()  # a re-run tries once more, and fails the same way: no endless loop inside a run
    assert second.failed == {"node1"} and node.resets() == patches + 1


@pytest.mark.parametrize("hang", ["off", "on"])
def test_a_reset_that_never_completes_fails_its_host_after_the_timeout(harness, hang, monkeypatch):
    node = harness.add("node1", "lenovo", "snp")
    other = harness.add("node2", "dell", "snp")
    fault(node, reset_hang=hang)
    # reboot_timeout is at least 120 s outside the lab (its graceful half must reach 60 s); here
    # the BMC wait gets 1 s (the lab test uses 30)
    real = FirmwareDriver.wait_for_bmc
    monkeypatch.setattr(FirmwareDriver, "wait_for_bmc", lambda self, timeout, **kw: real(self, 1.0, poll=0.2))
    result = harness.run(data={"reboot_timeout": 120})
    assert result.failed == {"node1"}
    text = result.host_log("node1")
    if hang == "off":
        assert "after the reset the BMC still reports the system Off (reboot_timeout 1s)" in text
    else:  # POST hangs with the power on: the node never comes back over SSH
        assert "did not come back within 120s after reboot" in text
    assert other.tee_on() and node.resets() == 1


def test_a_graceful_restart_the_os_ignores_is_escalated_to_force_restart(harness):
    deaf = harness.add("node1", "dell", "snp")  # Dell: the BIOS job runs at the reset, so a missed reset is visible
    other = harness.add("node2", "hpe", "tdx")
    fault(deaf, ignore_graceful=True)
    result = harness.run()
    assert result.failed == set(), result.log
    assert deaf.tee_on() and other.tee_on()
    passes = result.passes["node1"]
    assert harness.escalations == {"node1": passes}, "every pass of the deaf host escalated, the other host none"
    kinds = [e.get("reset") for e in deaf.state().events if e["kind"] == "graceful_ignored"]
    assert kinds == ["GracefulRestart"] * passes  # each pass tried the graceful restart first
    text = result.host_log("node1")
    assert "ForceRestart through the BMC" in text
    assert f"{passes} GracefulRestart(s) ignored, force-restarted" in text
    assert "force-restarted" not in result.host_log("node2")
    assert deaf.resets() == 2 * passes and other.resets() == result.passes["node2"]
    again = harness.run()  # converged: no reset at all, graceful or forced
    assert again.failed == set() and deaf.resets() == 2 * passes and harness.escalations == {"node1": passes}

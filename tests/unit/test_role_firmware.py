"""The firmware role on ``@fake`` hosts against in-process lab BMCs (tests/firmware_harness.py):
every vendor personality and TEE from a factory BIOS to the TEE on, a second run with no
change, dry runs that write nothing, rolling reboots, re-runs after an interruption."""

from __future__ import annotations

import pytest
from firmware_harness import TEES, VENDORS, Harness
from support import EXPECTED_PASSES

from ccfactory.firmware import bios_profile_for
from ccfactory.firmware.driver import FirmwareDriver
from ccfactory.roles.firmware import operations as firmware_ops
from ccfactory.roles.firmware.operations import passes_needed

TEE_NAME = {"snp": "AMD SEV-SNP", "tdx": "Intel TDX"}


@pytest.fixture
def harness(tmp_path, monkeypatch):
    h = Harness(tmp_path, monkeypatch)
    yield h
    h.close()


def one_shot_events(node) -> list[dict]:
    return [e for e in node.state().events if e["kind"] == "one_shot"]


@pytest.mark.parametrize(("vendor", "tee"), [(v, t) for v in VENDORS for t in TEES])
def test_factory_bios_to_tee_active_then_a_second_run_changes_nothing(harness, vendor, tee):
    node = harness.add("node1", vendor, tee)
    assert not node.tee_on()
    expected = EXPECTED_PASSES[(vendor, tee)]

    first = harness.run()
    assert first.failed == set(), first.log
    assert first.prepare_changes["node1"] == expected  # what a dry run announces
    assert first.passes["node1"] == expected
    assert node.patches() == expected and node.resets() == expected
    assert node.state().boots == expected
    assert node.tee_on()
    assert f"{TEE_NAME[tee]} active" in first.log
    assert len(one_shot_events(node)) == (1 if tee == "tdx" else 0)  # SGXFactoryReset fired once
    assert node.marker is None
    assert f"{expected} reboot(s)" in first.log

    writes = len(node.writes())
    second = harness.run()
    assert second.failed == set()
    assert second.prepare_changes["node1"] == 0
    assert second.changed["node1"] == []
    assert len(node.writes()) == writes  # no PATCH, no job, no reset
    assert node.state().boots == expected
    assert "0 stage(s) applied, 0 reboot(s)" in second.log


def test_passes_declared_bound_every_computed_schedule():
    # each computed pass applies at least one managed setting: one operation per such setting
    assert passes_needed(bios_profile_for("dell", "snp")) == 7
    assert passes_needed(bios_profile_for("hpe", "tdx")) == 9
    for (vendor, tee), expected in EXPECTED_PASSES.items():
        assert passes_needed(bios_profile_for(vendor, tee)) >= expected


def test_dry_run_reads_and_prints_the_plan_but_writes_nothing(harness):
    node = harness.add("node1", "dell", "snp")
    before = node.state()
    result = harness.run(dry=True)
    assert result.prepare_changes["node1"] == 3
    assert node.writes() == []  # only GETs (and the session's login/logout)
    after = node.state()
    assert (after.applied, after.pending, after.jobs, after.boots) == (before.applied, before.pending, before.jobs, 0)
    text = result.host_log("node1")
    assert "pass 1/3 'sme': patch and reboot" in text
    assert "Sme" in text and "Disabled -> Enabled" in text
    assert "would run 3 BIOS pass(es)" in text


def test_without_change_detection_nothing_is_read_before_execution(harness):
    node = harness.add("node1", "lenovo", "snp")
    result = harness.run(check_for_changes=False)  # pyinfra -y
    assert "firmware plan:" not in result.log
    assert result.passes["node1"] == 3 and node.tee_on()


@pytest.mark.parametrize(("batch", "most"), [(2, 2), (4, 4)])
def test_at_most_batch_size_hosts_reboot_at_once(harness, batch, most):
    for i, vendor in enumerate(("dell", "hpe", "lenovo", "generic")):
        harness.add(f"node{i + 1}", vendor, "snp")
    result = harness.run(batch=batch)
    assert result.failed == set(), result.log
    assert result.max_rebooting == most
    assert all(n.tee_on() for n in harness.nodes.values())


def test_rerun_after_the_patch_does_not_patch_pending_values_again(harness):
    node = harness.add("node1", "hpe", "snp")
    r = node.bmc.patch(node.bmc.paths.patch_target, {"Attributes": {"AmdSecureMemoryEncryption": "Enabled"}})
    assert r.status_code < 300  # an earlier run stopped after its PATCH
    result = harness.run()
    assert result.passes["node1"] == 2
    assert node.patches() == 1 and node.resets() == 2  # stage 1: reset only
    assert "nothing to PATCH (already pending)" in result.log
    assert node.tee_on()


def test_dell_values_pending_without_a_job_get_a_job(harness):
    node = harness.add("node1", "dell", "snp")
    node.bmc.patch(node.bmc.paths.settings, {"Attributes": {"Sme": "Enabled"}})  # no ApplyTime: no job
    assert node.state().jobs == []
    result = harness.run()
    assert result.failed == set(), result.log
    jobs = node.bmc.paths.jobs
    assert ("POST", jobs) in node.writes()
    assert "values pending without a BIOS configuration job: created JID_" in result.log
    assert node.patches() == 2 and result.passes["node1"] == 3 and node.tee_on()
    assert all(j.state == "Completed" for j in node.state().jobs)


def test_dell_job_already_scheduled_is_reused(harness):
    node = harness.add("node1", "dell", "snp")
    node.bmc.patch(
        node.bmc.paths.settings,
        {"Attributes": {"Sme": "Enabled"}, "@Redfish.SettingsApplyTime": {"ApplyTime": "OnReset"}},
    )
    (job,) = node.state().jobs
    result = harness.run()
    assert result.failed == set(), result.log
    assert ("POST", node.bmc.paths.jobs) not in node.writes()
    assert f"BIOS job {job.id}" in result.log and node.patches() == 2


def test_a_one_shot_deferred_by_an_interrupted_run_fires_in_the_next_one(harness, monkeypatch):
    node = harness.add("node1", "supermicro", "tdx")
    real_verify = FirmwareDriver.verify

    def interrupted(self, step, *a, **kw):
        if step.plan.firing:
            raise RuntimeError("controller lost (simulated)")
        return real_verify(self, step, *a, **kw)

    monkeypatch.setattr(FirmwareDriver, "verify", interrupted)
    first = harness.run()
    assert first.failed == {"node1"}
    assert first.passes["node1"] == 4
    assert node.marker == ["sgx_factory_reset"]  # written before the reset of stage 4
    monkeypatch.setattr(FirmwareDriver, "verify", real_verify)
    events = len(one_shot_events(node))  # the interrupted pass did reset: it fired already
    second = harness.run()
    assert second.failed == set(), second.log
    assert second.passes["node1"] == 1
    assert len(one_shot_events(node)) == events + 1
    assert node.marker is None
    assert harness.run().changed["node1"] == []


def test_a_one_shot_never_fires_in_a_later_run_that_does_not_turn_sgx_on(harness):
    node = harness.add("node1", "supermicro", "tdx")
    assert harness.run().passes["node1"] == 5
    node.bmc.patch(node.bmc.paths.patch_target, {"Attributes": {}})
    assert harness.run().passes["node1"] == 0
    assert len(one_shot_events(node)) == 1


def test_tdx_bios_on_but_kernel_side_missing_is_reported_not_failed(harness):
    node = harness.add("node1", "generic", "tdx")
    node.kernel_ready = False  # no kvm_intel.tdx=1 yet: the host stage's job
    result = harness.run()
    assert result.failed == set(), result.log
    assert "Intel TDX: the BIOS side is on (tdx_keyids)" in result.log
    assert "kvm_intel_tdx" in result.log and "deploy/host.py" in result.log


def test_bmc_compliant_but_node_without_the_tee_fails_with_hints(harness, monkeypatch):
    from ccfactory.facts.tee import TeeHostStatus

    node = harness.add("node1", "lenovo", "snp")
    assert harness.run().failed == set()
    monkeypatch.setattr(node, "tee_status", lambda: TeeHostStatus().process(["### ccfactory:cpuflags", "flags : fpu"]))
    result = harness.run()
    assert result.failed == {"node1"}
    assert "AMD SEV-SNP is not enabled by the BIOS on the running node although the BMC reports every stage" in result.log
    assert "cpu_sev_snp: FAIL" in result.log


def test_hosts_without_tee_or_bmc_are_left_alone(harness):
    plain = harness.add("node1", "generic", "snp")
    result = harness.run(data={"tee": "none"}, groups={"kbs": ["node1"]})
    assert result.failed == set() and result.changed == {"node1": []} and plain.seen == []
    result = harness.run(data={"bmc_address": None, "bmc_username": None, "bmc_password_file": None})
    assert result.failed == set() and result.changed == {"node1": []} and plain.seen == []
    assert "no BMC configured (bmc_address): BIOS settings are not managed here" in result.log


def test_the_client_factory_is_used_and_sessions_are_closed(harness):
    node = harness.add("node1", "generic", "snp")
    harness.run()
    logins = sum(1 for m, p in node.seen if m == "POST" and p.endswith("/Sessions"))
    logouts = sum(1 for m, p in node.seen if m == "DELETE" and "/Sessions/" in p)
    assert logins == logouts >= 2  # planning and execution each log in once, and out
    assert firmware_ops.CLIENT_FACTORY is not None


def test_runs_are_kept_per_host_not_per_pyinfra_context_proxy():
    from pyinfra import host as proxy
    from pyinfra.context import ctx_host

    from ccfactory.config import load_node_config
    from ccfactory.roles.firmware.operations import firmware_run

    class FakeHost:
        def __init__(self, name):
            self.name = name

    cfg = load_node_config(
        "gpu-01",
        ["workers", "snp"],
        {"bmc_vendor": "dell", "bmc_address": "10.0.0.5", "bmc_username": "root", "bmc_password_env": "BMC_PW"},
    )
    a, b = FakeHost("a"), FakeHost("b")
    with ctx_host.use(a):
        run_a = firmware_run(proxy, cfg)
    with ctx_host.use(b):
        run_b = firmware_run(proxy, cfg)
    assert run_a is not run_b and run_a.host is a and run_b.host is b
    with ctx_host.use(a):
        assert firmware_run(proxy, cfg) is run_a

"""Issue 17: a site run reboots a worker once for the host and gpu stages together (or not at
all when a BIOS pass's reset already booted their configuration); stages run alone still
reboot on their own."""

from __future__ import annotations

from pyinfra.api import FunctionCommand, StringCommand

from ccfactory.deploys import schedule
from ccfactory.facts.node import REBOOT_MARKER_DIR, BootId, PendingReboot, PendingReboots
from ccfactory.roles.gpu.plan import REBOOT_MARKER as GPU_MARKER
from ccfactory.roles.host.facts import REBOOT_MARKER as HOST_MARKER
from support import plan_role_on_fake_host
from test_role_host import HOST, SimFacts, changed, op
from test_role_host_sim import SimNode

SITE = ["preflight", "firmware", "host", "gpu", "kbs", "runtime", "verify"]


def _steps(stages):
    return [f"{module.rsplit('.', 1)[1]}.{function}" for module, function in schedule(stages)]


def test_the_site_writes_boot_configuration_before_the_firmware_stage_and_reboots_once_after_it():
    assert _steps(SITE) == [
        "preflight.apply", "host.configure", "gpu.configure", "firmware.apply", "boot.apply",
        "host.settle", "gpu.settle", "kbs.apply", "runtime.apply", "verify.apply",
    ]
    assert _steps(["host", "gpu"]) == ["host.configure", "gpu.configure", "boot.apply", "host.settle", "gpu.settle"]
    assert _steps(["firmware", "host"]) == ["host.configure", "firmware.apply", "boot.apply", "host.settle"]


def test_a_stage_run_alone_reboots_on_its_own():
    for stages in (["host"], ["gpu"], ["firmware"], ["preflight", "host", "verify"], ["kbs", "runtime"]):
        assert all(step.endswith(".apply") for step in _steps(stages)), stages
        assert "boot.apply" not in _steps(stages)


def test_both_markers_live_where_the_shared_reboot_looks():
    assert HOST_MARKER.rsplit("/", 1)[0] == GPU_MARKER.rsplit("/", 1)[0] == REBOOT_MARKER_DIR


def test_only_markers_written_in_the_running_boot_are_pending():
    output = [
        "boot_id=b-2",
        "marker=host", "line=b-2", "line=host boot configuration changed: sev_snp off",
        "marker=gpu-vfio", "line=b-1", "line=VFIO configuration changed",  # an earlier boot: done
        "marker=odd",  # an empty marker file: not pending
    ]
    assert PendingReboots().process(output) == (PendingReboot("host", "host boot configuration changed: sev_snp off"),)
    assert PendingReboots().process(["boot_id="] + output[1:4]) == ()  # no boot id: nothing proven pending


class _Facts(SimFacts):
    def __init__(self, node, pending=()):
        super().__init__(node)
        self.pending = tuple(pending)

    def __call__(self, cls, *args, **kwargs):
        if cls is PendingReboots:
            self.asked.append(cls)
            return self.pending
        if cls is BootId:
            return self.node.boot_id
        return super().__call__(cls, *args, **kwargs)


def _site_host_half(node, tmp_path, pending=()):
    """host.configure, boot, host.settle on one @fake SNP worker (as run_stages composes them)."""
    from ccfactory.roles import boot
    from ccfactory.roles import host as host_role

    def deploy():
        host_role.configure()
        boot.apply()
        host_role.settle()

    data = {"fake_delay": 0, "fake_delay_jitter": 0, "tee": "snp", "reboot_batch_size": 3, "reboot_timeout": 600,
            "gpu_count": 8, "gpu_model": "H100"}
    answers = _Facts(node, pending)
    ops, _ = plan_role_on_fake_host(HOST, data, {"workers": [HOST], "snp": [HOST], "gpu": [HOST]}, answers, deploy)
    return ops, answers


def test_the_host_half_records_the_reboot_and_leaves_it_to_the_shared_one(tmp_path):
    node = SimNode(tmp_path, "snp")
    ops, _ = _site_host_half(node, tmp_path, pending=[PendingReboot("host", "host boot configuration changed")])
    names = [name for name, *_ in ops]
    assert "Host | Reboot to apply the host boot configuration" not in names  # the stage's own reboot
    assert "Host | Record the pending reboot" in changed(ops)
    reboot = "Boot | Reboot once for the boot configuration of the host and gpu stages"
    assert names.index("Host | Update the initramfs") < names.index(reboot) < names.index("Host | TEE active on the running kernel")
    _, change, commands, args = op(ops, reboot)
    assert change and args["_parallel"] == 3
    assert any(isinstance(c, StringCommand) and "systemctl reboot" in str(c) for c in commands)
    assert sum(isinstance(c, FunctionCommand) for c in commands) == 2  # boot id remembered, new boot awaited


def test_the_shared_reboot_does_nothing_when_a_bios_reset_already_booted_the_configuration(tmp_path):
    node = SimNode(tmp_path, "snp")
    ops, answers = _site_host_half(node, tmp_path, pending=())
    _, change, commands, _ = op(ops, "Boot | Reboot once for the boot configuration of the host and gpu stages")
    assert not change and commands == []
    assert answers.asked.count(PendingReboots) >= 1  # decided from the node's markers, not from the plan

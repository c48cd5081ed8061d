"""The host stage's role on a pyinfra ``@fake`` host: which operations each decision yields.

Facts are answered from a ``SimNode`` (a root directory whose kernel view the lab's
renderer produces), read through the facts' real shell commands; pyinfra's own file facts
(File, Directory, Sha1File) are answered from the same root. Each test builds the state,
runs the role's Prepare and collects, per operation, its name, whether it changes
something and its commands.
"""

from __future__ import annotations


import pytest
from pyinfra.api import FileUploadCommand, FunctionCommand
from pyinfra.facts.files import Directory, File, FileContents, Sha1File
from pyinfra.facts.server import TmpDir

from ccfactory.facts.node import NodeOs
from ccfactory.facts.tee import TeeHostStatus
from ccfactory.roles.host import operations as host_ops
from ccfactory.roles.host.facts import REBOOT_MARKER, HostBootConfig
from ccfactory.roles.host.plan import DROPIN, GPU_CONF, TEE_CONF
from support import plan_role_on_fake_host
from lab_standin import stand_in_lab
from test_role_host_sim import BIOS_OFF, SNP_ON, SimNode

HOST = "@fake/node1"


class SimFacts:
    """``host.get_fact`` answered from a SimNode; counts what was asked."""

    def __init__(self, node: SimNode):
        self.node = node
        self.asked: list[type] = []

    def __call__(self, cls, *args, **kwargs):
        self.asked.append(cls)
        kw = {k: v for k, v in kwargs.items() if not k.startswith("_")}
        node = self.node
        if cls is NodeOs:
            return node.info()
        if cls is TeeHostStatus:
            return node.tee_status()
        if cls is HostBootConfig:
            return node.boot_files(kw.get("tools", ""))
        if cls is File:
            return node.file_fact(kw["path"])
        if cls is Directory:
            return node.directory_fact(kw["path"])
        if cls is Sha1File:
            return node.sha1_fact(kw["path"])
        if cls is FileContents:
            text = node.read(kw["path"])
            return None if text is None else text.splitlines()
        if cls is TmpDir:  # files.put's temporary upload name
            return "/tmp"
        raise AssertionError(f"unexpected fact {cls.__name__}")


def _lab_dir(tmp_path):
    lab = tmp_path / "lab"
    lab.mkdir(exist_ok=True)
    stand_in_lab(lab, {"node1": HOST})  # the lab gate proves a running lab (tests/lab_standin.py)
    return lab


def run_role(node: SimNode, tmp_path, *, tee="snp", gpus=True, lab=False, extra=None):
    """Prepare the role on a @fake host; returns ([(name, changes, commands)], facts asked, host meta)."""
    data = {"fake_delay": 0, "fake_delay_jitter": 0, "tee": tee, "reboot_batch_size": 2, "reboot_timeout": 600}
    if gpus:
        data |= {"gpu_count": 8, "gpu_model": "H100"} if tee == "snp" else {"gpu_count": 2, "gpu_model": "B200"}
    if lab:
        data |= {"lab": True, "lab_dir": str(_lab_dir(tmp_path))}
    data |= extra or {}
    groups = {"workers": [HOST]} if tee != "none" else {"kbs": [HOST]}
    if tee != "none":
        groups[tee] = [HOST]
    if gpus and tee != "none":
        groups["gpu"] = [HOST]
    from ccfactory.roles import host as host_role

    answers = SimFacts(node)
    ops, meta = plan_role_on_fake_host(HOST, data, groups, answers, host_role.apply, strip="Host | ")
    return ops, answers, meta


def changed(ops) -> list[str]:
    return [name for name, change, _, _ in ops if change]


def op(ops, name):
    return next(o for o in ops if o[0] == name)


def upload(ops, name) -> tuple[str, str]:
    """(destination, content) of an operation's file upload."""
    cmd = next(c for c in op(ops, name)[2] if isinstance(c, FileUploadCommand))
    return cmd.dest, cmd.src.getvalue()


def failure_message(ops, name) -> str:
    (_, change, (cmd,), _) = op(ops, name)
    assert change and isinstance(cmd, FunctionCommand)
    return cmd.args[0]


def _converge(node, tmp_path, **kw):
    """Carry out what the role plans, as the operations would on the node."""
    from ccfactory.distros import distro_for
    from ccfactory.config import load_node_config
    from ccfactory.roles.host.plan import plan_host

    tee = kw.get("tee", "snp")
    cfg_data = {"gpu_count": 8, "gpu_model": "H100"} if tee == "snp" else {"gpu_count": 2, "gpu_model": "B200"}
    cfg = load_node_config("sim", ["workers", tee, "gpu"], cfg_data)
    info = node.info()
    node.apply(plan_host(cfg, info, node.tee_status(), node.boot_files(), distro_for(info.os_id, info.os_version)))


# ------------------------------------------------------------------ the decisions


def test_snp_fresh_writes_dropin_modprobe_updates_and_reboots_once(tmp_path):
    node = SimNode(tmp_path, "snp")
    ops, answers, _ = run_role(node, tmp_path)
    assert changed(ops) == [
        "Record the pending reboot",
        "Kernel command line drop-in",
        "TEE module options",
        "No host GPU driver",
        "Update the bootloader configuration",
        "Update the initramfs",
        "Reboot to apply the host boot configuration",
        # (the marker is removed after the reboot: no change yet, it does not exist at prepare)
        "TEE active on the running kernel",  # planned on today's kernel; judged again after the reboot
    ]
    _, _, commands, _ = op(ops, "Update the bootloader configuration")
    assert [str(c) for c in commands] == ["update-grub"]
    assert [str(c) for c in op(ops, "Update the initramfs")[2]] == ["update-initramfs -u -k all"]
    _, _, commands, args = op(ops, "Reboot to apply the host boot configuration")
    assert args["_parallel"] == 2 and args["_sudo"] is True  # rolling batch from reboot_batch_size
    # the drop-in upload carries the rendered file
    dest, text = upload(ops, "Kernel command line drop-in")
    assert dest == DROPIN and text.endswith('"$GRUB_CMDLINE_LINUX_DEFAULT modprobe.blacklist=nouveau"\n')
    # facts: each of the role's facts once at prepare (the verify op reads the TEE fact again when it runs)
    assert answers.asked.count(NodeOs) == 1 and answers.asked.count(HostBootConfig) == 1
    # the verify step is planned after the reboot
    order = [o[0] for o in ops]
    assert order.index("Reboot to apply the host boot configuration") < order.index("TEE active on the running kernel")


def test_converged_host_yields_zero_changes_and_no_reboot(tmp_path):
    node = SimNode(tmp_path, "snp")
    _converge(node, tmp_path)
    ops, _, meta = run_role(node, tmp_path)
    assert changed(ops) == []
    assert meta.ops_change == 0
    names = [o[0] for o in ops]
    assert not any("Reboot" in n or "Update" in n for n in names)
    assert names[-1] == "TEE active on the running kernel"


def test_converged_tdx_host_yields_zero_changes(tmp_path):
    node = SimNode(tmp_path, "tdx")
    _converge(node, tmp_path, tee="tdx")
    ops, _, meta = run_role(node, tmp_path, tee="tdx")
    assert meta.ops_change == 0 and changed(ops) == []


def test_tdx_parameters(tmp_path):
    node = SimNode(tmp_path, "tdx")
    ops, _, _ = run_role(node, tmp_path, tee="tdx")
    dest, dropin = upload(ops, "Kernel command line drop-in")
    assert 'GRUB_CMDLINE_LINUX_DEFAULT="$GRUB_CMDLINE_LINUX_DEFAULT intel_iommu=on kvm_intel.tdx=1 nohibernate modprobe.blacklist=nouveau"' in dropin
    dest, tee_conf = upload(ops, "TEE module options")
    assert dest == TEE_CONF and "\noptions kvm_intel tdx=1\n" in tee_conf
    assert "Reboot to apply the host boot configuration" in changed(ops)
    assert op(ops, "Reboot to apply the host boot configuration")[3]["_parallel"] == 2


def test_iommu_pt_in_an_operator_file_is_refused_naming_file_and_line(tmp_path):
    node = SimNode(tmp_path, "snp")
    node.write("/etc/default/grub.d/50-site.cfg", '# site tuning\nGRUB_CMDLINE_LINUX_DEFAULT="$GRUB_CMDLINE_LINUX_DEFAULT iommu=pt"\n')
    ops, _, _ = run_role(node, tmp_path)
    assert [o[0] for o in ops] == ["Host ready for its TEE configuration"]  # nothing else planned
    message = failure_message(ops, "Host ready for its TEE configuration")
    assert "iommu=pt in /etc/default/grub.d/50-site.cfg line 2" in message
    assert "disables SEV-SNP" in message and "remove iommu=pt there" in message
    assert node.read(DROPIN) is None


def test_iommu_pt_in_default_grub_names_that_file(tmp_path):
    node = SimNode(tmp_path, "snp")
    grub = node.read("/etc/default/grub").replace('GRUB_CMDLINE_LINUX=""', 'GRUB_CMDLINE_LINUX="iommu=pt"')
    node.write("/etc/default/grub", grub)
    message = failure_message(run_role(node, tmp_path)[0], "Host ready for its TEE configuration")
    assert 'iommu=pt in /etc/default/grub line 10 (GRUB_CMDLINE_LINUX="iommu=pt")' in message


def test_iommu_pt_is_fine_on_tdx(tmp_path):
    node = SimNode(tmp_path, "tdx")
    node.write("/etc/default/grub.d/50-site.cfg", 'GRUB_CMDLINE_LINUX_DEFAULT="$GRUB_CMDLINE_LINUX_DEFAULT iommu=pt"\n')
    ops, _, _ = run_role(node, tmp_path, tee="tdx")
    assert "Kernel command line drop-in" in changed(ops)


def test_kernel_too_old_fails_with_the_fix_and_changes_nothing(tmp_path):
    node = SimNode(tmp_path, "tdx", os_id="ubuntu", os_version="24.04", kernel="6.8.0-45-generic")
    ops, _, _ = run_role(node, tmp_path, tee="tdx")
    assert [o[0] for o in ops] == ["Host ready for its TEE configuration"]
    message = failure_message(ops, "Host ready for its TEE configuration")
    assert "host_kernel>=6.16: FAIL: kernel 6.8.0-45-generic is older than 6.16, required for TDX hosts" in message
    assert "fix: install a kernel >= 6.16 and reboot into it: Ubuntu 25.10 and 26.04 ship 6.17+" in message


def test_unknown_distro_fails_clearly_without_crashing(tmp_path):
    node = SimNode(tmp_path, "snp", os_id="opensuse-leap", os_version="15.5")
    ops, answers, _ = run_role(node, tmp_path)
    assert [o[0] for o in ops] == ["Host ready for its TEE configuration"]
    message = failure_message(ops, "Host ready for its TEE configuration")
    assert "opensuse-leap 15.5 is not a supported distribution (supported: ubuntu 24.04, 25.10, 26.04; debian 12, 13; rhel 9, 10; rocky 9, 10; almalinux 9, 10)" in message


@pytest.mark.parametrize("os_id, version", [("ubuntu", "24.04"), ("ubuntu", "25.10"), ("ubuntu", "26.04"), ("debian", "12"), ("debian", "13")])
def test_every_supported_distro_gets_its_commands_from_the_data(tmp_path, os_id, version):
    node = SimNode(tmp_path, "snp", os_id=os_id, os_version=version)
    ops, _, _ = run_role(node, tmp_path)
    assert [str(c) for c in op(ops, "Update the bootloader configuration")[2]] == ["update-grub"]


def test_bios_off_at_prepare_reboots_only_if_the_bios_is_on_by_then(tmp_path):
    # In a site deploy, facts are read before the firmware stage runs: the reboot is
    # planned, but conditional on the BIOS side being on at execute time.
    node = SimNode(tmp_path, "snp", BIOS_OFF)
    ops, _, _ = run_role(node, tmp_path)
    names = [o[0] for o in ops]
    assert "Kernel command line drop-in" in names
    reboot_op = op(ops, "Reboot to apply the host boot configuration")
    condition = reboot_op[3]["_if"]
    assert condition() is False, "BIOS still off: a reboot cannot help"
    node.features = SNP_ON  # what the firmware stage does earlier in the same run ...
    node.boot()  # ... with its own reboot
    assert condition() is True
    message = failure_message(ops, "TEE active on the running kernel")
    assert message.startswith("AMD SEV-SNP is not active: enable SNP in BIOS: run the firmware stage")
    assert "cpu_sev_snp: FAIL: CPU flag sev_snp is missing" in message


def test_pending_reboot_from_an_interrupted_run_is_done(tmp_path):
    node = SimNode(tmp_path, "tdx")
    # an earlier run in this boot wrote the marker and the files, then stopped before the reboot
    from ccfactory.roles.host.plan import render_dropin, render_gpu_conf, render_tee_conf
    from ccfactory.roles.host.spec import tee_spec

    spec = tee_spec("tdx", gpus=True)
    node.write(DROPIN, render_dropin(spec))
    node.write(TEE_CONF, render_tee_conf(spec))
    node.write(GPU_CONF, render_gpu_conf(spec))
    node.write(REBOOT_MARKER, f"{node.boot_id}\nhost boot configuration changed\n")
    ops, _, _ = run_role(node, tmp_path, tee="tdx")
    names = changed(ops)
    assert "Kernel command line drop-in" not in names  # unchanged
    assert "Update the bootloader configuration" in names and "Update the initramfs" in names  # redone
    assert "Reboot to apply the host boot configuration" in names


def test_stale_marker_after_a_manual_reboot_is_removed_without_rebooting(tmp_path):
    node = SimNode(tmp_path, "snp")
    _converge(node, tmp_path)
    node.write(REBOOT_MARKER, "boot-0\nold\n")
    ops, _, _ = run_role(node, tmp_path)
    assert changed(ops) == ["Reboot for the host configuration done"]


def test_host_without_tee_is_left_alone(tmp_path):
    node = SimNode(tmp_path, "snp")
    ops, answers, meta = run_role(node, tmp_path, tee="none", gpus=False)
    assert ops == [] and answers.asked == [] and meta.ops_change == 0


def test_snp_host_without_gpus_needs_no_dropin_and_keeps_none(tmp_path):
    node = SimNode(tmp_path, "snp")
    node.write(DROPIN, "# an old one\n")
    ops, _, _ = run_role(node, tmp_path, gpus=False)
    names = changed(ops)
    assert "Kernel command line drop-in: no longer wanted" in names and "No host GPU driver" not in names
    assert "TEE module options" in names


def test_lab_host_checks_the_simulated_kernel_and_says_so(tmp_path, caplog):
    node = SimNode(tmp_path, "snp", os_id="debian", os_version="12", kernel="6.1.0-99-amd64")  # shared kernel: old
    ops, _, _ = run_role(node, tmp_path, lab=True)
    assert "Kernel command line drop-in" in changed(ops)  # the simulated 6.16.12 is new enough
    assert any("lab: kernel checked is the simulated 6.16.12-amd64" in r.getMessage() for r in caplog.records)
    # a real host with that kernel fails
    ops, _, _ = run_role(node, tmp_path, lab=False)
    assert "kernel 6.1.0-99-amd64 is older than 6.11" in failure_message(ops, "Host ready for its TEE configuration")


def test_every_exported_operation_is_a_called_decorator():
    assert hasattr(host_ops.tee_host_ready, "_inner")

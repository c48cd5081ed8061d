"""The host stage on a RHEL host (``cmdline_method = "grubby"``), on pyinfra's ``@fake`` connector.

The lab boots Debian only. Here a ``SimNode`` gets RHEL 9's boot side: ``grubby`` and ``dracut``
stand-ins on its PATH, ``grubby --info=ALL`` answering with output recorded on a RHEL 9.1
system (``tests/fixtures/distros/rhel9-grubby-info-all.txt``; provenance in
``tests/fixtures/distros/SOURCES.md``), RHEL 9's ``/etc/default/grub`` (BLS, no grub.d) and
initramfs images named as dracut names them. "Booting" renders the kernel's view from the
default entry's ``args`` as the lab renderer does from GRUB files.

The kernel: RHEL 9's own kernel (5.14.0-*.el9) is older than the SNP/TDX host minimums of
``kernels.toml`` and is refused (test below); the other tests boot a 6.17 kernel built for EL9
(ELRepo's kernel-ml naming), which is what a RHEL 9 SNP host would need.
"""

from __future__ import annotations

import shlex

import pytest

from ccfactory.distros import GRUBBY_OWNED_ARGS, distro_for
from ccfactory.lab.bootconfig import read_boot_config
from ccfactory.lab.render import RenderInput, render
from ccfactory.roles.host.grub import parse_grubby_info, parse_owned_args
from ccfactory.roles.host.plan import GPU_CONF, TEE_CONF, plan_host
from support import FIXTURES, materialize
from test_role_host import changed, failure_message, op, run_role, upload
from test_role_host_sim import RENDERED_ROOTS, SimNode, _cfg

import shutil

INFO = (FIXTURES / "distros" / "rhel9-grubby-info-all.txt").read_text()
DEFAULT_GRUB = (FIXTURES / "distros" / "rhel9-etc-default-grub").read_text()
EL9_KERNEL = "6.17.1-1.el9.elrepo.x86_64"
ENTRIES = "/sim/grubby-info"  # where the grubby stand-in keeps the boot entries (node path)
CALLS = "/sim/grubby-calls"


def grubby_edit(args: tuple[str, ...], add: list[str], remove: list[str]) -> tuple[str, ...]:
    """What grubby does to one entry's args: remove the given ones (a bare name removes it with
    any value), drop an existing argument of each added name, append the added ones."""
    out = list(args)
    for r in remove:
        out = [a for a in out if not (a == r or ("=" not in r and a.partition("=")[0] == r))]
    for a in add:
        out = [x for x in out if x.partition("=")[0] != a.partition("=")[0]] + [a]
    return tuple(out)


class RhelNode(SimNode):
    """A SimNode whose boot side is RHEL 9's: grubby + BLS entries, dracut."""

    def __init__(self, base, tee="snp", *, version="9.4", kernel=EL9_KERNEL, info=INFO, **kw):
        self._ready = False
        super().__init__(base, tee, os_id="rhel", os_version=version, kernel=kernel, initramfs=False, **kw)
        self.remove("/etc/default/grub.d")  # RHEL's grub2 has no grub.d: the directory is not there
        self.write("/etc/default/grub", DEFAULT_GRUB)
        self.write(f"/boot/initramfs-{kernel}.img", "")
        self.write(ENTRIES, info)
        for tool in ("update-grub", "update-initramfs"):
            self.remove_tool(tool)
        entries, calls = shlex.quote(str(self.path(ENTRIES))), shlex.quote(str(self.path(CALLS)))
        scripts = {
            "grubby": f'case "$1" in --info=ALL) cat {entries};; *) echo "$@" >> {calls};; esac',
            "dracut": "exit 0",
        }
        for name, body in scripts.items():
            (self._bin / name).write_text(f"#!/bin/sh\n{body}\n")
            (self._bin / name).chmod(0o755)
        self._ready = True
        self.boot()

    def remove(self, node_path):
        p = self.path(node_path)
        if p.is_dir():
            shutil.rmtree(p)
        else:
            p.unlink(missing_ok=True)

    def entries(self):
        return parse_grubby_info(self.read(ENTRIES).splitlines())

    def boot(self) -> None:
        """The default entry's args on the kernel command line (as GRUB boots a BLS entry)."""
        if not getattr(self, "_ready", False):
            return  # SimNode.__init__'s first boot: the RHEL side is not laid out yet
        for rel in RENDERED_ROOTS:
            shutil.rmtree(self.root / rel, ignore_errors=True)
        default = self.entries()[0].args
        boot = read_boot_config(self.root, f"{self.profile.kernel['cmdline']} {' '.join(default)}")
        materialize(render(RenderInput("sim", self.profile, self.features, boot)), self.root)
        self.boots += 1

    def boot_files(self, tools: str = "grubby dracut"):
        return super().boot_files(tools)

    def run_grubby(self, command: str) -> None:
        """Carry out ``grubby --update-kernel=ALL --args=... --remove-args=...`` on the entries."""
        words = shlex.split(command)
        assert words[:2] == ["grubby", "--update-kernel=ALL"], command
        add = next((w.split("=", 1)[1].split() for w in words if w.startswith("--args=")), [])
        remove = next((w.split("=", 1)[1].split() for w in words if w.startswith("--remove-args=")), [])
        lines = []
        for line in self.read(ENTRIES).splitlines():
            if line.startswith("args="):
                old = tuple(line[len('args="') : -1].split())
                line = f'args="{" ".join(grubby_edit(old, add, remove))}"'
            lines.append(line)
        self.write(ENTRIES, "\n".join(lines) + "\n")

    def apply(self, plan) -> None:
        if plan.update_bootloader:
            self.run_grubby(plan.update_bootloader)
        super().apply(plan)


def plan_for(node: RhelNode, tee="snp", gpus=True):
    info = node.info()
    cfg = _cfg(tee, gpus=gpus) if tee == "snp" else _cfg(tee, gpus=gpus, gpu_model="B200", gpu_count=2)
    return plan_host(cfg, info, node.tee_status(), node.boot_files(), distro_for(info.os_id, info.os_version))


# ------------------------------------------------------------------ the fact


def test_the_fact_reads_the_recorded_grubby_output_and_no_grub_d(tmp_path):
    node = RhelNode(tmp_path)
    files = node.boot_files()
    assert files.boot_entries_exit == 0 and files.owned_args is None
    entries = parse_grubby_info(files.boot_entries_output)
    assert [e.kernel for e in entries] == [
        "/boot/vmlinuz-5.14.0-162.6.1.el9_1.x86_64",
        "/boot/vmlinuz-5.14.0-70.13.1.el9_0.x86_64",
        "/boot/vmlinuz-0-rescue-4d684a4a6166439a867e701ded4f7e10",
    ]
    assert entries[0].args[:2] == ("ro", "crashkernel=1G-4G:192M,4G-64G:256M,64G-:512M")
    assert [p for p, _ in files.grub] == ["/etc/default/grub"]
    assert files.tools == {"grubby", "dracut"}


# ------------------------------------------------------------------ the role's operations


def test_rhel9_snp_fresh_adds_its_tokens_with_grubby_and_reboots_once(tmp_path):
    node = RhelNode(tmp_path)
    ops, _, _ = run_role(node, tmp_path)
    assert changed(ops) == [
        "Record the pending reboot",
        "TEE module options",
        "No host GPU driver",
        "Update the bootloader configuration",
        # the owned-args record only once grubby has put the arguments in place
        "Kernel arguments ccfactory added",
        "Update the initramfs",
        "Reboot to apply the host boot configuration",
        "TEE active on the running kernel",
    ]
    assert [str(c) for c in op(ops, "Update the bootloader configuration")[2]] == [
        "grubby --update-kernel=ALL --args=modprobe.blacklist=nouveau"
    ]
    assert [str(c) for c in op(ops, "Update the initramfs")[2]] == ["dracut --regenerate-all --force"]
    dest, text = upload(ops, "Kernel arguments ccfactory added")
    assert dest == GRUBBY_OWNED_ARGS and parse_owned_args(text) == ("modprobe.blacklist=nouveau",)
    assert upload(ops, "TEE module options")[0] == TEE_CONF and upload(ops, "No host GPU driver")[0] == GPU_CONF


def test_rhel9_tdx_adds_every_token_in_one_grubby_call(tmp_path):
    node = RhelNode(tmp_path, "tdx")
    ops, _, _ = run_role(node, tmp_path, tee="tdx")
    assert [str(c) for c in op(ops, "Update the bootloader configuration")[2]] == [
        "grubby --update-kernel=ALL --args='intel_iommu=on kvm_intel.tdx=1 nohibernate modprobe.blacklist=nouveau'"
    ]


def test_converged_rhel_host_gets_no_change_and_no_reboot(tmp_path):
    node = RhelNode(tmp_path, "tdx")
    first = plan_for(node, "tdx")
    assert first.needs_reboot and first.update_bootloader
    node.apply(first)
    assert node.reboots_requested == 1 and node.tee_status().tdx.active
    assert all({"intel_iommu=on", "kvm_intel.tdx=1", "nohibernate"} <= set(e.args) for e in node.entries())
    ops, _, meta = run_role(node, tmp_path, tee="tdx")
    assert changed(ops) == [] and meta.ops_change == 0
    assert not any("Reboot" in o[0] or "Update" in o[0] for o in ops)


def test_a_token_no_longer_wanted_is_removed_and_the_operators_args_stay(tmp_path):
    node = RhelNode(tmp_path)
    node.apply(plan_for(node))  # SNP with GPUs: ccfactory owns modprobe.blacklist=nouveau
    assert "modprobe.blacklist=nouveau" in node.entries()[0].args
    # the GPUs leave the inventory: the token goes, with --remove-args, and nothing else
    plan = plan_for(node, gpus=False)
    assert plan.update_bootloader == "grubby --update-kernel=ALL --remove-args=modprobe.blacklist=nouveau"
    assert plan.file(GRUBBY_OWNED_ARGS).wanted is None  # ccfactory owns no argument any more
    before = node.entries()[0].args
    node.apply(plan)
    after = node.entries()[0].args
    assert set(before) - set(after) == {"modprobe.blacklist=nouveau"} and "retbleed=stuff" in after


def test_an_operators_own_copy_of_a_wanted_token_is_never_owned_nor_removed(tmp_path):
    info = INFO.replace('quiet retbleed=stuff"', 'quiet retbleed=stuff modprobe.blacklist=nouveau"')
    node = RhelNode(tmp_path, info=info)
    plan = plan_for(node)
    assert plan.update_bootloader is None or "nouveau" not in plan.update_bootloader
    assert plan.file(GRUBBY_OWNED_ARGS).wanted is None  # present before ccfactory: the operator's
    node.apply(plan)
    assert "modprobe.blacklist=nouveau" not in (plan_for(node, gpus=False).update_bootloader or "")


def test_iommu_pt_read_back_from_a_boot_entry_is_refused_naming_the_entries(tmp_path):
    node = RhelNode(tmp_path, info=INFO.replace("rhgb quiet", "rhgb quiet iommu=pt"))
    ops, _, _ = run_role(node, tmp_path)
    assert [o[0] for o in ops] == ["Host ready for its TEE configuration"]
    message = failure_message(ops, "Host ready for its TEE configuration")
    assert "iommu=pt in the boot entries of /boot/vmlinuz-5.14.0-162.6.1.el9_1.x86_64 (index 0)" in message
    assert "grubby --update-kernel=ALL --remove-args=iommu=pt" in message and "disables SEV-SNP" in message
    assert node.read(GRUBBY_OWNED_ARGS) is None


def test_iommu_pt_in_rhels_default_grub_is_refused_by_file_and_line(tmp_path):
    node = RhelNode(tmp_path)
    node.write("/etc/default/grub", DEFAULT_GRUB.replace('rhgb quiet"', 'rhgb quiet iommu=pt"'))
    message = failure_message(run_role(node, tmp_path)[0], "Host ready for its TEE configuration")
    assert "iommu=pt in /etc/default/grub line 6" in message


def test_a_different_value_of_a_wanted_argument_is_the_operators_to_change(tmp_path):
    node = RhelNode(tmp_path, "tdx", info=INFO.replace("rhgb quiet", "rhgb quiet nohibernate=1"))
    message = failure_message(run_role(node, tmp_path, tee="tdx")[0], "Host ready for its TEE configuration")
    assert "nohibernate=1 in the boot entry of" in message and "would overwrite the operator's value" in message


@pytest.mark.parametrize(
    ("remove", "output", "expected"),
    [
        ("grubby", None, "grubby is missing on this rhel host"),
        (None, "grubby: bad argument --info: Unknown entry\n", "listed no boot entry"),
    ],
)
def test_grubby_missing_or_listing_nothing_fails_with_the_reason(tmp_path, remove, output, expected):
    node = RhelNode(tmp_path)
    if remove:
        node.remove_tool(remove)
    if output is not None:
        node.write(ENTRIES, output)
    message = failure_message(run_role(node, tmp_path)[0], "Host ready for its TEE configuration")
    assert expected in message and "nothing was changed" in message


def test_rhel9s_own_kernel_is_refused_by_the_kernel_minimum(tmp_path):
    node = RhelNode(tmp_path, kernel="5.14.0-427.13.1.el9_4.x86_64")
    message = failure_message(run_role(node, tmp_path)[0], "Host ready for its TEE configuration")
    assert "kernel 5.14.0-427.13.1.el9_4.x86_64 is older than 6.11" in message


def test_rhel10_gets_the_same_commands(tmp_path):
    node = RhelNode(tmp_path, version="10.0", kernel="6.12.0-55.el10.x86_64")
    ops, _, _ = run_role(node, tmp_path)
    assert [str(c) for c in op(ops, "Update the initramfs")[2]] == ["dracut --regenerate-all --force"]
    assert str(op(ops, "Update the bootloader configuration")[2][0]).startswith("grubby --update-kernel=ALL --args=")

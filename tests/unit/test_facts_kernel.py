"""Kernel facts: command line and IOMMU groups (``process`` on outputs, command on a fake root)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from ccfactory.facts.kernel import IommuGroups, KernelCommandLine, iommu_groups_command
from ccfactory.parsers.kernel import KernelCmdline
from ccfactory.parsers.pci import IommuTopology


def test_kernel_command_line_process():
    cl = KernelCommandLine().process(["BOOT_IMAGE=/boot/vmlinuz-6.17.0-5-generic ro iommu=pt nohibernate"])
    assert cl.has_token("iommu=pt") and cl.has("nohibernate")
    assert KernelCommandLine().process([]) == KernelCmdline() == KernelCommandLine.default()


def test_iommu_groups_on_a_fake_sysfs(tmp_path):
    base = tmp_path / "sys/kernel/iommu_groups"
    for group, kind, bdfs in ((20, "DMA-FQ", ["0000:18:00.0", "0000:18:00.1"]), (3, "identity", ["0000:02:00.1"])):
        (base / str(group) / "devices").mkdir(parents=True)
        (base / str(group) / "type").write_text(kind + "\n")
        for bdf in bdfs:  # dangling links, as in the lab (targets elsewhere in sysfs)
            (base / str(group) / "devices" / bdf).symlink_to(f"../../../../bus/pci/{bdf}")
    (base / "9" / "devices").mkdir(parents=True)  # a group without a type file
    out = subprocess.run(["sh", "-c", iommu_groups_command(str(tmp_path))], capture_output=True, text=True, check=True)
    topo = IommuGroups().process(out.stdout.splitlines())
    assert [(g.number, g.type) for g in topo.groups] == [(3, "identity"), (9, ""), (20, "DMA-FQ")]
    assert topo.group_of("0000:18:00.1") == 20 and topo.passthrough


def test_iommu_groups_when_the_iommu_is_off(tmp_path):
    out = subprocess.run(["sh", "-c", iommu_groups_command(str(tmp_path))], capture_output=True, text=True, check=True)
    assert out.stdout == "" and not IommuGroups().process([]).enabled
    assert IommuGroups.default() == IommuTopology()


def test_commands_run_on_this_machine():
    for fact in (KernelCommandLine, IommuGroups):
        result = subprocess.run(["sh", "-c", fact.command], capture_output=True, text=True, check=False)
        assert result.returncode == 0, result.stderr
        fact().process(result.stdout.splitlines())
    assert Path("/proc/cmdline").exists()

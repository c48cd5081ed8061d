"""The gpu stage on RHEL 9 and Ubuntu 24.04 hosts (pyinfra ``@fake``): the VFIO module options go
to /etc/modprobe.d on every family (modprobe.d(5)), the initramfs is regenerated with the
release's own tool (distros.toml: dracut on RHEL, update-initramfs on Ubuntu), then one reboot;
a converged node gets no change. Initramfs image names as each generator writes them
(dracut: /boot/initramfs-<release>.img; initramfs-tools: /boot/initrd.img-<release>)."""

from __future__ import annotations

import pytest
from pyinfra.facts.files import FileContents, Sha1File

from ccfactory.facts.node import BootTools, BootToolsInfo, NodeOs, NodeOsInfo
from ccfactory.roles.gpu.plan import VFIO_CONF
from test_role_gpu import _patch_files_facts, converged_facts, hgx, run_role
from ccfactory.facts.gpu import NvidiaGpus

ROWS = {
    ("rhel", "9.4"): ("6.17.1-1.el9.elrepo.x86_64", "/boot/initramfs-6.17.1-1.el9.elrepo.x86_64.img",
                      "grubby dracut", "dracut --regenerate-all --force"),
    ("ubuntu", "24.04"): ("6.17.0-5-generic", "/boot/initrd.img-6.17.0-5-generic",
                          "update-grub update-initramfs", "update-initramfs -u -k all"),
}  # fmt: skip


def _on(facts, os_id, version):
    kernel, image, tools, _ = ROWS[(os_id, version)]
    facts[NodeOs] = NodeOsInfo(os_id, version, kernel, "AuthenticAMD", "none", "boot-2")
    asked = []

    def boot_tools(tools="", **kw):
        asked.append(tools)
        return BootToolsInfo(frozenset(tools.split()), (image,))

    facts[BootTools] = boot_tools
    return asked


@pytest.mark.parametrize(("os_id", "version"), list(ROWS))
def test_fresh_node_gets_the_vfio_options_its_initramfs_tool_and_one_reboot(tmp_path, os_id, version):
    facts = _patch_files_facts(converged_facts(tmp_path), missing=(VFIO_CONF,))
    asked = _on(facts, os_id, version)
    facts[NvidiaGpus] = hgx("")
    facts[(FileContents, VFIO_CONF)] = None
    facts[Sha1File] = lambda path, **kw: None
    ops, _, _ = run_role(tmp_path, facts)
    by_name = {n.removeprefix("GPU | "): (change, cmds) for n, change, cmds in ops}
    assert asked == [ROWS[(os_id, version)][2]]  # the release's tools, from distros.toml
    change, cmds = by_name["vfio-pci claims the GPUs at boot"]
    assert change and any(getattr(c, "dest", "") == VFIO_CONF for c in cmds)
    change, cmds = by_name["Refresh the initramfs (module options)"]
    assert change and [str(c) for c in cmds] == [ROWS[(os_id, version)][3]]
    assert by_name["Reboot to bind the GPUs to vfio-pci"][0]


@pytest.mark.parametrize(("os_id", "version"), list(ROWS))
def test_converged_node_gets_no_change_and_no_reboot(tmp_path, os_id, version):
    facts = _patch_files_facts(converged_facts(tmp_path))
    _on(facts, os_id, version)
    ops, _, meta = run_role(tmp_path, facts)
    assert [n for n, change, _ in ops if change] == [] and meta.ops_change == 0
    assert not any("initramfs" in n or ("Reboot" in n and "done" not in n) for n, _, _ in ops)

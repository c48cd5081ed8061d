"""Facts about the running kernel: command line and IOMMU groups.

Example::

    cmdline = host.get_fact(KernelCommandLine)
    cmdline.has_token("iommu=pt"), cmdline.module_param("kvm_intel", "tdx")   # (False, '1')
"""

from __future__ import annotations

import shlex

from pyinfra.api import FactBase

from ccfactory.parsers.kernel import KernelCmdline, parse_cmdline
from ccfactory.parsers.pci import IommuTopology, parse_iommu_groups


class KernelCommandLine(FactBase):
    """``/proc/cmdline`` as tokens (``KernelCmdline``); arguments after ``--`` go to init.

    Example::

        cl = host.get_fact(KernelCommandLine)
        cl.value("iommu"), cl.has("nohibernate"), cl.modprobe_blacklist   # ('pt', True, frozenset({'nouveau'}))
    """

    command = "cat /proc/cmdline 2>/dev/null; true"

    def process(self, output: list[str]) -> KernelCmdline:
        return parse_cmdline(" ".join(output))

    @staticmethod
    def default() -> KernelCmdline:
        return KernelCmdline()


def iommu_groups_command(root: str = "") -> str:
    """One ``group <n> type=<t> devices=<bdf> ...`` line per IOMMU group (``root``: tests)."""
    r = shlex.quote(root) if root else ""
    return (
        f"for g in {r}/sys/kernel/iommu_groups/*; do "
        '[ -d "$g" ] || continue; '
        't=""; [ -r "$g/type" ] && read -r t < "$g/type"; '
        'devs=""; for d in "$g"/devices/*; do [ -e "$d" ] || [ -L "$d" ] || continue; devs="$devs ${d##*/}"; done; '
        'echo "group ${g##*/} type=$t devices=$devs"; '
        "done; true"
    )


class IommuGroups(FactBase):
    """``/sys/kernel/iommu_groups``: group number, type (``identity`` = passthrough) and devices.

    Example::

        groups = host.get_fact(IommuGroups)
        groups.enabled, groups.passthrough, groups.group_of("0000:18:00.0")   # (True, False, 20)
    """

    command = iommu_groups_command()

    def process(self, output: list[str]) -> IommuTopology:
        return parse_iommu_groups(output)

    @staticmethod
    def default() -> IommuTopology:
        return IommuTopology()

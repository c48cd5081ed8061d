"""Facts about a node's operating system and platform, read in one command.

pyinfra 3.x does not cache facts, so ccfactory prefers one fact returning a structured
object over many small ones (see shared/reference/pyinfra-notes.md §1.1).
"""

from __future__ import annotations

from dataclasses import dataclass

from pyinfra.api import FactBase


@dataclass(frozen=True)
class NodeOsInfo:
    os_id: str
    os_version: str
    kernel: str
    cpu_vendor: str  # "AuthenticAMD", "GenuineIntel", ...
    virtualization: str  # systemd-detect-virt output ("none" on bare metal)
    boot_id: str


class NodeOs(FactBase):
    """Distribution, kernel, CPU vendor, virtualization and boot id of a node.

    Example::

        info = host.get_fact(NodeOs)
        info.os_id, info.os_version   # ('debian', '12')
    """

    command = (
        ". /etc/os-release; echo \"os_id=$ID\"; echo \"os_version=$VERSION_ID\"; "
        'echo "kernel=$(uname -r)"; '
        "echo \"cpu_vendor=$(awk -F': ' '/^vendor_id/{print $2; exit}' /proc/cpuinfo)\"; "
        'echo "virtualization=$(systemd-detect-virt 2>/dev/null || echo none)"; '
        'echo "boot_id=$(cat /proc/sys/kernel/random/boot_id)"'
    )

    def process(self, output):
        values = dict(line.split("=", 1) for line in output if "=" in line)
        return NodeOsInfo(
            os_id=values.get("os_id", ""),
            os_version=values.get("os_version", ""),
            kernel=values.get("kernel", ""),
            cpu_vendor=values.get("cpu_vendor", ""),
            virtualization=values.get("virtualization", "none"),
            boot_id=values.get("boot_id", ""),
        )


class BootId(FactBase):
    """The kernel's random boot id: changes on every boot, so it proves a reboot happened.

    Example::

        before = host.get_fact(BootId)
    """

    command = "cat /proc/sys/kernel/random/boot_id"

    def process(self, output):
        return output[0].strip() if output else ""

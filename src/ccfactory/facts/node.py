"""Facts about a node's operating system and platform, read in one command.

pyinfra 3.x does not cache facts, so ccfactory prefers one fact returning a structured
object over many small ones (see docs/reference/pyinfra-notes.md §1.1).
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass

from pyinfra.api import FactBase

from ccfactory.parsers.reboot_marker import REBOOT_MARKER_DIR, marker_pending


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


@dataclass(frozen=True)
class BootToolsInfo:
    tools: frozenset[str] = frozenset()  # of the commands asked for, those on the host's PATH
    initramfs_images: tuple[str, ...] = ()  # /boot/initrd.img-* (Debian, Ubuntu), /boot/initramfs-* (RHEL)


class BootTools(FactBase):
    """Which of ``tools`` (space-separated command names) exist, and the host's initramfs images.

    Read-only (``command -v`` and a glob). Example::

        boot = host.get_fact(BootTools, tools=" ".join(distro.tools()))
        "dracut" in boot.tools, boot.initramfs_images
    """

    def command(self, tools: str = "") -> str:
        names = " ".join(shlex.quote(t) for t in tools.split())
        check = f'for c in {names}; do command -v "$c" >/dev/null 2>&1 && echo "tool=$c"; done; ' if names else ""
        return check + 'for f in /boot/initrd.img-* /boot/initramfs-*; do [ -e "$f" ] && echo "image=$f"; done; true'

    def process(self, output):
        pairs = [line.split("=", 1) for line in output if "=" in line]
        return BootToolsInfo(
            tools=frozenset(v.strip() for k, v in pairs if k == "tool"),
            initramfs_images=tuple(v.strip() for k, v in pairs if k == "image"),
        )

    @staticmethod
    def default() -> BootToolsInfo:
        return BootToolsInfo()




@dataclass(frozen=True)
class PendingReboot:
    stage: str  # the marker's file name: "host", "gpu-vfio"
    reason: str


class PendingReboots(FactBase):
    """Reboots the stages recorded in *this* boot (markers in ``REBOOT_MARKER_DIR`` whose
    first line is the running boot id); a marker from an earlier boot is a reboot that happened.

    Read-only. Example::

        host.get_fact(PendingReboots)
        # (PendingReboot(stage='host', reason='host boot configuration changed: ...'),)
    """

    command = (
        "echo \"boot_id=$(cat /proc/sys/kernel/random/boot_id)\"; "
        f"for f in {REBOOT_MARKER_DIR}/*; do [ -f \"$f\" ] || continue; "
        "echo \"marker=${f##*/}\"; head -n 2 \"$f\" | sed 's/^/line=/'; done; true"
    )

    def process(self, output):
        boot_id, markers, current = "", [], None
        for line in output:
            key, _, value = line.partition("=")
            if key == "boot_id":
                boot_id = value.strip()
            elif key == "marker":
                current = [value.strip()]
                markers.append(current)
            elif key == "line" and current is not None:
                current.append(value.strip())
        return tuple(
            PendingReboot(stage=m[0], reason=m[2] if len(m) > 2 else "")
            for m in markers
            if marker_pending(m[1:], boot_id)
        )

    @staticmethod
    def default() -> tuple:
        return ()

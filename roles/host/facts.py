"""The host stage's boot configuration fact: everything the stage reads from files, in one command.

pyinfra 3 does not cache facts, so one command returns the GRUB defaults files, every
modprobe.d file, the stage's reboot marker, which of the distribution's boot tools exist,
whether the host has initramfs images, and (lab nodes only) the simulated kernel release.
On a host whose boot tool has a ``bootloader_info`` command in ``distros.toml`` (grubby:
``grubby --info=ALL``) it also returns that command's output (every boot entry's ``args``)
and the arguments the stage recorded as its own (``/etc/ccfactory/kernel-args``); the
command line of other hosts is unchanged. Read-only: nothing here writes.
The running kernel (``/proc/cmdline``, modules, parameters, kernel log) comes from
``ccfactory.facts.tee.TeeHostStatus``; the OS and boot id from ``ccfactory.facts.node.NodeOs``.

Example::

    files = host.get_fact(HostBootConfig, tools="update-grub update-initramfs", _sudo=True)
    files.grub_file("/etc/default/grub"), files.has_tool("update-grub"), files.marker
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass

from pyinfra.api import FactBase

from ccfactory.distros import GRUBBY_OWNED_ARGS, distros
from ccfactory.parsers.kernel import MODPROBE_DIRS
from ccfactory.parsers.reboot_marker import marker_path
from ccfactory.roles.host.grub import DEFAULT_GRUB, GRUB_D
from ccfactory.parsers.sections import echo_marker, split_sections

REBOOT_MARKER = marker_path("host")
LAB_KERNEL_LOG = "/var/log/ccfactory-lab/dmesg"  # written by `ccfactory lab` only; trusted only for lab hosts
_LINUX_VERSION = re.compile(r"Linux version (\S+)")


@dataclass(frozen=True)
class HostBootFiles:
    grub: tuple[tuple[str, str], ...] = ()  # (path, text) of /etc/default/grub and grub.d/*.cfg
    modprobe: tuple[tuple[str, str], ...] = ()  # (path, text) of every modprobe.d *.conf
    marker: tuple[str, ...] | None = None  # lines of REBOOT_MARKER, None when absent
    tools: frozenset[str] = frozenset()  # commands found on the host (of those asked for)
    initramfs_images: tuple[str, ...] = ()  # /boot/initrd.img-* and /boot/initramfs-*
    lab_kernel: str | None = None  # release in the lab's simulated kernel log ("Linux version X")
    # grubby hosts: output lines of bootloader_info (None: not read, the tool is missing),
    # its exit status, and the text of GRUBBY_OWNED_ARGS (None when absent)
    boot_entries_output: tuple[str, ...] | None = None
    boot_entries_exit: int | None = None
    owned_args: str | None = None

    def grub_file(self, path: str) -> str | None:
        return dict(self.grub).get(path)

    def modprobe_file(self, path: str) -> str | None:
        return dict(self.modprobe).get(path)

    def has_tool(self, command: str) -> bool:
        """Whether the first word of ``command`` exists on the host."""
        words = shlex.split(command)
        return bool(words) and words[0] in self.tools


def bootloader_readers(tools: str) -> tuple[str, ...]:
    """The ``bootloader_info`` commands (``distros.toml``) of the boot tools among ``tools``."""
    names = set(tools.split())
    found = {d.bootloader_info for d in distros() if d.bootloader_info and d.tools()[0] in names}
    return tuple(sorted(found))


def host_boot_files_command(tools: str = "", root: str = "", grub_d: str = GRUB_D) -> str:
    """The fact's shell command; ``tools``: space-separated command names; ``grub_d``: the
    distribution's GRUB drop-in directory (``distros.toml``, "" for none); ``root``: tests."""
    r = shlex.quote(root) if root else ""
    readers: list[str] = []
    for info in bootloader_readers(tools):
        tool = shlex.quote(shlex.split(info)[0])
        readers += [
            f"if [ -r {r}{GRUBBY_OWNED_ARGS} ]; then {echo_marker('owned-args')}; cat {r}{GRUBBY_OWNED_ARGS}; echo; fi",
            f"if command -v {tool} >/dev/null 2>&1; then {echo_marker('boot-entries')}; {info} 2>&1; "
            f"{echo_marker('boot-entries-exit', '$?')}; fi",
        ]
    path = f"${{f#{r}}}" if root else "$f"
    modprobe = " ".join(f"{r}{d}/*.conf" for d in reversed(MODPROBE_DIRS))
    names = " ".join(shlex.quote(t) for t in tools.split())
    return "; ".join(
        [
            f'for f in {r}{DEFAULT_GRUB}{f" {r}{shlex.quote(grub_d)}/*.cfg" if grub_d else ""}; do [ -f "$f" ] && [ -r "$f" ] || continue; '
            f'p={path}; {echo_marker("grub", "$p")}; cat "$f"; echo; done',
            f'for f in {modprobe}; do [ -f "$f" ] && [ -r "$f" ] || continue; '
            f'p={path}; {echo_marker("modprobe", "$p")}; cat "$f"; echo; done',
            f"if [ -r {r}{REBOOT_MARKER} ]; then {echo_marker('marker')}; cat {r}{REBOOT_MARKER}; echo; fi",
            echo_marker("tools"),
            f'for c in {names}; do command -v "$c" >/dev/null 2>&1 && echo "$c"; done' if names else "true",
            echo_marker("initramfs"),
            f"for f in {r}/boot/initrd.img-* {r}/boot/initramfs-*; do [ -e \"$f\" ] && echo \"$f\"; done",
            echo_marker("lab-kernel"),
            f"head -n 3 {r}{LAB_KERNEL_LOG} 2>/dev/null",
            *readers,
            "true",
        ]
    )


def _text(lines: tuple[str, ...]) -> str:
    """File text as printed (``cat``, then ``echo``): drop the newline the command added."""
    body = list(lines)
    if body and body[-1] == "":
        body.pop()
    return "\n".join(body) + ("\n" if body else "")


def parse_host_boot_files(output: list[str]) -> HostBootFiles:
    sections = split_sections(output)
    grub, modprobe = [], []
    marker = None
    tools: set[str] = set()
    images: list[str] = []
    lab_kernel = None
    entries: tuple[str, ...] | None = None
    entries_exit: int | None = None
    owned_args = None
    for s in sections:
        if s.name == "grub":
            grub.append((s.arg, _text(s.lines)))
        elif s.name == "modprobe":
            modprobe.append((s.arg, _text(s.lines)))
        elif s.name == "marker":
            marker = tuple(line for line in s.lines if line.strip())
        elif s.name == "tools":
            tools.update(line.strip() for line in s.lines if line.strip())
        elif s.name == "initramfs":
            images += [line.strip() for line in s.lines if line.strip()]
        elif s.name == "lab-kernel":
            found = next((m for line in s.lines if (m := _LINUX_VERSION.search(line))), None)
            lab_kernel = found.group(1) if found else None
        elif s.name == "owned-args":
            owned_args = _text(s.lines)
        elif s.name == "boot-entries":
            entries = s.lines
        elif s.name == "boot-entries-exit":
            entries_exit = int(s.arg) if s.arg.strip().isdigit() else None
    return HostBootFiles(tuple(grub), tuple(modprobe), marker, frozenset(tools), tuple(images), lab_kernel,
                         entries, entries_exit, owned_args)


class HostBootConfig(FactBase):
    """GRUB defaults, modprobe.d, the host stage's reboot marker, boot tools and initramfs images.

    Example::

        files = host.get_fact(HostBootConfig, tools="update-grub update-initramfs", _sudo=True)
        files.grub_file("/etc/default/grub.d/60-ccfactory.cfg")   # text, or None
    """

    def command(self, tools: str = "", grub_d: str = GRUB_D) -> str:
        return host_boot_files_command(tools, grub_d=grub_d)

    def process(self, output: list[str]) -> HostBootFiles:
        return parse_host_boot_files(output)

    @staticmethod
    def default() -> HostBootFiles:
        return HostBootFiles()

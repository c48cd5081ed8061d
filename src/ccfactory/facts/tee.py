"""Facts proving that AMD SEV-SNP or Intel TDX is active on a host, read in one command.

The command prints, between ``### ccfactory:<section>`` markers: ``/proc/cmdline``, the
CPU flags, ``/proc/modules``, the kvm_amd/kvm_intel TEE parameters, the TEE device
nodes and the SEV/SNP/TDX lines of the kernel log. ``ccfactory.parsers.tee`` turns that
into ``SnpStatus`` / ``TdxStatus`` with their checks and operator hints.

Kernel log: ``dmesg`` first. When ``dmesg`` fails or prints nothing the fact reads
``/var/log/ccfactory-lab/dmesg`` instead: in the lab, nodes are systemd-nspawn
containers where ``dmesg`` fails, and the lab writes the node's simulated kernel log to
that file. Real hosts never have that file, so there the fallback finds nothing and the
log-based checks report "unknown" with a hint to run the fact with sudo
(``kernel.dmesg_restrict``). Run these facts with ``_sudo=True`` as a non-root user.
"""

from __future__ import annotations

import shlex

from pyinfra.api import FactBase

from ccfactory.parsers.sections import echo_marker, section_map
from ccfactory.parsers.tee import (
    DMESG_GREP,
    PARAM_PATHS,
    SECTION_CMDLINE,
    SECTION_CPUFLAGS,
    SECTION_DEVICES,
    SECTION_DMESG,
    SECTION_DMESG_SOURCE,
    SECTION_MODULES,
    SECTION_PARAMS,
    TEE_DEVICES,
    SnpStatus,
    TdxStatus,
    TeeStatus,
    parse_tee_sections,
)

LAB_DMESG = "/var/log/ccfactory-lab/dmesg"  # written by `ccfactory lab`; absent on real hosts


def tee_command(root: str = "") -> str:
    """The fact's shell command. ``root`` prefixes every file path (tests use a fake root)."""
    r = shlex.quote(root) if root else ""
    grep = f"grep -E {shlex.quote(DMESG_GREP)}"
    lab = f"{r}{LAB_DMESG}"
    source = f"{echo_marker(SECTION_DMESG_SOURCE)}; echo"
    log = echo_marker(SECTION_DMESG)
    return "; ".join(
        [
            echo_marker(SECTION_CMDLINE),
            f"cat {r}/proc/cmdline 2>/dev/null",
            echo_marker(SECTION_CPUFLAGS),
            f"grep -m1 '^flags' {r}/proc/cpuinfo 2>/dev/null",
            echo_marker(SECTION_MODULES),
            f"cat {r}/proc/modules 2>/dev/null",
            echo_marker(SECTION_PARAMS),
            f'for f in {" ".join(PARAM_PATHS)}; do [ -r {r}"$f" ] && printf "%s=%s\\n" "$f" "$(cat {r}"$f")"; done',
            echo_marker(SECTION_DEVICES),
            f'for d in {" ".join(TEE_DEVICES)}; do [ -e {r}"$d" ] && echo "$d"; done',
            # dmesg, else the lab's rendered log, else nothing (see module docstring).
            # "Fails" includes printing nothing: an empty /dev/kmsg in a container reads as success.
            f"if dmesg 2>/dev/null | grep -q .; then {source} dmesg; {log}; dmesg 2>/dev/null | {grep}; "
            f"elif [ -r {lab} ]; then {source} {shlex.quote(LAB_DMESG)}; {log}; {grep} {lab}; "
            f"else {source} none; fi",
            "true",
        ]
    )


class TeeHostStatus(FactBase):
    """SEV-SNP and TDX host state together (one command; facts are not cached in pyinfra 3).

    Example::

        tee = host.get_fact(TeeHostStatus, _sudo=True)
        tee.snp.active, tee.tdx.active          # (True, False) on a working SNP host
        [str(c) for c in tee.snp.failed]       # what to fix, with hints
    """

    command = tee_command()

    def process(self, output: list[str]) -> TeeStatus:
        return parse_tee_sections(section_map(output))

    @staticmethod
    def default() -> TeeStatus:
        return parse_tee_sections({})


class SnpHostStatus(TeeHostStatus):
    """SEV-SNP host state: kvm_amd ``sev``/``sev_es``/``sev_snp``, ``/dev/sev``, ASID ranges,
    RMP table, SEV firmware version, IOMMU passthrough warning; ``checks``/``failed`` with hints.

    Example::

        snp = host.get_fact(SnpHostStatus, _sudo=True)
        snp.sev_snp, snp.asid("SEV-SNP")        # (True, AsidRange('SEV-SNP', 'enabled', 1, 99))
        for c in snp.failed:
            print(c)   # "sev_es_asids: FAIL: kvm_amd: SEV-ES disabled (ASIDs 0 - 0); fix: raise the SEV-ES ASID ..."
    """

    def process(self, output: list[str]) -> SnpStatus:
        return super().process(output).snp

    @staticmethod
    def default() -> SnpStatus:
        return TeeHostStatus.default().snp


class TdxHostStatus(TeeHostStatus):
    """Intel TDX host state: kvm_intel ``tdx``, BIOS KeyID range, module initialized and its
    version; ``checks``/``failed`` with hints.

    Example::

        tdx = host.get_fact(TdxHostStatus, _sudo=True)
        tdx.tdx, tdx.module_initialized, str(tdx.module_version)   # (True, True, '1.5.06')
    """

    def process(self, output: list[str]) -> TdxStatus:
        return super().process(output).tdx

    @staticmethod
    def default() -> TdxStatus:
        return TeeHostStatus.default().tdx

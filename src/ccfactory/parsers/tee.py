"""Proof that AMD SEV-SNP or Intel TDX is active on a host, from sysfs and the kernel log.

Input is what ``ccfactory.facts.tee`` collects in one command (sections named by the
``SECTION_*`` constants): ``/proc/cmdline``, the ``flags`` line of ``/proc/cpuinfo``,
``/proc/modules``, the kvm module parameters, TEE device nodes and the relevant kernel
log lines. Output is a ``SnpStatus`` and a ``TdxStatus``, each with ``checks`` (every
check with an operator hint) and ``failed`` (the blocking ones).

Kernel log formats are the kernel's own format strings (see docs/formats.md for the
source of each): ``kvm_amd: SEV-SNP enabled (ASIDs 1 - 99)``,
``SEV-SNP: RMP table physical range [0x... - 0x...]``, ``ccp 0000:..: SEV-SNP API:1.55 build:21``,
``AMD-Vi: SNP: IOMMU disabled or configured in passthrough mode, SNP cannot be supported.``,
``virt/tdx: BIOS enabled: private KeyID range [64, 128)``, ``virt/tdx: module initialized``.

Example::

    >>> snp = parse_snp_log(["[4.4] kvm_amd: SEV-ES disabled (ASIDs 0 - 0)"])
    >>> snp.asids[0].kind, snp.asids[0].count
    ('SEV-ES', 0)
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from ccfactory.parsers.checks import ERROR, WARNING, CheckResult
from ccfactory.parsers.kernel import (
    KernelCmdline,
    parse_cmdline,
    parse_param_bool,
    parse_path_values,
    parse_proc_modules,
)

# Section names shared with ccfactory.facts.tee (the command prints them as markers).
SECTION_CMDLINE = "cmdline"
SECTION_CPUFLAGS = "cpuflags"
SECTION_MODULES = "modules"
SECTION_PARAMS = "params"
SECTION_DEVICES = "devices"
SECTION_DMESG_SOURCE = "dmesg-source"
SECTION_DMESG = "dmesg"

# Only these kernel log lines are sent back (grep -E on the host keeps the output small).
DMESG_GREP = "SEV|SNP|RMP|AMD-Vi|kvm_amd|kvm_intel|virt/tdx|TDX"
DMESG_NONE = "none"

KVM_AMD_PARAMS = ("sev", "sev_es", "sev_snp")
PARAM_PATHS = (*(f"/sys/module/kvm_amd/parameters/{p}" for p in KVM_AMD_PARAMS), "/sys/module/kvm_intel/parameters/tdx")
TEE_DEVICES = ("/dev/sev", "/dev/kvm", "/dev/sgx_enclave", "/dev/sgx_provision", "/dev/sgx_vepc")

# SEV firmware needed for SNP (virtee/snphost docs) and for v3 attestation reports (CoCo docs).
SNP_MIN_FIRMWARE = (1, 51)
SNP_RECOMMENDED_FIRMWARE = (1, 55)

# ------------------------------------------------------------------ kernel log: SNP

# arch/x86/kvm/svm/sev.c sev_hardware_setup(): pr_info("SEV-SNP %s (ASIDs %u - %u)\n", ...)
_ASID = re.compile(r"kvm_amd: (SEV|SEV-ES|SEV-SNP) (enabled|disabled|unusable) \(ASIDs (\d+) - (\d+)\)")
# arch/x86/virt/svm/sev.c (pr_fmt "SEV-SNP: ")
_RMP_RANGE = re.compile(r"SEV-SNP: RMP table physical range \[0x([0-9a-fA-F]+) - 0x([0-9a-fA-F]+)\]")
_RMP_SEGMENTED = re.compile(r"SEV-SNP: Segmented RMP using \d+GB segments")
_RMP_NOT_RESERVED = re.compile(r"SEV-SNP: Memory for the RMP table has not been reserved by BIOS")
_RMP_TOO_SMALL = re.compile(
    r"SEV-SNP: (?:Memory reserved for the RMP table|Segmented RMP) does not cover full system RAM"
)
# drivers/iommu/amd/init.c iommu_snp_enable() (pr_fmt "AMD-Vi: "); older kernels said "IOMMU is disabled"
_IOMMU_PASSTHROUGH = re.compile(r"SNP: IOMMU (?:is )?disabled or configured in passthrough mode")
_IOMMU_NO_SNP = re.compile(r"SNP: IOMMU .*SNP cannot be supported")
# drivers/crypto/ccp/sev-dev.c: dev_info(sev->dev, "SEV-SNP API:%d.%d build:%d\n", ...) and "SEV API:..."
_FIRMWARE = re.compile(r"SEV(-SNP)? API:(\d+)\.(\d+) build:(\d+)")
_PSP_INIT_FAIL = re.compile(r"(SEV(?:-SNP)?: (?:failed to INIT|SNP_INIT(?:_EX)? failed|SNP_DF_FLUSH failed).*)$")


@dataclass(frozen=True)
class AsidRange:
    """One ``kvm_amd: <kind> <state> (ASIDs <first> - <last>)`` line."""

    kind: str  # SEV, SEV-ES, SEV-SNP
    state: str  # enabled, disabled, unusable
    first: int
    last: int

    @property
    def count(self) -> int:
        return self.last - self.first + 1 if self.first > 0 and self.last >= self.first else 0

    @property
    def usable(self) -> bool:
        return self.state == "enabled" and self.count > 0

    def __str__(self) -> str:
        return f"{self.kind} {self.state} (ASIDs {self.first} - {self.last})"


@dataclass(frozen=True)
class SevFirmware:
    """SEV firmware API version as the ccp driver logs it."""

    major: int
    minor: int
    build: int
    snp_initialized: bool  # the line said "SEV-SNP API" (SNP firmware initialized)

    @property
    def version(self) -> tuple[int, int]:
        return self.major, self.minor

    def __str__(self) -> str:
        return f"{self.major}.{self.minor} build {self.build}"


@dataclass(frozen=True)
class SnpLog:
    """What the kernel log says about SEV-SNP."""

    asids: tuple[AsidRange, ...] = ()
    rmp_range: tuple[int, int] | None = None
    rmp_segmented: bool = False
    rmp_not_reserved: bool = False
    rmp_too_small: bool = False
    iommu_passthrough: bool = False
    iommu_errors: tuple[str, ...] = ()  # other "SNP: IOMMU ... SNP cannot be supported" lines
    firmware: SevFirmware | None = None
    psp_init_errors: tuple[str, ...] = ()

    @property
    def rmp_seen(self) -> bool:
        return self.rmp_range is not None or self.rmp_segmented

    def asid(self, kind: str) -> AsidRange | None:
        found = [a for a in self.asids if a.kind == kind]
        return found[-1] if found else None


def parse_snp_log(lines: Iterable[str]) -> SnpLog:
    """Collect SEV/SNP facts from kernel log lines (timestamps and device prefixes allowed)."""
    asids: dict[str, AsidRange] = {}
    rmp = None
    seg = not_reserved = too_small = passthrough = False
    iommu_errors: list[str] = []
    psp_errors: list[str] = []
    firmware = None
    for line in lines:
        if m := _ASID.search(line):
            asids[m[1]] = AsidRange(m[1], m[2], int(m[3]), int(m[4]))
        elif m := _RMP_RANGE.search(line):
            rmp = (int(m[1], 16), int(m[2], 16))
        elif _RMP_SEGMENTED.search(line):
            seg = True
        elif _RMP_NOT_RESERVED.search(line):
            not_reserved = True
        elif _RMP_TOO_SMALL.search(line):
            too_small = True
        elif _IOMMU_PASSTHROUGH.search(line):
            passthrough = True
        elif m := _IOMMU_NO_SNP.search(line):
            iommu_errors.append(m[0])
        elif m := _FIRMWARE.search(line):
            fw = SevFirmware(int(m[2]), int(m[3]), int(m[4]), bool(m[1]))
            # Keep the SNP line when both are logged (same firmware, but it proves SNP init).
            if firmware is None or fw.snp_initialized or not firmware.snp_initialized:
                firmware = fw
        elif m := _PSP_INIT_FAIL.search(line):
            psp_errors.append(m[1])
    order = {"SEV": 0, "SEV-ES": 1, "SEV-SNP": 2}
    return SnpLog(
        asids=tuple(sorted(asids.values(), key=lambda a: order[a.kind])),
        rmp_range=rmp,
        rmp_segmented=seg,
        rmp_not_reserved=not_reserved,
        rmp_too_small=too_small,
        iommu_passthrough=passthrough,
        iommu_errors=tuple(iommu_errors),
        firmware=firmware,
        psp_init_errors=tuple(psp_errors),
    )


# ------------------------------------------------------------------ kernel log: TDX

# arch/x86/virt/vmx/tdx/tdx.c and tdx_global_metadata.c (pr_fmt "virt/tdx: ")
_KEYIDS = re.compile(r"virt/tdx: BIOS enabled: private KeyID range \[(\d+), (\d+)\)")
_TDX_INIT_OK = re.compile(r"virt/tdx: (?:TDX-Module|module) initialized")
_TDX_INIT_FAIL = re.compile(r"virt/tdx: (?:TDX-Module|module) initialization failed \((-?\d+)\)")
_TDX_REASON = re.compile(r"virt/tdx: initialization failed: (.+?)\.?\s*$")
_TDX_NOT_LOADED = re.compile(r"virt/tdx: module not loaded")
_TDX_NOT_SUPPORTED = re.compile(r"virt/tdx: TDX not supported by the host platform")
_TDX_PAMT = re.compile(r"virt/tdx: (\d+) KB allocated for PAMT")
_TDX_VERSION_NEW = re.compile(r"virt/tdx: Module version: (\d+)\.(\d+)\.(\d+)")
_TDX_VERSION_OLD = re.compile(
    r"virt/tdx: TDX module: attributes (0x[0-9a-fA-F]+), vendor_id (0x[0-9a-fA-F]+), "
    r"major_version (\d+), minor_version (\d+), build_date (\d+), build_num (\d+)"
)


@dataclass(frozen=True)
class TdxModuleVersion:
    major: int
    minor: int
    update: int | None = None  # "Module version: 1.5.06" (newer kernels)
    build_date: int | None = None  # "TDX module: ... build_date ..., build_num ..." (older kernels)
    build_num: int | None = None
    vendor_id: str | None = None

    def __str__(self) -> str:
        if self.update is not None:
            return f"{self.major}.{self.minor}.{self.update:02d}"
        return f"{self.major}.{self.minor} build {self.build_num} ({self.build_date})"


@dataclass(frozen=True)
class TdxLog:
    keyid_range: tuple[int, int] | None = None  # [first, end) as logged
    module_initialized: bool = False
    init_error: int | None = None  # rc of "module initialization failed (rc)"
    init_failures: tuple[str, ...] = ()  # "initialization failed: <reason>" lines
    module_not_loaded: bool = False
    not_supported: bool = False
    pamt_kb: int | None = None
    module_version: TdxModuleVersion | None = None


def parse_tdx_log(lines: Iterable[str]) -> TdxLog:
    keyids = version = pamt = error = None
    initialized = not_loaded = not_supported = False
    reasons: list[str] = []
    for line in lines:
        if m := _KEYIDS.search(line):
            keyids = (int(m[1]), int(m[2]))
        elif _TDX_INIT_OK.search(line):
            initialized = True
        elif m := _TDX_INIT_FAIL.search(line):
            error = int(m[1])
        elif m := _TDX_REASON.search(line):
            reasons.append(m[1])
        elif _TDX_NOT_LOADED.search(line):
            not_loaded = True
        elif _TDX_NOT_SUPPORTED.search(line):
            not_supported = True
        elif m := _TDX_PAMT.search(line):
            pamt = int(m[1])
        elif m := _TDX_VERSION_NEW.search(line):
            version = TdxModuleVersion(int(m[1]), int(m[2]), update=int(m[3]))
        elif m := _TDX_VERSION_OLD.search(line):
            version = TdxModuleVersion(int(m[3]), int(m[4]), build_date=int(m[5]), build_num=int(m[6]), vendor_id=m[2])
    return TdxLog(keyids, initialized, error, tuple(reasons), not_loaded, not_supported, pamt, version)


# ------------------------------------------------------------------ host status


@dataclass(frozen=True)
class HostTeeInputs:
    """Everything the TEE fact reads, parsed but not yet judged."""

    cmdline: KernelCmdline = field(default_factory=KernelCmdline)
    cpu_flags: frozenset[str] = frozenset()
    modules: frozenset[str] = frozenset()
    params: Mapping[str, str] | None = None  # sysfs path -> raw value
    devices: frozenset[str] = frozenset()
    dmesg_source: str = DMESG_NONE  # "dmesg", the lab file path, or "none"
    dmesg: tuple[str, ...] = ()

    @property
    def dmesg_readable(self) -> bool:
        return self.dmesg_source != DMESG_NONE

    def param(self, module: str, name: str) -> bool | None:
        return parse_param_bool((self.params or {}).get(f"/sys/module/{module}/parameters/{name}"))

    def module_present(self, module: str) -> bool:
        # Built-in modules are absent from /proc/modules but still have /sys/module/<m>/parameters.
        return module in self.modules or any(p.startswith(f"/sys/module/{module}/") for p in self.params or {})


@dataclass(frozen=True)
class SnpStatus:
    """SEV-SNP host state. ``checks`` judges it; ``failed`` lists what blocks SNP guests.

    Example::

        status = host.get_fact(SnpHostStatus)
        for c in status.failed:
            print(c)          # e.g. "sev_es_asids: FAIL: ...; fix: raise the SEV-ES ASID space limit ..."
    """

    inputs: HostTeeInputs
    log: SnpLog

    @property
    def kvm_amd_loaded(self) -> bool:
        return self.inputs.module_present("kvm_amd")

    @property
    def sev(self) -> bool | None:
        return self.inputs.param("kvm_amd", "sev")

    @property
    def sev_es(self) -> bool | None:
        return self.inputs.param("kvm_amd", "sev_es")

    @property
    def sev_snp(self) -> bool | None:
        return self.inputs.param("kvm_amd", "sev_snp")

    @property
    def dev_sev(self) -> bool:
        return "/dev/sev" in self.inputs.devices

    @property
    def asids(self) -> tuple[AsidRange, ...]:
        return self.log.asids

    def asid(self, kind: str) -> AsidRange | None:
        """The ``SEV``, ``SEV-ES`` or ``SEV-SNP`` ASID line, if logged."""
        return self.log.asid(kind)

    @property
    def firmware(self) -> SevFirmware | None:
        return self.log.firmware

    @property
    def rmp_seen(self) -> bool:
        return self.log.rmp_seen

    @property
    def iommu_passthrough_warning(self) -> bool:
        return self.log.iommu_passthrough

    @property
    def active(self) -> bool:
        """SNP guests can run: kvm_amd.sev_snp is Y and no blocking check failed."""
        return self.sev_snp is True and not self.failed

    @property
    def checks(self) -> tuple[CheckResult, ...]:
        return tuple(check(self) for check in SNP_CHECKS)

    @property
    def failed(self) -> tuple[CheckResult, ...]:
        return tuple(c for c in self.checks if c.failed)


@dataclass(frozen=True)
class TdxStatus:
    """Intel TDX host state. ``checks`` judges it; ``failed`` lists what blocks TDs.

    Example::

        status = host.get_fact(TdxHostStatus)
        status.module_version        # TdxModuleVersion(major=1, minor=5, update=6, ...) or None
    """

    inputs: HostTeeInputs
    log: TdxLog

    @property
    def kvm_intel_loaded(self) -> bool:
        return self.inputs.module_present("kvm_intel")

    @property
    def tdx(self) -> bool | None:
        """kvm_intel's ``tdx`` parameter (sysfs)."""
        return self.inputs.param("kvm_intel", "tdx")

    @property
    def module_initialized(self) -> bool:
        return self.log.module_initialized

    @property
    def module_version(self) -> TdxModuleVersion | None:
        return self.log.module_version

    @property
    def active(self) -> bool:
        return self.tdx is True and not self.failed

    @property
    def checks(self) -> tuple[CheckResult, ...]:
        return tuple(check(self) for check in TDX_CHECKS)

    @property
    def failed(self) -> tuple[CheckResult, ...]:
        return tuple(c for c in self.checks if c.failed)


@dataclass(frozen=True)
class TeeStatus:
    """Both TEEs from one command; a role looks at the one its host has."""

    inputs: HostTeeInputs
    snp: SnpStatus
    tdx: TdxStatus

    @property
    def cmdline(self) -> KernelCmdline:
        return self.inputs.cmdline


def parse_tee_sections(sections: Mapping[str, tuple[str, ...]]) -> TeeStatus:
    """Build the status from the TEE fact's sections (see ``SECTION_*``)."""
    flags_line = " ".join(sections.get(SECTION_CPUFLAGS, ()))
    _, _, flags = flags_line.partition(":")
    source_lines = [s.strip() for s in sections.get(SECTION_DMESG_SOURCE, ()) if s.strip()]
    inputs = HostTeeInputs(
        cmdline=parse_cmdline(" ".join(sections.get(SECTION_CMDLINE, ()))),
        cpu_flags=frozenset(flags.split()),
        modules=frozenset(m.name for m in parse_proc_modules(sections.get(SECTION_MODULES, ()))),
        params=parse_path_values(sections.get(SECTION_PARAMS, ())),
        devices=frozenset(d.strip() for d in sections.get(SECTION_DEVICES, ()) if d.strip()),
        dmesg_source=source_lines[0] if source_lines else DMESG_NONE,
        dmesg=tuple(sections.get(SECTION_DMESG, ())),
    )
    return TeeStatus(
        inputs, SnpStatus(inputs, parse_snp_log(inputs.dmesg)), TdxStatus(inputs, parse_tdx_log(inputs.dmesg))
    )


# ------------------------------------------------------------------ SNP checks

_DMESG_HINT = "run the fact with sudo (the kernel log is root-only when kernel.dmesg_restrict=1)"
_REBOOT = "then update-grub and reboot"
_ASID_HINT = (
    "raise the SEV-ES ASID Space Limit in BIOS (AMD CBS > CPU Common Options), e.g. 100 gives ASIDs 1-99 to "
    "SEV-ES/SNP guests; the default 1 leaves none"
)
_SNP_BIOS = "enable SMEE, SEV-SNP Support and SNP Memory (RMP Table) Coverage in BIOS (AMD CBS), then reboot"
_AFTER = "follows from the failures above, fix them first: "

# Kernel command line settings that keep SNP off: (parameter, values, why, fix).
_SNP_BAD_CMDLINE = (
    ("iommu", ("pt",), "iommu=pt puts the IOMMU in passthrough mode, which disables SNP", "remove iommu=pt"),
    ("iommu", ("off",), "iommu=off disables the IOMMU, which SNP needs", "remove iommu=off"),
    ("iommu.passthrough", ("1", "y", "on"), "iommu.passthrough=1 disables SNP", "remove iommu.passthrough=1"),
    ("amd_iommu", ("off",), "amd_iommu=off disables the IOMMU, which SNP needs", "remove amd_iommu=off"),
)


def _cmdline_hits(cmdline: KernelCmdline, table) -> list[tuple[str, str]]:
    hits = []
    for key, bad, why, fix in table:
        value = cmdline.value(key)
        if value is not None and value.lower() in bad:
            hits.append((why, fix))
    return hits


def _log_check(s, name: str, present: bool, ok_detail: str, missing_detail: str, hint: str) -> CheckResult:
    """A check proven by a kernel log line; unknown when the log cannot be read."""
    if present:
        return CheckResult(name, True, ok_detail)
    if not s.inputs.dmesg_readable:
        return CheckResult(name, None, f"{missing_detail}? the kernel log could not be read", _DMESG_HINT)
    return CheckResult(name, False, missing_detail, hint)


def _snp_kvm_amd(s: SnpStatus) -> CheckResult:
    if s.kvm_amd_loaded:
        return CheckResult("kvm_amd_loaded", True, "kvm_amd is loaded")
    return CheckResult(
        "kvm_amd_loaded",
        False,
        "kvm_amd is not loaded",
        "load it (modprobe kvm_amd) and make sure no modprobe.d file blacklists it; "
        "the kernel needs CONFIG_KVM_AMD_SEV=y",
    )


def _snp_iommu(s: SnpStatus) -> CheckResult:
    hits = _cmdline_hits(s.inputs.cmdline, _SNP_BAD_CMDLINE)
    if hits:
        return CheckResult(
            "iommu_not_passthrough",
            False,
            "; ".join(why for why, _ in hits),
            f"{', '.join(fix for _, fix in hits)} from GRUB_CMDLINE_LINUX_DEFAULT in /etc/default/grub, {_REBOOT}",
        )
    if s.log.iommu_passthrough:
        return CheckResult(
            "iommu_not_passthrough",
            False,
            "the kernel logged 'SNP: IOMMU disabled or configured in passthrough mode'",
            "enable the IOMMU in BIOS (NBIO: IOMMU = Enabled) and remove any iommu=pt / iommu=off / "
            f"amd_iommu=off from the kernel command line, {_REBOOT}",
        )
    return CheckResult("iommu_not_passthrough", True, "IOMMU not disabled and not in passthrough mode")


def _snp_iommu_support(s: SnpStatus) -> CheckResult:
    if s.log.iommu_errors:
        return CheckResult(
            "iommu_snp_support",
            False,
            "; ".join(s.log.iommu_errors),
            "enable IOMMU and SEV-SNP Support in BIOS (NBIO common options) and do not select the IOMMU v2 "
            "page table on the kernel command line",
        )
    return CheckResult("iommu_snp_support", True, "no IOMMU SNP errors in the kernel log")


def _snp_rmp(s: SnpStatus) -> CheckResult:
    if s.log.rmp_not_reserved:
        return CheckResult(
            "rmp_table",
            False,
            "SEV-SNP: Memory for the RMP table has not been reserved by BIOS",
            "set 'SNP Memory (RMP Table) Coverage' to Enabled in BIOS (AMD CBS > CPU Common Options) and "
            "make sure SMEE and SEV-SNP Support are enabled",
        )
    if s.log.rmp_too_small:
        return CheckResult(
            "rmp_table",
            False,
            "the RMP table reserved by BIOS does not cover all system RAM",
            "set 'SNP Memory (RMP Table) Coverage' to Enabled (not Custom) in BIOS",
        )
    if not s.log.rmp_seen and s.sev_snp is True:
        # SNP is on, so the line was printed at boot; the ring buffer has wrapped since.
        return CheckResult("rmp_table", None, "RMP line not in the kernel log (log wrapped?); kvm_amd.sev_snp is Y")
    rng = s.log.rmp_range
    detail = f"RMP table at [0x{rng[0]:016x} - 0x{rng[1]:016x}]" if rng else "segmented RMP table reserved"
    return _log_check(
        s,
        "rmp_table",
        s.log.rmp_seen,
        detail,
        "no 'SEV-SNP: RMP table physical range' line",
        _SNP_BIOS,
    )


def _asid_line(s: SnpStatus, kind: str, name: str, hint: str) -> CheckResult:
    """A check on one ``kvm_amd: <kind> ... (ASIDs a - b)`` line."""
    rng = s.log.asid(kind)
    if rng is None and s.sev_snp is True:
        return CheckResult(name, None, f"no kvm_amd {kind} line in the kernel log (log wrapped?)")
    if rng is not None and not rng.usable:
        return CheckResult(name, False, f"kvm_amd: {rng}", hint)
    return _log_check(s, name, rng is not None, f"kvm_amd: {rng}", f"no 'kvm_amd: {kind}' line", hint)


def _snp_causes(s: SnpStatus) -> list[str]:
    """Root causes already reported by earlier checks, so dependent checks point at them."""
    es = s.log.asid("SEV-ES")
    causes = (
        (not s.kvm_amd_loaded, "kvm_amd is not loaded (kvm_amd_loaded)"),
        (bool(s.inputs.cpu_flags) and "sev_snp" not in s.inputs.cpu_flags, "SNP is off in BIOS (cpu_sev_snp)"),
        (
            bool(_cmdline_hits(s.inputs.cmdline, _SNP_BAD_CMDLINE))
            or s.log.iommu_passthrough
            or bool(s.log.iommu_errors),
            "the IOMMU setting (iommu_not_passthrough / iommu_snp_support)",
        ),
        (s.log.rmp_not_reserved or s.log.rmp_too_small, "the RMP table (rmp_table)"),
        (es is not None and es.count == 0, "no ASIDs for SEV-ES/SNP (sev_es_asids)"),
    )
    return [text for hit, text in causes if hit]


def _snp_cpu_flag(s: SnpStatus) -> CheckResult:
    flags = s.inputs.cpu_flags
    if not flags:
        return CheckResult("cpu_sev_snp", None, "CPU flags could not be read")
    if "sev_snp" in flags:
        return CheckResult("cpu_sev_snp", True, "CPU flag sev_snp present")
    # The kernel also clears the flag when the BIOS reserved no RMP table.
    return CheckResult("cpu_sev_snp", False, "CPU flag sev_snp is missing from /proc/cpuinfo", _SNP_BIOS)


def _snp_sev_es_asids(s: SnpStatus) -> CheckResult:
    rng = s.log.asid("SEV-ES")
    if rng is not None and rng.count == 0:
        # "SEV-ES disabled (ASIDs 0 - 0)": the BIOS left no ASIDs below the SEV range.
        return CheckResult("sev_es_asids", False, f"kvm_amd: {rng}", _ASID_HINT)
    if rng is not None and not rng.usable:
        snp = s.log.asid("SEV-SNP")
        return CheckResult(
            "sev_es_asids",
            False,
            f"kvm_amd: {rng}",
            "remove kvm_amd.sev_es=0 (kernel command line or modprobe.d) and check that SMEE is enabled in BIOS",
            WARNING if snp is not None and snp.usable else ERROR,
        )
    causes = _snp_causes(s)
    return _asid_line(s, "SEV-ES", "sev_es_asids", _AFTER + "; ".join(causes) if causes else _ASID_HINT)


def _snp_snp_asids(s: SnpStatus) -> CheckResult:
    causes = _snp_causes(s)
    hint = _AFTER + "; ".join(causes) if causes else f"{_SNP_BIOS}; {_ASID_HINT}; do not set kvm_amd.sev_snp=0"
    return _asid_line(s, "SEV-SNP", "snp_asids", hint)


def _snp_param(s: SnpStatus) -> CheckResult:
    value = s.sev_snp
    if value is True:
        return CheckResult("kvm_amd_sev_snp", True, "/sys/module/kvm_amd/parameters/sev_snp is Y")
    cmd = s.inputs.cmdline.module_param("kvm_amd", "sev_snp")
    causes = _snp_causes(s)
    if cmd is not None and parse_param_bool(cmd) is False:
        hint = f"kvm_amd.sev_snp={cmd} is on the kernel command line: remove it, {_REBOOT}"
    elif causes:
        hint = _AFTER + "; ".join(causes)
    else:
        hint = "look for 'options kvm_amd sev_snp=0' in /etc/modprobe.d and remove it, then reboot"
    shown = "missing" if value is None else "N"
    return CheckResult("kvm_amd_sev_snp", False, f"/sys/module/kvm_amd/parameters/sev_snp is {shown}", hint)


def _snp_dev_sev(s: SnpStatus) -> CheckResult:
    if s.dev_sev:
        return CheckResult("dev_sev", True, "/dev/sev exists")
    return CheckResult(
        "dev_sev",
        False,
        "/dev/sev is missing",
        "load the PSP driver (modprobe ccp) and make sure SEV/PSP is enabled in BIOS",
    )


def _snp_psp_init(s: SnpStatus) -> CheckResult:
    if s.log.psp_init_errors:
        return CheckResult(
            "psp_snp_init",
            False,
            "; ".join(s.log.psp_init_errors),
            "the PSP refused SEV/SNP initialization: check the BIOS SNP settings (RMP coverage, IOMMU) and "
            "update the SEV firmware (BIOS update)",
        )
    return CheckResult("psp_snp_init", True, "no PSP initialization errors in the kernel log")


def _snp_firmware(s: SnpStatus) -> CheckResult:
    fw = s.log.firmware
    if fw is None:
        # Not every kernel logs the version at boot; unknown is not a failure.
        return CheckResult("sev_firmware", None, "SEV firmware version not in the kernel log", "", WARNING)
    if fw.version < SNP_MIN_FIRMWARE:
        need = ".".join(map(str, SNP_MIN_FIRMWARE))
        return CheckResult(
            "sev_firmware", False, f"SEV firmware {fw} is older than {need}, the minimum for SNP", "update the BIOS"
        )
    if fw.version < SNP_RECOMMENDED_FIRMWARE:
        want = ".".join(map(str, SNP_RECOMMENDED_FIRMWARE))
        return CheckResult(
            "sev_firmware",
            False,
            f"SEV firmware {fw} is older than {want}; CoCo needs {want}+ for v3 attestation reports",
            "update the BIOS",
            WARNING,
        )
    return CheckResult("sev_firmware", True, f"SEV firmware {fw}")


def _snp_cpus_online(s: SnpStatus) -> CheckResult:
    # hippius-cvm: offlining CPUs breaks SNP_DF_FLUSH and leaks ASIDs; disable SMT in BIOS instead.
    bad = [k for k in ("nosmt", "maxcpus", "nr_cpus") if s.inputs.cmdline.has(k)]
    if bad:
        return CheckResult(
            "cpus_online",
            False,
            f"{', '.join(bad)} on the kernel command line offlines CPUs",
            f"remove {', '.join(bad)} (disable SMT in BIOS if needed), {_REBOOT}",
            WARNING,
        )
    return CheckResult("cpus_online", True, "no CPUs offlined on the kernel command line")


def _dmesg_readable(s) -> CheckResult:
    src = s.inputs.dmesg_source
    if s.inputs.dmesg_readable:
        return CheckResult("kernel_log", True, f"kernel log read from {src}", severity=WARNING)
    return CheckResult("kernel_log", False, "the kernel log could not be read", _DMESG_HINT, WARNING)


# Order: root causes first, so the first failure shown is the one to fix first.
SNP_CHECKS: tuple[Callable[[SnpStatus], CheckResult], ...] = (
    _dmesg_readable,
    _snp_kvm_amd,
    _snp_cpu_flag,
    _snp_iommu,
    _snp_iommu_support,
    _snp_rmp,
    _snp_sev_es_asids,
    _snp_snp_asids,
    _snp_param,
    _snp_dev_sev,
    _snp_psp_init,
    _snp_firmware,
    _snp_cpus_online,
)

# ------------------------------------------------------------------ TDX checks

_TDX_BIOS = (
    "enable TME, TME-MT (multi-tenant), TDX, the TDX SEAM loader and a non-zero TME-MT/TDX key split in BIOS "
    "(each stage needs a reboot)"
)


def _tdx_kvm_intel(s: TdxStatus) -> CheckResult:
    if s.kvm_intel_loaded:
        return CheckResult("kvm_intel_loaded", True, "kvm_intel is loaded")
    return CheckResult(
        "kvm_intel_loaded",
        False,
        "kvm_intel is not loaded",
        "load it (modprobe kvm_intel) and make sure no modprobe.d file blacklists it; "
        "the kernel needs CONFIG_INTEL_TDX_HOST=y",
    )


def _tdx_keyids(s: TdxStatus) -> CheckResult:
    too_few = [r for r in s.log.init_failures if "KeyID" in r]
    if too_few:
        return CheckResult(
            "tdx_keyids",
            False,
            f"virt/tdx: initialization failed: {too_few[0]}",
            "raise the TME-MT/TDX key split in BIOS",
        )
    if s.log.not_supported:
        return CheckResult("tdx_keyids", False, "virt/tdx: TDX not supported by the host platform", _TDX_BIOS)
    rng = s.log.keyid_range
    if rng is None and "tdx_host_platform" in s.inputs.cpu_flags:
        return CheckResult("tdx_keyids", True, "CPU flag tdx_host_platform present (BIOS enabled TDX)")
    return _log_check(
        s,
        "tdx_keyids",
        rng is not None,
        f"BIOS enabled private KeyID range [{rng[0]}, {rng[1]})" if rng else "",
        "no 'virt/tdx: BIOS enabled: private KeyID range' line",
        _TDX_BIOS,
    )


def _tdx_hibernation(s: TdxStatus) -> CheckResult:
    if any("Hibernation" in r for r in s.log.init_failures):
        return CheckResult(
            "tdx_nohibernate",
            False,
            "virt/tdx: initialization failed: Hibernation support is enabled",
            f"add nohibernate to GRUB_CMDLINE_LINUX_DEFAULT, {_REBOOT}",
        )
    if not s.inputs.cmdline.has("nohibernate"):
        return CheckResult(
            "tdx_nohibernate",
            False,
            "nohibernate is not on the kernel command line",
            f"add nohibernate to GRUB_CMDLINE_LINUX_DEFAULT (TDX is exclusive with hibernation), {_REBOOT}",
            WARNING,
        )
    return CheckResult("tdx_nohibernate", True, "nohibernate is on the kernel command line")


def _tdx_causes(s: TdxStatus) -> list[str]:
    """Root causes reported by earlier TDX checks, so dependent checks point at them."""
    keyids_missing = (
        s.log.keyid_range is None
        and "tdx_host_platform" not in s.inputs.cpu_flags
        and (s.inputs.dmesg_readable or bool(s.inputs.cpu_flags))
    )
    causes = (
        (not s.kvm_intel_loaded, "kvm_intel is not loaded (kvm_intel_loaded)"),
        (keyids_missing or s.log.not_supported, "TDX is off in BIOS (tdx_keyids)"),
        (any("Hibernation" in r for r in s.log.init_failures), "hibernation is enabled (tdx_nohibernate)"),
    )
    return [text for hit, text in causes if hit]


def _tdx_module(s: TdxStatus) -> CheckResult:
    log = s.log
    if log.module_initialized:
        version = f" (module {log.module_version})" if log.module_version else ""
        return CheckResult("tdx_module", True, f"virt/tdx: module initialized{version}")
    if log.module_not_loaded:
        return CheckResult(
            "tdx_module",
            False,
            "virt/tdx: module not loaded",
            "the SEAM loader did not load a TDX module: enable the TDX SEAM loader in BIOS and do a full power "
            "cycle (not a warm reboot)",
        )
    if log.init_error is not None:
        return CheckResult(
            "tdx_module",
            False,
            f"virt/tdx: module initialization failed ({log.init_error})",
            "the TDX module is too old for this kernel (-5 is the usual case): update the BIOS / TDX module",
        )
    causes = _tdx_causes(s)
    if causes:
        return CheckResult("tdx_module", False, "TDX module not initialized", _AFTER + "; ".join(causes))
    if s.tdx is False:
        return CheckResult(
            "tdx_module",
            False,
            "TDX module not initialized (kvm_intel.tdx is N)",
            "set kvm_intel.tdx=1 (see the kvm_intel_tdx check)",
        )
    return _log_check(s, "tdx_module", False, "", "no 'virt/tdx: module initialized' line", _TDX_BIOS)


def _tdx_param(s: TdxStatus) -> CheckResult:
    if s.tdx is True:
        return CheckResult("kvm_intel_tdx", True, "/sys/module/kvm_intel/parameters/tdx is Y")
    if s.tdx is None:
        return CheckResult(
            "kvm_intel_tdx",
            False,
            "/sys/module/kvm_intel/parameters/tdx is missing: this kernel has no KVM TDX support",
            "boot a kernel with KVM TDX host support (6.16+, CONFIG_INTEL_TDX_HOST=y; see host_kernel checks)",
        )
    causes = _tdx_causes(s)
    requested = parse_param_bool(s.inputs.cmdline.module_param("kvm_intel", "tdx")) is True
    # KVM turns the parameter back to N when TDX cannot be brought up, even if it was requested.
    hint = (
        _AFTER + "; ".join(causes)
        if requested and causes
        else "add 'options kvm_intel tdx=1' to /etc/modprobe.d/tdx.conf (or kvm_intel.tdx=1 to the kernel command "
        "line) and reboot; KVM TDX needs kernel 6.16+"
    )
    return CheckResult("kvm_intel_tdx", False, "/sys/module/kvm_intel/parameters/tdx is N", hint)


TDX_CHECKS: tuple[Callable[[TdxStatus], CheckResult], ...] = (
    _dmesg_readable,
    _tdx_kvm_intel,
    _tdx_keyids,
    _tdx_hibernation,
    _tdx_module,
    _tdx_param,
)

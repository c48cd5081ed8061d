"""Render a lab node's simulated hardware: a pure function of firmware, boot config and profile.

``render(RenderInput) -> {node path: content}``, computed at every boot from

(a) the BMC's *applied* BIOS state (``PlatformFeatures``),
(b) the node's own boot config (``BootConfig``: kernel command line as update-grub
    would build it, modprobe.d options/blacklists, VFIO selection),
(c) the hardware profile (CPU, kernel, PCI devices), and
(d) the GPUs' CC/PPCIe modes (``gpus.json``).

Rules follow the kernel (docs/reference/cc-stack.md §2-3):

* **SNP** is active (``CC_ATTR_HOST_SEV_SNP``) only if SMEE, SNP and RMP coverage are on in
  the applied BIOS and the IOMMU is on and *not* in passthrough mode; ``iommu=pt`` (or
  ``iommu=off``/``amd_iommu=off``, or the IOMMU off in BIOS) logs
  ``AMD-Vi: SNP: IOMMU disabled or configured in passthrough mode, SNP cannot be supported.``
  ``kvm_amd`` prints ``SEV``/``SEV-ES``/``SEV-SNP`` lines with ASID ranges from the BIOS
  "SEV-ES ASID space limit" (1 means no SEV-ES/SNP ASIDs) as ``sev_hardware_setup()``
  does, and its ``sev``/``sev_es``/``sev_snp`` parameters follow (module options like
  ``sev_snp=0`` switch them off). ``/dev/sev`` exists when SME is on (ccp/PSP).
* **TDX**: the BIOS enables it (``tdx_host_platform`` CPU flag, "BIOS enabled" line) when
  TME, TME-MT, TDX, the SEAM loader and a non-zero key split are all on; the module is
  initialized (``virt/tdx: module initialized``, ``/sys/firmware/tdx/tdx_module``,
  ``kvm_intel`` ``tdx=Y``) only if also ``kvm_intel.tdx=1`` is given (command line or
  modprobe.d option).
* **GPUs** (and every profile PCI device) appear under ``/sys/bus/pci``; a device is bound
  to ``vfio-pci`` only if the node's VFIO config selects it and the IOMMU is on. The
  lab never binds ``nvidia`` (no ``/dev/nvidia*``).
* **dmesg**: ``dmesg`` cannot read the kernel log inside an nspawn container; the
  rendered log is at ``/var/log/ccfactory-lab/dmesg``. Facts read that file when
  ``dmesg`` fails.

Layout notes: PCI device directories live at ``/sys/bus/pci/<bdf>`` (sysfs mount points
cannot be created, so the lab replaces whole directories) with ``devices/<bdf>`` as
symlinks to them; that depth makes the real relative links resolve
(``driver -> ../../../bus/pci/drivers/vfio-pci``,
``iommu_group -> ../../../kernel/iommu_groups/N``).

Example::

    >>> from ccfactory.lab.hwprofile import load_profile
    >>> from ccfactory.lab.bootconfig import BootConfig
    >>> p = load_profile("amd-snp-hgx")
    >>> on = PlatformFeatures(smee=True, snp=True, rmp_coverage=True, sev_es_asid_limit=100)
    >>> files = render(RenderInput("node1", p, on, BootConfig(p.kernel["cmdline"])))
    >>> files["/sys/module/kvm_amd/parameters/sev_snp"]
    'Y\\n'
    >>> files = render(RenderInput("node1", p, on, BootConfig(p.kernel["cmdline"] + " iommu=pt")))
    >>> files["/sys/module/kvm_amd/parameters/sev_snp"]
    'N\\n'
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

from ccfactory.lab.bootconfig import BootConfig, cmdline_value, kernel_params
from ccfactory.lab.gpustate import GpuState
from ccfactory.lab.hwprofile import PciDevice, Profile
from ccfactory.lab.platform import PlatformFeatures

DMESG_PATH = "/var/log/ccfactory-lab/dmesg"
HARDWARE_JSON = "/var/log/ccfactory-lab/hardware.json"
SNP_IOMMU_MESSAGE = "SNP: IOMMU disabled or configured in passthrough mode, SNP cannot be supported."
VFIO_DRIVER_LINK = "../../../bus/pci/drivers/vfio-pci"
IOMMU_GROUP_BASE = 20  # first IOMMU group number used for profile devices
AMD_BUGS = "sysret_ss_attrs spectre_v1 spectre_v2 spec_store_bypass srso"
INTEL_BUGS = "spectre_v1 spectre_v2 spec_store_bypass swapgs eibrs_pbrsb bhi"


@dataclass(frozen=True)
class Symlink:
    """A symbolic link with this (relative) target."""

    target: str


@dataclass(frozen=True)
class CharDevice:
    """A character device node; the lab bind-mounts ``source`` (no ioctl semantics)."""

    source: str = "/dev/null"


@dataclass(frozen=True)
class Directory:
    """An empty directory that must exist."""


Content = str | bytes | Symlink | CharDevice | Directory


@dataclass(frozen=True)
class RenderInput:
    node: str
    profile: Profile
    features: PlatformFeatures
    boot: BootConfig
    gpus: GpuState = field(default_factory=GpuState)
    cpus: int = 2  # processors listed in /proc/cpuinfo (nproc in the node is the host's)


@dataclass
class HardwareState:
    """What the machine ends up with after firmware + kernel (derived, pure)."""

    cpu_vendor: str = ""  # "amd" | "intel"
    iommu: bool = False
    iommu_passthrough: bool = False
    # AMD
    sme: bool = False
    snp_cpu: bool = False  # sev_snp CPU flag (BIOS SNP + RMP reserved)
    snp_host: bool = False  # CC_ATTR_HOST_SEV_SNP after the IOMMU check
    kvm_amd: bool = False
    sev: bool = False
    sev_es: bool = False
    sev_snp: bool = False
    min_sev_asid: int = 0
    max_sev_asid: int = 0
    dev_sev: bool = False
    # Intel
    tme: bool = False
    mktme: bool = False
    tdx_bios: bool = False
    kvm_intel: bool = False
    tdx_requested: bool = False
    tdx_module: bool = False
    sgx: bool = False
    # devices
    vfio_pci: bool = False
    vfio_bound: list[str] = field(default_factory=list)
    vfio_failed: list[str] = field(default_factory=list)
    ccp_bound: list[str] = field(default_factory=list)
    iommu_groups: dict[str, int] = field(default_factory=dict)


# ------------------------------------------------------------------ helpers


def _yn(v: bool) -> str:
    return "Y\n" if v else "N\n"


def _param_bool(value: str | None, default: bool) -> bool:
    """Kernel bool parameter parsing (param_set_bool): y/Y/1/on are true, n/N/0/off false."""
    if value is None:
        return default
    v = value.strip().lower()
    if v in ("", "y", "1", "on", "yes", "true"):
        return True
    if v in ("n", "0", "off", "no", "false"):
        return False
    return default


def _iommu_options(cmdline: str) -> tuple[bool, bool]:
    """(iommu=off given, passthrough) from ``iommu=`` and ``iommu.passthrough=``, in order."""
    off = pt = False
    for key, val in kernel_params(cmdline):
        if key == "iommu" and val:
            for opt in val.split(","):
                if opt == "off":
                    off = True
                elif opt == "pt":
                    pt = True
                elif opt == "nopt":
                    pt = False
        elif key == "iommu.passthrough" and val is not None:
            pt = _param_bool(val, pt)
    return off, pt


# ------------------------------------------------------------------ the rules


def hardware_state(inp: RenderInput) -> HardwareState:
    """Apply the firmware and kernel rules (see the module docstring); pure."""
    p, f, boot = inp.profile, inp.features, inp.boot
    hw = HardwareState(cpu_vendor="amd" if p.cpu["vendor_id"] == "AuthenticAMD" else "intel")
    cmd = boot.cmdline
    iommu_off, pt = _iommu_options(cmd)
    default_on = bool(p.kernel.get("iommu_default_on", True))
    if hw.cpu_vendor == "amd":
        vendor_switch = cmdline_value(cmd, "amd_iommu")
        hw.iommu = f.iommu and not iommu_off and not (vendor_switch and "off" in vendor_switch.split(","))
    else:
        vendor_switch = cmdline_value(cmd, "intel_iommu")
        opts = (vendor_switch or "").split(",")
        wanted = "on" in opts or (default_on and "off" not in opts)
        hw.iommu = f.iommu and not iommu_off and wanted
    hw.iommu_passthrough = hw.iommu and pt

    if hw.cpu_vendor == "amd":
        _amd_rules(inp, hw)
    else:
        _intel_rules(inp, hw)

    # VFIO: the node's own config selects devices; binding needs an IOMMU
    ids, bdfs = boot.vfio_ids(), boot.vfio_bdfs()
    selected = [d.bdf for d in p.pci if d.bdf in bdfs or d.vendor_device in ids]
    hw.vfio_pci = bool(selected or ids or bdfs) and not boot.module_blocked("vfio_pci")
    if hw.vfio_pci:
        for bdf in selected:
            (hw.vfio_bound if hw.iommu else hw.vfio_failed).append(bdf)
    if hw.iommu:
        hw.iommu_groups = {d.bdf: IOMMU_GROUP_BASE + i for i, d in enumerate(sorted(p.pci, key=lambda d: d.bdf))}
    return hw


def _amd_rules(inp: RenderInput, hw: HardwareState) -> None:
    p, f, boot = inp.profile, inp.features, inp.boot
    tee = p.tee == "snp"
    hw.sme = tee and f.smee  # SYSCFG MemEncryptionModEn; without it the kernel clears sme/sev/sev_es/sev_snp
    hw.snp_cpu = hw.sme and f.snp and f.rmp_coverage  # bsp_determine_snp(): RMP must be reserved by BIOS
    v2 = "pgtbl_v2" in (cmdline_value(boot.cmdline, "amd_iommu") or "").split(",")
    hw.snp_host = hw.snp_cpu and hw.iommu and not hw.iommu_passthrough and not v2
    hw.kvm_amd = not boot.module_blocked("kvm_amd") and not boot.module_blocked("kvm")
    hw.max_sev_asid = int(p.snp.get("max_sev_asid", 509))
    hw.min_sev_asid = max(1, int(f.sev_es_asid_limit))
    if hw.kvm_amd:
        sev_opt = _param_bool(boot.module_param("kvm_amd", "sev"), True)
        es_opt = _param_bool(boot.module_param("kvm_amd", "sev_es"), True)
        snp_opt = _param_bool(boot.module_param("kvm_amd", "sev_snp"), True)
        hw.sev = hw.sme and sev_opt and hw.min_sev_asid <= hw.max_sev_asid
        hw.sev_es = hw.sev and es_opt and hw.min_sev_asid > 1
        hw.sev_snp = hw.sev_es and snp_opt and hw.snp_host
    psp = [d for d in p.pci if d.role == "psp"]
    ccp = bool(psp) and not boot.module_blocked("ccp")
    hw.ccp_bound = [d.bdf for d in psp] if ccp else []
    hw.dev_sev = ccp and hw.sme


def _intel_rules(inp: RenderInput, hw: HardwareState) -> None:
    p, f, boot = inp.profile, inp.features, inp.boot
    tee = p.tee == "tdx"
    hw.tme = tee and f.tme
    hw.mktme = hw.tme and f.tme_mt
    hw.tdx_bios = hw.mktme and f.tdx and f.seam_loader and f.tdx_key_split > 0
    hw.sgx = tee and f.sgx
    hw.kvm_intel = not boot.module_blocked("kvm_intel") and not boot.module_blocked("kvm")
    if hw.kvm_intel:
        hw.tdx_requested = _param_bool(boot.module_param("kvm_intel", "tdx"), False)
        hw.tdx_module = hw.tdx_requested and hw.tdx_bios


# ------------------------------------------------------------------ files


def _cpuinfo(inp: RenderInput, hw: HardwareState) -> str:
    p, f = inp.profile, inp.features
    flags = list(p.cpu_flags)
    if not f.x2apic and "x2apic" in flags:
        flags.remove("x2apic")
    if hw.cpu_vendor == "amd":
        extra = ["sme", "sev", "sev_es"] if hw.sme else []
        extra += ["sev_snp"] if hw.snp_cpu else []
        at = flags.index("hw_pstate") + 1 if "hw_pstate" in flags else len(flags)
        flags[at:at] = extra
    else:
        if hw.tme:
            flags.append("tme")
        if hw.sgx:
            flags += ["sgx", "sgx_lc"]
        if hw.tdx_bios:
            flags.append("tdx_host_platform")
    cpu = p.cpu
    mhz = float(cpu.get("mhz", 2000.0))
    out = []
    for i in range(max(1, inp.cpus)):
        rows = [
            ("processor", str(i)),
            ("vendor_id", cpu["vendor_id"]),
            ("cpu family", str(cpu["family"])),
            ("model", str(cpu["model"])),
            ("model name", cpu["model_name"]),
            ("stepping", str(cpu.get("stepping", 0))),
            ("microcode", cpu.get("microcode", "0x0")),
            ("cpu MHz", f"{mhz:.3f}"),
            ("cache size", cpu.get("cache_size", "")),
            ("physical id", "0"),
            ("siblings", str(inp.cpus)),
            ("core id", str(i)),
            ("cpu cores", str(inp.cpus)),
            ("apicid", str(i)),
            ("initial apicid", str(i)),
            ("fpu", "yes"),
            ("fpu_exception", "yes"),
            ("cpuid level", "16" if hw.cpu_vendor == "amd" else "32"),
            ("wp", "yes"),
            ("flags", " ".join(flags)),
            ("bugs", AMD_BUGS if hw.cpu_vendor == "amd" else INTEL_BUGS),
            ("bogomips", f"{mhz * 2:.2f}"),
        ]
        if hw.cpu_vendor == "amd":
            rows.append(("TLB size", "3584 4K pages"))
        rows += [("clflush size", "64"), ("cache_alignment", "64"), ("address sizes", cpu.get("address_sizes", ""))]
        out += [k + ("\t\t" if len(k) < 8 else "\t") + f": {v}" for k, v in rows]
        out += ["power management:", ""]
    return "\n".join(out) + "\n"


def _pci_config(d: PciDevice, bar0: int) -> bytes:
    cfg = bytearray(256)
    cfg[0:2] = d.vendor.to_bytes(2, "little")
    cfg[2:4] = d.device.to_bytes(2, "little")
    cfg[4:6] = (0x0546).to_bytes(2, "little")  # command: memory space, bus master, SERR, INTx off
    cfg[6:8] = (0x0000).to_bytes(2, "little")  # status: no capability list (nothing for lspci to walk)
    cfg[8] = d.revision
    cfg[9:12] = d.pci_class.to_bytes(3, "little")  # prog-if, subclass, base class
    cfg[0x10:0x14] = (bar0 | 0x0).to_bytes(4, "little")
    cfg[0x2C:0x2E] = d.subsystem_vendor.to_bytes(2, "little")
    cfg[0x2E:0x30] = d.subsystem_device.to_bytes(2, "little")
    cfg[0x3C] = 0xFF  # interrupt line
    cfg[0x3D] = 0x01  # INTA
    return bytes(cfg)


def _pci_files(inp: RenderInput, hw: HardwareState) -> dict[str, Content]:
    files: dict[str, Content] = {}
    base = "/sys/bus/pci"
    files[f"{base}/devices"] = Directory()
    files[f"{base}/drivers"] = Directory()
    files[f"{base}/slots"] = Directory()
    files[f"{base}/drivers_autoprobe"] = "1\n"
    drivers_bound: dict[str, list[str]] = {"vfio-pci": hw.vfio_bound, "ccp": hw.ccp_bound}
    driver_modules = {"vfio-pci": "vfio_pci", "ccp": "ccp"}
    if hw.vfio_pci:
        for name in ("bind", "unbind", "new_id", "remove_id"):
            files[f"{base}/drivers/vfio-pci/{name}"] = ""
        files[f"{base}/drivers/vfio-pci/module"] = Symlink("../../../../module/vfio_pci")
    if hw.ccp_bound:
        files[f"{base}/drivers/ccp/module"] = Symlink("../../../../module/ccp")
    for n, d in enumerate(sorted(inp.profile.pci, key=lambda d: d.bdf)):
        dev = f"{base}/{d.bdf}"
        files[f"{base}/devices/{d.bdf}"] = Symlink(f"../{d.bdf}")
        bus = int(d.bdf.split(":")[1], 16)
        bar0 = 0xA0000000 + n * 0x01000000
        driver = next((drv for drv, bdfs in drivers_bound.items() if d.bdf in bdfs), None)
        modalias = (
            f"pci:v{d.vendor:08X}d{d.device:08X}sv{d.subsystem_vendor:08X}sd{d.subsystem_device:08X}"
            f"bc{d.pci_class >> 16:02X}sc{(d.pci_class >> 8) & 0xFF:02X}i{d.pci_class & 0xFF:02X}"
        )
        uevent = ([f"DRIVER={driver}"] if driver else []) + [
            f"PCI_CLASS={d.pci_class:X}",
            f"PCI_ID={d.vendor:04X}:{d.device:04X}",
            f"PCI_SUBSYS_ID={d.subsystem_vendor:04X}:{d.subsystem_device:04X}",
            f"PCI_SLOT_NAME={d.bdf}",
            f"MODALIAS={modalias}",
        ]
        is_gpu = d.role in ("gpu", "nvswitch")
        resource = [f"0x{bar0:016x} 0x{bar0 + 0xFFFFFF:016x} 0x0000000000040200"]
        if d.role == "gpu":
            big = 0x100000000000 + n * 0x2000000000
            resource += [
                "0x0000000000000000 0x0000000000000000 0x0000000000000000",
                f"0x{big:016x} 0x{big + 0xFFFFFFFFF:016x} 0x000000000014220c",
                "0x0000000000000000 0x0000000000000000 0x0000000000000000",
                f"0x{big + 0x1000000000:016x} 0x{big + 0x1001FFFFFF:016x} 0x000000000014220c",
            ]
        resource += ["0x0000000000000000 0x0000000000000000 0x0000000000000000"] * (13 - len(resource))
        files.update(
            {
                f"{dev}/vendor": f"0x{d.vendor:04x}\n",
                f"{dev}/device": f"0x{d.device:04x}\n",
                f"{dev}/class": f"0x{d.pci_class:06x}\n",
                f"{dev}/subsystem_vendor": f"0x{d.subsystem_vendor:04x}\n",
                f"{dev}/subsystem_device": f"0x{d.subsystem_device:04x}\n",
                f"{dev}/revision": f"0x{d.revision:02x}\n",
                f"{dev}/config": _pci_config(d, bar0),
                f"{dev}/resource": "\n".join(resource) + "\n",
                f"{dev}/irq": f"{100 + n}\n",
                f"{dev}/numa_node": ("0\n" if bus < 0x80 else "1\n"),
                f"{dev}/local_cpulist": f"0-{max(0, inp.cpus - 1)}\n",
                f"{dev}/enable": "1\n" if driver else "0\n",
                f"{dev}/modalias": modalias + "\n",
                f"{dev}/uevent": "\n".join(uevent) + "\n",
                f"{dev}/driver_override": "(null)\n",
                f"{dev}/power_state": "D0\n",
                f"{dev}/d3cold_allowed": "1\n",
                f"{dev}/reset_method": "flr\n" if is_gpu else "\n",
                f"{dev}/current_link_speed": ("32.0 GT/s PCIe\n" if is_gpu else "16.0 GT/s PCIe\n"),
                f"{dev}/current_link_width": ("16\n" if is_gpu else "4\n"),
                f"{dev}/max_link_speed": ("32.0 GT/s PCIe\n" if is_gpu else "16.0 GT/s PCIe\n"),
                f"{dev}/max_link_width": ("16\n" if is_gpu else "4\n"),
            }
        )
        if driver:
            files[f"{dev}/driver"] = Symlink(f"../../../bus/pci/drivers/{driver}")
            files[f"{base}/drivers/{driver}/{d.bdf}"] = Symlink(f"../../{d.bdf}")
            files[f"{dev}/driver_module"] = Symlink(f"../../../module/{driver_modules[driver]}")
        if d.bdf in hw.iommu_groups:
            files[f"{dev}/iommu_group"] = Symlink(f"../../../kernel/iommu_groups/{hw.iommu_groups[d.bdf]}")
    return files


def _iommu_group_files(hw: HardwareState) -> dict[str, Content]:
    files: dict[str, Content] = {"/sys/kernel/iommu_groups": Directory()}
    for bdf, g in hw.iommu_groups.items():
        gd = f"/sys/kernel/iommu_groups/{g}"
        files[f"{gd}/devices/{bdf}"] = Symlink(f"../../../../bus/pci/{bdf}")
        files[f"{gd}/type"] = "identity\n" if hw.iommu_passthrough else "DMA-FQ\n"
        files[f"{gd}/reserved_regions"] = "0x00000000fee00000 0x00000000feefffff msi\n"
    return files


def _modules(inp: RenderInput, hw: HardwareState) -> tuple[dict[str, Content], list[tuple[str, int, list[str]]]]:
    """/sys/module files and the loaded-module list (name, size, users) for /proc/modules."""
    files: dict[str, Content] = {"/sys/module": Directory()}
    loaded: list[tuple[str, int, list[str]]] = []

    def module(name: str, size: int, params: dict[str, str], users: list[str] | None = None) -> None:
        loaded.append((name, size, users or []))
        files[f"/sys/module/{name}/initstate"] = "live\n"
        files[f"/sys/module/{name}/refcnt"] = f"{len(users or [])}\n"
        for k, v in params.items():
            files[f"/sys/module/{name}/parameters/{k}"] = v if v.endswith("\n") else v + "\n"

    kvm_users = []
    if hw.cpu_vendor == "amd" and hw.kvm_amd:
        kvm_users = ["kvm_amd"]
        module(
            "kvm_amd",
            217088,
            {
                "sev": _yn(hw.sev),
                "sev_es": _yn(hw.sev_es),
                "sev_snp": _yn(hw.sev_snp),
                "nested": "1",
                "npt": "Y",
                "nrips": "1",
                "avic": "N",
                "vls": "1",
                "vgif": "1",
                "lbrv": "1",
                "pause_filter_count": "3000",
                "dump_invalid_vmcb": "N",
                "intercept_smi": "Y",
            },
        )
    if hw.cpu_vendor == "intel" and hw.kvm_intel:
        kvm_users = ["kvm_intel"]
        module(
            "kvm_intel",
            462848,
            {
                "tdx": _yn(hw.tdx_module),
                "nested": "Y",
                "ept": "Y",
                "unrestricted_guest": "Y",
                "enable_apicv": "Y",
                "enable_shadow_vmcs": "Y",
                "vmentry_l1d_flush": "not required",
                "pml": "Y",
                "sgx": _yn(hw.sgx),
            },
        )
    if kvm_users:
        module(
            "kvm",
            1400832,
            {"ignore_msrs": "N", "halt_poll_ns": "200000", "enable_vmware_backdoor": "N", "tdp_mmu": "Y", "enable_pmu": "Y"},
            kvm_users,
        )
    if hw.ccp_bound:
        module("ccp", 143360, {})
    if hw.vfio_pci:
        module(
            "vfio_pci",
            16384,
            {"nointxmask": "N", "disable_vga": "N", "disable_idle_d3": "N", "enable_sriov": "N", "disable_denylist": "N"},
        )
        module("vfio_pci_core", 94208, {}, ["vfio_pci"])
        module("vfio_iommu_type1", 49152, {"allow_unsafe_interrupts": "N", "dma_entry_limit": "65535"})
        module("vfio", 69632, {"enable_unsafe_noiommu_mode": "N"}, ["vfio_pci_core", "vfio_iommu_type1"])
    return files, loaded


def _proc_modules(loaded: list[tuple[str, int, list[str]]]) -> str:
    lines = []
    for name, size, users in loaded:
        deps = "".join(f"{u}," for u in users) or "-"
        lines.append(f"{name} {size} {len(users)} {deps} Live 0x0000000000000000")
    return "\n".join(lines) + ("\n" if lines else "")


def _dmesg(inp: RenderInput, hw: HardwareState) -> list[str]:
    p, f, boot = inp.profile, inp.features, inp.boot
    msgs: list[tuple[float, str]] = []

    def at(t: float, msg: str) -> None:
        msgs.append((t, msg))

    rel = p.kernel["release"]
    at(0.0, f"Linux version {rel} (ccfactory-lab@{p.name}) (gcc (Debian 12.2.0-14) 12.2.0) #1 SMP PREEMPT_DYNAMIC")
    at(0.0, f"Command line: {boot.cmdline}")
    if hw.cpu_vendor == "amd":
        if inp.profile.tee == "snp" and f.smee and f.snp and not f.rmp_coverage:
            at(0.0, "SEV-SNP: Memory for the RMP table has not been reserved by BIOS")
        if hw.snp_cpu:
            at(0.0, "SEV-SNP: RMP table physical range [0x000000bf7e800000 - 0x000000c03f0fffff]")
        if hw.sme and cmdline_value(boot.cmdline, "mem_encrypt") == "on":
            at(0.08, "Memory Encryption Features active: AMD SME")
    else:
        if inp.profile.tee == "tdx":
            at(0.0, "x86/tme: enabled by BIOS" if hw.tme else "x86/tme: not enabled by BIOS")
            if hw.mktme:
                at(0.0, "x86/mktme: enabled by BIOS")
                at(0.0, f"x86/mktme: No. of keys: {int(p.tdx.get('nr_keyids', 64)) * 2 - 1}")
    fam, model, step = int(p.cpu["family"]), int(p.cpu["model"]), int(p.cpu.get("stepping", 0))
    at(0.35, f"smpboot: CPU0: {p.cpu['model_name']} (family: 0x{fam:x}, model: 0x{model:x}, stepping: 0x{step:x})")
    if hw.cpu_vendor == "intel" and hw.tdx_bios:
        k = int(p.tdx.get("nr_keyids", 64))
        at(0.62, f"virt/tdx: BIOS enabled: private KeyID range [{k}, {2 * k})")
        at(0.62, "virt/tdx: Disable ACPI S3. Turn off TDX in the BIOS to use ACPI S3.")
    # IOMMU
    if hw.cpu_vendor == "amd":
        if hw.iommu:
            at(1.12, "pci 0000:00:00.2: AMD-Vi: IOMMU performance counters supported")
            at(1.13, "AMD-Vi: Extended features (0x246577efa2254afa, 0x10): PPR NX GT [5] IA GA PC GA_vAPIC SNP")
            at(1.13, "AMD-Vi: Interrupt remapping enabled")
            at(1.13, "AMD-Vi: X2APIC enabled" if f.x2apic else "AMD-Vi: Virtual APIC enabled")
        if hw.snp_cpu:
            if not hw.iommu or hw.iommu_passthrough:
                at(1.14, f"AMD-Vi: {SNP_IOMMU_MESSAGE}")
            elif "pgtbl_v2" in (cmdline_value(boot.cmdline, "amd_iommu") or "").split(","):
                at(1.14, "AMD-Vi: SNP: IOMMU is configured with V2 page table mode, SNP cannot be supported.")
            else:
                at(1.14, "AMD-Vi: IOMMU SNP support enabled.")
    else:
        if hw.iommu:
            at(1.10, "DMAR: IOMMU enabled")
            at(1.13, "DMAR: Intel(R) Virtualization Technology for Directed I/O")
    if hw.iommu:
        domain = "Passthrough (set via kernel command line)" if hw.iommu_passthrough else "Translated"
        at(1.15, f"iommu: Default domain type: {domain}")
        for bdf, g in sorted(hw.iommu_groups.items()):
            at(1.16, f"pci {bdf}: Adding to iommu group {g}")
    for d in sorted(p.pci, key=lambda d: d.bdf):
        at(0.90, f"pci {d.bdf}: [{d.vendor:04x}:{d.device:04x}] type 00 class 0x{d.pci_class:06x} PCIe Endpoint")
    # modules
    if hw.ccp_bound:
        psp = hw.ccp_bound[0]
        at(4.10, f"ccp {psp}: enabling device (0000 -> 0002)")
        at(4.11, f"ccp {psp}: sev enabled" if hw.sme else f"ccp {psp}: no command queues available")
        at(4.11, f"ccp {psp}: psp enabled")
        api, build = p.snp.get("sev_api", "1.55"), p.snp.get("sev_build", 21)
        if hw.snp_host and hw.sme:
            at(4.30, f"ccp {psp}: SEV-SNP API:{api} build:{build}")
        if hw.sme:
            at(4.31, f"ccp {psp}: SEV API:{api} build:{build}")
    if hw.cpu_vendor == "amd" and hw.kvm_amd and hw.sme:
        # sev_hardware_setup(): lines for the features the CPU reports
        sev_on = _param_bool(boot.module_param("kvm_amd", "sev"), True)
        lo, hi = (hw.min_sev_asid, hw.max_sev_asid) if sev_on else (0, 0)
        state = ("enabled" if lo <= hi else "unusable") if hw.sev else "disabled"
        at(4.40, f"kvm_amd: SEV {state} (ASIDs {lo} - {hi})")
        es_lo, es_hi = (1 if lo > 1 else 0), max(0, lo - 1)
        at(4.40, f"kvm_amd: SEV-ES {'enabled' if hw.sev_es else 'disabled'} (ASIDs {es_lo} - {es_hi})")
        if hw.snp_cpu:
            at(4.40, f"kvm_amd: SEV-SNP {'enabled' if hw.sev_snp else 'disabled'} (ASIDs {es_lo} - {es_hi})")
    if hw.cpu_vendor == "amd" and hw.kvm_amd:
        at(4.41, "kvm_amd: Nested Virtualization enabled")
        at(4.41, "kvm_amd: Nested Paging enabled")
    if hw.cpu_vendor == "intel" and hw.kvm_intel and hw.tdx_requested:
        if not hw.tdx_bios:
            at(4.40, "virt/tdx: TDX not supported by the host platform")
        else:
            t = p.tdx
            at(4.40, "virt/tdx: 1050644 KB allocated for PAMT")
            at(
                4.41,
                f"virt/tdx: TDX module: attributes {t.get('module_attributes', '0x0')}, "
                f"vendor_id {t.get('module_vendor_id', '0x8086')}, "
                f"major_version {t.get('module_major', 1)}, minor_version {t.get('module_minor', 5)}, "
                f"build_date {t.get('module_build_date', 20240725)}, build_num {t.get('module_build_num', 784)}",
            )
            at(4.52, "virt/tdx: module initialized")
    if hw.vfio_pci:
        at(4.60, "VFIO - User Level meta-driver version: 0.3")
        for i in sorted(inp.boot.vfio_ids()):
            at(4.61, f"vfio_pci: add [{i}[ffffffff:ffffffff]] class 0x000000/00000000")
        for bdf in hw.vfio_failed:
            at(4.62, f"vfio-pci {bdf}: probe with driver vfio-pci failed with error -22")
    msgs.sort(key=lambda m: m[0])
    return [f"[{t:12.6f}] {m}" for t, m in msgs]


def render(inp: RenderInput) -> dict[str, Content]:
    """Every simulated hardware file of the node, keyed by its path inside the node (pure).

    Roots the writer replaces wholesale: ``/sys/module``, ``/sys/firmware``,
    ``/sys/bus/pci``, ``/sys/kernel/iommu_groups``, ``/var/log/ccfactory-lab``; single
    files ``/proc/cpuinfo``, ``/proc/cmdline``, ``/proc/modules``; ``CharDevice``
    entries under ``/dev``.
    """
    hw = hardware_state(inp)
    files: dict[str, Content] = {}
    mod_files, loaded = _modules(inp, hw)
    files.update(mod_files)
    files["/proc/cpuinfo"] = _cpuinfo(inp, hw)
    files["/proc/cmdline"] = inp.boot.cmdline + "\n"
    files["/proc/modules"] = _proc_modules(loaded)
    files["/sys/firmware"] = Directory()
    if hw.tdx_module:
        t, base = inp.profile.tdx, "/sys/firmware/tdx/tdx_module"
        files[f"{base}/status"] = "initialized\n"
        files[f"{base}/attributes"] = f"{t.get('module_attributes', '0x0')}\n"
        files[f"{base}/vendor_id"] = f"{t.get('module_vendor_id', '0x8086')}\n"
        files[f"{base}/major_version"] = f"{t.get('module_major', 1)}\n"
        files[f"{base}/minor_version"] = f"{t.get('module_minor', 5)}\n"
        files[f"{base}/build_date"] = f"{t.get('module_build_date', 20240725)}\n"
        files[f"{base}/build_num"] = f"{t.get('module_build_num', 784)}\n"
    files.update(_pci_files(inp, hw))
    files.update(_iommu_group_files(hw))
    if hw.kvm_amd or hw.kvm_intel:
        files["/dev/kvm"] = CharDevice()  # present with kvm loaded; no ioctl semantics in the lab
    if hw.dev_sev:
        files["/dev/sev"] = CharDevice()
    if hw.sgx:
        for name in ("sgx_enclave", "sgx_provision", "sgx_vepc"):
            files[f"/dev/{name}"] = CharDevice()
    if hw.vfio_bound:
        files["/dev/vfio/vfio"] = CharDevice()
        for bdf in hw.vfio_bound:
            files[f"/dev/vfio/{hw.iommu_groups[bdf]}"] = CharDevice()
    files[DMESG_PATH] = "\n".join(_dmesg(inp, hw)) + "\n"
    summary = {
        "node": inp.node,
        "profile": inp.profile.name,
        "features": asdict(inp.features),
        "cmdline": inp.boot.cmdline,
        "boot_config_files": list(inp.boot.files),
        "state": asdict(hw),
        "gpus": inp.gpus.to_dict()["devices"],
    }
    files[HARDWARE_JSON] = json.dumps(summary, indent=2, sort_keys=True) + "\n"
    return files

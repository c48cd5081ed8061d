"""Host-side GPU state: NVIDIA PCI functions (GPUs, NVSwitches) and GPU kernel drivers.

A CoCo host runs no NVIDIA driver: GPUs and NVSwitches are bound to ``vfio-pci`` and
passed to confidential VMs. These types describe what the host has and what holds it.

Example::

    >>> devs = nvidia_devices_from_lines([
    ...     "0000:18:00.0 vendor=0x10de device=0x2330 class=0x030200 driver=vfio-pci iommu_group=20",
    ...     "0000:c5:00.0 vendor=0x10de device=0x22a3 class=0x068000 driver= iommu_group=28"])
    >>> [(g.bdf, g.model_name, g.driver) for g in devs.gpus], len(devs.nvswitches)
    ([('0000:18:00.0', 'H100', 'vfio-pci')], 1)
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

from ccfactory.gpus import GPU_PCI_CLASS, NVIDIA_VENDOR_ID, NVSWITCH_PCI_CLASS, GpuModel, gpu_by_device_id
from ccfactory.parsers.kernel import (
    KernelCmdline,
    LoadedModule,
    ModprobeConfig,
    parse_cmdline,
    parse_modprobe_d,
    parse_proc_modules,
)
from ccfactory.parsers.pci import PciFunction, parse_pci_lines

# ------------------------------------------------------------------ NVIDIA PCI functions

_KINDS = {GPU_PCI_CLASS: "gpu", NVSWITCH_PCI_CLASS: "nvswitch"}


@dataclass(frozen=True)
class NvidiaPciDevice:
    """One NVIDIA GPU or NVSwitch as sysfs shows it, with its model from the GPU table."""

    pci: PciFunction
    kind: str  # "gpu" or "nvswitch"
    model: GpuModel | None  # None: device ID not in ccfactory/data/gpus.toml

    @property
    def bdf(self) -> str:
        return self.pci.bdf

    @property
    def device_id(self) -> str:
        return self.pci.device

    @property
    def driver(self) -> str | None:
        return self.pci.driver

    @property
    def iommu_group(self) -> int | None:
        return self.pci.iommu_group

    @property
    def model_name(self) -> str | None:
        return self.model.model if self.model else None

    @property
    def cc_capable(self) -> bool:
        return bool(self.model and self.model.cc)

    @property
    def ppcie_capable(self) -> bool:
        return bool(self.model and self.model.ppcie)

    @property
    def on_vfio(self) -> bool:
        return self.driver == "vfio-pci"


@dataclass(frozen=True)
class NvidiaDevices:
    """All NVIDIA GPUs and NVSwitches of a host (class 0302 / 0680, vendor 10de).

    Example::

        devs = host.get_fact(NvidiaGpus)
        len(devs.gpus), devs.models(), devs.drivers()   # (8, {'H100'}, {'vfio-pci'})
    """

    gpus: tuple[NvidiaPciDevice, ...] = ()
    nvswitches: tuple[NvidiaPciDevice, ...] = ()

    @property
    def all(self) -> tuple[NvidiaPciDevice, ...]:
        return self.gpus + self.nvswitches

    def models(self) -> set[str]:
        return {g.model_name or f"unknown 10de:{g.device_id}" for g in self.gpus}

    def drivers(self) -> set[str]:
        """Drivers holding any device; ``"(none)"`` for unbound ones."""
        return {d.driver or "(none)" for d in self.all}

    def not_on_vfio(self) -> tuple[NvidiaPciDevice, ...]:
        return tuple(d for d in self.all if not d.on_vfio)

    def by_bdf(self, bdf: str) -> NvidiaPciDevice | None:
        return next((d for d in self.all if d.bdf == bdf), None)


def nvidia_devices(functions: Iterable[PciFunction]) -> NvidiaDevices:
    """Keep NVIDIA GPUs (class 0302) and NVSwitches (class 0680); attach models by device ID."""
    gpus, switches = [], []
    for f in sorted(functions, key=lambda f: f.bdf):
        kind = _KINDS.get(f.class_prefix)
        if f.vendor != NVIDIA_VENDOR_ID or kind is None:
            continue
        dev = NvidiaPciDevice(f, kind, gpu_by_device_id(f.device))
        (gpus if kind == "gpu" else switches).append(dev)
    return NvidiaDevices(tuple(gpus), tuple(switches))


def nvidia_devices_from_lines(lines: Iterable[str]) -> NvidiaDevices:
    return nvidia_devices(parse_pci_lines(lines))


# ------------------------------------------------------------------ GPU kernel drivers

NVIDIA_MODULES = ("nvidia", "nvidia_uvm", "nvidia_drm", "nvidia_modeset", "nvidia_peermem")
VFIO_MODULES = ("vfio", "vfio_pci", "vfio_pci_core", "vfio_iommu_type1", "iommufd")


@dataclass(frozen=True)
class GpuDriverState:
    """Which GPU drivers are loaded and what modprobe.d / the kernel command line say.

    Example::

        drv = host.get_fact(GpuDrivers)
        drv.nvidia_loaded, drv.nouveau_blocked, drv.vfio_pci_ids   # (False, True, ('10de:2330',))
    """

    modules: tuple[LoadedModule, ...] = ()
    modprobe: ModprobeConfig = field(default_factory=ModprobeConfig)
    cmdline: KernelCmdline = field(default_factory=KernelCmdline)

    @property
    def loaded(self) -> frozenset[str]:
        return frozenset(m.name for m in self.modules)

    @property
    def nvidia_loaded(self) -> tuple[str, ...]:
        """Loaded NVIDIA host driver modules (must be empty on a CoCo host)."""
        return tuple(sorted(n for n in self.loaded if n in NVIDIA_MODULES))

    @property
    def nouveau_loaded(self) -> bool:
        return "nouveau" in self.loaded

    @property
    def vfio_loaded(self) -> tuple[str, ...]:
        return tuple(sorted(n for n in self.loaded if n in VFIO_MODULES))

    def blocked(self, module: str) -> bool:
        """Blacklisted in modprobe.d or on the kernel command line (``modprobe.blacklist=``),
        or its install command is ``/bin/false``/``/bin/true`` (a common way to disable a module)."""
        mod = module.replace("-", "_")
        install = (self.modprobe.install_command(mod) or "").split()
        disabled = bool(install) and install[0] in ("/bin/false", "/bin/true", "/usr/bin/false", "/usr/bin/true")
        return self.modprobe.is_blacklisted(mod) or mod in self.cmdline.modprobe_blacklist or disabled

    @property
    def nouveau_blocked(self) -> bool:
        return self.blocked("nouveau")

    @property
    def nvidia_blocked(self) -> bool:
        return self.blocked("nvidia")

    @property
    def vfio_pci_ids(self) -> tuple[str, ...]:
        """``vendor:device`` IDs given to vfio-pci (modprobe.d ``options vfio-pci ids=``, or ``vfio-pci.ids=``)."""
        raw = self.cmdline.module_param("vfio_pci", "ids") or self.modprobe.option("vfio_pci", "ids") or ""
        return tuple(i.lower() for i in raw.split(",") if i)

    def softdeps(self, module: str) -> tuple[str, ...]:
        mod = module.replace("-", "_")
        return tuple(spec for m, spec in self.modprobe.softdeps if m == mod)


def gpu_driver_state(modules: Iterable[str], modprobe_files: Iterable[tuple[str, str]], cmdline: str) -> GpuDriverState:
    """Build from ``/proc/modules`` lines, ``(path, content)`` modprobe.d files and ``/proc/cmdline``."""
    return GpuDriverState(parse_proc_modules(modules), parse_modprobe_d(list(modprobe_files)), parse_cmdline(cmdline))


def files_from_sections(sections: Iterable, name: str = "file") -> list[tuple[str, str]]:
    """``(path, text)`` for every ``### ccfactory:file <path>`` section."""
    return [(s.arg, "\n".join(s.lines)) for s in sections if s.name == name]


class WantedGpus(Protocol):
    """The inventory's GPU settings (``ccfactory.config.GpuConfig`` has these fields)."""

    count: int
    model: str | None
    cc_mode: str


def inventory_problems(cfg: WantedGpus, devices: NvidiaDevices) -> list[str]:
    """Discovery against the inventory: count, model, NVSwitches for ppcie.

    ``cfg``: what the inventory says (``NodeConfig.gpu``); here, below the config layer, only its
    three fields are used. Shared by the gpu stage's plan and the verify stage's check."""
    problems = []
    found = ", ".join(f"{g.bdf} {g.model_name or f'unknown 10de:{g.device_id}'}" for g in devices.gpus) or "none"
    if len(devices.gpus) != cfg.count:
        problems.append(
            f"inventory says {cfg.count} {cfg.model} GPU(s) (gpu_count, gpu_model), the node has "
            f"{len(devices.gpus)}: {found}; fix the inventory or the hardware (a GPU missing from PCI)"
        )
    wrong = [g for g in devices.gpus if (g.model_name or "").lower() != (cfg.model or "").lower()]
    if wrong:
        shown = ", ".join(f"{g.bdf} {g.model_name or f'unknown 10de:{g.device_id}'}" for g in wrong)
        problems.append(f"inventory says every GPU is a {cfg.model} (gpu_model), but found {shown}")
    if cfg.cc_mode in ("on", "devtools", "ppcie"):
        no_cc = [g.bdf for g in devices.gpus if not g.cc_capable and g not in wrong]
        if no_cc:
            problems.append(f"GPU(s) without CC support: {', '.join(no_cc)}; use gpu_cc_mode off")
    if cfg.cc_mode == "ppcie":
        if not devices.nvswitches:
            problems.append("gpu_cc_mode ppcie needs the HGX NVSwitches, but the node has none; use on")
        bad = [f"{d.bdf} (10de:{d.device_id})" for d in devices.nvswitches if not d.ppcie_capable]
        if bad:
            problems.append(f"NVSwitch(es) without PPCIe support in the GPU table: {', '.join(bad)}")
    return problems

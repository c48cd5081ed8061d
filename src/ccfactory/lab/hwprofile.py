"""Lab hardware profiles: TOML files in ``ccfactory/lab/profiles/`` (a data directory), one per machine kind.

Adding a profile is adding a file; ``--profile NAME`` picks it by its file name.
See ``amd-snp-hgx.toml`` for every field.

Example::

    >>> p = load_profile("amd-snp-hgx")
    >>> p.tee, p.gpu_count, p.gpu_model, p.bmc_vendor
    ('snp', 8, 'H100', 'supermicro')
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any

import tomllib

from ccfactory.lab.errors import LabError

DEFAULT_CYCLE = ("amd-snp-hgx", "intel-tdx", "plain")
BMC_VENDORS = ("dell", "hpe", "lenovo", "supermicro", "generic")
TEES = ("snp", "tdx", "none")
PCI_ROLES = ("gpu", "nvswitch", "psp", "other")


@dataclass(frozen=True)
class PciDevice:
    """One PCI function of the fake machine."""

    bdf: str  # "0000:18:00.0"
    role: str  # gpu | nvswitch | psp | other
    vendor: int
    device: int
    pci_class: int  # 24-bit class code, e.g. 0x030200
    subsystem_vendor: int = 0
    subsystem_device: int = 0
    revision: int = 0
    name: str = ""
    model: str = ""  # GPU model as inventories name it ("H100")

    @property
    def vendor_device(self) -> str:
        """``10de:2330``"""
        return f"{self.vendor:04x}:{self.device:04x}"


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    tee: str  # snp | tdx | none: what the CPU can do, if the firmware allows
    bmc_vendor: str
    cpu: dict[str, Any]
    kernel: dict[str, Any]
    snp: dict[str, Any] = field(default_factory=dict)
    tdx: dict[str, Any] = field(default_factory=dict)
    system: dict[str, Any] = field(default_factory=dict)
    pci: tuple[PciDevice, ...] = ()

    @property
    def gpus(self) -> tuple[PciDevice, ...]:
        return tuple(d for d in self.pci if d.role == "gpu")

    @property
    def gpu_count(self) -> int:
        return len(self.gpus)

    @property
    def gpu_model(self) -> str | None:
        models = sorted({d.model for d in self.gpus})
        return models[0] if models else None

    @property
    def cpu_flags(self) -> tuple[str, ...]:
        return tuple(self.cpu.get("flags", "").split())


def _parse(name: str, raw: dict[str, Any]) -> Profile:
    def need(table: dict, key: str, where: str):
        if key not in table:
            raise LabError(f"lab profile {name}: missing {where}{key}")
        return table[key]

    tee = need(raw, "tee", "")
    if tee not in TEES:
        raise LabError(f"lab profile {name}: tee must be one of {', '.join(TEES)}, not {tee!r}")
    vendor = need(raw, "bmc_vendor", "")
    if vendor not in BMC_VENDORS:
        raise LabError(f"lab profile {name}: bmc_vendor must be one of {', '.join(BMC_VENDORS)}, not {vendor!r}")
    cpu = need(raw, "cpu", "")
    for k in ("vendor_id", "model_name", "family", "model", "flags"):
        need(cpu, k, "cpu.")
    kernel = need(raw, "kernel", "")
    for k in ("release", "cmdline"):
        need(kernel, k, "kernel.")
    devices = []
    for i, d in enumerate(raw.get("pci", [])):
        role = d.get("role", "other")
        if role not in PCI_ROLES:
            raise LabError(f"lab profile {name}: pci[{i}].role must be one of {', '.join(PCI_ROLES)}")
        if role == "gpu" and not d.get("model"):
            raise LabError(f"lab profile {name}: pci[{i}] is a gpu and needs model (e.g. \"H100\")")
        for bdf in need(d, "bdfs", f"pci[{i}]."):
            devices.append(
                PciDevice(
                    bdf=bdf.lower(),
                    role=role,
                    vendor=int(need(d, "vendor", f"pci[{i}].")),
                    device=int(need(d, "device", f"pci[{i}].")),
                    pci_class=int(need(d, "class", f"pci[{i}].")),
                    subsystem_vendor=int(d.get("subsystem_vendor", 0)),
                    subsystem_device=int(d.get("subsystem_device", 0)),
                    revision=int(d.get("revision", 0)),
                    name=d.get("name", ""),
                    model=d.get("model", ""),
                )
            )
    bdfs = [d.bdf for d in devices]
    if len(set(bdfs)) != len(bdfs):
        raise LabError(f"lab profile {name}: duplicate PCI addresses")
    return Profile(
        name=name,
        description=raw.get("description", ""),
        tee=tee,
        bmc_vendor=vendor,
        cpu=cpu,
        kernel=kernel,
        snp=raw.get("snp", {}),
        tdx=raw.get("tdx", {}),
        system=raw.get("system", {}),
        pci=tuple(devices),
    )


def _profile_dir():
    # a plain data directory inside the ccfactory.lab package (shipped by package-data)
    return resources.files("ccfactory.lab").joinpath("profiles")


def profile_names() -> list[str]:
    """Names of the packaged profiles (file names without ``.toml``)."""
    return sorted(
        f.name.removesuffix(".toml") for f in _profile_dir().iterdir() if f.name.endswith(".toml")
    )


@cache
def load_profile(name: str) -> Profile:
    """Load a packaged profile by name; ``LabError`` lists the known names if it does not exist."""
    if not re.match(r"^[a-z0-9][a-z0-9_-]*$", name):
        raise LabError(f"invalid lab profile name {name!r}; known: {', '.join(profile_names())}")
    res = _profile_dir().joinpath(f"{name}.toml")
    if not res.is_file():
        raise LabError(f"unknown lab profile {name!r}; known: {', '.join(profile_names())}")
    try:
        raw = tomllib.loads(res.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise LabError(f"lab profile {name}: {exc}") from None
    if raw.get("name", name) != name:
        raise LabError(f"lab profile file {name}.toml says name = {raw['name']!r}; they must match")
    return _parse(name, raw)

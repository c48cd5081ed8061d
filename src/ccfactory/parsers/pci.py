"""PCI functions and IOMMU groups as sysfs shows them.

Two inputs are accepted:

* one line per function, ``<bdf> key=value ...``: the format the ccfactory facts print,
  and the format of the recorded host view (``nvidia-h100-real/host.txt``)::

      0000:00:06.0 vendor=0x10de device=0x2330 class=0x030200 driver=nvidia iommu_group=

* a dump of one device directory, ``key: value`` per attribute plus ``driver -> link``
  (``nvidia-h200-real/pci-0000_00_06.0.txt``).

Example::

    >>> f = parse_pci_line("0000:00:06.0 vendor=0x10de device=0x2330 class=0x030200 driver=nvidia iommu_group=")
    >>> f.vendor, f.device, f.class_code, f.driver, f.iommu_group
    ('10de', '2330', '030200', 'nvidia', None)
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

_BDF = re.compile(r"^(?:[0-9a-fA-F]{4,8}:)?[0-9a-fA-F]{2}:[0-9a-fA-F]{2}\.[0-7]$")


def normalize_bdf(bdf: str) -> str:
    """``domain:bus:dev.fn`` in sysfs form: 4-digit domain, lower case.

    ``nvidia-smi`` prints an 8-digit domain (``00000000:00:06.0``); sysfs uses 4.

    >>> normalize_bdf("00000000:45:00.0"), normalize_bdf("45:00.0")
    ('0000:45:00.0', '0000:45:00.0')
    """
    bdf = bdf.strip().lower()
    parts = bdf.split(":")
    if len(parts) == 2:
        parts.insert(0, "0000")
    domain = parts[0][-4:].rjust(4, "0")
    return ":".join([domain, *parts[1:]])


def _hex(value: str | None, width: int) -> str:
    """``0x10DE`` -> ``10de``; empty when missing."""
    if not value:
        return ""
    v = value.strip().lower().removeprefix("0x")
    return v.rjust(width, "0") if v else ""


def _int_or_none(value: str | None) -> int | None:
    value = (value or "").strip()
    return int(value) if value.lstrip("-").isdigit() else None


@dataclass(frozen=True)
class PciFunction:
    bdf: str
    vendor: str  # 4 hex digits, lower case, no 0x
    device: str
    class_code: str  # 6 hex digits: base class, subclass, prog-if
    driver: str | None = None  # bound driver name, None when unbound
    iommu_group: int | None = None
    subsystem_vendor: str = ""
    subsystem_device: str = ""
    numa_node: int | None = None

    @property
    def class_prefix(self) -> str:
        """Base class and subclass, e.g. ``0302`` (3D controller) or ``0680`` (bridge, other)."""
        return self.class_code[:4]


def parse_pci_line(line: str) -> PciFunction | None:
    """One ``<bdf> key=value ...`` line; None when the line is not one."""
    words = line.split()
    if not words or not _BDF.match(words[0]):
        return None
    kv = {}
    for word in words[1:]:
        key, sep, value = word.partition("=")
        if sep:
            kv[key] = value
    return PciFunction(
        bdf=normalize_bdf(words[0]),
        vendor=_hex(kv.get("vendor"), 4),
        device=_hex(kv.get("device"), 4),
        class_code=_hex(kv.get("class"), 6),
        driver=kv.get("driver") or None,
        iommu_group=_int_or_none(kv.get("iommu_group")),
        subsystem_vendor=_hex(kv.get("subsystem_vendor"), 4),
        subsystem_device=_hex(kv.get("subsystem_device"), 4),
        numa_node=_int_or_none(kv.get("numa_node")),
    )


def parse_pci_lines(lines: Iterable[str]) -> tuple[PciFunction, ...]:
    return tuple(f for f in (parse_pci_line(line) for line in lines) if f is not None)


_DUMP_PATH = re.compile(r"/sys/bus/pci/devices/(\S+?)/?(?:\s|$)")
_LINK = re.compile(r"^(\w+) -> ?(.*)$")


def parse_pci_sysfs_dump(text: str, bdf: str = "") -> PciFunction:
    """A device directory dump: ``attr: value`` lines and ``driver -> ../drivers/x`` links.

    The BDF comes from a ``/sys/bus/pci/devices/<bdf>`` path in the dump, else ``bdf``.
    Lines after a ``== config`` header (hex dump of config space) are ignored.
    """
    attrs: dict[str, str] = {}
    links: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("== config"):
            break
        if not bdf and (m := _DUMP_PATH.search(line)):
            bdf = m[1]
            continue
        if m := _LINK.match(line.strip()):
            links[m[1]] = m[2].strip()
            continue
        key, sep, value = line.partition(":")
        if sep and re.fullmatch(r"\w+", key.strip()):
            attrs[key.strip()] = value.strip()
    driver = links.get("driver", "").rstrip("/").rpartition("/")[2] or None
    group = links.get("iommu_group", "").rstrip("/").rpartition("/")[2]
    return PciFunction(
        bdf=normalize_bdf(bdf) if bdf else "",
        vendor=_hex(attrs.get("vendor"), 4),
        device=_hex(attrs.get("device"), 4),
        class_code=_hex(attrs.get("class"), 6),
        driver=driver,
        iommu_group=_int_or_none(group),
        subsystem_vendor=_hex(attrs.get("subsystem_vendor"), 4),
        subsystem_device=_hex(attrs.get("subsystem_device"), 4),
        numa_node=_int_or_none(attrs.get("numa_node")),
    )


# ------------------------------------------------------------------ IOMMU groups


@dataclass(frozen=True)
class IommuGroup:
    number: int
    type: str  # /sys/kernel/iommu_groups/N/type: DMA, DMA-FQ, identity (= passthrough), blocked
    devices: tuple[str, ...]


@dataclass(frozen=True)
class IommuTopology:
    """``/sys/kernel/iommu_groups``; empty when the IOMMU is off.

    Example::

        groups = host.get_fact(IommuGroups)
        groups.enabled, groups.group_of("0000:18:00.0")     # (True, 20)
    """

    groups: tuple[IommuGroup, ...] = ()

    @property
    def enabled(self) -> bool:
        return bool(self.groups)

    @property
    def passthrough(self) -> bool:
        """Any group in identity (passthrough) mode, as with ``iommu=pt``."""
        return any(g.type == "identity" for g in self.groups)

    def group_of(self, bdf: str) -> int | None:
        bdf = normalize_bdf(bdf)
        return next((g.number for g in self.groups if bdf in g.devices), None)

    def members(self, number: int) -> tuple[str, ...]:
        return next((g.devices for g in self.groups if g.number == number), ())


_GROUP_LINE = re.compile(r"^group (\d+)(.*)$")


def parse_iommu_groups(lines: Iterable[str]) -> IommuTopology:
    """``group <n> type=<t> devices=<bdf> <bdf> ...`` lines (as the IommuGroups fact prints them)."""
    groups = []
    for line in lines:
        m = _GROUP_LINE.match(line.strip())
        if not m:
            continue
        rest = m[2]
        type_m = re.search(r"\btype=(\S*)", rest)
        dev_part = rest.partition("devices=")[2]
        devices = tuple(sorted(normalize_bdf(d) for d in dev_part.split() if _BDF.match(d)))
        groups.append(IommuGroup(int(m[1]), type_m[1] if type_m else "", devices))
    return IommuTopology(tuple(sorted(groups, key=lambda g: g.number)))

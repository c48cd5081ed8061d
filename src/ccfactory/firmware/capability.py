"""Can this node run the requested TEE at all? Decided before any write, from the CPU the
BMC reports (ComputerSystem ``ProcessorSummary.Model``) and the BIOS's attribute registry.

The CPU generation table is data (``ccfactory/data/bios/_cpus.toml``, with its sources).
The verdict is in words an operator understands:

    >>> from ccfactory.firmware.resolve import AttributeRegistry
    >>> assess("snp", ["AMD EPYC 7702 64-Core Processor"], AttributeRegistry({})).reason
    'AMD EPYC 7702 (Zen 2, Rome): SEV-SNP needs EPYC 7003 (Milan) or newer'
    >>> assess("snp", ["AMD EPYC 9354 32-Core Processor"], AttributeRegistry({})).capable
    True
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

from ccfactory.firmware.errors import FirmwareError
from ccfactory.firmware.resolve import AttributeRegistry, Resolution

TEE_NAMES = {"snp": "SEV-SNP", "tdx": "TDX"}
VENDOR_NAMES = {"amd": "AMD EPYC", "intel": "Intel Xeon"}
# the logical setting whose absence from a registry means "this BIOS has no <TEE> settings"
KEY_SETTING = {"snp": "snp", "tdx": "tdx"}


class CapabilityError(FirmwareError):
    """The node cannot run the requested TEE (CPU generation, or a BIOS without its settings)."""

    def __init__(self, message: str, *, bmc: str, tee: str):
        super().__init__(message)
        self.bmc = bmc
        self.tee = tee


@dataclass(frozen=True)
class Generation:
    name: str
    codename: str
    core: str
    vendor: str
    snp: bool | str
    tdx: bool | str
    source: str
    pattern: re.Pattern[str]

    def supports(self, tee: str) -> bool | str:
        return {"snp": self.snp, "tdx": self.tdx}.get(tee, False)


@dataclass(frozen=True)
class Capability:
    """``capable``: True (the CPU generation runs it), False (refused, ``reason`` says why),
    None (CPU not in the table, or only some SKUs: the registry had the TEE's settings)."""

    tee: str
    capable: bool | None
    reason: str
    cpu: str | None = None
    generation: Generation | None = None


@cache
def _table() -> tuple[tuple[Generation, ...], Mapping[str, str], Mapping[str, str]]:
    raw: dict[str, Any] = tomllib.loads(resources.files("ccfactory.data").joinpath("bios", "_cpus.toml").read_text())
    rows = tuple(
        Generation(
            name=g["name"],
            codename=g["codename"],
            core=g["core"],
            vendor=g["vendor"],
            snp=g["snp"],
            tdx=g["tdx"],
            source=g["source"],
            pattern=re.compile(g["match"], re.IGNORECASE),
        )
        for g in raw["generation"]
    )
    return rows, raw["needs"], raw["vendor_of_tee"]


_NOISE = (re.compile(r"\((R|TM)\)", re.IGNORECASE), re.compile(r"\s+CPU\s+@.*$", re.IGNORECASE),
          re.compile(r"\s+\d+-Core Processor.*$", re.IGNORECASE), re.compile(r"\s+Processor\s*$", re.IGNORECASE))


def short_cpu(model: str) -> str:
    """``Intel(R) Xeon(R) Gold 6354 CPU @ 3.00GHz`` -> ``Intel Xeon Gold 6354``.

    Example::

        >>> short_cpu("AMD EPYC 7702 64-Core Processor                ")
        'AMD EPYC 7702'
    """
    text = model.strip()
    for pattern in _NOISE:
        text = pattern.sub("", text)
    return " ".join(text.split())


def cpu_generation(model: str) -> Generation | None:
    """The table row of a processor model string, or ``None``.

    Example::

        >>> cpu_generation("Intel(R) Xeon(R) Gold 6354 CPU @ 3.00GHz").codename
        'Ice Lake'
        >>> cpu_generation("INTEL(R) XEON(R) GOLD 6530").codename
        'Emerald Rapids'
    """
    for row in _table()[0]:
        if row.pattern.search(model):
            return row
    return None


def assess(
    tee: str,
    cpus: Sequence[str],
    registry: AttributeRegistry,
    resolution: Resolution | None = None,
) -> Capability:
    """Whether a node with these CPUs and this registry can run ``tee`` (see the module docstring)."""
    rows, needs, vendor_of = _table()
    tee_name = TEE_NAMES.get(tee, tee)
    cpu = next((c.strip() for c in cpus if c and c.strip()), None)
    generation = cpu_generation(cpu) if cpu else None
    where = short_cpu(cpu) if cpu else None
    inner = where  # inside parentheses: "Intel Xeon Gold 6354, Ice Lake"
    if cpu and generation:
        same = generation.codename in generation.core
        family = generation.codename if same else f"{generation.core}, {generation.codename}"
        inner = f"{where}, {family}"
        where = f"{where} ({family})"
    key = KEY_SETTING.get(tee)
    absent = resolution is not None and registry.has_registry and key in resolution.missing
    if generation is not None:
        if generation.vendor != vendor_of.get(tee, generation.vendor):
            return Capability(
                tee, False,
                f"{where}: {tee_name} is an {VENDOR_NAMES.get(vendor_of[tee], vendor_of[tee])} feature; "
                f"this node's CPU is {VENDOR_NAMES.get(generation.vendor, generation.vendor)}",
                cpu, generation,
            )
        if generation.supports(tee) is False:
            text = f"this BIOS has no {tee_name} settings ({inner})" if absent else where
            return Capability(tee, False, f"{text}: {needs[tee]}", cpu, generation)
    if absent:
        sku = generation is not None and generation.supports(tee) == "sku"
        what = f" ({inner})" if inner else ""
        why = (
            f": {needs[tee]}; this SKU or BIOS version does not offer it"
            if sku or generation is None
            else f"; {generation.name} supports {tee_name}: update the BIOS to a version that offers it"
        )
        return Capability(tee, False, f"this BIOS has no {tee_name} settings{what}{why}", cpu, generation)
    if generation is None:
        return Capability(tee, None, f"CPU {cpu!r} is not in the generation table; the BIOS settings decide"
                          if cpu else "the BMC reports no CPU model; the BIOS settings decide", cpu, None)
    if generation.supports(tee) == "sku":
        return Capability(tee, None, f"{where}: {tee_name} on select SKUs only; this BIOS offers its settings",
                          cpu, generation)
    return Capability(tee, True, f"{where}: {tee_name} supported", cpu, generation)


def require(tee: str, cpus: Sequence[str], registry: AttributeRegistry, resolution: Resolution | None,
            *, bmc: str) -> Capability:
    """:func:`assess`, raising :class:`CapabilityError` when the node cannot run ``tee``."""
    verdict = assess(tee, cpus, registry, resolution)
    if verdict.capable is False:
        raise CapabilityError(
            f"{bmc}: this node cannot run {TEE_NAMES.get(tee, tee)}: {verdict.reason}; nothing was written. "
            f"fix: put the node in a group for a TEE its CPU supports (or tee = 'none'), or replace the CPU/BIOS",
            bmc=bmc,
            tee=tee,
        )
    return verdict

"""What the simulated hardware of a lab node shows, as a function of its BIOS state.

This is the contract between the lab's BMC emulator (which owns BIOS attributes and
their vendor-specific names) and the node renderer (which turns platform features,
the node's own boot config and the hardware profile into the /proc, /sys and /dev
files a node sees at boot). Neither side knows the other's internals.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PlatformFeatures:
    """CPU/platform security features as the firmware left them after the last reset.

    Example: ``PlatformFeatures(smee=True, snp=True, rmp_coverage=True, sev_es_asid_limit=100)``
    """

    smee: bool = False  # AMD SME enabled in BIOS (SYSCFG bit 23)
    snp: bool = False  # AMD SEV-SNP support enabled in BIOS
    rmp_coverage: bool = False  # SNP memory (RMP table) coverage
    sev_es_asid_limit: int = 1  # SEV-ES ASID space limit; 1 means no SEV-ES/SNP ASIDs
    iommu: bool = True  # AMD-Vi / VT-d enabled in BIOS
    tme: bool = False  # Intel TME
    tme_mt: bool = False  # Intel TME-MT (multi-key)
    tdx: bool = False  # Intel TDX
    seam_loader: bool = False  # Intel TDX SEAM loader
    tdx_key_split: int = 0  # TME-MT/TDX key split (non-zero needed for TDX)
    sgx: bool = False  # Intel SGX
    limit_pa_46bit: bool = True  # "Limit CPU PA to 46 bits" (must be off for TDX)
    x2apic: bool = True

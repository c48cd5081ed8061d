"""The host stage's checks: the TEE active on the running kernel, the IOMMU on, no host GPU driver.

Registered on import; the verify stage loads this module (``ccfactory.verify.node_checks``).
"""

from __future__ import annotations

from ccfactory.facts.gpu import GpuDrivers, NvidiaGpus
from ccfactory.facts.kernel import IommuGroups
from ccfactory.facts.tee import TeeHostStatus
from ccfactory.verify.checks import CheckContext, LAB_GPU, LAB_KERNEL, Outcome, check, fail, gpu_node, lab_note, ok, tee_node


@check("host.tee_active", stage="host", applies=tee_node, facts=(TeeHostStatus,))
def tee_active(ctx: CheckContext) -> Outcome:
    """SEV-SNP or TDX is active on the host, as the kernel reports it."""
    status = ctx.fact(TeeHostStatus)
    tee = status.snp if ctx.cfg.tee == "snp" else status.tdx
    simulated = lab_note(ctx, LAB_KERNEL)
    if tee.active:
        passed = "; ".join(c.detail for c in tee.checks if c.ok)
        return ok(passed or f"{ctx.cfg.tee} active", simulated=simulated)
    failed = tee.failed or tuple(c for c in tee.checks if c.ok is not True)
    detail = "; ".join(c.detail for c in failed) or f"{ctx.cfg.tee} not active"
    hint = "; ".join(dict.fromkeys(c.hint for c in failed if c.hint)) or "run the firmware and host stages"
    return fail(detail, hint=hint, simulated=simulated)


@check("host.iommu_on", stage="host", applies=tee_node, facts=(IommuGroups,))
def iommu_on(ctx: CheckContext) -> Outcome:
    """The IOMMU is on: devices sit in IOMMU groups (needed for VFIO passthrough)."""
    count = len(ctx.fact(IommuGroups).groups)
    if not count:
        return fail(
            "no IOMMU groups",
            hint="enable the IOMMU in BIOS (AMD-Vi / VT-d) and run the host stage (intel_iommu=on on TDX hosts)",
        )
    return ok(f"{count} IOMMU groups", simulated=lab_note(ctx, LAB_KERNEL))


@check("host.no_host_gpu_driver", stage="host", applies=gpu_node, facts=(NvidiaGpus, GpuDrivers))
def no_host_gpu_driver(ctx: CheckContext) -> Outcome:
    """No NVIDIA or nouveau driver holds a GPU on the host (CoCo passes them to guests)."""
    devices = ctx.fact(NvidiaGpus)
    drivers = ctx.fact(GpuDrivers)
    holders = [f"{d.bdf} ({d.driver})" for d in devices.all if d.driver in ("nvidia", "nouveau")]
    loaded = list(drivers.nvidia_loaded) + (["nouveau"] if drivers.nouveau_loaded else [])
    if holders or loaded:
        what = ", ".join(holders) or f"module(s) loaded: {', '.join(loaded)}"
        return fail(what, hint="run the host stage (blacklists nvidia/nouveau) and reboot; never install a driver on the host")
    return ok("no nvidia or nouveau driver on the host", simulated=lab_note(ctx, LAB_GPU))

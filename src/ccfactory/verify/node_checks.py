"""The checks run on a node over SSH, grouped by stage. Each reuses the stage's own facts
(same commands, same parsers), so the report and the deploy can never disagree about
what a node looks like.

Importing this module registers the checks in ``ccfactory.verify.checks.REGISTRY``.
"""

from __future__ import annotations

from ccfactory.distros import distro_for, supported_list
from ccfactory.facts.gpu import GpuDrivers, NvidiaGpus
from ccfactory.facts.gpu_cc import GpuCcModes
from ccfactory.facts.kernel import IommuGroups
from ccfactory.facts.node import NodeOs
from ccfactory.facts.tee import TeeHostStatus
from ccfactory.verify.checks import CheckContext, Outcome, check, fail, ok

LAB_KERNEL = "the lab's nodes share the lab machine's kernel; SNP/TDX state is simulated from the BMC's BIOS state"
LAB_GPU = "GPUs and gpu-admin-tools are lab stand-ins (sysfs tree and state file)"


def _tee_node(cfg) -> bool:
    return cfg.tee in ("snp", "tdx")


def _gpu_node(cfg) -> bool:
    return cfg.gpu.count > 0


def _lab(ctx: CheckContext, what: str) -> str:
    return what if ctx.cfg.lab else ""


# ------------------------------------------------------------------ preflight


@check("preflight.os_supported", stage="preflight")
def os_supported(ctx: CheckContext) -> Outcome:
    """The node runs a distribution ccfactory supports."""
    info = ctx.fact(NodeOs)
    name = f"{info.os_id} {info.os_version}"
    if distro_for(info.os_id, info.os_version) is None:
        return fail(f"{name} is not supported", hint=f"reinstall with one of: {supported_list()}")
    return ok(f"{name}, kernel {info.kernel}")


# ------------------------------------------------------------------ host


@check("host.tee_active", stage="host", applies=_tee_node)
def tee_active(ctx: CheckContext) -> Outcome:
    """SEV-SNP or TDX is active on the host, as the kernel reports it."""
    status = ctx.fact(TeeHostStatus)
    tee = status.snp if ctx.cfg.tee == "snp" else status.tdx
    simulated = _lab(ctx, LAB_KERNEL)
    if tee.active:
        passed = "; ".join(c.detail for c in tee.checks if c.ok)
        return ok(passed or f"{ctx.cfg.tee} active", simulated=simulated)
    failed = tee.failed or tuple(c for c in tee.checks if c.ok is not True)
    detail = "; ".join(c.detail for c in failed) or f"{ctx.cfg.tee} not active"
    hint = "; ".join(dict.fromkeys(c.hint for c in failed if c.hint)) or "run the firmware and host stages"
    return fail(detail, hint=hint, simulated=simulated)


@check("host.iommu_on", stage="host", applies=_tee_node)
def iommu_on(ctx: CheckContext) -> Outcome:
    """The IOMMU is on: devices sit in IOMMU groups (needed for VFIO passthrough)."""
    count = len(ctx.fact(IommuGroups).groups)
    if not count:
        return fail(
            "no IOMMU groups",
            hint="enable the IOMMU in BIOS (AMD-Vi / VT-d) and run the host stage (intel_iommu=on on TDX hosts)",
        )
    return ok(f"{count} IOMMU groups", simulated=_lab(ctx, LAB_KERNEL))


@check("host.no_host_gpu_driver", stage="host", applies=_gpu_node)
def no_host_gpu_driver(ctx: CheckContext) -> Outcome:
    """No NVIDIA or nouveau driver holds a GPU on the host (CoCo passes them to guests)."""
    devices = ctx.fact(NvidiaGpus)
    drivers = ctx.fact(GpuDrivers)
    holders = [f"{d.bdf} ({d.driver})" for d in devices.all if d.driver in ("nvidia", "nouveau")]
    loaded = list(drivers.nvidia_loaded) + (["nouveau"] if drivers.nouveau_loaded else [])
    if holders or loaded:
        what = ", ".join(holders) or f"module(s) loaded: {', '.join(loaded)}"
        return fail(what, hint="run the host stage (blacklists nvidia/nouveau) and reboot; never install a driver on the host")
    return ok("no nvidia or nouveau driver on the host", simulated=_lab(ctx, LAB_GPU))


# ------------------------------------------------------------------ gpu


@check("gpu.inventory", stage="gpu", applies=_gpu_node)
def gpu_inventory(ctx: CheckContext) -> Outcome:
    """The node has the GPUs the inventory says (count and model)."""
    from ccfactory.roles.gpu.plan import inventory_problems

    devices = ctx.fact(NvidiaGpus)
    problems = inventory_problems(ctx.cfg.gpu, devices)
    if problems:
        return fail("; ".join(problems), hint="fix gpu_count/gpu_model in the inventory, or the hardware")
    switches = f" + {len(devices.nvswitches)} NVSwitches" if devices.nvswitches else ""
    return ok(f"{len(devices.gpus)}x {ctx.cfg.gpu.model}{switches}", simulated=_lab(ctx, LAB_GPU))


@check("gpu.vfio_bound", stage="gpu", applies=_gpu_node)
def gpu_vfio_bound(ctx: CheckContext) -> Outcome:
    """Every GPU (and NVSwitch with ppcie) is bound to vfio-pci."""
    devices = ctx.fact(NvidiaGpus)
    wanted = devices.all if ctx.cfg.gpu.cc_mode == "ppcie" else devices.gpus
    off = [f"{d.bdf} ({d.driver or 'no driver'})" for d in wanted if not d.on_vfio]
    if off:
        return fail(f"not on vfio-pci: {', '.join(off)}", hint="run the gpu stage (binds vfio-pci and reboots)")
    return ok(f"{len(wanted)} device(s) on vfio-pci", simulated=_lab(ctx, LAB_GPU))


@check("gpu.cc_mode", stage="gpu", applies=_gpu_node)
def gpu_cc_mode(ctx: CheckContext) -> Outcome:
    """Every GPU is in the inventory's CC mode (PPCIe on devices too for ppcie)."""
    from ccfactory.bom import bom_for
    from ccfactory.operations.gpu import mode_mismatches, plan_modes, tool_path

    try:
        version = bom_for(ctx.cfg.lab, ctx.cfg.lab_dir).artifact("gpu-admin-tools").version
    except KeyError as exc:
        return fail(str(exc).strip("'\""), hint="pin gpu-admin-tools in the BOM, then run the gpu stage")
    devices = ctx.fact(NvidiaGpus)
    gpus = [g.bdf for g in devices.gpus]
    ppcie = [d.bdf for d in devices.all if d.ppcie_capable]
    query = GpuCcModes()
    out = ctx.run(query.command(tool_path(version), ",".join(gpus), ",".join(ppcie)))
    modes = query.process(out.stdout.splitlines())
    if not modes.installed:
        return fail(f"gpu-admin-tools {version} is not installed", hint="run the gpu stage")
    if modes.problems:
        return fail("; ".join(modes.problems), hint="run the gpu stage; it names the recovery command")
    wrong = mode_mismatches(plan_modes(ctx.cfg.gpu.cc_mode, gpus, ppcie, modes.cc, modes.ppcie), modes)
    if wrong:
        return fail("; ".join(wrong), hint="run the gpu stage (sets the mode, resets, verifies)")
    return ok(f"all {len(gpus)} GPU(s) in mode {ctx.cfg.gpu.cc_mode}", simulated=_lab(ctx, LAB_GPU))

"""The gpu stage's checks: the GPUs the inventory names, bound to vfio-pci, in the wanted CC/PPCIe mode.

Registered on import; the verify stage loads this module (``ccfactory.verify.node_checks``).
"""

from __future__ import annotations

from ccfactory.facts.gpu import NvidiaGpus
from ccfactory.facts.gpu_cc import GpuCcModes
from ccfactory.verify.checks import CheckContext, LAB_GPU, Outcome, check, fail, gpu_node, lab_note, ok


@check("gpu.inventory", stage="gpu", applies=gpu_node, facts=(NvidiaGpus,))
def gpu_inventory(ctx: CheckContext) -> Outcome:
    """The node has the GPUs the inventory says (count and model)."""
    from ccfactory.parsers.gpuhost import inventory_problems

    devices = ctx.fact(NvidiaGpus)
    problems = inventory_problems(ctx.cfg.gpu, devices)
    if problems:
        return fail("; ".join(problems), hint="fix gpu_count/gpu_model in the inventory, or the hardware")
    switches = f" + {len(devices.nvswitches)} NVSwitches" if devices.nvswitches else ""
    return ok(f"{len(devices.gpus)}x {ctx.cfg.gpu.model}{switches}", simulated=lab_note(ctx, LAB_GPU))


@check("gpu.vfio_bound", stage="gpu", applies=gpu_node, facts=(NvidiaGpus,))
def gpu_vfio_bound(ctx: CheckContext) -> Outcome:
    """Every GPU (and NVSwitch with ppcie) is bound to vfio-pci."""
    devices = ctx.fact(NvidiaGpus)
    wanted = devices.all if ctx.cfg.gpu.cc_mode == "ppcie" else devices.gpus
    off = [f"{d.bdf} ({d.driver or 'no driver'})" for d in wanted if not d.on_vfio]
    if off:
        return fail(f"not on vfio-pci: {', '.join(off)}", hint="run the gpu stage (binds vfio-pci and reboots)")
    return ok(f"{len(wanted)} device(s) on vfio-pci", simulated=lab_note(ctx, LAB_GPU))


@check("gpu.cc_mode", stage="gpu", applies=gpu_node, facts=(NvidiaGpus,))  # + the modes query
def gpu_cc_mode(ctx: CheckContext) -> Outcome:
    """Every GPU is in the inventory's CC mode (PPCIe on devices too for ppcie)."""
    from ccfactory.bom import bom_for
    from ccfactory.gpuadmin import mode_mismatches, plan_modes, tool_path

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
    return ok(f"all {len(gpus)} GPU(s) in mode {ctx.cfg.gpu.cc_mode}", simulated=lab_note(ctx, LAB_GPU))

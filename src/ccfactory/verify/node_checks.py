"""The checks run on a node over SSH, grouped by stage. Each reuses the stage's own facts
(same commands, same parsers), so the report and the deploy can never disagree about
what a node looks like.

Each check declares the facts and commands it reads (``facts=``, ``commands=``): the verify
stage runs all of a node's declared reads as one remote command and each check gets its own
command's output from it (``ccfactory.verify.checks.run_checks``). A read that depends on
another read's answer (the GPU modes query needs the GPU list) runs on its own.

Importing this module registers the checks in ``ccfactory.verify.checks.REGISTRY``.
"""

from __future__ import annotations

from ccfactory.distros import distro_for, supported_list
from ccfactory.facts.containerd import ContainerdRuntimes
from ccfactory.facts.gpu import GpuDrivers, NvidiaGpus
from ccfactory.facts.gpu_cc import GpuCcModes
from ccfactory.facts.kata import KataInstall
from ccfactory.facts.kernel import IommuGroups
from ccfactory.facts.node import NodeOs
from ccfactory.facts.tee import TeeHostStatus
from ccfactory.verify.checks import CheckContext, Outcome, check, declare, fail, ok

LAB_KERNEL = "the lab's nodes share the lab machine's kernel; SNP/TDX state is simulated from the BMC's BIOS state"
LAB_GPU = "GPUs and gpu-admin-tools are lab stand-ins (sysfs tree and state file)"


def _tee_node(cfg) -> bool:
    return cfg.tee in ("snp", "tdx")


def _gpu_node(cfg) -> bool:
    return cfg.gpu.count > 0


def _lab(ctx: CheckContext, what: str) -> str:
    return what if ctx.cfg.lab else ""


# ------------------------------------------------------------------ preflight


@check("preflight.os_supported", stage="preflight", facts=(NodeOs,))
def os_supported(ctx: CheckContext) -> Outcome:
    """The node runs a distribution ccfactory supports."""
    info = ctx.fact(NodeOs)
    name = f"{info.os_id} {info.os_version}"
    if distro_for(info.os_id, info.os_version) is None:
        return fail(f"{name} is not supported", hint=f"reinstall with one of: {supported_list()}")
    return ok(f"{name}, kernel {info.kernel}")


# ------------------------------------------------------------------ firmware

LAB_BMC = "the BMC is the lab's Redfish emulator (sushy-tools with vendor personalities)"


@check("firmware.bios_compliant", stage="firmware", applies=lambda cfg: cfg.tee in ("snp", "tdx") and cfg.bmc is not None)
def bios_compliant(ctx: CheckContext) -> Outcome:
    """Every BIOS setting of the vendor profile is applied, as the BMC reports it (read only)."""
    from ccfactory.firmware.driver import FirmwareDriver

    driver = FirmwareDriver(ctx.cfg.bmc, ctx.cfg.tee, host=ctx.cfg.name)
    try:
        plan, _ = driver.read_plan()
    finally:
        driver.close()
    if plan.compliant:
        return ok(f"{ctx.cfg.bmc.vendor} BIOS profile for {ctx.cfg.tee} applied ({driver.requests} Redfish requests)",
                  simulated=_lab(ctx, LAB_BMC))
    return fail(
        f"BIOS stage(s) not applied: {', '.join(plan.unapplied)}",
        hint="run the firmware stage (`ccfactory firmware plan` shows the attribute diff)",
        simulated=_lab(ctx, LAB_BMC),
    )


# ------------------------------------------------------------------ host


@check("host.tee_active", stage="host", applies=_tee_node, facts=(TeeHostStatus,))
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


@check("host.iommu_on", stage="host", applies=_tee_node, facts=(IommuGroups,))
def iommu_on(ctx: CheckContext) -> Outcome:
    """The IOMMU is on: devices sit in IOMMU groups (needed for VFIO passthrough)."""
    count = len(ctx.fact(IommuGroups).groups)
    if not count:
        return fail(
            "no IOMMU groups",
            hint="enable the IOMMU in BIOS (AMD-Vi / VT-d) and run the host stage (intel_iommu=on on TDX hosts)",
        )
    return ok(f"{count} IOMMU groups", simulated=_lab(ctx, LAB_KERNEL))


@check("host.no_host_gpu_driver", stage="host", applies=_gpu_node, facts=(NvidiaGpus, GpuDrivers))
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


@check("gpu.inventory", stage="gpu", applies=_gpu_node, facts=(NvidiaGpus,))
def gpu_inventory(ctx: CheckContext) -> Outcome:
    """The node has the GPUs the inventory says (count and model)."""
    from ccfactory.parsers.gpuhost import inventory_problems

    devices = ctx.fact(NvidiaGpus)
    problems = inventory_problems(ctx.cfg.gpu, devices)
    if problems:
        return fail("; ".join(problems), hint="fix gpu_count/gpu_model in the inventory, or the hardware")
    switches = f" + {len(devices.nvswitches)} NVSwitches" if devices.nvswitches else ""
    return ok(f"{len(devices.gpus)}x {ctx.cfg.gpu.model}{switches}", simulated=_lab(ctx, LAB_GPU))


@check("gpu.vfio_bound", stage="gpu", applies=_gpu_node, facts=(NvidiaGpus,))
def gpu_vfio_bound(ctx: CheckContext) -> Outcome:
    """Every GPU (and NVSwitch with ppcie) is bound to vfio-pci."""
    devices = ctx.fact(NvidiaGpus)
    wanted = devices.all if ctx.cfg.gpu.cc_mode == "ppcie" else devices.gpus
    off = [f"{d.bdf} ({d.driver or 'no driver'})" for d in wanted if not d.on_vfio]
    if off:
        return fail(f"not on vfio-pci: {', '.join(off)}", hint="run the gpu stage (binds vfio-pci and reboots)")
    return ok(f"{len(wanted)} device(s) on vfio-pci", simulated=_lab(ctx, LAB_GPU))


@check("gpu.cc_mode", stage="gpu", applies=_gpu_node, facts=(NvidiaGpus,))  # + the modes query
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
    return ok(f"all {len(gpus)} GPU(s) in mode {ctx.cfg.gpu.cc_mode}", simulated=_lab(ctx, LAB_GPU))


# ------------------------------------------------------------------ runtime

LAB_KATA = "Kata is the lab's kata-static stand-in (its shim runs containers with runc, no VM); containerd is real"


def _runtime_node(cfg) -> bool:
    return cfg.is_worker and cfg.tee in ("snp", "tdx")


def _wanted_handlers(cfg) -> tuple[str, ...]:
    from ccfactory.coco.spec import handler_name, select_shims

    shims, _ = select_shims(cfg.tee, cfg.gpu.count, cfg.gpu.count, cfg.runtime.shims)
    return tuple(sorted(handler_name(s) for s in shims))


@check("runtime.containerd_handlers", stage="runtime", applies=_runtime_node, facts=(ContainerdRuntimes,))
def containerd_handlers(ctx: CheckContext) -> Outcome:
    """containerd runs and its effective config lists exactly ccfactory's Kata handlers."""
    state = ctx.fact(ContainerdRuntimes)
    if not (state.installed and state.active):
        return fail("containerd is not installed and running", hint="run the runtime stage")
    if not state.dump_ok:
        return fail(f"`containerd config dump` failed: {state.dump_error}", hint="run the runtime stage (it validates and rolls back)")
    kata = sorted(h for h in state.handlers if h.startswith("kata"))
    wanted = list(_wanted_handlers(ctx.cfg))
    if kata != wanted:
        return fail(f"Kata handlers {kata or 'none'}, wanted {wanted}", hint="run the runtime stage")
    return ok(f"containerd {state.version}: {', '.join(kata)}", simulated=_lab(ctx, LAB_KATA))


@check("runtime.kata_installed", stage="runtime", applies=_runtime_node, facts=(KataInstall,))
def kata_installed(ctx: CheckContext) -> Outcome:
    """/opt/kata holds the BOM's kata-static, with ccfactory's drop-ins for every shim."""
    from ccfactory.bom import bom_for

    kata = ctx.fact(KataInstall)
    try:
        pinned = bom_for(ctx.cfg.lab, ctx.cfg.lab_dir).artifact("kata-static").version
    except KeyError as exc:
        return fail(str(exc).strip("'\""), hint="pin kata-static in the BOM")
    if not kata.present:
        return fail("/opt/kata is missing", hint="run the runtime stage")
    if kata.installed_version != pinned:
        return fail(f"kata-static {kata.installed_version or kata.version or 'unknown'} installed, BOM pins {pinned}",
                    hint="run the runtime stage (refuses under running sandboxes unless runtime_drain)")
    missing = [h for h in _wanted_handlers(ctx.cfg) if not kata.dropins.get(h.removeprefix("kata-"))]
    if missing:
        return fail(f"no ccfactory drop-in for {', '.join(missing)}", hint="run the runtime stage")
    return ok(f"kata-static {pinned} with drop-ins", simulated=_lab(ctx, LAB_KATA))


INITDATA_DIR = "/etc/ccfactory/coco"
_INITDATA_READS = (
    f"cat {INITDATA_DIR}/initdata.json 2>/dev/null",
    f"cat {INITDATA_DIR}/initdata.toml 2>/dev/null",
    f"cat {INITDATA_DIR}/initdata.annotation 2>/dev/null",
)


def _initdata_digest_command(algorithm: str) -> str:
    return f"{algorithm}sum {INITDATA_DIR}/initdata.toml"


def _initdata_reads(ctx: CheckContext) -> list[str]:
    """The files, and the digest in the algorithm the runtime stage writes for this TEE
    (``ccfactory.coco.initdata.ALGORITHM_FOR_TEE``; another one recorded runs on its own)."""
    from ccfactory.coco.initdata import ALGORITHM_FOR_TEE

    return [*_INITDATA_READS, _initdata_digest_command(ALGORITHM_FOR_TEE.get(ctx.cfg.tee or "", "sha256"))]


@check("runtime.initdata", stage="runtime", applies=lambda cfg: _runtime_node(cfg) and bool(cfg.kbs.url),
       commands=_initdata_reads)
def initdata_in_place(ctx: CheckContext) -> Outcome:
    """The CoCo initdata for this site's KBS is on the node; its digest and annotation match the document."""
    import json as _json

    from ccfactory.coco.initdata import decode_annotation

    base = INITDATA_DIR
    summary_text = ctx.run(_INITDATA_READS[0]).stdout
    document = ctx.run(_INITDATA_READS[1]).stdout
    annotation = ctx.run(_INITDATA_READS[2]).stdout.strip()
    if not summary_text.strip() or not document:
        return fail(f"no initdata in {base}", hint="run the runtime stage with kbs_url set")
    try:
        summary = _json.loads(summary_text)
    except ValueError:
        return fail(f"{base}/initdata.json is not JSON", hint="run the runtime stage")
    algorithm = summary.get("algorithm", "sha256")
    if algorithm not in ("sha256", "sha384", "sha512"):
        return fail(f"initdata digest algorithm {algorithm!r} is not one ccfactory writes", hint="run the runtime stage")
    # hash the file's exact bytes on the node (command output loses trailing newlines)
    digest = ctx.run(_initdata_digest_command(algorithm)).stdout.split()[0] if document else ""
    if digest != summary.get("digest"):
        return fail(f"initdata.toml {algorithm} {digest[:16]}... differs from the recorded digest", hint="run the runtime stage")
    if decode_annotation(annotation).rstrip("\n") != document.rstrip("\n"):
        return fail("initdata.annotation does not decode to initdata.toml", hint="run the runtime stage")
    if ctx.cfg.kbs.url not in document:
        return fail(f"initdata does not point at {ctx.cfg.kbs.url}", hint="run the runtime stage")
    return ok(f"initdata for {ctx.cfg.kbs.url}, {algorithm} {digest[:16]}...")


# ------------------------------------------------------------------ kbs

LAB_KBS = "the KBS is the lab's Trustee stand-in; it can verify sample evidence only (no SNP/TDX verifier)"


@check("kbs.health", stage="kbs", applies=lambda cfg: cfg.is_kbs)
def kbs_health(ctx: CheckContext) -> Outcome:
    """HTTPS with the site CA, the admin credential works, and sample (non-TEE) evidence is denied."""
    from ccfactory.kbs.client import KbsClient
    from ccfactory.kbs.settings import kbs_settings

    settings = kbs_settings(ctx.cfg, ctx.data)
    pki = settings.pki_dir
    client = KbsClient(settings.url, ca_cert=pki / "ca.crt" if not settings.sources.ca_cert else settings.sources.ca_cert,
                       admin_key=pki / "admin.key", lab=ctx.cfg.lab)
    try:
        auth = client.check_admin_auth()
        denial = client.negative_health_check(expect_denial=not settings.lab_permissive)
    except Exception as exc:  # noqa: BLE001 - every failure is this check's finding
        return fail(f"{type(exc).__name__}: {exc}", hint="run the kbs stage; check the KBS service log (journalctl -u trustee-kbs)",
                    simulated=_lab(ctx, LAB_KBS))
    if settings.lab_permissive:
        return fail(f"{auth}; {denial}", hint="remove kbs_lab_permissive: the policy must require TEE attestation")
    return ok(f"{auth}; {denial}", simulated=_lab(ctx, LAB_KBS))


from ccfactory.verify import attestation  # noqa: E402 - registers attestation.end_to_end after the checks above

# its node-side reads go into the batch; its smoke container (seconds of node-side waiting, after
# seeding the KBS) runs alongside the other checks
declare(attestation.CHECK_ID, facts=(ContainerdRuntimes,), commands=lambda ctx: [f"cat {attestation.INITDATA_JSON}"],
        background=True)

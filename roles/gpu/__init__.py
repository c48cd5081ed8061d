"""Role ``gpu``: the node's NVIDIA GPUs in the wanted confidential-computing mode, on vfio-pci.

For worker nodes with ``gpu_count > 0`` (other hosts: nothing to do):

1. gpu-admin-tools from the BOM, pinned by NVIDIA commit: on the controller, the
   uncompressed ``git archive`` of the pinned commit (from a shallow fetch of the
   repository, tree checked; or the same tar from the artifact directory or mirror),
   verified (sha256), pushed, unpacked into
   ``/opt/ccfactory/gpu-admin-tools/<version>``. The tool is Python 3 standard library
   only: no virtualenv.
2. Discovery against the inventory: GPU count and model, NVSwitches for ``ppcie``; no
   host GPU driver (nvidia, nouveau) may hold a device.
3. The CC mode (``gpu.cc_mode``): all GPUs alike (``on``/``devtools``/``off``), or PPCIe on
   HGX Hopper (PPCIe on, which turns CC off, set on GPUs and NVSwitches together). As
   NVIDIA's k8s-cc-manager does it: the mode set on every device without a reset, then all
   devices reset, then each verified after it comes back (docs/gpu.md); a half-switched
   node is reported with its recovery command.
4. VFIO: ``/etc/modprobe.d/ccfactory-vfio.conf`` (``options vfio-pci ids=...`` and
   softdeps that load vfio-pci before nvidia/nouveau) and
   ``/etc/modules-load.d/ccfactory-vfio.conf``; if a device is not on vfio-pci and the
   configuration changed, one rolling reboot (``ccfactory.operations.reboot``), then the
   driver link of each device is verified.

A converged node gets no change and no reboot. Config is read once, facts once (at
prepare time); operations re-read what they need when they run.

Example (deploy file)::

    from ccfactory.roles import gpu
    gpu.apply()
"""

from __future__ import annotations

import io
import logging
from dataclasses import replace

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.facts.files import FileContents
from pyinfra.operations import files, server

from ccfactory.bom.fetch import artifact_for_host
from ccfactory import config  # config imports this stage's options: no name is taken from it at import time
from ccfactory.facts.gpu import GpuDrivers, NvidiaGpus
from ccfactory.facts.gpu_cc import GpuCcModes
from ccfactory.distros import distro_for, initramfs_step, supported_list
from ccfactory.facts.node import BootId, BootTools, NodeOs
from ccfactory import gpuadmin
from ccfactory.operations import reboot
from ccfactory.operations.checks import requirement
from ccfactory.roles.gpu import operations as gpu
from ccfactory.parsers.reboot_marker import marker_text
from ccfactory.templating import TemplateOverlayError, site_overlays
from ccfactory.roles.gpu.plan import (
    REBOOT_MARKER,
    VFIO_CONF,
    VFIO_HINT,
    VFIO_MODULES_CONF,
    plan_stage,
)

ARTIFACT = "gpu-admin-tools"
SUDO = {"_sudo": True}  # the tool, /opt and /etc need root

logger = logging.getLogger("pyinfra")


def _artifact(cfg):
    """(artifact, local path) of gpu-admin-tools, or (None, problem)."""
    artifact, local, problem = artifact_for_host(cfg, ARTIFACT, progress=lambda m: host.log(m, log_func=logger.info))
    return (artifact, local) if not problem else (None, problem)


# Each host's plan between the two halves of a site run (``configure`` before the firmware
# stage, ``settle`` after the shared reboot), so that facts are read once.
_PLANS: dict[str, tuple] = {}


def _plan():
    """(cfg, artifact, local, tool, plan, initramfs, boot_id) from config and one read of the
    facts, or None when the stage has nothing to do or refuses (the refusal is an operation)."""
    cfg = config.node_config(host)
    if not (cfg.is_worker and cfg.has_gpus):
        host.noop("no GPUs to manage (not a worker, or gpu_count is 0)")
        return None

    artifact, local = _artifact(cfg)
    if artifact is None:
        requirement(
            name="gpu-admin-tools from the bill of materials",
            satisfied=False,
            problem=f"gpu-admin-tools: {local}; nothing was changed",
        )
        return None

    tool = gpuadmin.tool_path(artifact.version)
    devices = host.get_fact(NvidiaGpus)
    drivers = host.get_fact(GpuDrivers, **SUDO)
    vfio_now = host.get_fact(FileContents, path=VFIO_CONF, **SUDO)
    marker = host.get_fact(FileContents, path=REBOOT_MARKER, **SUDO)
    boot_id = host.get_fact(BootId)
    info = host.get_fact(NodeOs)
    distro = distro_for(info.os_id, info.os_version)
    if distro is None:
        requirement(
            name="GPUs match the inventory and no host driver holds them",
            satisfied=False,
            problem=f"{info.os_id or 'unknown OS'} {info.os_version} is not a supported distribution (supported: "
            f"{supported_list()}); the gpu stage needs its initramfs command (ccfactory/data/distros.toml); "
            "nothing was changed",
        )
        return None
    boot = host.get_fact(BootTools, tools=" ".join(distro.tools()))
    initramfs = initramfs_step(distro, boot.tools, boot.initramfs_images)
    try:
        overlays, overlay_problem = site_overlays(cfg), None
    except TemplateOverlayError as e:  # validated before connecting; removed since
        overlays, overlay_problem = (), str(e)
    plan = plan_stage(cfg.gpu, devices, drivers, vfio_now, marker, boot_id, overlays)
    extra = tuple(p for p in (initramfs.problem, overlay_problem) if p)
    if extra:
        plan = replace(plan, problems=(*plan.problems, *extra))
    elif initramfs.note and plan.vfio_conf_changes:
        host.log(initramfs.note, log_func=logger.warning)
    modes = host.get_fact(
        GpuCcModes, tool=tool, cc_devices=",".join(plan.gpus), ppcie_devices=",".join(plan.ppcie_devices), **SUDO
    )

    requirement(
        name="GPUs match the inventory and no host driver holds them",
        satisfied=not plan.problems,
        problem="; ".join(plan.problems),
    )
    if plan.problems:
        return None
    if modes.installed and modes.problems:
        host.log(f"gpu-admin-tools reports: {'; '.join(modes.problems)}", log_func=logger.warning)
    return cfg, artifact, local, tool, plan, initramfs, boot_id


def _cc_modes(cfg, artifact, local, tool, plan) -> None:
    """gpu-admin-tools pushed and unpacked, then every device in the wanted mode."""
    archive = f"{gpuadmin.TOOL_ROOT}/{artifact.filename}"
    files.put(name="Push gpu-admin-tools", src=local, dest=archive, mode="0644", **SUDO)
    gpu.admin_tools_unpacked(
        name=f"Unpack gpu-admin-tools {artifact.version}",
        archive=archive,
        dest=gpuadmin.tool_dir(artifact.version),
        sha256=artifact.sha256,
        strip=0 if artifact.kind == "git" else 1,  # a git archive has no top directory
        **SUDO,
    )
    gpu.cc_mode(
        name=f"GPUs in CC mode {cfg.gpu.cc_mode}",
        mode=cfg.gpu.cc_mode,
        gpus=list(plan.gpus),
        ppcie_devices=list(plan.ppcie_devices),
        tool=tool,
        **SUDO,
    )


def _vfio_boot_config(cfg, plan, initramfs, boot_id, reboot_now: bool) -> None:
    """The VFIO files (and initramfs) on disk; the reboot that binds the GPUs, now or recorded."""
    files.put(
        name="vfio-pci claims the GPUs at boot",
        src=io.StringIO(plan.vfio_conf),
        dest=VFIO_CONF,
        mode="0644",
        **SUDO,
    )
    files.put(
        name="vfio-pci loaded at boot",
        src=io.StringIO(plan.vfio_modules_conf),
        dest=VFIO_MODULES_CONF,
        mode="0644",
        **SUDO,
    )
    if plan.vfio_conf_changes and initramfs.command:
        server.shell(name="Refresh the initramfs (module options)", commands=[initramfs.command], **SUDO)
    if plan.needs_reboot:
        files.put(
            name="Record the pending reboot",
            src=io.StringIO(marker_text(boot_id, plan.reboot_reason)),
            dest=REBOOT_MARKER,
            mode="0644",
            **SUDO,
        )
        if reboot_now:
            reboot.rebooted(
                name="Reboot to bind the GPUs to vfio-pci",
                reason=plan.reboot_reason,
                timeout=cfg.reboot.timeout,
                escalation=reboot.bmc_escalation(cfg),
                **reboot.rolling(cfg.reboot.batch_size),
                **SUDO,
            )
        else:
            host.log(f"reboot deferred to the site run's one reboot: {plan.reboot_reason}", log_func=logger.info)


def _vfio_verified(plan) -> None:
    files.file(name="Reboot for VFIO done", path=REBOOT_MARKER, present=False, **SUDO)
    gpu.vfio_bound(
        name="GPUs on vfio-pci",
        devices=list(plan.vfio_devices),
        hint=VFIO_HINT,
        **SUDO,
    )


@deploy("GPU")
def apply() -> None:
    """The whole stage on its own: CC modes, VFIO configuration, one reboot when needed, verify."""
    planned = _plan()
    if planned is None:
        return
    cfg, artifact, local, tool, plan, initramfs, boot_id = planned
    _cc_modes(cfg, artifact, local, tool, plan)
    _vfio_boot_config(cfg, plan, initramfs, boot_id, reboot_now=True)
    _vfio_verified(plan)


@deploy("GPU")
def configure() -> None:
    """The first half for a site run (``ccfactory.deploys.run_stages``): the VFIO boot
    configuration written and its reboot recorded, not done (``reboot.pending_applied`` after
    the firmware stage reboots once for every stage that deferred); ``settle`` then switches the
    CC modes on the GPUs vfio-pci holds (NVIDIA's deployment guide binds them to VFIO first,
    docs/gpu.md) and verifies the binding.

    Example::

        gpu.configure(); firmware.apply(); boot.apply(); gpu.settle()
    """
    planned = _plan()
    if planned is None:
        return
    cfg, _, _, _, plan, initramfs, boot_id = planned
    _vfio_boot_config(cfg, plan, initramfs, boot_id, reboot_now=False)
    _PLANS[host.name] = planned


@deploy("GPU")
def settle() -> None:
    """The second half for a site run: CC modes switched, the VFIO binding verified."""
    planned = _PLANS.pop(host.name, None)
    if planned is None:
        return
    cfg, artifact, local, tool, plan, _, _ = planned
    _cc_modes(cfg, artifact, local, tool, plan)
    _vfio_verified(plan)

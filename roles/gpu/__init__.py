"""Role ``gpu``: the node's NVIDIA GPUs in the wanted confidential-computing mode, on vfio-pci.

For worker nodes with ``gpu_count > 0`` (other hosts: nothing to do):

1. gpu-admin-tools from the BOM: resolved on the controller first (a site whose BOM does
   not pin it fails here, with the BOM's reason, before the node is touched), fetched and
   verified (sha256) on the controller, pushed, unpacked into
   ``/opt/ccfactory/gpu-admin-tools/<version>``. The tool is Python 3 standard library
   only: no virtualenv.
2. Discovery against the inventory: GPU count and model, NVSwitches for ``ppcie``; no
   host GPU driver (nvidia, nouveau) may hold a device.
3. The CC mode (``gpu.cc_mode``): all GPUs alike (``on``/``devtools``/``off``), or PPCIe on
   HGX Hopper (CC off on the GPUs, PPCIe staged on GPUs and NVSwitches, all reset
   together); every device verified after its reset; a half-switched node is reported
   with its recovery command.
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

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.facts.files import FileContents
from pyinfra.operations import files, server

from ccfactory.bom.fetch import artifact_for_host
from ccfactory.config import node_config
from ccfactory.facts.gpu import GpuDrivers, NvidiaGpus
from ccfactory.facts.gpu_cc import GpuCcModes
from ccfactory.facts.node import BootId
from ccfactory.operations import checks, gpu, reboot
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


@deploy("GPU")
def apply() -> None:
    cfg = node_config(host)
    if not (cfg.is_worker and cfg.has_gpus):
        host.noop("no GPUs to manage (not a worker, or gpu_count is 0)")
        return

    artifact, local = _artifact(cfg)
    if artifact is None:
        checks.requirement(
            name="gpu-admin-tools from the bill of materials",
            satisfied=False,
            problem=f"gpu-admin-tools: {local}; pin it in the BOM (see docs/bom-research.md), nothing was changed",
        )
        return

    tool = gpu.tool_path(artifact.version)
    devices = host.get_fact(NvidiaGpus)
    drivers = host.get_fact(GpuDrivers, **SUDO)
    vfio_now = host.get_fact(FileContents, path=VFIO_CONF, **SUDO)
    marker = host.get_fact(FileContents, path=REBOOT_MARKER, **SUDO)
    boot_id = host.get_fact(BootId)
    plan = plan_stage(cfg.gpu, devices, drivers, vfio_now, marker, boot_id)
    modes = host.get_fact(
        GpuCcModes, tool=tool, cc_devices=",".join(plan.gpus), ppcie_devices=",".join(plan.ppcie_devices), **SUDO
    )

    checks.requirement(
        name="GPUs match the inventory and no host driver holds them",
        satisfied=not plan.problems,
        problem="; ".join(plan.problems),
    )
    if plan.problems:
        return
    if modes.installed and modes.problems:
        host.log(f"gpu-admin-tools reports: {'; '.join(modes.problems)}", log_func=logger.warning)

    archive = f"{gpu.TOOL_ROOT}/{artifact.filename}"
    files.put(name="Push gpu-admin-tools", src=local, dest=archive, mode="0644", **SUDO)
    gpu.admin_tools_unpacked(
        name=f"Unpack gpu-admin-tools {artifact.version}",
        archive=archive,
        dest=gpu.tool_dir(artifact.version),
        sha256=artifact.sha256,
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
    if plan.vfio_conf_changes:
        server.shell(
            name="Refresh the initramfs (module options)",
            commands=["if command -v update-initramfs >/dev/null 2>&1; then update-initramfs -u; fi"],
            **SUDO,
        )
    if plan.needs_reboot:
        files.put(
            name="Record the pending reboot",
            src=io.StringIO(f"{boot_id}\n{plan.reboot_reason}\n"),
            dest=REBOOT_MARKER,
            mode="0644",
            **SUDO,
        )
        reboot.rebooted(
            name="Reboot to bind the GPUs to vfio-pci",
            reason=plan.reboot_reason,
            timeout=cfg.reboot.timeout,
            escalation=reboot.bmc_escalation(cfg),
            **reboot.rolling(cfg.reboot.batch_size),
            **SUDO,
        )
    files.file(name="Reboot for VFIO done", path=REBOOT_MARKER, present=False, **SUDO)
    gpu.vfio_bound(
        name="GPUs on vfio-pci",
        devices=list(plan.vfio_devices),
        hint=VFIO_HINT,
        **SUDO,
    )

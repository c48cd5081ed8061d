"""Role ``host``: the node's kernel set up for its TEE (AMD SEV-SNP or Intel TDX), proven active.

For every host with a TEE (``tee`` snp/tdx; others: nothing to do), from its config and
one read of its facts (``NodeOs``, ``TeeHostStatus``, ``HostBootConfig``):

1. **Kernel**: the running kernel meets the TEE's minimum (``roles/host/kernels.toml``);
   otherwise the host fails with the fix (a newer distribution kernel); no kernel is built.
   Lab nodes share the lab machine's kernel, so the check runs on the simulated kernel the
   lab boots and says so.
2. **Kernel command line** through the owned drop-in ``60-ccfactory.cfg`` in the distribution's
   ``grub_dropin_dir`` (``distros.toml``; ``/etc/default/grub.d`` on Debian and Ubuntu)
   (appends to ``GRUB_CMDLINE_LINUX_DEFAULT``; TDX: ``intel_iommu=on kvm_intel.tdx=1
   nohibernate``; hosts with GPUs: ``modprobe.blacklist=nouveau``), then the distribution's
   ``update_bootloader`` (``distros.toml``) only when the drop-in changed. Settings that keep
   the TEE off (``iommu=pt`` on SNP ...) in files ccfactory does not own are refused, naming
   file and line; the operator's files are never edited.
3. **Modules**: ``/etc/modprobe.d/ccfactory-tee.conf`` (``options kvm_amd sev=1 sev_es=1
   sev_snp=1`` / ``options kvm_intel tdx=1``) and, with GPUs,
   ``/etc/modprobe.d/ccfactory-no-host-gpu-driver.conf`` (nouveau and NVIDIA blacklisted and
   disabled), then ``update_initramfs`` only when they changed.
4. **Reboot** through ``ccfactory.operations.reboot`` (rolling, ``reboot_batch_size``), only
   when the running kernel differs from the configured boot state and this run changed it
   (or a reboot recorded in this boot never happened); see ``plan.py``. A re-run after the
   reboot reboots nothing.
5. **Verify**: after the reboot ``TeeHostStatus`` is read again; the host fails (alone)
   with the fact's own hints unless the TEE is active, the command line has the drop-in's
   tokens and no host GPU driver is loaded. A BIOS cause is named first: "enable SNP in
   BIOS: run the firmware stage".

Example (deploy file)::

    from ccfactory.roles import host
    host.apply()
"""

from __future__ import annotations

import io
import logging

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.operations import files, server

from ccfactory.config import node_config
from ccfactory.distros import distro_for
from ccfactory.facts.node import NodeOs
from ccfactory.facts.tee import TeeHostStatus
from ccfactory.operations import reboot
from ccfactory.operations.checks import requirement
from ccfactory.roles.host import operations as host_ops
from ccfactory.roles.host.operations import firmware_failures
from ccfactory.roles.host.facts import REBOOT_MARKER, HostBootConfig
from ccfactory.roles.host.plan import GPU_CONF, TEE_CONF, OwnedFile, plan_host

SUDO = {"_sudo": True}  # /etc, the kernel log and the reboot need root

logger = logging.getLogger("pyinfra")


def _owned_file(owned: OwnedFile, label: str) -> None:
    """A file ccfactory owns: written with its content, or removed when no longer wanted."""
    if owned.wanted is not None:
        files.put(name=label, src=io.StringIO(owned.wanted), dest=owned.path, mode="0644", **SUDO)
    elif owned.current is not None:
        files.file(name=f"{label}: no longer wanted", path=owned.path, present=False, **SUDO)


def _bios_now_on(tee: str, firmware_checks) -> object:
    """An ``_if`` condition: at execute time, the BIOS side of the TEE is on (fresh fact)."""
    from pyinfra.context import ctx_host

    this = ctx_host.get()

    def condition() -> bool:
        status = this.get_fact(TeeHostStatus, **SUDO)
        return not firmware_failures(status, tee, firmware_checks)

    return condition


# The plan of each host between the two halves of a site run (``configure`` before the
# firmware stage, ``settle`` after the shared reboot), so that facts are read once.
_PLANS: dict[str, tuple] = {}


def _configure(reboot_now: bool) -> tuple | None:
    """Plan from config and facts; write the boot configuration (and the reboot marker).
    Returns (cfg, plan) for the verify half, or None when there is nothing more to do."""
    cfg = node_config(host)
    if cfg.tee not in ("snp", "tdx"):
        host.noop("no TEE (tee none): nothing for the host stage")
        return None

    info = host.get_fact(NodeOs)
    distro = distro_for(info.os_id, info.os_version)
    tools = " ".join(distro.tools()) if distro else ""
    status = host.get_fact(TeeHostStatus, **SUDO)
    boot_files = host.get_fact(HostBootConfig, tools=tools, grub_d=distro.grub_dropin_dir if distro else "", **SUDO)
    plan = plan_host(cfg, info, status, boot_files, distro)

    for note in plan.notes:
        host.log(note, log_func=logger.warning)
    requirement(
        name="Host ready for its TEE configuration",
        satisfied=not plan.problems,
        problem="host stage: nothing was changed:\n  - " + "\n  - ".join(plan.problems),
    )
    if plan.problems:
        return None
    spec = plan.spec
    assert spec is not None

    reboot_wanted = plan.needs_reboot or plan.reboot_if_bios_on
    # Facts were read before earlier stages ran; in a site deploy the firmware stage may
    # have enabled the TEE in BIOS since. Decide then, with fresh facts, whether a reboot
    # can bring the configuration into effect.
    when = {"_if": _bios_now_on(cfg.tee, spec.firmware_checks)} if not plan.needs_reboot else {}
    if reboot_wanted:
        # before the files: a run that stops between them and the reboot still reboots next time
        # (deferred, in a site run: this runs before the firmware stage, so a node whose BIOS is
        # still off records nothing, and the BIOS pass's reset boots the files below)
        files.put(
            name="Record the pending reboot",
            src=io.StringIO(plan.marker_text(info.boot_id)),
            dest=REBOOT_MARKER,
            mode="0644",
            **when,  # with the BIOS still off no reboot follows, so nothing is pending
            **SUDO,
        )
    # one call site per file: pyinfra orders operations by call site, and hosts differ in
    # which files they keep (a loop would give the same call site different files per host)
    if not plan.record_after_bootloader:  # grub.d: the drop-in is what update-grub reads
        _owned_file(plan.file(plan.dropin), "Kernel command line drop-in")
    _owned_file(plan.file(TEE_CONF), "TEE module options")
    _owned_file(plan.file(GPU_CONF), "No host GPU driver")

    if plan.update_bootloader:
        server.shell(name="Update the bootloader configuration", commands=[plan.update_bootloader], **SUDO)
    if plan.record_after_bootloader:  # grubby: the record of ccfactory's arguments, once they are in place
        _owned_file(plan.file(plan.dropin), "Kernel arguments ccfactory added")
    if plan.update_initramfs:
        server.shell(name="Update the initramfs", commands=[plan.update_initramfs], **SUDO)
    if reboot_now and reboot_wanted:
        reboot.rebooted(
            name="Reboot to apply the host boot configuration",
            reason=plan.reboot_reason,
            timeout=cfg.reboot.timeout,
            escalation=reboot.bmc_escalation(cfg),
            **reboot.rolling(cfg.reboot.batch_size),
            **when,
            **SUDO,
        )
    elif reboot_wanted:
        host.log(f"reboot deferred to the site run's one reboot: {plan.reboot_reason}", log_func=logger.info)
    return cfg, plan


def _settle(cfg, plan) -> None:
    """After the reboot: the marker goes, and the TEE must be active on the running kernel."""
    spec = plan.spec
    if plan.needs_reboot or plan.reboot_if_bios_on or plan.stale_marker:
        files.file(name="Reboot for the host configuration done", path=REBOOT_MARKER, present=False, **SUDO)
    host_ops.tee_host_ready(
        name="TEE active on the running kernel",
        tee=cfg.tee,
        tee_name=spec.name,
        bios_hint=f"enable {spec.short} in BIOS: run the firmware stage (deploy/firmware.py)",
        cmdline_tokens=list(spec.cmdline_tokens),
        gpu_modules=list(spec.gpu_modules),
        firmware_checks=sorted(spec.firmware_checks),
        dropin=plan.dropin,
        not_in_effect=plan.not_in_effect,
        **SUDO,
    )


@deploy("Host")
def apply() -> None:
    """The whole stage on its own: configure, reboot when needed, verify."""
    planned = _configure(reboot_now=True)
    if planned is not None:
        _settle(*planned)


@deploy("Host")
def configure() -> None:
    """The first half for a site run (``ccfactory.deploys.run_stages``): the boot configuration
    written and the reboot recorded, not done; ``reboot.pending_applied`` after the firmware
    stage reboots once for every stage that deferred, then ``settle`` verifies.

    Example::

        host.configure(); gpu.configure(); firmware.apply(); boot.apply(); host.settle(); gpu.settle()
    """
    planned = _configure(reboot_now=False)
    if planned is not None:
        _PLANS[host.name] = planned


@deploy("Host")
def settle() -> None:
    """The second half for a site run: the marker removed, the TEE verified on the running kernel."""
    planned = _PLANS.pop(host.name, None)
    if planned is not None:
        _settle(*planned)

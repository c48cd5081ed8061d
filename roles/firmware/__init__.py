"""Role ``firmware``: the BIOS settings of each node's TEE, applied through its BMC, stage by stage.

For every host with a TEE (``snp``/``tdx``) and a BMC (``bmc_*``), on the controller:

1. The vendor's BIOS profile (``ccfactory/data/bios/<vendor>.toml``, OEM directories in
   ``bios_profile_dirs`` first, ``bios_overrides`` on top) says which logical settings, in
   which stages; names and values are resolved against the BMC's attribute registry.
2. One operation per possible pass (``ccfactory.roles.firmware.operations.bios_stage``): read the
   BMC, PATCH only the first stage not applied, reset through the BMC with the shared
   reboot mechanism (rolling: at most ``reboot_batch_size`` hosts at once; wait for the BMC,
   then for a new boot id over SSH, ``reboot_timeout`` each; a node still answering on its
   old boot ``reboot_graceful_timeout`` after a GracefulRestart is reset with ForceRestart),
   verify the stage reads back applied, and on to the next pass. A compliant node: no
   PATCH, no job, no reboot.
3. ``tee_verified``: ``TeeHostStatus`` over SSH shows the BIOS side of the TEE on (the
   checks only a BIOS fixes); the kernel side is the host stage's, reported as such.

``pyinfra INVENTORY deploy/firmware.py --dry`` (or ``ccfactory firmware plan INVENTORY``)
prints each host's attribute diff, stages and reboots without writing anything.

Example (deploy file)::

    from ccfactory.roles import firmware
    firmware.apply()
"""

from __future__ import annotations

import logging

from pyinfra import host
from pyinfra.api import deploy

from ccfactory import config  # config imports this stage's options: no name is taken from it at import time
from ccfactory.firmware import FirmwareError, bios_profile_for
from ccfactory.operations import reboot
from ccfactory.operations.checks import requirement
from ccfactory.roles.firmware import operations as firmware_ops
SUDO = {"_sudo": True}  # the kernel log, the marker under /var/lib and the boot id wait

logger = logging.getLogger("pyinfra")

TEE_NAMES = {"snp": "AMD SEV-SNP", "tdx": "Intel TDX"}

# TeeHostStatus checks whose failure means "the BIOS is wrong" (the same split the host
# stage makes): after the last stage they must pass; the others are the kernel's.
BIOS_CHECKS = {
    "snp": ["cpu_sev_snp", "rmp_table", "sev_es_asids"],
    "tdx": ["tdx_keyids"],
}


@deploy("Firmware")
def apply() -> None:
    cfg = config.node_config(host)
    if cfg.tee not in TEE_NAMES:
        host.noop("no TEE (tee none): no BIOS settings to manage")
        return
    if cfg.bmc is None:
        host.log_styled(
            "no BMC configured (bmc_address): BIOS settings are not managed here; the host stage "
            "checks that the TEE is on",
            fg="yellow",
            log_func=logger.warning,
        )
        return
    try:
        profile = bios_profile_for(
            cfg.bmc.vendor,
            cfg.tee,
            extra_dirs=cfg.bmc.bios_profile_dirs,
            overrides=cfg.bmc.bios_overrides or None,
        )
    except FirmwareError as exc:
        requirement(name="BIOS profile", satisfied=False, problem=f"firmware: {exc}")
        return

    passes = firmware_ops.passes_needed(profile)
    for index in host.loop(range(1, passes + 1)):
        firmware_ops.bios_stage(
            name=f"BIOS pass {index}",
            index=index,
            passes=passes,
            cfg=cfg,
            **reboot.rolling(cfg.reboot.batch_size),
            **SUDO,
        )
    firmware_ops.tee_verified(
        name=f"{TEE_NAMES[cfg.tee]} enabled by the BIOS",
        cfg=cfg,
        tee_name=TEE_NAMES[cfg.tee],
        bios_checks=BIOS_CHECKS[cfg.tee],
        host_stage_hint=" (the host stage, deploy/host.py, configures the kernel side)",
        **SUDO,
    )

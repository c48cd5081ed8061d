"""Role ``boot``: one reboot for the boot configuration that the host and gpu stages wrote
and deferred in a site run; none when nothing is pending.

A site run (``ccfactory.deploys.run_stages`` with the firmware, host and gpu stages) writes the
kernel command line, module options and VFIO configuration first (``host.configure``,
``gpu.configure``), then runs the firmware stage, whose BIOS resets boot that configuration
too. What is still pending afterwards (a reboot marker written in the running boot: the BIOS
was compliant, so nothing rebooted the node) gets one reboot here, for both stages together.
So a worker reboots as often as its BIOS passes require, or once when its BIOS is compliant
and the boot configuration changed, or not at all (docs/performance.md). Stages run alone
(``deploy/host.py``) still reboot on their own.

Example (what ``run_stages`` does for a site)::

    host.configure(); gpu.configure(); firmware.apply(); boot.apply(); host.settle(); gpu.settle()
"""

from __future__ import annotations

from pyinfra import host
from pyinfra.api import deploy

from ccfactory.config import node_config
from ccfactory.operations import reboot

SUDO = {"_sudo": True}  # the reboot needs root


@deploy("Boot")
def apply() -> None:
    cfg = node_config(host)
    if cfg.tee not in ("snp", "tdx") and not (cfg.is_worker and cfg.has_gpus):
        host.noop("no host or gpu stage boot configuration on this node")
        return
    reboot.pending_applied(
        name="Reboot once for the boot configuration of the host and gpu stages",
        timeout=cfg.reboot.timeout,
        escalation=reboot.bmc_escalation(cfg),
        **reboot.rolling(cfg.reboot.batch_size),
        **SUDO,
    )

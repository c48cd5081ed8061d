"""The one reboot mechanism every stage uses.

A stage decides from facts *whether* a host needs a reboot and says why; this
operation does it: remember the boot id, trigger the reboot (over SSH, or through a
callback such as a Redfish reset), drop the connection, and wait, with progress lines,
until the host answers with a new boot id or the timeout passes. A host that does not
come back fails alone; pyinfra carries on with the others. Rolling batches come from
pyinfra's ``_parallel`` global argument, which ``rolling()`` supplies. A host that still
answers on its old boot after a grace period gets one harder reset (``Escalation``; through
its BMC with ``bmc_escalation``): an OS that ignored the request, or a shutdown that hangs.

pyinfra's own ``server.reboot`` detects a reboot by uptime; ccfactory uses the kernel's
boot id, which also works where uptime is shared (containers) and cannot be fooled by
a host that was slow to go down.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from pyinfra import host
from pyinfra.api import FunctionCommand, StringCommand, operation

from ccfactory.facts.node import BootId, PendingReboots

logger = logging.getLogger("pyinfra")

PROGRESS_EVERY = 30.0  # seconds between "still waiting" lines on long bare-metal boots


def rolling(batch_size: int) -> dict:
    """Global arguments that make a reboot operation run ``batch_size`` hosts at a time."""
    return {"_parallel": max(1, int(batch_size))}


@dataclass(frozen=True)
class Escalation:
    """What to do when a host still runs its old boot ``after`` seconds into the wait.

    ``action(host)`` starts a harder reboot and returns what it did (``"ForceRestart"``), or
    None when there is nothing to escalate (the first reboot was already a forced one). It
    runs at most once per wait, and only while the host *answers* with the old boot id: a
    host that does not answer is going down or booting, and is left alone.
    """

    after: float
    action: Callable[[object], str | None]


def wait_for_new_boot(
    target_host,
    old_boot_id: str,
    *,
    timeout: float,
    poll_interval: float,
    reason: str,
    escalation: Escalation | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> bool:
    """Reconnect until the host reports a boot id other than ``old_boot_id``.

    Returns False (after logging why) when ``timeout`` seconds pass first.
    """
    start = clock()
    last_progress = start
    escalated = escalation is None
    target_host.disconnect()
    while True:
        elapsed = clock() - start
        if elapsed > timeout:
            target_host.log_styled(
                f"ccfactory: did not come back within {int(timeout)}s after reboot ({reason}); "
                "check the node's console through its BMC, then re-run (nothing is repeated)",
                fg="red",
                log_func=logger.error,
            )
            return False
        target_host.connect(show_errors=False)
        if target_host.connected:
            boot_id = target_host.get_fact(BootId)
            if boot_id and boot_id != old_boot_id:
                target_host.log_styled(f"back after {int(elapsed)}s ({reason})", log_func=logger.info)
                return True
            target_host.disconnect()  # still the old boot, or no answer to the fact: not back yet
            # only a host that *answers with its old boot id* is escalated: one whose fact
            # failed may be half way down or half way up, and must not be reset hard
            if not escalated and boot_id == old_boot_id and clock() - start >= escalation.after:
                escalated = True
                waited = int(clock() - start)
                try:
                    done = escalation.action(target_host)
                except Exception as exc:  # noqa: BLE001 - a late reboot may still come: keep waiting
                    target_host.log_styled(
                        f"still running the old boot {waited}s after the reboot request, and the harder reset "
                        f"failed: {exc}; waiting until the timeout ({reason})",
                        fg="yellow", log_func=logger.warning,
                    )
                    done = None
                if done:
                    target_host.log_styled(
                        f"still running the old boot {waited}s after the reboot request (ignored, or a hung "
                        f"shutdown): {done} ({reason})",
                        fg="yellow", log_func=logger.warning,
                    )
        if clock() - last_progress >= PROGRESS_EVERY:
            target_host.log_styled(
                f"waiting for reboot ({reason}): {int(elapsed)}s of {int(timeout)}s", log_func=logger.info
            )
            last_progress = clock()
        sleep(poll_interval)


def bmc_escalation(cfg) -> Escalation | None:
    """ForceRestart through the host's BMC when a reboot over SSH did not happen (a shutdown
    that hangs, e.g. on a device driver) within ``reboot_graceful_timeout``; None without a BMC.

    Example::

        reboot.rebooted(reason="...", timeout=cfg.reboot.timeout, escalation=reboot.bmc_escalation(cfg))
    """
    if cfg.bmc is None:
        return None
    bmc, name = cfg.bmc, cfg.name

    def force_restart(target_host) -> str:  # noqa: ARG001
        from ccfactory.clients.redfish import RedfishClient

        with RedfishClient.from_config(bmc, host=name) as client:
            return f"{client.reset(force=True)} through the BMC"

    return Escalation(after=cfg.reboot.graceful_timeout, action=force_restart)


@operation(is_idempotent=False)
def rebooted(
    reason: str,
    timeout: int = 1800,
    poll_interval: float = 2.0,
    trigger: Callable | None = None,
    escalation: Escalation | None = None,
):
    """Reboot the host and wait until it is back with a new boot id.

    + reason: why the reboot is needed (shown in output and kept in the operation name)
    + timeout: seconds the host may take to come back (bare metal: 10 to 30 minutes)
    + poll_interval: seconds between reconnect attempts
    + trigger: ``callable(state, host) -> bool`` that starts the reboot some other way
      (e.g. a Redfish ``ComputerSystem.Reset``); default: ``systemctl reboot`` over SSH
    + escalation: ``Escalation(after, action)``: a harder reboot for a host that ignored the
      first request (the firmware stage: ForceRestart after a GracefulRestart the OS ignored)

    Call it only for hosts that need a reboot: that decision, made from facts, is what
    makes a re-run reboot nothing.

    **Example:**

    .. code:: python

        if needs_reboot:
            reboot.rebooted(
                name="Reboot to apply kernel command line",
                reason="kernel command line changed",
                timeout=cfg.reboot.timeout,
                **reboot.rolling(cfg.reboot.batch_size),
            )
    """
    before: list[str] = []

    def remember_boot_id(state, host) -> bool:  # noqa: ARG001
        before.append(host.get_fact(BootId))
        return bool(before[0])

    yield FunctionCommand(remember_boot_id, (), {})
    if trigger is None:
        # detached, so the SSH channel closes before the machine goes down
        yield StringCommand("( sleep 1 && systemctl reboot ) </dev/null >/dev/null 2>&1 &")
    else:
        yield FunctionCommand(trigger, (), {})

    def wait(state, host) -> bool:  # noqa: ARG001
        return wait_for_new_boot(
            host, before[0], timeout=timeout, poll_interval=poll_interval, reason=reason, escalation=escalation
        )

    yield FunctionCommand(wait, (), {})


@operation(is_idempotent=False)
def pending_applied(
    timeout: int = 1800,
    poll_interval: float = 2.0,
    escalation: Escalation | None = None,
):
    """One reboot for every reboot the stages recorded in this boot and deferred; none when
    there is none (decided when the operation runs, from the markers on the node).

    The site run writes the host and gpu stages' boot configuration first and defers their
    reboots here, after the firmware stage: a BIOS pass's reset boots that configuration too
    (its boot id differs from the markers'), so a worker reboots as often as its BIOS passes
    need, and a node with a compliant BIOS once for host and gpu together.

    + timeout, poll_interval, escalation: as ``rebooted``

    **Example:**

    .. code:: python

        reboot.pending_applied(
            name="Reboot once for the deferred boot configuration",
            timeout=cfg.reboot.timeout,
            **reboot.rolling(cfg.reboot.batch_size),
        )
    """
    pending = host.get_fact(PendingReboots)
    if not pending:
        host.noop("no reboot recorded in this boot is still to happen")
        return
    reason = "; ".join(f"{p.stage}: {p.reason}" for p in pending)
    yield from rebooted._inner(reason=reason, timeout=timeout, poll_interval=poll_interval, escalation=escalation)


__all__ = ["Escalation", "bmc_escalation", "pending_applied", "rebooted", "rolling", "wait_for_new_boot", "host"]

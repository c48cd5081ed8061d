"""What deploy files call: validate the fleet, then run the requested stage roles.

Deploy files stay one line long so that the same stages run from a clone
(``deploy/site.py``) and from an installed wheel (``pyinfra INV ccfactory.deploys.site``).
"""

from __future__ import annotations

import importlib
import sys

from pyinfra import host, inventory
from pyinfra.api.exceptions import PyinfraError

from ccfactory.config import InventoryError
from ccfactory.inventory import validate_inventory

# Stage name -> role module. Order is the deploy order of deploy/site.py.
STAGES = {
    "preflight": "ccfactory.roles.preflight",
    "firmware": "ccfactory.roles.firmware",
    "host": "ccfactory.roles.host",
    "gpu": "ccfactory.roles.gpu",
    # before runtime: the KBS stage creates the site CA that workers' guests must trust
    "kbs": "ccfactory.roles.kbs",
    "runtime": "ccfactory.roles.runtime",
    "verify": "ccfactory.roles.verify",  # always last: the readiness report
}


def _lost_connection_fails_only_its_host() -> None:
    """A node whose SSH connection dies mid-run must fail alone (design: "SSH dropped mid-run").

    paramiko raises ``EOFError`` when a command or fact is started on a transport that has
    died (sshd killed, network gone while the node was idle); pyinfra 3.10 treats only
    ``OSError``/``SSHException``/``TimeoutError`` as connection errors, so the ``EOFError``
    escapes, kills the run's greenlet and aborts every host ("An internal exception occurred").
    Raised as ``SSHException`` instead, pyinfra fails that host and carries on with the rest.
    """
    import functools

    from paramiko.ssh_exception import SSHException
    from pyinfra.connectors.ssh import SSHConnector

    for name in ("run_shell_command", "put_file", "get_file"):
        original = getattr(SSHConnector, name)
        if getattr(original, "_ccfactory_eof", False):
            continue

        @functools.wraps(original)
        def wrapper(self, *args, _original=original, **kwargs):
            try:
                return _original(self, *args, **kwargs)
            except EOFError as exc:
                raise SSHException(f"SSH connection lost ({type(exc).__name__})") from exc

        wrapper._ccfactory_eof = True
        setattr(SSHConnector, name, wrapper)


_lost_connection_fails_only_its_host()


def run_stages(stages: list[str]) -> None:
    """Run the given stages on the current host, after validating every host once.

    Validation also happens before connecting when the inventory calls
    ``validate_before_connect()``; this second check covers inventories that do not.
    """
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise PyinfraError(f"unknown stage(s) {unknown}; known: {', '.join(STAGES)}")
    try:
        configs = validate_inventory(inventory)
    except InventoryError as exc:
        raise PyinfraError(str(exc)) from None
    active = {h.name for h in inventory.get_active_hosts()}  # --limit applied
    refuse_unbounded_reboots(stages, {n: c for n, c in configs.items() if n in active}, sys.argv)
    _prepare_controller_once(stages)
    for stage in stages:
        importlib.import_module(STAGES[stage]).apply()


# stages whose reboots are rolling (pyinfra's ``_parallel``)
REBOOTING_STAGES = ("firmware", "host", "gpu")


def refuse_unbounded_reboots(stages: list[str], configs: dict, argv: list[str]) -> None:
    """Stop a run with ``--no-wait`` that would reboot more hosts at once than allowed.

    With ``--no-wait`` pyinfra runs every host through all its operations at once and
    ignores ``_parallel``, so ``reboot_batch_size`` would silently not hold. (``--serial``
    reboots one host at a time, which is within any batch size.)

    Example::

        refuse_unbounded_reboots(["host"], configs, ["pyinfra", "--no-wait", "inv.py", "deploy/host.py"])
        # PyinfraError: --no-wait: ... drop --no-wait, or set reboot_batch_size >= 12
    """
    # --serial wins over --no-wait in pyinfra's run_ops: one host at a time
    if "--no-wait" not in argv or "--serial" in argv or not any(s in REBOOTING_STAGES for s in stages):
        return
    hosts = len(configs)
    batch = min((cfg.reboot.batch_size for cfg in configs.values()), default=hosts)
    if batch < hosts:
        rebooting = ", ".join(s for s in stages if s in REBOOTING_STAGES)
        raise PyinfraError(
            f"--no-wait: pyinfra then runs every host through all operations at once and ignores rolling "
            f"batches, so up to {hosts} hosts could reboot together ({rebooting}) against reboot_batch_size "
            f"{batch}; nothing was touched. Fix: drop --no-wait, or set reboot_batch_size >= {hosts}"
        )


def _prepare_controller_once(stages: list[str]) -> None:
    """Controller-side work that every host's deploy depends on, done once per run.

    Deploy files load on all hosts in parallel; doing this in the first one, before any
    fact is read (no greenlet switch in between), means every host sees the result.
    """
    from pyinfra.context import ctx_state

    current = ctx_state.get()
    if getattr(current, "_ccfactory_prepared", False):
        return
    current._ccfactory_prepared = True
    if "kbs" in stages and "runtime" in stages:
        from ccfactory.roles.kbs import ensure_site_pki

        ensure_site_pki(inventory)


def site() -> None:
    """Every stage, in order (``pyinfra INVENTORY ccfactory.deploys.site``)."""
    run_stages(list(STAGES))


__all__ = ["run_stages", "site", "host"]

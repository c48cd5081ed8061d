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
    run_steps(schedule(stages))


def run_steps(steps: list[tuple[str, str]]) -> None:
    """Call each (role module, function) in order, each in its own pyinfra loop position.

    pyinfra (CLI mode) identifies an operation by the line numbers of its call stack only, not
    the file names (``pyinfra/api/operation.py`` ``solve_operation_consistency`` at 3.10). Every
    step is called from the same line here, so two stages' operations on the same line of their
    role files would become one operation across hosts: a KBS-host operation merged with a
    worker's (one name shown for both, the order of the two stages mixed), or ``Cannot have
    different values for _parallel`` when one of them is a rolling reboot. The loop position
    (``host.loop``) is part of the hash, so the step index keeps them apart; every host runs
    the same steps, so the same operation still shares its hash across hosts.

    Before each step every host passes ``checks.step_reached`` (no remote command): all hosts
    finish a step before any starts the next, so stages keep their order across hosts (the
    KBS host's kbs stage after the workers' firmware stage), and the output names each step.
    """
    from ccfactory.operations import checks

    for module, step in host.loop(steps):
        checks.step_reached(name=step_label(module, step))
        getattr(importlib.import_module(module), step)()


def step_label(module: str, step: str) -> str:
    """The output's name of a step: ``Step: firmware``, ``Step: host (configure)``."""
    stage = module.rsplit(".", 1)[-1]
    return f"Step: {stage}" if step == "apply" else f"Step: {stage} ({step})"


# stages that write boot configuration and can leave its reboot to one shared reboot
DEFERRING_STAGES = ("host", "gpu")
BOOT_ROLE = "ccfactory.roles.boot"


def schedule(stages: list[str]) -> list[tuple[str, str]]:
    """The (role module, function) calls that run ``stages``, in order.

    Each stage is its role's ``apply``, except when the run reboots for more than one reason
    (two or more of firmware, host, gpu): then the host and gpu stages write their boot
    configuration first (``configure``), the firmware stage runs, one shared reboot follows
    for whatever is still pending (``ccfactory.roles.boot``), and the host and gpu stages
    finish (``settle``). A BIOS reset boots the new kernel configuration too, so a worker
    reboots as often as its BIOS passes need, or once (issue 17; docs/performance.md).

    Example::

        schedule(["preflight", "firmware", "host", "gpu", "kbs"])
        # [(preflight, apply), (host, configure), (gpu, configure), (firmware, apply),
        #  (boot, apply), (host, settle), (gpu, settle), (kbs, apply)]
    """
    deferring = [s for s in stages if s in DEFERRING_STAGES]
    rebooting = [s for s in stages if s in REBOOTING_STAGES]
    if len(rebooting) < 2 or not deferring:
        return [(STAGES[s], "apply") for s in stages]
    steps: list[tuple[str, str]] = []
    for stage in stages:
        if stage not in REBOOTING_STAGES:
            steps.append((STAGES[stage], "apply"))
        elif stage == rebooting[0]:  # where the first rebooting stage stood: all of them
            steps += [(STAGES[s], "configure") for s in deferring]
            steps += [(STAGES["firmware"], "apply")] if "firmware" in stages else []
            steps.append((BOOT_ROLE, "apply"))
            steps += [(STAGES[s], "settle") for s in deferring]
    return steps


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
    """Every stage, in order (``pyinfra INVENTORY ccfactory.deploys.site``), then the KBS
    reference values learned from this run's smoke checks (as ``deploy/site.py``)."""
    run_stages(list(STAGES))
    register_learned_reference_values()


def register_learned_reference_values() -> None:
    """After the verify stage: the KBS reference values this run's smoke checks made learnable
    are registered (``roles/kbs.register_learned``), then the readiness report of this run is
    refreshed with them (the verify stage's collector). Wired here, at the entry point, so that
    neither stage imports the other.

    Example (the last line of ``deploy/site.py``)::

        register_learned_reference_values()
    """
    from ccfactory.roles.kbs import register_learned
    from ccfactory.verify.collect import refresh_reference_values

    register_learned(on_registered=refresh_reference_values)


__all__ = ["register_learned_reference_values", "run_stages", "site", "host"]

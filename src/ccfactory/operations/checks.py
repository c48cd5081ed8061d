"""Operations that assert instead of change: a failed requirement fails that host only."""

from __future__ import annotations

from pyinfra import host
from pyinfra.api import FunctionCommand, operation


def _fail(state, host, problem: str) -> bool:  # noqa: ARG001 - pyinfra passes state and host
    host.log_styled(f"ccfactory: {problem}", fg="red", log_func=__import__("logging").getLogger("pyinfra").error)
    return False


@operation(is_idempotent=True)
def requirement(satisfied: bool, problem: str):
    """Fail this host with ``problem`` (what is wrong and how to fix it) unless ``satisfied``.

    The other hosts go on. Nothing is changed on the host either way.

    + satisfied: whether the requirement holds (computed from facts)
    + problem: the message shown when it does not

    **Example:**

    .. code:: python

        checks.requirement(
            name="Supported OS",
            satisfied=info.os_id in ("debian", "ubuntu"),
            problem=f"{info.os_id} is not supported; use Ubuntu 24.04+ or Debian 12+",
        )
    """
    if satisfied:
        host.noop("requirement met")
        return
    yield FunctionCommand(_fail, (problem,), {})


@operation(is_idempotent=True)
def step_reached():
    """Nothing on the host: a point every host of the run passes together.

    pyinfra orders operations per host and merges the hosts' orders; hosts whose stages hold
    different operations (a KBS host, workers) would otherwise drift apart, the KBS host
    running its kbs stage while workers still run the firmware stage. Called for every host
    at the same call site before each stage step (``ccfactory.deploys.run_steps``), it makes
    every host finish one step before any host starts the next, and names the step in the
    output. No remote command.

    **Example:**

    .. code:: python

        checks.step_reached(name="Step: kbs")
    """
    return
    yield  # a generator, as pyinfra requires; it yields nothing

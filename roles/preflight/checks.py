"""The checks of the preflight stage: what the verify stage (and the shipped testinfra suite) asks of a
node after this stage ran. Each reuses the stage's own facts and parsers, so the report and the
deploy can never disagree about what a node looks like.

Registered in ``ccfactory.verify.checks.REGISTRY`` on import; the verify stage finds this module
by its place (``roles/<stage>/checks.py``, ``ccfactory.verify.node_checks``). A check declares
the facts and commands it reads, so the verify stage reads them all in one remote command.
"""

from __future__ import annotations

from ccfactory.distros import distro_for, supported_list
from ccfactory.facts.node import NodeOs
from ccfactory.verify.checks import CheckContext, Outcome, check, fail, ok


@check("preflight.os_supported", stage="preflight", facts=(NodeOs,))
def os_supported(ctx: CheckContext) -> Outcome:
    """The node runs a distribution ccfactory supports."""
    info = ctx.fact(NodeOs)
    name = f"{info.os_id} {info.os_version}"
    if distro_for(info.os_id, info.os_version) is None:
        return fail(f"{name} is not supported", hint=f"reinstall with one of: {supported_list()}")
    return ok(f"{name}, kernel {info.kernel}")

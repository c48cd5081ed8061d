"""The preflight stage's checks: what the node must be before any stage changes it (a supported distribution).

Registered on import; the verify stage loads this module (``ccfactory.verify.node_checks``).
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

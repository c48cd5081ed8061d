"""The verify stage's checks, found where each stage keeps them: ``roles/<stage>/checks.py``.

Every stage owns the checks of what it configured (``ccfactory.roles.host.checks`` has
``host.tee_active``, ...), written against the check API of ``ccfactory.verify.checks``. This
module imports them by that convention, in the report's stage order (``STAGE_ORDER``), then the
verify stage's own end-to-end attestation check: the verify stage imports no stage's module by
name, so a stage adds checks by adding them to its ``checks.py`` (a new stage also needs its place
in ``STAGE_ORDER``, which orders the report).

Importing this module registers every check in ``ccfactory.verify.checks.REGISTRY``.
"""

from __future__ import annotations

import importlib
import importlib.util

from ccfactory.facts.containerd import ContainerdRuntimes
from ccfactory.verify.checks import declare
from ccfactory.verify.report import STAGE_ORDER

ROLE_PACKAGE = "ccfactory.roles"


def stage_check_modules() -> list[str]:
    """``ccfactory.roles.<stage>.checks`` of every stage in the report's order that has one."""
    found = []
    for stage in STAGE_ORDER:
        name = f"{ROLE_PACKAGE}.{stage}.checks"
        if importlib.util.find_spec(f"{ROLE_PACKAGE}.{stage}") is not None and importlib.util.find_spec(name) is not None:
            found.append(name)
    return found


LOADED = tuple(importlib.import_module(name) for name in stage_check_modules())

from ccfactory.verify import attestation  # noqa: E402 - registers attestation.end_to_end after the stages' checks

# its node-side reads go into the batch; its smoke container (seconds of node-side waiting, after
# seeding the KBS) runs alongside the other checks
declare(attestation.CHECK_ID, facts=(ContainerdRuntimes,), commands=lambda ctx: [f"cat {attestation.INITDATA_JSON}"],
        background=True)

"""The shipped fleet verification suite (testinfra), one test per readiness check and node.

    pytest --pyargs ccfactory.verify --pyinfra-inventory inventories/<site>.py [--pyinfra-limit GROUP] [-m gpu]

The checks are the ones the verify stage reports (``ccfactory.verify.node_checks``), so
the suite and the readiness report always agree. A check that does not apply to a node
(e.g. GPU checks on the KBS host) passes as not applicable.
"""

from __future__ import annotations

import pytest

from ccfactory.verify import node_checks  # noqa: F401 - registers the checks
from ccfactory.verify.checks import REGISTRY, CheckContext, CommandOutput, run_check
from ccfactory.verify.collect import fleet_of


@pytest.fixture(scope="module")
def check_context(host, node_config, pyinfra_host):
    def run(command: str) -> CommandOutput:
        result = host.run(command)
        return CommandOutput(result.rc, result.stdout, result.stderr)

    return CheckContext(cfg=node_config, run=run, data=pyinfra_host.data.dict(), fleet=fleet_of(pyinfra_host.inventory))


@pytest.mark.parametrize(
    "check_id", [pytest.param(cid, marks=getattr(pytest.mark, c.stage), id=cid) for cid, c in REGISTRY.items()]
)
def test_readiness(check_id, check_context):
    result = run_check(REGISTRY[check_id], check_context)
    assert result.status in ("pass", "n/a"), f"{result.status}: {result.detail}" + (
        f"\nfix: {result.hint}" if result.hint else ""
    )

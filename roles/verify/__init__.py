"""Role ``verify``: run every applicable readiness check on each node and write the report.

Changes nothing on the nodes (checks run read-only commands). The report goes to
``reports/readiness.json`` and ``reports/readiness.md`` on the controller
(``$CCFACTORY_REPORT_DIR`` to move it); ``ccfactory report`` re-renders it.

Example (deploy file)::

    from ccfactory.roles import verify
    verify.apply()
"""

from __future__ import annotations

from pyinfra import host
from pyinfra.api import FunctionCommand, deploy, operation

from ccfactory.config import node_config
from ccfactory.verify import node_checks  # noqa: F401 - registers the checks
from ccfactory.verify.collect import fleet_of
from ccfactory.verify.collect import record_node


@operation(is_idempotent=False)
def readiness_checked(cfg):
    """Run the readiness checks on this host and record them in the fleet report."""

    def run(state, host):
        return record_node(state, host, cfg)

    yield FunctionCommand(run, (), {})


@deploy("Verify")
def apply() -> None:
    cfg = node_config(host)
    # the fleet's configurations, once per run and now: at execute time every host's greenlet
    # would otherwise validate the whole inventory at the same moment
    fleet_of(host.inventory)
    readiness_checked(name="Readiness checks", cfg=cfg)

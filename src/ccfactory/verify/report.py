"""The readiness report: one row per node, one column per stage, a hint per failure.

The JSON form is the contract (``schema_version`` bumps on any incompatible change);
the Markdown page is rendered from it, so ``ccfactory report FILE.json`` can re-render
a report produced elsewhere.

Example::

    report = FleetReport.new(site="lab", bom_versions={"kata-static": "4.1.0"})
    report.add(NodeReport(node="node1", reachable=True, checks=[
        CheckResult(check="host.snp_active", stage="host", status="pass", detail="SEV-SNP enabled"),
    ]))
    print(render_markdown(report))
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

SCHEMA_VERSION = 1
STAGE_ORDER = ("preflight", "firmware", "host", "gpu", "runtime", "kbs", "attestation")

Status = Literal["pass", "fail", "n/a", "error"]
_RANK = {"error": 3, "fail": 2, "pass": 1, "n/a": 0}
_ICON = {"pass": "✅ pass", "fail": "❌ fail", "error": "⚠️ error", "n/a": "–"}


class CheckResult(BaseModel):
    """The outcome of one named check on one node."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    check: str = Field(description="stable check id, e.g. host.snp_active")
    stage: str
    status: Status
    detail: str = ""
    hint: str = Field("", description="what an operator should do when the check fails")
    simulated: str = Field("", description="in the lab: which part of this check ran against stand-ins")


class NodeReport(BaseModel):
    model_config = ConfigDict(extra="forbid")

    node: str
    reachable: bool
    error: str = ""
    checks: list[CheckResult] = []

    def stage_status(self, stage: str) -> Status:
        results = [c.status for c in self.checks if c.stage == stage]
        if not self.reachable or (self.error and not self.checks):
            return "error"
        return max(results, key=_RANK.__getitem__) if results else "n/a"

    @property
    def ready(self) -> bool:
        return self.reachable and not self.error and all(c.status in ("pass", "n/a") for c in self.checks)


class FleetReport(BaseModel):
    model_config = ConfigDict(extra="forbid")

    schema_version: int = SCHEMA_VERSION
    site: str
    generated_at: str
    ccfactory_version: str
    bom_versions: dict[str, str] = {}
    nodes: list[NodeReport] = []

    @classmethod
    def new(cls, site: str, bom_versions: dict[str, str] | None = None) -> FleetReport:
        from ccfactory import __version__

        return cls(
            site=site,
            generated_at=datetime.now(UTC).isoformat(timespec="seconds"),
            ccfactory_version=__version__,
            bom_versions=bom_versions or {},
        )

    def add(self, node: NodeReport) -> None:
        self.nodes = [n for n in self.nodes if n.node != node.node] + [node]

    @property
    def ready(self) -> bool:
        return bool(self.nodes) and all(n.ready for n in self.nodes)


def load_report(text: str) -> FleetReport:
    report = FleetReport.model_validate_json(text)
    if report.schema_version != SCHEMA_VERSION:
        raise ValueError(f"report schema {report.schema_version} is not {SCHEMA_VERSION}; use a matching ccfactory")
    return report


def render_markdown(report: FleetReport) -> str:
    """A self-contained Markdown page: fleet table, then failures with hints."""
    stages = [s for s in STAGE_ORDER if any(c.stage == s for n in report.nodes for c in n.checks)]
    lines = [
        f"# Readiness report: {report.site}",
        "",
        f"Generated {report.generated_at} by ccfactory {report.ccfactory_version}. "
        f"Fleet ready: **{'yes' if report.ready else 'no'}** "
        f"({sum(n.ready for n in report.nodes)} of {len(report.nodes)} nodes).",
        "",
        "| node | ready | " + " | ".join(stages) + " |",
        "|---|---|" + "---|" * len(stages),
    ]
    for node in sorted(report.nodes, key=lambda n: n.node):
        cells = [_ICON[node.stage_status(s)] for s in stages]
        lines.append(f"| {node.node} | {'yes' if node.ready else 'no'} | " + " | ".join(cells) + " |")
    problems = [(n, c) for n in report.nodes for c in n.checks if c.status in ("fail", "error")]
    unchecked = [n for n in report.nodes if n.error]
    if problems or unchecked:
        lines += ["", "## What to fix", ""]
        for node in unchecked:
            lines.append(f"- **{node.node}** {'unreachable' if not node.reachable else 'not checked'}: {node.error}")
        for node, check in problems:
            hint = f" Fix: {check.hint}" if check.hint else ""
            lines.append(f"- **{node.node}** `{check.check}` {check.status}: {check.detail}.{hint}")
    simulated = sorted({(c.check, c.simulated) for n in report.nodes for c in n.checks if c.simulated})
    if simulated:
        lines += ["", "## Simulated in the lab", ""]
        lines += [f"- `{check}`: {what}" for check, what in simulated]
    if report.bom_versions:
        lines += ["", "## Versions (bill of materials)", ""]
        lines += [f"- {name} {version}" for name, version in sorted(report.bom_versions.items())]
    return "\n".join(lines) + "\n"

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


class ReferenceValue(BaseModel):
    """One value RVPS holds for the KBS's attestation policy (``docs/reference-values.md``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    scope: str = Field(description="worker, worker/shim, or site")
    origin: str = Field(description="computed, read from the host, site policy, pinned on first use, operator")
    value: str = Field(description="as registered (a measurement, an SVN, a flag); never a secret")
    source: str = ""


class PendingValue(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    scope: str
    name: str
    reason: str


# ccfactory.roles.kbs.site_values.snp_worker_values: pending lines that name a source, not a value
_PENDING_GROUPS = {
    "reported TCB": "snp_bootloader, snp_microcode, snp_snp_svn, snp_tee_svn",
    "configuration values": "snp_smt_enabled, snp_guest_abi_major, snp_guest_abi_minor, snp_smt_allowed, snp_single_socket",
}


class ReferenceValues(BaseModel):
    """The kbs stage's ``reference-values.json`` (on the controller, next to the KBS ledger)."""

    model_config = ConfigDict(extra="forbid")

    values: list[ReferenceValue] = []
    pending: list[PendingValue] = []

    @classmethod
    def from_summary(cls, summary: dict) -> ReferenceValues:
        """From ``ccfactory.roles.kbs.collect.summary``: rows ``{name, scope, origin, value, source}`` and
        pending lines ``"<scope>: <name>: <reason>"``."""
        values = [ReferenceValue(name=r["name"], scope=r["scope"], origin=r["origin"], source=r.get("source") or "",
                                 value=_scalar(r["value"])) for r in summary.get("references", [])]  # fmt: skip
        pending = []
        for line in summary.get("pending", []):
            scope, _, rest = str(line).partition(": ")
            name, _, reason = rest.partition(": ")
            if name in _PENDING_GROUPS:  # ccfactory.roles.kbs.site_values names some values by their source
                name = _PENDING_GROUPS[name]
            elif not reason or " " in name:  # "<scope>: <reason>" without a value name
                name, reason = "", rest
            pending.append(PendingValue(scope=scope, name=name, reason=reason))
        return cls(values=values, pending=pending)

    def workers(self) -> list[str]:
        return sorted({v.scope.split("/")[0] for v in self.values} | {p.scope.split("/")[0] for p in self.pending})


def _scalar(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return ", ".join(_scalar(v) for v in value)
    return "" if value is None else str(value)


class FleetReport(BaseModel):
    model_config = ConfigDict(extra="forbid")

    schema_version: int = SCHEMA_VERSION
    site: str
    generated_at: str
    ccfactory_version: str
    bom_versions: dict[str, str] = {}
    nodes: list[NodeReport] = []
    reference_values: ReferenceValues | None = None

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
    if report.reference_values is not None:
        lines += render_reference_values(report.reference_values)
    simulated = sorted({(c.check, c.simulated) for n in report.nodes for c in n.checks if c.simulated})
    if simulated:
        lines += ["", "## Simulated in the lab", ""]
        lines += [f"- `{check}`: {what}" for check, what in simulated]
    if report.bom_versions:
        lines += ["", "## Versions (bill of materials)", ""]
        lines += [f"- {name} {version}" for name, version in sorted(report.bom_versions.items())]
    return "\n".join(lines) + "\n"


def _short(value: str) -> str:
    return value if len(value) <= 28 else f"{value[:20]}…{value[-6:]}"


def render_reference_values(refs: ReferenceValues) -> list[str]:
    """Per worker: each value RVPS holds with its origin (computed, read from the host, site
    policy, pinned on first use, operator), then what is pending and why."""
    lines = ["", "## Reference values (KBS attestation)", ""]
    if not refs.values and not refs.pending:
        return lines + ["No reference values: the site has no SNP/TDX worker, or the kbs stage did not run."]
    lines += ["| scope | value | origin | registered | how |", "|---|---|---|---|---|"]
    for worker in refs.workers():
        mine = [v for v in refs.values if v.scope.split("/")[0] == worker]
        for v in sorted(mine, key=lambda v: (v.scope, v.name)):
            how = v.source.replace("|", "/")
            lines.append(f"| {v.scope} | `{v.name}` | {v.origin} | `{_short(v.value)}` | {how} |")
    pending = sorted(refs.pending, key=lambda p: (p.scope, p.name))
    if pending:
        lines += ["", "Pending (not registered; the policy cannot affirm what they guard until they are):", ""]
        lines += [f"- **{p.scope}**" + (f" `{p.name}`" if p.name else "") + f": {p.reason}" for p in pending]
    return lines

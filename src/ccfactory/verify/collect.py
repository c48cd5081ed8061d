"""Collect check results from a pyinfra run into the readiness report on the controller.

Each host writes its own row as soon as its checks ran; hosts that never got that far
(SSH failed, or an earlier stage failed them) are in the report from the first write
on, as unreachable, so a report always covers the whole inventory.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from pyinfra.api import StringCommand

from ccfactory.verify.checks import CheckContext, CommandOutput, FleetHost, run_checks
from ccfactory.verify.report import FleetReport, NodeReport, ReferenceValues, load_report, render_markdown

DEFAULT_REPORT_DIR = "reports"
_ROLE_GROUPS = {"workers", "kbs", "snp", "tdx", "gpu", "all"}


def fleet_of(hosts: Iterable) -> dict[str, FleetHost]:
    """``FleetHost`` of every pyinfra ``Host`` (e.g. ``state.inventory`` or ``host.inventory``).

    Hosts whose data does not validate are left out (the inventory was validated before
    any check runs; this only keeps one odd host from hiding the others). The result is
    kept on a pyinfra ``Inventory`` object, so calling this once per host stays cheap.
    """
    from ccfactory.config import InventoryError, node_config

    cached = getattr(hosts, "_ccfactory_fleet", None)
    if cached is not None:
        return cached
    fleet: dict[str, FleetHost] = {}
    for host in hosts:
        try:
            fleet[host.name] = FleetHost(cfg=node_config(host), data=host.data.dict())
        except InventoryError:
            continue
    try:
        hosts._ccfactory_fleet = fleet  # type: ignore[attr-defined]
    except AttributeError:  # a list or other plain iterable: no cache
        pass
    return fleet


def site_name(inventory) -> str:
    """The inventory file's own group (pyinfra puts every host of <site>.py in <site>)."""
    hosts = list(inventory)
    common = set.intersection(*(set(h.groups) for h in hosts)) - _ROLE_GROUPS if hosts else set()
    return sorted(common)[0] if common else "site"


def report_dir() -> Path:
    return Path(os.environ.get("CCFACTORY_REPORT_DIR", DEFAULT_REPORT_DIR))


def pyinfra_runner(host, sudo: bool):
    """A check runner on a pyinfra host: read-only commands over the existing connection."""

    def run(command: str) -> CommandOutput:
        ok, output = host.run_shell_command(StringCommand(command), _sudo=sudo)
        return CommandOutput(0 if ok else 1, output.stdout, "\n".join(output.stderr_lines))

    return run


REFERENCE_SUMMARY = "reference-values.json"  # written by the kbs stage (roles/kbs) into the KBS host's pki_dir


def reference_summary_paths(inventory) -> list[Path]:
    """Where the kbs stage wrote each KBS host's ``reference-values.json`` (controller side)."""
    from ccfactory.config import node_config
    from ccfactory.kbs.settings import kbs_settings

    try:  # the configs this run validated already (fleet_of keeps them on the inventory)
        known = {name: (fh.cfg, fh.data) for name, fh in fleet_of(inventory).items()}
    except Exception:  # noqa: BLE001 - then host by host, as below
        known = {}
    paths = []
    for other in inventory:
        try:
            cfg, data = known.get(other.name) or (node_config(other), other.data.dict())
            if cfg.is_kbs:
                paths.append(kbs_settings(cfg, data).pki_dir / REFERENCE_SUMMARY)
        except Exception:  # noqa: BLE001 - an invalid KBS host is reported by its own stage
            continue
    return paths


def load_reference_values(paths) -> ReferenceValues | None:
    """The reference values of every KBS host's summary (None when no KBS wrote one)."""
    import json

    merged, found = ReferenceValues(), False
    for path in paths:
        try:
            one = ReferenceValues.from_summary(json.loads(Path(path).read_text()))
        except (OSError, ValueError, KeyError, TypeError):
            continue
        found = True
        merged.values += one.values
        merged.pending += one.pending
    return merged if found else None


def refresh_reference_values(state, directory: Path | None = None) -> bool:
    """Re-read the reference values into this run's readiness report (or the one on disk), after
    the kbs stage registered values learned later in the same run; True if the report changed."""
    directory = directory or report_dir()
    report = getattr(state, "_ccfactory_report", None)
    if report is None:
        try:
            report = load_report((directory / "readiness.json").read_text())
        except (OSError, ValueError):
            return False
    refs = load_reference_values(reference_summary_paths(state.inventory))
    if refs == report.reference_values:
        return False
    report.reference_values = refs
    _write(report, directory)
    return True


def _write(report: FleetReport, directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    json_path = directory / "readiness.json"
    for path, text in ((json_path, report.model_dump_json(indent=2)), (directory / "readiness.md", render_markdown(report))):
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(text + ("\n" if not text.endswith("\n") else ""))
        tmp.replace(path)
    return json_path


def record_node(state, host, cfg, stages: tuple[str, ...] | None = None) -> bool:
    """FunctionCommand body: run the checks on ``host`` and update the report file."""
    from ccfactory.bom import bom_for

    directory = report_dir()
    path = directory / "readiness.json"
    # one report object per run, shared by the hosts' greenlets; created before any
    # check yields to another greenlet, so no host's row can be lost
    report = getattr(state, "_ccfactory_report", None)
    if report is None:
        bom = bom_for(cfg.lab, cfg.lab_dir)
        report = FleetReport.new(site_name(state.inventory), {a.name: a.version for a in bom.artifacts})
        for other in state.inventory:
            if other.connected:
                why = "failed in an earlier stage (see the pyinfra output above), so not checked; fix it and re-run"
            else:
                why = "not reachable over SSH (see the connection error in the pyinfra output)"
            report.add(NodeReport(node=other.name, reachable=bool(other.connected), error=why))
        state._ccfactory_report = report
        # after sharing the report: nothing before this line may yield to another host's greenlet
        report.reference_values = load_reference_values(reference_summary_paths(state.inventory))
    ctx = CheckContext(
        cfg=cfg, run=pyinfra_runner(host, sudo=bool(host.data.get("_sudo"))), data=host.data.dict(),
        fleet=fleet_of(state.inventory),
    )
    results = run_checks(ctx, stages)
    report.add(NodeReport(node=host.name, reachable=True, checks=results))
    _write(report, directory)
    failed = [r for r in results if r.status in ("fail", "error")]
    for r in failed:
        host.log_styled(f"{r.check}: {r.status}: {r.detail}" + (f"; fix: {r.hint}" if r.hint else ""), fg="red")
    host.log_styled(f"readiness: {len(results) - len(failed)} of {len(results)} checks pass or n/a; report {path}")
    return True  # a failing check is reported, not a deploy error

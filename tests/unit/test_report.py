"""Readiness report: JSON round trip, per-stage grading, hints, schema guard."""

from __future__ import annotations

import json

import pytest

from ccfactory.verify.report import CheckResult, FleetReport, NodeReport, load_report, render_markdown


def make_report():
    report = FleetReport.new(site="lab", bom_versions={"kata-static": "4.1.0"})
    report.add(NodeReport(node="node1", reachable=True, checks=[
        CheckResult(check="host.snp_active", stage="host", status="pass", detail="SEV-SNP enabled (ASIDs 1 - 99)"),
        CheckResult(check="gpu.vfio_bound", stage="gpu", status="fail", detail="0000:41:00.0 bound to nouveau",
                    hint="run the gpu stage; blacklist nouveau"),
    ]))
    report.add(NodeReport(node="node2", reachable=False, error="SSH timed out"))
    report.add(NodeReport(node="node3", reachable=True, checks=[
        CheckResult(check="kbs.sample_denied", stage="kbs", status="pass", simulated="KBS is the lab stand-in"),
    ]))
    return report


def test_grading_and_readiness():
    report = make_report()
    node1, node2, node3 = report.nodes
    assert node1.stage_status("host") == "pass" and node1.stage_status("gpu") == "fail"
    assert node1.stage_status("kbs") == "n/a"
    assert node2.stage_status("host") == "error"
    assert node3.ready and not node1.ready and not report.ready


def test_json_round_trip_and_schema_guard():
    report = make_report()
    text = report.model_dump_json()
    assert load_report(text) == report
    data = json.loads(text)
    data["schema_version"] = 99
    with pytest.raises(ValueError, match="report schema 99"):
        load_report(json.dumps(data))


def test_markdown_has_table_hints_and_simulation_notes():
    page = render_markdown(make_report())
    assert "| node | ready | host | gpu | kbs |" in page
    assert "| node1 | no | ✅ pass | ❌ fail | – |" in page
    assert "**node1** `gpu.vfio_bound` fail: 0000:41:00.0 bound to nouveau. Fix: run the gpu stage" in page
    assert "**node2** unreachable: SSH timed out" in page
    assert "`kbs.sample_denied`: KBS is the lab stand-in" in page
    assert "- kata-static 4.1.0" in page


def test_unknown_status_rejected():
    with pytest.raises(ValueError):
        CheckResult(check="x", stage="host", status="ok")

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


def _summary():
    """A kbs-stage summary as ccfactory.roles.kbs.collect.write_summary writes it."""
    from ccfactory.roles.kbs import collect as kbs_collect
    from ccfactory.kbs import refvalues as rv

    digest = "ab" * 48
    refs = rv.ReferenceSet(
        [rv.snp_executables_value(digest, "w1/qemu-nvidia-gpu-snp", "sev-snp-measure 0.0.13 --mode snp ..."),
         rv.Reference("snp_microcode", [115], rv.HOST, "w1", "SNP_PLATFORM_STATUS reported TCB on w1"),
         rv.Reference("snp_smt_allowed", True, rv.SITE_POLICY, "w1", "runtime_snp_guest_policy 0x30000"),
         rv.Reference("rtmr_1", ["cd" * 48], rv.PINNED, "w2", "EAR token of w2 | approved")],
        pending=["w1/qemu-snp: snp_launch_measurement: no 'launching <qemu> with: [...]' line in the runtime log",
                 "w1: snp_tsme_enabled: the SEV firmware interface does not report TSME",
                 "w1: reported TCB: SNP_PLATFORM_STATUS on /dev/sev failed",
                 "w3: facts not readable (OSError: connection lost)"])  # fmt: skip
    overrides = {"snp_tsme_enabled": False}
    return kbs_collect.summary(refs, overrides, refs.values(overrides=overrides)), digest


def test_reference_values_per_worker_with_origin_and_pending_reasons():
    from ccfactory.verify.report import ReferenceValues

    summary, digest = _summary()
    refs = ReferenceValues.from_summary(json.loads(json.dumps(summary, default=str)))
    assert refs.workers() == ["site", "w1", "w2", "w3"]
    origins = {(v.scope, v.name): v.origin for v in refs.values}
    assert origins == {("w1/qemu-nvidia-gpu-snp", "snp_launch_measurement"): "computed",
                       ("w1", "snp_microcode"): "read from the host", ("w1", "snp_smt_allowed"): "site policy",
                       ("w2", "rtmr_1"): "pinned on first use", ("site", "snp_tsme_enabled"): "operator"}  # fmt: skip
    pending = {(p.scope, p.name): p.reason for p in refs.pending}
    assert pending[("w1/qemu-snp", "snp_launch_measurement")].startswith("no 'launching <qemu>")
    assert pending[("w3", "")] == "facts not readable (OSError: connection lost)"
    assert pending[("w1", "snp_bootloader, snp_microcode, snp_snp_svn, snp_tee_svn")] == "SNP_PLATFORM_STATUS on /dev/sev failed"
    report = make_report()
    report.reference_values = refs
    assert load_report(report.model_dump_json()) == report
    page = render_markdown(report)
    assert "## Reference values (KBS attestation)" in page
    assert f"| w1/qemu-nvidia-gpu-snp | `snp_launch_measurement` | computed | `{digest[:20]}…{digest[-6:]}` |" in page
    assert "| w1 | `snp_microcode` | read from the host | `115` |" in page
    assert "| w2 | `rtmr_1` | pinned on first use |" in page and "EAR token of w2 / approved" in page
    assert "| site | `snp_tsme_enabled` | operator | `false` | kbs_reference_values |" in page
    assert "- **w1/qemu-snp** `snp_launch_measurement`: no 'launching <qemu>" in page
    assert "- **w3**: facts not readable" in page


def test_a_report_without_reference_values_says_nothing_about_them():
    assert "Reference values" not in render_markdown(make_report())

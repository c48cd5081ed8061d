"""The verify stage on the lab: a report row per node, failures with hints, an unreachable
node reported as such while the others are still checked; the shipped testinfra suite
runs against the lab inventory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ccfactory.lab import power

pytestmark = pytest.mark.lab

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _verify(lab, report_dir: Path) -> dict:
    env = {**os.environ, "PYINFRA_PROGRESS": "off", "CCFACTORY_REPORT_DIR": str(report_dir)}
    run = subprocess.run(
        [str(BIN / "pyinfra"), "-y", str(lab.inventory), str(REPO / "deploy" / "verify.py")],
        cwd=REPO, capture_output=True, text=True, timeout=600, env=env,
    )
    assert (report_dir / "readiness.json").is_file(), run.stdout[-3000:] + run.stderr[-3000:]
    return json.loads((report_dir / "readiness.json").read_text())


def test_report_covers_every_node_with_hints(lab, tmp_path):
    report = _verify(lab, tmp_path)
    rows = {n["node"]: n for n in report["nodes"]}
    addresses = {n["address"] for n in lab.nodes.values()}
    assert set(rows) == addresses
    assert all(r["reachable"] for r in rows.values())
    snp = lab.nodes[lab.node_of_profile("amd-snp-hgx")]["address"]
    checks = {c["check"]: c for c in rows[snp]["checks"]}
    assert checks["preflight.os_supported"]["status"] == "pass"
    # the lab starts with the TEE off in BIOS: the check fails and says what to do
    tee = checks["host.tee_active"]
    if tee["status"] == "fail":
        assert tee["hint"] and "simulated" not in tee["hint"]
    assert tee["simulated"], "lab checks say what was simulated"
    kbs = lab.nodes[lab.node_of_profile("plain")]["address"]
    kbs_checks = {c["check"]: c["status"] for c in rows[kbs]["checks"]}
    assert kbs_checks["gpu.inventory"] == "n/a" and kbs_checks["host.tee_active"] == "n/a"
    page = (tmp_path / "readiness.md").read_text()
    assert "| node | ready |" in page


def test_unreachable_node_is_reported_and_others_checked(lab, tmp_path):
    name = lab.node_of_profile("plain")
    power.power(lab.dir, name, "off")
    try:
        report = _verify(lab, tmp_path)
    finally:
        power.power(lab.dir, name, "on")
        lab.wait_ssh(name)
    rows = {n["node"]: n for n in report["nodes"]}
    down = lab.nodes[name]["address"]
    assert rows[down]["reachable"] is False and "not reachable over SSH" in rows[down]["error"]
    others = [r for a, r in rows.items() if a != down]
    assert others and all(r["reachable"] and r["checks"] for r in others)


def test_testinfra_suite_runs_on_the_lab_inventory(lab):
    run = subprocess.run(
        [str(BIN / "pytest"), "-p", "no:cacheprovider", "-q", "--pyargs", "ccfactory.verify",
         "--pyinfra-inventory", str(lab.inventory), "-m", "preflight"],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    assert run.returncode == 0, run.stdout[-3000:]
    assert f"{len(lab.nodes)} passed" in run.stdout


def test_testinfra_suite_fails_on_a_failing_check(lab):
    # factory BIOS (TEE off) on the SNP node: the host check must fail, with its hint
    name = lab.node_of_profile("amd-snp-hgx")
    (lab.dir / "nodes" / name / "platform.json").unlink(missing_ok=True)
    assert power.power(lab.dir, name, "force-restart") == "On"
    lab.wait_ssh(name)
    run = subprocess.run(
        [str(BIN / "pytest"), "-p", "no:cacheprovider", "-q", "--pyargs", "ccfactory.verify",
         "--pyinfra-inventory", str(lab.inventory), "--pyinfra-limit", "snp", "-k", "tee_active"],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    assert run.returncode == 1 and "fix:" in run.stdout, run.stdout[-3000:]

"""The whole site on the lab, as the README's main job runs it (molecule's sequence):
converge from factory state, converge again with no change, then the shipped testinfra
suite as an independent verifier. Runs near the end (file order): it leaves nodes with
the TEE on, which earlier modules do not expect."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ccfactory.lab import manager

pytestmark = pytest.mark.lab

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _site(lab, report_dir: Path) -> tuple[int, dict, float]:
    env = {**os.environ, "PYINFRA_PROGRESS": "off", "CCFACTORY_REPORT_DIR": str(report_dir)}
    t0 = time.monotonic()
    run = subprocess.run(
        [str(BIN / "pyinfra"), "-y", "--json", str(lab.inventory), str(REPO / "deploy" / "site.py")],
        cwd=REPO, capture_output=True, text=True, timeout=1800, env=env,
    )
    took = time.monotonic() - t0
    assert run.stdout.strip(), run.stderr[-4000:]
    return run.returncode, json.loads(run.stdout), took


def _changed(result: dict) -> list[str]:
    return [op["name"] for op in result["results"]["operations"] if op["success"]]


@pytest.fixture(scope="module")
def factory_lab(lab):
    # factory disks, BIOS and GPUs; nodes read their BIOS state from their BMCs
    manager.reset(lab_dir=lab.dir, inventory=lab.inventory)
    manager.up(lab_dir=lab.dir, inventory=lab.inventory, platform_source="bmc")
    for name in lab.nodes:
        lab.wait_ssh(name)
    return lab


def test_site_converges_then_changes_nothing_then_verifies(factory_lab, tmp_path):
    lab = factory_lab
    rc, first, took1 = _site(lab, tmp_path / "r1")
    report = json.loads((tmp_path / "r1" / "readiness.json").read_text())
    not_ready = {n["node"]: [c for c in n["checks"] if c["status"] not in ("pass", "n/a")] or n["error"]
                 for n in report["nodes"] if not (n["reachable"] and all(c["status"] in ("pass", "n/a") for c in n["checks"]))}
    assert rc == 0 and not not_ready, not_ready
    assert any(name.startswith("Firmware | BIOS pass") for name in _changed(first)), "the TEE came from the firmware stage"

    rc, second, took2 = _site(lab, tmp_path / "r2")
    assert rc == 0
    # the verify stage's read-only checks run every time; nothing else may change
    assert [n for n in _changed(second) if not n.startswith("Verify |")] == []
    print(f"\nsite: first run {took1:.1f} s, second run {took2:.1f} s")

    suite = subprocess.run(
        [str(BIN / "pytest"), "-p", "no:cacheprovider", "-q", "--pyargs", "ccfactory.verify",
         "--pyinfra-inventory", str(lab.inventory)],
        cwd=REPO, capture_output=True, text=True, timeout=900,
    )
    assert suite.returncode == 0, suite.stdout[-4000:]

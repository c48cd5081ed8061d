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


def _failing(lab, report_dir: Path) -> set[tuple[str, str]]:
    """(node address, check id) of every check that does not pass, from a verify run."""
    env = {**os.environ, "PYINFRA_PROGRESS": "off", "CCFACTORY_REPORT_DIR": str(report_dir)}
    subprocess.run(
        [str(BIN / "pyinfra"), "-y", str(lab.inventory), str(REPO / "deploy" / "verify.py")],
        cwd=REPO, capture_output=True, text=True, timeout=900, env=env,
    )
    report = json.loads((report_dir / "readiness.json").read_text())
    out = set()
    for node in report["nodes"]:
        assert node["reachable"] and not node["error"], node
        out |= {(node["node"], c["check"]) for c in node["checks"] if c["status"] not in ("pass", "n/a")}
    return out


def _reboot(lab, name: str) -> None:
    from ccfactory.lab import power

    assert power.power(lab.dir, name, "force-restart") == "On"
    lab.wait_ssh(name)


def test_breaking_one_thing_per_stage_fails_its_check_with_a_hint(factory_lab, tmp_path):
    """After the converged site: break one thing per stage by hand; the matching check
    fails, with its hint, and no other check does, except where one truly implies the
    other: BIOS back to factory turns the TEE off (host.tee_active), and the end-to-end
    attestation check needs the Kata handler and a strict KBS policy."""
    lab = factory_lab
    snp = lab.node_of_profile("amd-snp-hgx")
    kbs = lab.node_of_profile("plain")
    addr = lab.nodes[snp]["address"]
    assert _failing(lab, tmp_path / "base") == set(), "the site must start converged"

    # gpu: the GPUs lose their vfio-pci binding
    vfio = "/etc/modprobe.d/ccfactory-vfio.conf"
    lab.ssh(snp, f"mv {vfio} /root/vfio.conf.saved")
    _reboot(lab, snp)
    assert _failing(lab, tmp_path / "gpu") == {(addr, "gpu.vfio_bound")}
    lab.ssh(snp, f"mv /root/vfio.conf.saved {vfio}")
    _reboot(lab, snp)

    # runtime: a Kata handler disappears from containerd
    conf = "/etc/containerd/config.toml"
    lab.ssh(snp, f"cp {conf} /root/containerd.saved && sed -i 's/runtimes.kata-qemu-snp\\([].]\\)/runtimes.kata-qemu-gone\\1/' {conf} && systemctl restart containerd")
    assert _failing(lab, tmp_path / "runtime") == {(addr, "runtime.containerd_handlers"), (addr, "attestation.end_to_end")}
    lab.ssh(snp, f"cp /root/containerd.saved {conf} && systemctl restart containerd")

    # kbs: an allow-all resource policy
    from ccfactory.config import load_node_config
    from ccfactory.inventory import load_inventory
    from ccfactory.kbs.client import KbsClient
    from ccfactory.kbs.settings import kbs_settings

    host = next(h for h in load_inventory(lab.inventory) if h.name == lab.nodes[kbs]["address"])
    cfg = load_node_config(host.name, host.groups, host.data.dict())
    settings = kbs_settings(cfg, host.data.dict())
    client = KbsClient(settings.url, ca_cert=settings.pki_dir / "ca.crt", admin_key=settings.pki_dir / "admin.key", lab=True)
    strict = client.get_resource_policy()
    client.set_resource_policy("package policy\n\ndefault allow = true\n")
    try:
        failing = _failing(lab, tmp_path / "kbs")
    finally:
        client.set_resource_policy(strict)
    workers = {n["address"] for n in lab.nodes.values() if n["profile"] != "plain"}
    assert failing == {(host.name, "kbs.health")} | {(w, "attestation.end_to_end") for w in workers}
    report = json.loads((tmp_path / "kbs" / "readiness.json").read_text())
    health = next(c for n in report["nodes"] for c in n["checks"] if c["check"] == "kbs.health")
    assert health["hint"], "a failing check carries a hint"

    # firmware: the BIOS goes back to factory settings (as after a CMOS reset)
    from ccfactory.lab.bmc import state

    state.reset(lab.dir, snp)
    _reboot(lab, snp)
    assert _failing(lab, tmp_path / "firmware") == {(addr, "firmware.bios_compliant"), (addr, "host.tee_active")}

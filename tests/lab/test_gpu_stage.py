"""The GPU stage on the lab's AMD SNP HGX node (8x H100 + 4 NVSwitches): converge, converge
again with zero changes and no reboot, a stuck GPU named with its recovery, then recovery.

Runs the stage as an operator would: ``pyinfra -y --json <lab inventory> <deploy file>``
limited to node1, with the stand-in gpu-admin-tools served by the lab artifact server.
Until ``lab up`` starts that server itself, this module starts it (and stops it after).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ccfactory.bom import BomError, bom_for
from ccfactory.lab import artifacts
from ccfactory.lab.gpustate import ensure_gpu_state, state_path
from ccfactory.lab.hwprofile import load_profile

pytestmark = pytest.mark.lab

GPUS = ["0000:18:00.0", "0000:2a:00.0", "0000:3a:00.0", "0000:5d:00.0", "0000:9a:00.0", "0000:ab:00.0", "0000:ba:00.0", "0000:db:00.0"]
SWITCHES = ["0000:c5:00.0", "0000:c6:00.0", "0000:c7:00.0", "0000:c8:00.0"]
NODE = "node1"

DEPLOY = """\
from ccfactory import deploys

deploys.STAGES.setdefault("gpu", "ccfactory.roles.gpu")  # until the stage is registered in ccfactory.deploys
deploys.run_stages(["preflight", "gpu"])
"""


@pytest.fixture(scope="module")
def site(lab, tmp_path_factory):
    started = artifacts.status(lab.dir) is None
    artifacts.start(lab.dir)
    try:
        try:
            bom_for(True, str(lab.dir)).artifact("gpu-admin-tools")
        except BomError as exc:
            pytest.fail(f"the lab BOM overlay is refused, the GPU stage cannot get its tool: {exc}")
        deploy = tmp_path_factory.mktemp("deploy") / "gpu.py"
        deploy.write_text(DEPLOY)
        factory_node(lab)
        yield lab, deploy
    finally:
        if started:
            artifacts.stop(lab.dir)


INVENTORY = """\
# node1 of the lab inventory with another gpu_cc_mode (--data would change every host)
import runpy as _runpy

_ns = _runpy.run_path({inventory!r})
_ns["_hosts"][{address!r}]["gpu_cc_mode"] = {mode!r}
workers, kbs, snp, tdx, gpu = (_ns[g] for g in ("workers", "kbs", "snp", "tdx", "gpu"))
"""


def factory_node(lab) -> None:
    """node1 as delivered: GPUs in factory modes, no tool, no VFIO config, devices unbound.

    The lab keeps a node's disk and GPU state between sessions, so a previous run's
    result is undone here: GPU state from the hardware profile, ccfactory's files
    removed, and a reboot so the hardware is rendered without vfio-pci.
    """
    path = state_path(lab.dir, NODE)
    path.unlink(missing_ok=True)
    ensure_gpu_state(lab.dir, NODE, load_profile(lab.nodes[NODE]["profile"]))
    old = lab.ssh(NODE, "cat /proc/sys/kernel/random/boot_id").stdout.strip()
    lab.ssh(
        NODE,
        "rm -rf /opt/ccfactory /var/lib/ccfactory /etc/modprobe.d/ccfactory-vfio.conf "
        "/etc/modules-load.d/ccfactory-vfio.conf; (sleep 1; systemctl reboot) >/dev/null 2>&1 &",
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        time.sleep(1)
        r = lab.ssh(NODE, "cat /proc/sys/kernel/random/boot_id", check=False, timeout=15)
        if r.returncode == 0 and r.stdout.strip() not in ("", old):
            break
    else:
        raise AssertionError(f"{NODE} did not come back from the reboot that resets it")
    assert all(d == "" for b, d in drivers(lab).items() if b in GPUS), "GPUs still bound after the reset"


def run_stage(lab, deploy: Path, mode: str | None = None) -> tuple[int, dict | None, str]:
    """``pyinfra -y --json`` on node1; ``mode``: node1's gpu_cc_mode instead of the lab inventory's."""
    inventory = lab.inventory
    if mode:
        inventory = deploy.with_name(f"lab_{mode}") / "lab.py"
        inventory.parent.mkdir(exist_ok=True)
        inventory.write_text(INVENTORY.format(inventory=str(lab.inventory), address=lab.nodes[NODE]["address"], mode=mode))
    pyinfra = str(Path(sys.executable).with_name("pyinfra"))
    r = subprocess.run(
        [pyinfra, "-y", "--json", "--limit", lab.nodes[NODE]["address"], str(inventory), str(deploy)],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=Path(__file__).resolve().parents[2],
        env={**os.environ, "PYINFRA_PROGRESS": "off"},
    )
    try:
        result = json.loads(r.stdout)
    except ValueError:
        result = None
    return r.returncode, result, r.stdout + r.stderr


def changed_ops(result: dict) -> list[str]:
    return [op["name"] for op in result["results"]["operations"] if op["success"]]


def node_modes(lab) -> dict:
    return json.loads((lab.dir / "nodes" / NODE / "state" / "gpus.json").read_text())["devices"]


def drivers(lab) -> dict[str, str]:
    out = lab.ssh(NODE, "for d in /sys/bus/pci/devices/*; do echo ${d##*/} $(readlink $d/driver); done").stdout
    return {line.split()[0]: (line.split()[1].rsplit("/", 1)[-1] if len(line.split()) > 1 else "") for line in out.splitlines()}


def _boots(lab) -> int:
    from ccfactory.lab import manager

    return next(n["boots"] for n in manager.status(lab_dir=lab.dir)["nodes"] if n["name"] == NODE)


def test_first_run_switches_binds_and_reboots_once(site):
    lab, deploy = site
    boot_before = lab.ssh(NODE, "cat /proc/sys/kernel/random/boot_id").stdout.strip()
    boots = _boots(lab)
    rc, result, out = run_stage(lab, deploy)
    assert rc == 0, out[-4000:]
    assert _boots(lab) - boots == 1, "the gpu stage alone reboots exactly once (issue 17: a count, not a time)"
    changed = changed_ops(result)
    assert any("GPUs in CC mode on" in name for name in changed)
    assert any("Reboot to bind the GPUs to vfio-pci" in name for name in changed)
    assert lab.ssh(NODE, "cat /proc/sys/kernel/random/boot_id").stdout.strip() != boot_before
    modes = node_modes(lab)
    assert all(modes[g]["cc_mode"] == "on" and modes[g]["pending_cc_mode"] is None for g in GPUS)
    bound = drivers(lab)
    assert all(bound[g] == "vfio-pci" for g in GPUS)
    assert all(bound[s] == "" for s in SWITCHES)  # NVSwitches stay with the host for mode "on"
    conf = lab.ssh(NODE, "cat /etc/modprobe.d/ccfactory-vfio.conf").stdout
    assert "options vfio-pci ids=10de:2330\n" in conf and conf.startswith("# Managed by ccfactory")
    query = lab.ssh(NODE, "python3 /opt/ccfactory/gpu-admin-tools/*/nvidia_gpu_tools.py --devices gpus --query-cc-mode 2>&1")
    assert query.stdout.count(" CC mode is on") == 8


def test_second_run_changes_nothing_and_does_not_reboot(site):
    lab, deploy = site
    boot_before = lab.ssh(NODE, "cat /proc/sys/kernel/random/boot_id").stdout.strip()
    rc, result, out = run_stage(lab, deploy)
    assert rc == 0, out[-4000:]
    assert changed_ops(result) == []
    assert lab.ssh(NODE, "cat /proc/sys/kernel/random/boot_id").stdout.strip() == boot_before


def test_stuck_gpu_is_named_then_recovered(site):
    lab, deploy = site
    faults = lab.dir / "nodes" / NODE / "state" / "faults.json"
    faults.write_text(json.dumps({"stuck_after_reset": ["0000:3a:00.0"]}))
    try:
        rc, _, out = run_stage(lab, deploy, "devtools")
    finally:
        faults.unlink()
    assert rc != 0
    assert "failed to switch to CC mode devtools, current mode is on" in out
    assert "GPU 0000:3a:00.0 H100 0x2330" in out and "Recovery, as root on the node: python3 " in out
    modes = node_modes(lab)
    assert [modes[g]["cc_mode"] for g in GPUS[:3]] == ["devtools", "devtools", "on"]
    # the fault is gone: the next run reports the half-switched node and finishes it
    rc, result, out = run_stage(lab, deploy, "devtools")
    assert rc == 0, out[-4000:]
    assert "GPUs are half-switched" in out
    assert all(m["cc_mode"] == "devtools" for b, m in node_modes(lab).items() if b in GPUS)
    # back to the inventory's mode; the VFIO config (ids) did not change, so no reboot
    rc, result, out = run_stage(lab, deploy)
    assert rc == 0 and not any("Reboot" in n and "done" not in n for n in changed_ops(result)), out[-4000:]


def test_ppcie_binds_the_nvswitches_and_resets_everything_together(site):
    lab, deploy = site
    rc, result, out = run_stage(lab, deploy, "ppcie")
    assert rc == 0, out[-4000:]
    modes = node_modes(lab)
    assert all(modes[g]["cc_mode"] == "off" for g in GPUS)
    assert all(modes[d]["ppcie_mode"] == "on" for d in GPUS + SWITCHES)
    bound = drivers(lab)
    assert all(bound[d] == "vfio-pci" for d in GPUS + SWITCHES)  # new ids: one reboot
    rc, result, out = run_stage(lab, deploy, "ppcie")
    assert rc == 0 and changed_ops(result) == [], out[-4000:]
    # leave the node as the inventory wants it
    rc, _, out = run_stage(lab, deploy)
    assert rc == 0, out[-4000:]

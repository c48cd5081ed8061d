"""The host stage on the lab's SNP node (node1) and TDX node (node2): from fresh to an active
TEE with exactly one reboot each, a second run with zero changes and no reboot, an operator's
``iommu=pt`` refused with its file named, and a BIOS that still has SNP off.

Runs the stage as an operator would: ``pyinfra -y --json <lab inventory> <deploy file>``,
limited to the nodes under test. The BIOS state is set through ``platform.json`` (the lab
runs with ``--platform-source local``) and applied by a power cycle, which is what the
firmware stage's reboot does. Run times are printed (``pytest -s``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ccfactory import deploys
from ccfactory.lab import manager
from ccfactory.lab.features import write_local_platform_features
from ccfactory.lab.platform import PlatformFeatures
from ccfactory.lab.power import power
from ccfactory.roles.host.facts import REBOOT_MARKER
from ccfactory.roles.host.plan import DROPIN, GPU_CONF, TEE_CONF

pytestmark = pytest.mark.lab

REPO = Path(__file__).resolve().parents[2]
SNP_ON = PlatformFeatures(smee=True, snp=True, rmp_coverage=True, sev_es_asid_limit=100)
TDX_ON = PlatformFeatures(tme=True, tme_mt=True, tdx=True, seam_loader=True, tdx_key_split=1, sgx=True, limit_pa_46bit=False)
BIOS = {"amd-snp-hgx": SNP_ON, "intel-tdx": TDX_ON}
OWNED = (DROPIN, TEE_CONF, GPU_CONF, REBOOT_MARKER, "/etc/default/grub.d/50-site.cfg")
SHIM = """\
from ccfactory import deploys

deploys.STAGES.setdefault("host", "ccfactory.roles.host")  # until the stage is registered in ccfactory.deploys
deploys.run_stages(["preflight", "host"])
"""


class Site:
    def __init__(self, lab, deploy: Path):
        self.lab = lab
        self.deploy = deploy
        self.snp = lab.node_of_profile("amd-snp-hgx")
        self.tdx = lab.node_of_profile("intel-tdx")

    def boot_id(self, node: str) -> str:
        return self.lab.ssh(node, "cat /proc/sys/kernel/random/boot_id").stdout.strip()

    def boots(self) -> dict[str, int]:
        return {n["name"]: n["boots"] for n in manager.status(lab_dir=self.lab.dir)["nodes"]}

    def set_bios(self, node: str, features: PlatformFeatures) -> float:
        """What the firmware stage does: BIOS settings, then a reboot so they apply."""
        write_local_platform_features(self.lab.dir, node, features)
        t0 = time.monotonic()
        assert power(self.lab.dir, node, "force-restart") == "On"
        self.lab.wait_ssh(node)
        return time.monotonic() - t0

    def fresh(self, node: str) -> None:
        """No file of the host stage on the node (nodes keep their disk between sessions)."""
        self.lab.ssh(node, "rm -f " + " ".join(OWNED) + " && update-grub 2>/dev/null")

    def run(self, *nodes: str, extra: tuple[str, ...] = ()) -> tuple[int, dict | None, str, float]:
        pyinfra = str(Path(sys.executable).with_name("pyinfra"))
        limits = [arg for n in nodes for arg in ("--limit", self.lab.nodes[n]["address"])]
        t0 = time.monotonic()
        r = subprocess.run(
            [pyinfra, "-y", "--json", *extra, *limits, str(self.lab.inventory), str(self.deploy)],
            capture_output=True,
            text=True,
            timeout=1800,
            cwd=REPO,
            env={**os.environ, "PYINFRA_PROGRESS": "off"},
        )
        took = time.monotonic() - t0
        try:
            result = json.loads(r.stdout)
        except ValueError:
            result = None
        return r.returncode, result, r.stdout + r.stderr, took


def changed(result: dict) -> list[tuple[str, list[str]]]:
    """(operation, hosts it changed) for every operation that changed something."""
    return [(op["name"], op["success"]) for op in result["results"]["operations"] if op["success"]]


@pytest.fixture(scope="module")
def site(lab, tmp_path_factory):
    if json.loads((lab.dir / "spec.json").read_text()).get("platform_source") != "local":
        from ccfactory.lab import manager

        manager.up(lab_dir=lab.dir, inventory=lab.inventory, platform_source="local")  # set BIOS state directly
    if "host" in deploys.STAGES:
        deploy = REPO / "deploy" / "host.py"
    else:
        deploy = tmp_path_factory.mktemp("deploy") / "host.py"
        deploy.write_text(SHIM)
    s = Site(lab, deploy)
    for node in (s.snp, s.tdx):
        s.fresh(node)
        took = s.set_bios(node, BIOS[lab.nodes[node]["profile"]])
        print(f"\n{node}: BIOS fully enabled, power cycle {took:.1f} s")
    yield s
    for node in (s.snp, s.tdx):
        (lab.dir / "nodes" / node / "platform.json").unlink(missing_ok=True)
        lab.ssh(node, "rm -f /etc/default/grub.d/50-site.cfg", check=False)


def test_fresh_nodes_get_an_active_tee_with_exactly_one_reboot(site):
    lab = site.lab
    before = {n: site.boot_id(n) for n in (site.snp, site.tdx)}
    # fresh: SNP is on (defaults) but the command line lacks the stage's tokens; TDX is off in KVM
    assert lab.ssh(site.tdx, "cat /sys/module/kvm_intel/parameters/tdx").stdout.strip() == "N"
    boots = site.boots()
    rc, result, out, took = site.run(site.snp, site.tdx)
    print(f"\nfirst run (2 nodes, rolling batch 1): {took:.1f} s")
    assert rc == 0, out[-6000:]
    ops = dict(changed(result))
    addresses = sorted(lab.nodes[n]["address"] for n in (site.snp, site.tdx))
    assert sorted(ops["Host | Reboot to apply the host boot configuration"]) == addresses
    assert sorted(ops["Host | Kernel command line drop-in"]) == addresses
    assert sorted(ops["Host | Update the bootloader configuration"]) == addresses
    after = site.boots()
    assert {n: after[n] - boots[n] for n in (site.snp, site.tdx)} == {site.snp: 1, site.tdx: 1}, "exactly one reboot each"
    assert all(site.boot_id(n) != before[n] for n in (site.snp, site.tdx))

    assert lab.ssh(site.snp, "cat /sys/module/kvm_amd/parameters/sev_snp").stdout.strip() == "Y"
    assert "modprobe.blacklist=nouveau" in lab.ssh(site.snp, "cat /proc/cmdline").stdout.split()
    assert lab.ssh(site.tdx, "cat /sys/module/kvm_intel/parameters/tdx").stdout.strip() == "Y"
    cmdline = lab.ssh(site.tdx, "cat /proc/cmdline").stdout.split()
    assert {"intel_iommu=on", "kvm_intel.tdx=1", "nohibernate"} <= set(cmdline)
    assert "virt/tdx: module initialized" in lab.ssh(site.tdx, "cat /var/log/ccfactory-lab/dmesg").stdout
    # the lab boots from /etc/default/grub{,.d} whether or not update-grub ran; its update-grub
    # stand-in writes /boot/grub/grub.cfg, which proves the stage ran it after the drop-in
    assert "kvm_intel.tdx=1" in lab.ssh(site.tdx, "grep '^linux' /boot/grub/grub.cfg").stdout
    assert "modprobe.blacklist=nouveau" in lab.ssh(site.snp, "grep '^linux' /boot/grub/grub.cfg").stdout
    for node in (site.snp, site.tdx):
        for path in (DROPIN, TEE_CONF, GPU_CONF):
            assert lab.ssh(node, f"head -n1 {path}").stdout.startswith("# Managed by ccfactory (host stage)")
        assert lab.ssh(node, f"test -e {REBOOT_MARKER}", check=False).returncode == 1, "marker removed after the reboot"
    assert "options kvm_amd sev=1 sev_es=1 sev_snp=1" in lab.ssh(site.snp, f"cat {TEE_CONF}").stdout
    assert "install nvidia /bin/false" in lab.ssh(site.tdx, f"cat {GPU_CONF}").stdout
    # lab nodes: the kernel check ran on the simulated kernel and said so
    assert "lab: kernel checked is the simulated 6.16.12-amd64" in out


def test_second_run_changes_nothing_and_does_not_reboot(site):
    before = {n: site.boot_id(n) for n in (site.snp, site.tdx)}
    boots = site.boots()
    rc, result, out, took = site.run(site.snp, site.tdx)
    print(f"\nsecond run (2 nodes): {took:.1f} s")
    assert rc == 0, out[-6000:]
    assert changed(result) == []
    assert result["results"]["totals"]["error"] == 0
    assert site.boots() == boots and {n: site.boot_id(n) for n in (site.snp, site.tdx)} == before


def test_iommu_pt_in_an_operator_grub_file_is_refused_with_the_file_named(site):
    lab, node = site.lab, site.snp
    lab.ssh(node, "echo 'GRUB_CMDLINE_LINUX_DEFAULT=\"$GRUB_CMDLINE_LINUX_DEFAULT iommu=pt\"' > /etc/default/grub.d/50-site.cfg")
    dropin = lab.ssh(node, f"cat {DROPIN}").stdout
    before = site.boot_id(node)
    try:
        rc, result, out, took = site.run(node)
        print(f"\nrefused run (1 node): {took:.1f} s")
    finally:
        lab.ssh(node, "rm -f /etc/default/grub.d/50-site.cfg")
    assert rc != 0
    assert "iommu=pt in /etc/default/grub.d/50-site.cfg line 1" in out
    assert "disables SEV-SNP on the host" in out and "remove iommu=pt there, then re-run" in out
    assert site.boot_id(node) == before, "no reboot"
    assert lab.ssh(node, f"cat {DROPIN}").stdout == dropin, "nothing changed"
    assert result is None or changed(result) == []


def test_bios_with_snp_off_fails_with_the_firmware_stage_hint_and_no_reboot(site):
    lab, node = site.lab, site.snp
    site.fresh(node)
    site.set_bios(node, PlatformFeatures())  # factory BIOS: SNP off
    before = site.boot_id(node)
    boots = site.boots()[node]
    rc, result, out, took = site.run(node)
    print(f"\nBIOS-off run (1 node): {took:.1f} s")
    assert rc != 0
    assert "AMD SEV-SNP is not active: enable SNP in BIOS: run the firmware stage" in out
    assert "cpu_sev_snp: FAIL: CPU flag sev_snp is missing" in out
    assert site.boot_id(node) == before and site.boots()[node] == boots, "a reboot cannot fix the BIOS: none done"
    assert lab.ssh(node, f"test -s {DROPIN}", check=False).returncode == 0, "the configuration is written"
    # the firmware stage enables SNP and reboots: that reboot applies the host configuration too
    site.set_bios(node, SNP_ON)
    boots = site.boots()[node]
    rc, result, out, took = site.run(node)
    print(f"\nafter the firmware stage's reboot (1 node): {took:.1f} s")
    assert rc == 0, out[-6000:]
    assert changed(result) == [] and site.boots()[node] == boots


def test_a_reboot_that_does_not_happen_is_forced_through_the_bmc(site):
    """``systemctl reboot`` fails on the node (reboot.target masked: what a shutdown that hangs
    looks like from outside, the node keeps running its old boot): after
    ``reboot_graceful_timeout`` the stage resets the node with ForceRestart through its BMC."""
    lab, node = site.lab, site.tdx
    site.fresh(node)
    site.set_bios(node, TDX_ON)  # the running kernel lacks the host stage's command line: a reboot is due
    lab.ssh(node, "systemctl mask reboot.target")
    before, boots = site.boot_id(node), site.boots()[node]
    try:
        rc, result, out, took = site.run(node, extra=("--data", "reboot_graceful_timeout=3"))
    finally:
        lab.wait_ssh(node)
        lab.ssh(node, "systemctl unmask reboot.target")
    print(f"\nreboot forced through the BMC (1 node): {took:.1f} s")
    assert rc == 0, out[-6000:]
    assert "still running the old boot" in out and "ForceRestart through the BMC" in out, out[-6000:]
    assert site.boot_id(node) != before and site.boots()[node] - boots == 1, "one boot: the forced one"
    assert lab.ssh(node, "cat /sys/module/kvm_intel/parameters/tdx").stdout.strip() == "Y"
    rc, result, out, _ = site.run(node)
    assert rc == 0 and changed(result) == []

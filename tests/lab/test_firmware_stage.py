"""The firmware stage in the lab, as an operator runs it (``pyinfra -y --json <inventory>
deploy/firmware.py``): every BMC personality x TEE, from a factory BIOS (TEE off) to the TEE
active on the node through the firmware stage alone, with the profile's number of stages and
reboots; a dry run that touches nothing; a second run with zero changes and zero reboots; and
the BMC faults, each failing its host alone while the others finish.

The module re-ups the session's lab with 10 nodes (SNP and TDX profiles x dell, hpe, lenovo,
supermicro, generic BMCs) whose BIOS state is the BMC's (``--platform-source bmc``), and puts
the session's lab back afterwards (3 nodes, its vendors and platform source, factory BIOS).
TDX nodes get ``options kvm_intel tdx=1`` first: the kernel opt-in is the host stage's (KVM
keeps TDX off without it), so the firmware stage alone is what turns TDX on here.
Figures per host (stages, reboots, Redfish requests, seconds) are printed (``pytest -s``).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from ccfactory import deploys
from ccfactory.lab import manager
from ccfactory.lab.bmc.faults import clear_faults, set_faults
from ccfactory.lab.bmc.pki import ensure_lab_ca
from ccfactory.lab.bmc.state import StateStore
from ccfactory.lab.bmc.state import reset as reset_bios
from ccfactory.lab.power import power
from ccfactory.roles.firmware.operations import MARKER
from support import EXPECTED_PASSES  # = reboots per vendor and TEE

pytestmark = pytest.mark.lab

REPO = Path(__file__).resolve().parents[2]
VENDORS = ["dell", "hpe", "lenovo", "supermicro", "generic"]
PROFILES = {"snp": "amd-snp-hgx", "tdx": "intel-tdx"}
# nodes 1..10: profiles alternate snp/tdx, vendors go dell, dell, hpe, hpe, ...
LAYOUT = [(VENDORS[i // 2], "snp" if i % 2 == 0 else "tdx") for i in range(10)]
TDX_OPT_IN = "/etc/modprobe.d/ccfactory-test-tdx.conf"
TEE_PARAM = {"snp": "/sys/module/kvm_amd/parameters/sev_snp", "tdx": "/sys/module/kvm_intel/parameters/tdx"}
SHIM = """\
from ccfactory import deploys

deploys.STAGES.setdefault("firmware", "ccfactory.roles.firmware")  # until the stage is registered in ccfactory.deploys
deploys.run_stages(["preflight", "firmware"])
"""
SUMMARY = re.compile(
    r"\[(?P<host>[\d.]+)\] ccfactory firmware: (?P<stages>\d+) stage\(s\)(?: \+ (?P<oneshot>\d+) one-shot pass\(es\))? "
    r"applied.*?, (?P<reboots>\d+) reboot\(s\), (?P<requests>\d+) Redfish request\(s\), (?P<seconds>[\d.]+) s"
    r"(?:; passes (?P<busy>[\d.]+) s: (?P<each>.*))?"
)


class FirmwareLab:
    def __init__(self, lab, deploy: Path, inventory: Path):
        self.lab = lab
        self.deploy = deploy
        self.inventory = inventory
        status = manager.status(lab_dir=lab.dir)
        self.nodes = {n["name"]: n for n in status["nodes"] if n["in_lab"]}
        self.combo = {name: (info["bmc_vendor"], info["tee"]) for name, info in self.nodes.items()}
        self.address = {name: info["address"] for name, info in self.nodes.items()}
        self.by_address = {a: n for n, a in self.address.items()}

    def ssh(self, node: str, command: str, check: bool = True) -> subprocess.CompletedProcess:
        r = subprocess.run(
            ["ssh", "-F", str(self.lab.dir / "ssh_config"), f"root@{self.address[node]}", command],
            capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
        )
        if check and r.returncode != 0:
            raise AssertionError(f"ssh {node} {command!r}: exit {r.returncode}: {r.stderr.strip()}")
        return r

    def tee_param(self, node: str) -> str:
        return self.ssh(node, f"cat {TEE_PARAM[self.combo[node][1]]} 2>/dev/null || echo missing").stdout.strip()

    def bmc_boots(self) -> dict[str, int]:
        return {n: StateStore(self.lab.dir, n).load().boots for n in self.nodes}

    def node_boots(self) -> dict[str, int]:
        return {n["name"]: n["boots"] for n in manager.status(lab_dir=self.lab.dir)["nodes"] if n["in_lab"]}

    def factory(self, nodes) -> float:
        """Factory BIOS on these nodes' BMCs, and nodes rebooted if they still show a TEE."""
        t0 = time.monotonic()
        for n in nodes:
            clear_faults(self.lab.dir, n)
            reset_bios(self.lab.dir, n)
            self.lab_wait_ssh(n, timeout=300)  # a node still booting from the previous test
        stale = [n for n in nodes if self.tee_param(n) == "Y"]
        with ThreadPoolExecutor(max_workers=len(stale) or 1) as pool:
            list(pool.map(lambda n: power(self.lab.dir, n, "force-restart", timeout=120), stale))
        for n in stale:
            self.lab_wait_ssh(n)
        return time.monotonic() - t0

    def unhang(self, node: str) -> None:
        """End a hung reset the way an operator does: another reset through the BMC."""
        from ccfactory.clients.redfish import RedfishClient
        from ccfactory.lab.bmc import service

        user, password = service.credentials(self.lab.dir, node)
        url = f"https://{self.nodes[node]['bmc_address']}"
        with RedfishClient(url, user, password, vendor=self.combo[node][0], verify=str(service.ca_bundle(self.lab.dir))) as c:
            c.reset()
        self.lab_wait_ssh(node)

    def lab_wait_ssh(self, node: str, timeout: float = 120) -> None:
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if self.ssh(node, "true", check=False).returncode == 0:
                return
            time.sleep(0.5)
        raise AssertionError(f"{node}: SSH not back within {timeout}s")

    def run(self, *extra: str, inventory: Path | None = None, nodes=None) -> tuple[int, dict | None, str, float]:
        pyinfra = str(Path(sys.executable).with_name("pyinfra"))
        limits = [a for n in (nodes or []) for a in ("--limit", self.address[n])]
        t0 = time.monotonic()
        r = subprocess.run(
            [pyinfra, "--json", *extra, *limits, str(inventory or self.inventory), str(self.deploy)],
            capture_output=True, text=True, timeout=1800, cwd=REPO, env={**os.environ, "PYINFRA_PROGRESS": "off"},
        )
        took = time.monotonic() - t0
        try:
            result = json.loads(r.stdout)
        except ValueError:
            result = None
        return r.returncode, result, r.stdout + r.stderr, took

    def summaries(self, out: str) -> dict[str, dict]:
        found = {}
        for m in SUMMARY.finditer(out):
            found[self.by_address[m["host"]]] = {
                "stages": int(m["stages"]) + int(m["oneshot"] or 0),
                "reboots": int(m["reboots"]),
                "requests": int(m["requests"]),
                "seconds": float(m["seconds"]),
                "passes_seconds": float(m["busy"] or 0),
                "each": m["each"] or "",
            }
        return found


def changed_passes(result: dict, by_address: dict[str, str]) -> dict[str, int]:
    counts = {n: 0 for n in by_address.values()}
    for op in result["results"]["operations"]:
        if "BIOS pass" in op["name"]:
            for address in op["success"]:
                counts[by_address[address]] += 1
    return counts


def host_lines(out: str, address: str) -> str:
    return "\n".join(line for line in out.splitlines() if f"[{address}]" in line)


@pytest.fixture(scope="module")
def fw(lab, tmp_path_factory):
    previous = json.loads((lab.dir / "spec.json").read_text())
    tmp = tmp_path_factory.mktemp("fw")
    inventory = tmp / "fw_lab.py"
    t0 = time.monotonic()
    manager.up(
        len(LAYOUT),
        [PROFILES[tee] for _, tee in LAYOUT],
        [vendor for vendor, _ in LAYOUT],
        lab_dir=lab.dir,
        inventory=inventory,
        platform_source="bmc",
    )
    up_seconds = time.monotonic() - t0
    if "firmware" in deploys.STAGES:
        deploy = REPO / "deploy" / "firmware.py"
    else:
        deploy = tmp / "firmware.py"
        deploy.write_text(SHIM)
    site = FirmwareLab(lab, deploy, inventory)
    assert sorted(site.combo.values()) == sorted(EXPECTED_PASSES), site.combo
    took = site.factory(list(site.nodes))
    for node, (_, tee) in site.combo.items():
        site.ssh(node, f"rm -f {MARKER}")
        if tee == "tdx":
            site.ssh(node, f"echo 'options kvm_intel tdx=1' > {TDX_OPT_IN}")
    print(f"\nlab re-up with {len(LAYOUT)} nodes (platform source bmc): {up_seconds:.1f} s; factory BIOS: {took:.1f} s")
    try:
        yield site
    finally:
        for node in site.nodes:
            site.ssh(node, f"rm -f {TDX_OPT_IN} {MARKER}", check=False)
            clear_faults(lab.dir, node)
            reset_bios(lab.dir, node)
        nodes = previous["nodes"]
        manager.up(
            len(nodes),
            [n["profile"] for n in nodes],
            [n["vendor"] for n in nodes],
            lab_dir=lab.dir,
            inventory=lab.inventory,
            platform_source=previous.get("platform_source", "local"),
        )
        for n in nodes:  # factory BIOS for the next tests, on nodes that kept their vendor
            reset_bios(lab.dir, n["name"])


def test_every_vendor_and_tee_from_tee_off_to_tee_active_then_a_second_run_changes_nothing(fw):
    for node in fw.nodes:
        assert fw.tee_param(node) in ("N", "missing"), f"{node} starts with its TEE on"
    bmc0, boots0 = fw.bmc_boots(), fw.node_boots()

    rc, result, out, took = fw.run("--dry")  # prints the plan, touches nothing
    assert rc == 0, out[-4000:]
    print(f"\ndry run ({len(fw.nodes)} nodes): {took:.1f} s")
    planned = {fw.by_address[a]: 0 for a in fw.by_address}
    for op in result["plan"]:
        if "BIOS pass" in op["name"]:
            for address in op["hosts_with_change"]:
                planned[fw.by_address[address]] += 1
    assert planned == {n: EXPECTED_PASSES[c] for n, c in fw.combo.items()}
    assert "would run 5 BIOS pass(es)" in out and "APPLY NOW" in out
    assert fw.bmc_boots() == bmc0 and fw.node_boots() == boots0
    assert all(not StateStore(fw.lab.dir, n).load().pending for n in fw.nodes), "a dry run stages nothing"

    started = time.time()
    rc, result, out, took = fw.run("-y", "--data", f"reboot_batch_size={len(fw.nodes)}")
    assert rc == 0, out[-8000:]
    passes = changed_passes(result, fw.by_address)
    expected = {n: EXPECTED_PASSES[c] for n, c in fw.combo.items()}
    assert passes == expected
    bmc1, boots1 = fw.bmc_boots(), fw.node_boots()
    assert {n: bmc1[n] - bmc0[n] for n in fw.nodes} == expected, "one BMC reset per pass"
    assert {n: boots1[n] - boots0[n] for n in fw.nodes} == expected, "one node boot per pass"
    for node, (_, tee) in fw.combo.items():
        assert fw.tee_param(node) == "Y", f"{node} {fw.combo[node]}: TEE not active"
        name = "AMD SEV-SNP" if tee == "snp" else "Intel TDX"
        assert f"[{fw.address[node]}] {name} active" in out
    figures = fw.summaries(out)
    print(f"\nfirst run ({len(fw.nodes)} nodes, batch {len(fw.nodes)}): {took:.1f} s")
    print(f"{'node':7} {'vendor':11} {'tee':4} {'passes':>6} {'reboots':>7} {'requests':>8} {'pass s':>7}  per pass")
    for node in sorted(fw.nodes, key=lambda n: int(n[4:])):
        f = figures[node]
        vendor, tee = fw.combo[node]
        print(
            f"{node:7} {vendor:11} {tee:4} {f['stages']:6} {f['reboots']:7} {f['requests']:8} "
            f"{f['passes_seconds']:7.1f}  {f['each']}"
        )
        assert f["stages"] == f["reboots"] == expected[node]
    for node, (vendor, tee) in fw.combo.items():
        events = [e for e in StateStore(fw.lab.dir, node).load().events if e["time"] >= started]
        assert sum(1 for e in events if e["kind"] == "one_shot") == (1 if tee == "tdx" else 0), (node, vendor)
        assert fw.ssh(node, f"test -e {MARKER}", check=False).returncode == 1

    ids = {n: fw.ssh(n, "cat /proc/sys/kernel/random/boot_id").stdout for n in fw.nodes}
    rc, result, out, took = fw.run("-y", "--data", f"reboot_batch_size={len(fw.nodes)}")
    print(f"second run: {took:.1f} s")
    assert rc == 0, out[-6000:]
    assert [op["name"] for op in result["results"]["operations"] if op["success"]] == []
    assert result["results"]["totals"]["error"] == 0
    assert fw.bmc_boots() == bmc1 and fw.node_boots() == boots1
    assert {n: fw.ssh(n, "cat /proc/sys/kernel/random/boot_id").stdout for n in fw.nodes} == ids
    second = fw.summaries(out)
    assert all(f["stages"] == 0 and f["reboots"] == 0 for f in second.values())
    print("second run Redfish requests per host: " + ", ".join(f"{n} {second[n]['requests']}" for n in sorted(second)))


def test_faults_fail_their_host_alone_with_the_reason_and_the_others_finish(fw, tmp_path):
    """One run, one fault per node: 5xx then recovery, a BMC that never answers, a failed Dell
    job, a value reverted at the reset, a reset that never completes, a wrong password. Four
    nodes start from a factory BIOS, the rest are compliant. An untrusted CA is refused by the
    lab gate before any host is touched (the run-time TLS failure of the real client is
    tests/unit/test_redfish_client.py's)."""
    by_combo = {c: n for n, c in fw.combo.items()}
    flaky = by_combo[("generic", "snp")]  # 5xx for a while: retried, converges
    silent = by_combo[("lenovo", "tdx")]  # never answers (each request outlasts bmc_timeout)
    job = by_combo[("dell", "snp")]  # its BIOS configuration job ends Failed
    revert = by_combo[("hpe", "snp")]  # the BIOS restores the old value at the reset
    hang = by_combo[("lenovo", "snp")]  # the reset never completes (PowerState stays Off)
    password = by_combo[("supermicro", "snp")]  # wrong password: 401
    tls = by_combo[("supermicro", "tdx")]  # a CA that did not sign the BMC's certificate
    fw.factory([flaky, job, revert, hang])
    set_faults(fw.lab.dir, flaky, fail_next_requests=3, fail_status=503)
    set_faults(fw.lab.dir, silent, delay_seconds=30)
    set_faults(fw.lab.dir, job, fail_next_job=True)
    set_faults(fw.lab.dir, revert, revert_after_reset=["*"])
    set_faults(fw.lab.dir, hang, reset_hang="off")
    wrong = tmp_path / "wrong.password"
    wrong.write_text("Not-the-BMC-password-42\n")
    wrong.chmod(0o600)
    other_ca = ensure_lab_ca(tmp_path / "other-ca")

    def overlay(name: str, overrides: dict) -> Path:
        path = tmp_path / name
        path.write_text(
            f"exec(open({str(fw.inventory)!r}).read())\n"
            f"for _address, _data in {overrides!r}.items():\n    _hosts[_address].update(_data)\n"
        )
        return path

    bmc0 = fw.bmc_boots()
    # a lab host whose bmc_ca_bundle is not the lab's CA is not the lab node it claims to be
    rc, result, out, _ = fw.run("--dry", inventory=overlay("fw_tls.py", {fw.address[tls]: {"bmc_ca_bundle": str(other_ca)}}))
    assert rc != 0 and result is None, out[-4000:]
    assert f"{fw.address[tls]}: bmc_ca_bundle: {other_ca} is not the lab CA" in out, out[-4000:]
    assert fw.bmc_boots() == bmc0
    # Only the hung node's reboot_timeout is short: the others really reboot, ten at once on
    # two CPUs, and a loaded CI machine has taken over 30 s to bring one back.
    overrides = {fw.address[n]: {"reboot_timeout": 30 if n == hang else 300} for n in fw.nodes}
    overrides[fw.address[password]]["bmc_password_file"] = str(wrong)
    overrides[fw.address[silent]]["bmc_timeout"] = 2.0
    faulty = overlay("fw_faults.py", overrides)
    try:
        rc, result, out, took = fw.run(
            "-y", "--data", f"reboot_batch_size={len(fw.nodes)}",
            "--data", "bmc_retries=4", "--data", "bmc_retry_backoff=0.5", inventory=faulty,  # --data beats host data
        )
    finally:
        for n in fw.nodes:
            clear_faults(fw.lab.dir, n)
        fw.unhang(hang)  # a hung reset ends only with the next reset
        for n in fw.nodes:  # the next test starts with every node answering SSH
            fw.lab_wait_ssh(n, timeout=300)
    print(f"\nfault run ({len(fw.nodes)} nodes): {took:.1f} s")
    assert rc != 0
    assert result is not None, out[-6000:]  # pyinfra ran and reported (not an inventory error)
    failed = {fw.by_address[a] for a in result["results"]["failed_hosts"]}
    assert failed == {silent, job, revert, hang, password}, out[-8000:]
    log = {n: host_lines(out, fw.address[n]) for n in fw.nodes}

    assert fw.tee_param(flaky) == "Y" and changed_passes(result, fw.by_address)[flaky] == 3
    assert "no answer within 2.0s after 4 attempt(s)" in log[silent], log[silent]
    assert "Failed: Job failed (lab fault injection)" in log[job], log[job]
    assert "is not applied after the reset: the BMC reports" in log[revert], log[revert]
    assert "Nothing is patched again (no loop)" in log[revert]
    assert "after the reset the BMC still reports the system Off (reboot_timeout 30s)" in log[hang], log[hang]
    assert "refused the credentials of user" in log[password] and "(HTTP 401)" in log[password], log[password]
    assert "Not-the-BMC-password-42" not in out
    bmc1 = fw.bmc_boots()
    assert bmc1[revert] - bmc0[revert] == 1, "reverted: one reset, no loop"
    assert bmc1[job] - bmc0[job] == 1
    assert bmc1[silent] == bmc0[silent] and bmc1[password] == bmc0[password] and bmc1[tls] == bmc0[tls]
    for node in set(fw.nodes) - failed - {flaky}:  # compliant nodes: untouched
        assert bmc1[node] == bmc0[node]
    for n, f in sorted(fw.summaries(out).items()):
        print(f"  {n} {fw.combo[n]}: {f}")


def test_a_graceful_restart_the_os_ignores_is_force_restarted_after_the_grace_period(fw):
    """The BMC accepts GracefulRestart but the node's OS ignores the ACPI request (fault
    ``ignore_graceful``): the node keeps answering SSH with its old boot id; after
    ``reboot_graceful_timeout`` the stage resets it again with ForceRestart and converges."""
    node = {c: n for n, c in fw.combo.items()}[("hpe", "snp")]
    fw.factory([node])
    set_faults(fw.lab.dir, node, ignore_graceful=True)
    boots0, events0 = fw.node_boots()[node], len(StateStore(fw.lab.dir, node).load().events)
    try:
        rc, result, out, took = fw.run("-y", "--data", "reboot_graceful_timeout=3", nodes=[node])
    finally:
        clear_faults(fw.lab.dir, node)
    log = host_lines(out, fw.address[node])
    print(f"\nignored GracefulRestart, escalated: {took:.1f} s; {fw.summaries(out).get(node)}")
    assert rc == 0, out[-6000:]
    passes = changed_passes(result, fw.by_address)[node]
    assert passes == EXPECTED_PASSES[("hpe", "snp")], log
    events = StateStore(fw.lab.dir, node).load().events[events0:]
    assert [e["reset"] for e in events if e["kind"] == "graceful_ignored"] == ["GracefulRestart"] * passes
    assert log.count("ForceRestart through the BMC") == passes, log
    assert f"{passes} GracefulRestart(s) ignored, force-restarted" in log
    assert fw.node_boots()[node] - boots0 == passes, "one real boot per pass: the forced one"
    assert fw.tee_param(node) == "Y"
    rc, result, out, _ = fw.run("-y", nodes=[node])
    assert rc == 0 and changed_passes(result, fw.by_address)[node] == 0

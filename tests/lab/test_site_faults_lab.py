"""Faults during the whole site deploy on the lab (``pyinfra -y <lab inventory> deploy/site.py``),
each one injected into a real run, then fixed, then the site converges again:

* a BMC answering 5xx for a while (retried; the host converges in the same run);
* a BMC that never answers (its host fails alone; the others converge);
* the SSH connection of a node killed in the middle of the runtime stage, once while the node
  runs a command (Kata's unpack, which then finishes on the node unseen) and once while it is
  idle (that host fails alone; the re-run converges without repeating what was done and leaves
  nothing behind; a third run changes nothing);
* a host that never comes back from a firmware reboot (fails alone after ``reboot_timeout``;
  the others finish their own reboots);
* a containerd configuration containerd rejects (not put in place; containerd untouched);
* an artifact whose checksum does not match the BOM (nothing installed).

After every fault run the state of every node is asserted (the run's readiness report, the
TEE on the node, the file or service the fault aimed at); after the fix the site must converge
(exit 0, every node ready, every TEE active). The module ends with a run that changes nothing.

Stage-level versions of some of these faults: tests/lab/test_firmware_stage.py (BMC faults),
tests/lab/test_runtime_stage.py (rejected config, checksum), tests/lab/test_gpu_stage.py (a GPU
left in the old mode), tests/faults/ (the same without the lab; tests/faults/test_site_faults.py:
a lost SSH connection, deterministically, through pyinfra's real SSH connector).

Why here and not in tests/faults/: these need the session's lab, whose fixture lives in
tests/lab/conftest.py (a second ``lab`` fixture elsewhere would be a second lab session, which
the machine-wide lab lock would deadlock against).
"""

from __future__ import annotations

import hashlib
import subprocess
import threading
import time
import tomllib

import pytest

from ccfactory.bom import LAB_BOM
from ccfactory.lab.bmc.faults import Faults, clear_faults, get_faults, set_faults
from ccfactory.lab.bmc.state import StateStore
from ccfactory.lab.bmc.state import reset as reset_bios
from site_lab import site_lab

pytestmark = pytest.mark.lab

KATA = "/opt/kata"
INSTALL_MARKER = "/opt/kata/.ccfactory-install.json"
PUSHED = "/opt/ccfactory/artifacts"


@pytest.fixture(scope="module")
def site(lab, tmp_path_factory):
    with site_lab(lab, tmp_path_factory.mktemp("site-faults")) as s:
        first = s.run()
        if first.rc != 0:  # e.g. a BIOS reset by an earlier module: one more run must finish it
            print(f"\nfirst site run exit {first.rc}: failed {sorted(first.failed)}; running again")
            first = s.run()
        s.assert_converged(first)
        print(f"\nsite converged for the fault tests in {first.took:.1f} s")
        yield s


def bmc_boots(site, node: str) -> int:
    return StateStore(site.lab.dir, node).load().boots


def not_ready(run, address: str) -> bool:
    """The node is not reported ready (a host that failed earlier has a failed row, or none)."""
    return run.ready().get(address) is not True


def test_bmc_5xx_for_a_while_is_retried_and_the_site_converges(site):
    node = site.snp
    reset_bios(site.lab.dir, node)  # factory BIOS: the firmware stage has work on this node
    boots = bmc_boots(site, node)
    set_faults(site.lab.dir, node, fail_next_requests=3, fail_status=503)
    try:
        run = site.run("--data", "bmc_retry_backoff=0.2")
    finally:
        left = get_faults(site.lab.dir, node).fail_next_requests
        clear_faults(site.lab.dir, node)
    print(f"\n5xx then recovery: {run.took:.1f} s")
    assert left == 0, "the BMC's 503 answers were not all consumed"
    site.assert_converged(run)  # retried: the same run converges
    assert bmc_boots(site, node) - boots >= 2, "the firmware stage re-applied the BIOS stages with reboots"
    assert any("BIOS pass" in op for op in run.changed_on(site.address[node]))
    again = site.run()
    assert again.rc == 0 and again.changed() == {}, again.changed()


def test_a_bmc_that_never_answers_fails_its_host_alone_then_the_fixed_site_converges(site):
    node = site.tdx
    address = site.address[node]
    inventory = site.derived_inventory("silent-bmc", {node: {"bmc_timeout": 2.0, "bmc_retries": 2}})
    set_faults(site.lab.dir, node, delay_seconds=30)
    try:
        run = site.run(inventory=inventory)
    finally:
        clear_faults(site.lab.dir, node)
    print(f"\nsilent BMC: {run.took:.1f} s")
    assert run.rc != 0 and run.failed == {address}, run.why()
    assert "no answer within 2.0s after 2 attempt(s)" in run.host_lines(address), run.host_lines(address)
    assert not_ready(run, address)
    for other in (site.snp, site.kbs):  # the others converge in the same run
        assert run.ready()[site.address[other]] is True, run.ready()
    assert site.tee_active(site.snp) and site.tee_active(node)  # nothing was touched on the silent one

    fixed = site.run()
    site.assert_converged(fixed)
    assert fixed.changed() == {}, "the silent BMC's host was compliant: nothing to do once it answers"


SLOW_TAR = """#!/bin/sh
# test_site_faults: a slow Kata unpack, so that the SSH connection can be killed during it
case "$*" in *ccfactory-new*) sleep 6 ;; esac
exec /bin/tar "$@"
"""


def _check_rerun_after_kill(site, node: str, killed_run) -> None:
    """The re-run converges without doing again what the interrupted run did; a third run changes nothing."""
    address = site.address[node]
    assert killed_run.rc != 0 and killed_run.failed == {address}, killed_run.why()
    for other in set(site.lab.nodes) - {node}:  # the others finish in the interrupted run
        assert killed_run.ready()[site.address[other]] is True, killed_run.ready()
    errors = [line.strip() for line in killed_run.host_lines(address).splitlines() if "rror" in line or "ccfactory" in line]
    print("  " + "\n  ".join(errors[-3:]))

    rerun = site.run()
    site.assert_converged(rerun)
    print(f"  re-run changed on {node}: {sorted(rerun.changed_on(address))}")
    repeated = killed_run.changed_on(address) & rerun.changed_on(address)
    assert repeated == set(), f"the re-run did again what the interrupted run had done: {sorted(repeated)}"
    assert site.ssh(node, f"test -f {INSTALL_MARKER} && echo ok").stdout.strip() == "ok"
    leftovers = site.ssh(node, f"ls -d {KATA}.ccfactory-* {PUSHED}/kata-static* 2>/dev/null; true").stdout.split()
    assert leftovers == [], f"left behind by the interrupted run: {leftovers}"
    runtimes = tomllib.loads(site.ssh(node, "containerd config dump").stdout)["plugins"]["io.containerd.grpc.v1.cri"]
    kata = sorted(n for n in runtimes["containerd"]["runtimes"] if n.startswith("kata-"))
    assert kata == ["kata-qemu-nvidia-gpu-snp", "kata-qemu-snp"], kata

    third = site.run()
    assert third.rc == 0 and third.changed() == {}, third.changed()


def _run_killing_sessions_during_unpack(site, unpacking: str, victim: str):
    """A site run in which ``unpacking`` reinstalls Kata through a slow tar (6 s) and ``victim``'s
    SSH sessions are killed 2 s into that unpack. Returns (run, whether the kill happened)."""
    subprocess.run(["ssh", "-F", str(site.lab.dir / "ssh_config"), f"root@{site.address[unpacking]}",
                    f"rm -rf {KATA} && cat > /usr/local/bin/tar && chmod 755 /usr/local/bin/tar"],
                   input=SLOW_TAR, text=True, check=True, timeout=60)
    killed: list[int] = []

    def kill_soon() -> None:
        time.sleep(2)  # the unpack is running (it takes 6 s)
        r = site.ssh(victim, "rm -f /usr/local/bin/tar; pkill -KILL -f 'sshd: root@'; true", check=False)
        killed.append(r.returncode)

    def on_line(line: str) -> None:
        if not killed and "Starting operation:" in line and "Runtime | kata-static" in line:
            killed.append(-1)
            threading.Thread(target=kill_soon, daemon=True).start()

    try:
        run = site.run(on_line=on_line)
    finally:
        site.ssh(unpacking, "rm -f /usr/local/bin/tar", check=False)
    assert killed, ("the run never reached the runtime stage's Kata unpack (rc "
                    f"{run.rc}); operations with kata: {[row for row in run.out.splitlines() if 'kata-static' in row]}")
    return run


def test_ssh_killed_during_a_command_fails_that_host_and_the_rerun_converges_without_repeating(site):
    """The connection dies while the node unpacks Kata; the command itself finishes on the node
    (as it does when a network drops: nothing tells it), the controller never learns."""
    node = site.snp
    run = _run_killing_sessions_during_unpack(site, unpacking=node, victim=node)
    print(f"\nSSH killed during a command: {run.took:.1f} s")
    deadline = time.monotonic() + 30  # the orphaned unpack finishes on the node
    while site.ssh(node, "pgrep -f '[c]cfactory-new' >/dev/null && echo busy; true").stdout.strip() == "busy":
        assert time.monotonic() < deadline, "the orphaned unpack never finished"
        time.sleep(0.5)
    _check_rerun_after_kill(site, node, run)


def test_ssh_killed_between_commands_fails_that_host_and_the_rerun_converges_without_repeating(site):
    """The connection dies while the node is idle in the middle of the runtime stage (another
    node unpacks Kata, which this one has); the node's next command finds the connection gone.

    Deterministic: the SNP node has runtime work before the Kata install (containerd disabled)
    and after it (a shim link gone) but not the install itself; the TDX node reinstalls Kata
    through a slow tar. The SNP node's sessions are killed while that unpack runs: every host
    finishes an operation before any starts the next, so the SNP node is idle then."""
    node, busy = site.snp, site.tdx
    link = "/usr/local/bin/containerd-shim-kata-qemu-snp-v2"
    site.ssh(node, f"systemctl disable containerd && rm -f {link}")
    run = _run_killing_sessions_during_unpack(site, unpacking=busy, victim=node)
    print(f"\nSSH killed between commands: {run.took:.1f} s")
    assert "An internal exception occurred" not in run.out, (
        "one node's dropped SSH connection aborted the whole site run (pyinfra: paramiko's EOFError is not "
        "caught as a connection error):\n" + run.why(3000)
    )
    assert "Runtime | containerd enabled and running" in run.changed_on(site.address[node]), "work before the kill"
    _check_rerun_after_kill(site, node, run)


def test_a_host_that_never_comes_back_from_reboot_fails_alone_and_the_others_finish(site):
    hung, other = site.tdx, site.snp
    hung_address, other_address = site.address[hung], site.address[other]
    for node in (hung, other):  # both need firmware reboots; one of them will hang in POST
        reset_bios(site.lab.dir, node)
    before = {n: bmc_boots(site, n) for n in (hung, other)}
    # short for the hung node only: the other one really reboots, and a loaded machine can take
    # longer than 30 s to bring it back
    inventory = site.derived_inventory("hang", {n: {"reboot_timeout": 30 if n == hung else 300} for n in site.lab.nodes})
    set_faults(site.lab.dir, hung, reset_hang="on")  # the BMC says On, the node never boots
    try:
        run = site.run(inventory=inventory)
    finally:
        clear_faults(site.lab.dir, hung)
    print(f"\nhost that never comes back: {run.took:.1f} s")
    assert run.rc != 0 and run.failed == {hung_address}, run.why()
    assert "did not come back within 30s after reboot" in run.host_lines(hung_address), run.host_lines(hung_address)
    assert not_ready(run, hung_address)
    assert run.ready()[other_address] is True and run.ready()[site.address[site.kbs]] is True, run.ready()
    assert site.tee_active(other), "the other host finished its own firmware reboots"
    assert bmc_boots(site, other) - before[other] >= 2

    site.unhang(hung)  # the operator power-cycles it through the BMC
    fixed = site.run()
    site.assert_converged(fixed)
    assert fixed.changed_on(other_address) == set(), "the other host is not touched again"


def test_a_containerd_config_containerd_rejects_is_not_put_in_place(site):
    node = site.snp
    address = site.address[node]
    overlay = site.tmp / "overlay-reject" / "runtime"
    overlay.mkdir(parents=True)
    (overlay / "containerd-kata.toml.j2").write_text(
        'version = {{ config_version }}\n[plugins."{{ runtime_plugin }}".containerd.runtimes.kata-qemu-snp]\nruntime_type = 5\n'
    )
    config = site.ssh(node, "cat /etc/containerd/config.toml; ls -l --time-style=+%s /etc/containerd").stdout
    pid = site.ssh(node, "systemctl show -p MainPID --value containerd").stdout.strip()
    inventory = site.derived_inventory("reject", {node: {"template_overlay_dirs": [str(overlay.parent)]}})
    run = site.run(inventory=inventory)
    print(f"\ncontainerd rejects the config: {run.took:.1f} s")
    assert run.rc != 0 and run.failed == {address}, run.why()
    assert "containerd rejected the new configuration" in run.host_lines(address), run.host_lines(address)
    assert site.ssh(node, "cat /etc/containerd/config.toml; ls -l --time-style=+%s /etc/containerd").stdout == config
    assert site.ssh(node, "systemctl show -p MainPID --value containerd").stdout.strip() == pid
    for other in (site.tdx, site.kbs):
        assert run.ready()[site.address[other]] is True, run.ready()

    fixed = site.run()
    site.assert_converged(fixed)
    assert site.ssh(node, "systemctl show -p MainPID --value containerd").stdout.strip() == pid, "never restarted"


def test_an_artifact_with_the_wrong_checksum_installs_nothing(site):
    from dataclasses import replace

    from ccfactory.lab import artifacts
    from ccfactory.lab.artifacts import bom_overlay
    from ccfactory.lab.standins import kata_static

    workers = (site.snp, site.tdx)
    markers = {n: site.ssh(n, f"cat {INSTALL_MARKER}").stdout for n in workers}
    # a newer kata-static served by the lab's artifact server, pinned with the wrong sha256
    version = "4.1.0-ccfactory-lab.99"
    base = kata_static.standin()
    files = dict(base.files())
    files["kata/bin/kata-runtime"] = files["kata/bin/kata-runtime"].replace(kata_static.VERSION.encode(), version.encode())
    variant = replace(base, version=version, filename=f"kata-static-{version}-amd64.tar.xz", files=lambda: files)
    data = artifacts.tarball_bytes(variant)
    (artifacts.artifacts_dir(site.lab.dir) / variant.filename).write_bytes(data)
    assert hashlib.sha256(data).hexdigest() != "0" * 64
    path = site.lab.dir / LAB_BOM
    original = path.read_bytes()
    doc = tomllib.loads(original.decode())
    for entry in doc["artifact"]:
        if entry["name"] == "kata-static":
            entry.update(version=version, filename=variant.filename, sha256="0" * 64,
                         url=f"{artifacts.status(site.lab.dir)['url']}/{variant.filename}")
    path.write_text(bom_overlay(doc["artifact"]))
    try:
        run = site.run()
    finally:
        path.write_bytes(original)
    print(f"\nwrong checksum: {run.took:.1f} s")
    assert run.rc != 0 and run.failed == {site.address[n] for n in workers}, run.why()
    for n in workers:
        lines = run.host_lines(site.address[n])
        assert "does not match the BOM's" in lines and "nothing was changed" in lines, lines
        assert site.ssh(n, f"cat {INSTALL_MARKER}").stdout == markers[n], f"{n}: Kata was replaced"
        assert site.ssh(n, f"ls {PUSHED}/{variant.filename} 2>/dev/null; true").stdout.strip() == ""
    assert run.ready()[site.address[site.kbs]] is True, run.ready()

    fixed = site.run()
    site.assert_converged(fixed)
    for n in workers:
        assert site.ssh(n, f"cat {INSTALL_MARKER}").stdout == markers[n]


def test_after_every_fault_a_rerun_changes_nothing(site):
    run = site.run()
    assert run.rc == 0 and run.changed() == {}, run.changed()
    for node in site.lab.nodes:
        assert get_faults(site.lab.dir, node) == Faults(), f"{node}: a fault switch is still on"


def test_the_benchmark_smoke_run_prints_its_tables(site, tmp_path):
    """tests/bench/run.py stays runnable: its no-op/bare comparison on this (converged) site and a
    small BMC-only fleet (the full benchmark is not a test: see docs/performance.md)."""
    import subprocess
    import sys

    from support import REPO

    bench = subprocess.run(
        [sys.executable, str(REPO / "tests" / "bench" / "run.py"), "--no-lock", "--reuse-lab", str(site.lab.inventory),
         "--fleet", "10", "--reset-seconds", "1", "--batch", "5", "--work-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=900, cwd=REPO,
    )
    assert bench.returncode == 0, bench.stdout[-3000:] + bench.stderr[-3000:]
    out = bench.stdout
    for column in ("no-op wall s", "bare wall s", "wall ratio", "cmds/host bare", "cmds ratio",
                   "BMCs", "floor s", "BIOS passes s", "ratio", "Redfish req/host", "no-op req/host"):
        assert f" {column} " in out, f"column {column!r} missing from:\n{out[-3000:]}"
    fleet_row = next(line for line in out.splitlines() if line.startswith("| 10 "))
    assert fleet_row.split("|")[-2].strip() == "0", f"a BMC-only host failed: {fleet_row}"

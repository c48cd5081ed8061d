"""Lab fixtures: a real 3-node lab (root, systemd-nspawn, mmdebstrap, apt-cacher-ng).

Run with ``pytest -m lab tests/lab``. The lab dir is ``$CCFACTORY_LAB_DIR`` (default
/var/lib/ccfactory/lab); the base image and apt cache there are reused between runs.
Nodes read their BIOS state from ``nodes/<n>/platform.json`` (``--platform-source
local``) unless ``CCFACTORY_LAB_PLATFORM`` says otherwise, so core tests can set it.
The session ends with ``down`` (the lab is never left running).
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from ccfactory.lab import hostdeps
from ccfactory.lab.layout import lab_path

LAB_NODES = 3


def _skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "the lab needs root"
    missing = hostdeps.check_host()
    if missing:
        return "; ".join(missing)
    return None


class Lab:
    """Handle on the running lab for tests."""

    def __init__(self, lab_dir: Path, status: dict, up_seconds: float, inventory: Path):
        self.dir = lab_dir
        self.status = status
        self.up_seconds = up_seconds
        self.inventory = inventory
        # nodes of the current lab only (disks of nodes from a bigger earlier lab stay until reset)
        self.nodes = {n["name"]: n for n in status["nodes"] if n["in_lab"]}

    def ssh(self, node: str, command: str, *, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
        r = subprocess.run(
            ["ssh", "-F", str(self.dir / "ssh_config"), f"root@{self.nodes[node]['address']}", command],
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
        if check and r.returncode != 0:
            raise AssertionError(f"ssh {node} {command!r}: exit {r.returncode}: {r.stderr.strip()}")
        return r

    def wait_ssh(self, node: str, timeout: float = 90) -> float:
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if self.ssh(node, "true", check=False, timeout=15).returncode == 0:
                return time.monotonic() - t0
            time.sleep(0.3)
        raise AssertionError(f"{node}: SSH not back within {timeout} s")

    def node_of_profile(self, profile: str) -> str:
        return next(n for n, d in self.nodes.items() if d["profile"] == profile)


# One lab per machine: concurrent test sessions (several developers, or CI beside a
# developer) take turns instead of tearing down each other's lab.
SESSION_LOCK = Path("/run/lock/ccfactory-lab-tests.lock")


@pytest.fixture(scope="session")
def lab(tmp_path_factory) -> Lab:
    reason = _skip_reason()
    if reason:
        pytest.fail(f"lab tests cannot run here: {reason} (deselect them with -m 'not lab')")
    import fcntl

    from ccfactory.lab import manager

    SESSION_LOCK.parent.mkdir(parents=True, exist_ok=True)
    lock = SESSION_LOCK.open("w")
    t_wait = time.monotonic()
    fcntl.flock(lock, fcntl.LOCK_EX)
    if time.monotonic() - t_wait > 1:
        print(f"\nwaited {time.monotonic() - t_wait:.0f} s for another lab test session")

    lab_dir = lab_path(None)
    inventory = tmp_path_factory.mktemp("inv") / "lab.py"
    source = os.environ.get("CCFACTORY_LAB_PLATFORM", "local")
    t0 = time.monotonic()
    status = manager.up(LAB_NODES, lab_dir=lab_dir, inventory=inventory, platform_source=source)
    handle = Lab(lab_dir, status, time.monotonic() - t0, inventory)
    print(f"\nlab up ({LAB_NODES} nodes): {handle.up_seconds:.1f} s")
    try:
        yield handle
    finally:
        manager.down(lab_dir=lab_dir)
        lock.close()

"""The whole site on the lab, as an operator runs it: shared by the site-level lab tests
(tests/lab/test_site_faults_lab.py, tests/lab/test_secret_hygiene.py).

``SiteLab`` runs ``pyinfra -y --json [args] <inventory> deploy/site.py`` (the inventory may be a
derived one that changes some hosts' data), streams its progress lines to an optional callback
(to inject a fault at a given operation), and returns the exit code, pyinfra's JSON results,
the whole output and the readiness report (``$CCFACTORY_REPORT_DIR``) of that run.

The site runs with the nodes' BIOS state read from their BMCs (``--platform-source bmc``), so
the real firmware stage turns each TEE on; ``site_lab()`` switches the session's lab to that and
puts it back (platform source, factory BIOS) afterwards.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from ccfactory import deploys
from ccfactory.lab import manager
from ccfactory.lab.bmc.faults import clear_faults
from ccfactory.lab.bmc.state import reset as reset_bios
from ccfactory.verify.report import FleetReport, load_report
from support import REPO

PYINFRA = Path(sys.executable).with_name("pyinfra")
SITE_DEPLOY = REPO / "deploy" / "site.py"
# The verify stage writes the readiness report on the controller at every run: pyinfra counts
# that as a change, although no node is touched.
REPORT_OP = "Verify | Readiness checks"
TEE_PARAM = {"snp": "/sys/module/kvm_amd/parameters/sev_snp", "tdx": "/sys/module/kvm_intel/parameters/tdx"}


@dataclass
class SiteRun:
    rc: int
    result: dict | None
    out: str
    took: float
    report: FleetReport | None

    def changed(self) -> dict[str, list[str]]:
        """operation -> hosts it changed (the readiness report op excluded)."""
        if not self.result:
            return {}
        return {op["name"]: op["success"] for op in self.result["results"]["operations"]
                if op["success"] and op["name"] != REPORT_OP}

    def changed_on(self, address: str) -> set[str]:
        return {name for name, hosts in self.changed().items() if address in hosts}

    @property
    def failed(self) -> set[str]:
        return set(self.result["results"]["failed_hosts"]) if self.result else set()

    def ready(self) -> dict[str, bool]:
        """node address -> ready in this run's readiness report."""
        return {n.node: n.ready for n in self.report.nodes} if self.report else {}

    def host_lines(self, address: str) -> str:
        """The host's lines of output, with the indented lines that continue a message of it."""
        lines, mine = [], False
        for line in self.out.splitlines():
            if line.startswith("    [") or line.startswith("-->"):
                mine = f"[{address}]" in line
            if mine or f"[{address}]" in line:
                lines.append(line)
        return "\n".join(lines)

    def why(self, limit: int = 6000) -> str:
        return self.out[-limit:]


class SiteLab:
    """The session's lab, driven as a site."""

    def __init__(self, lab, tmp: Path):
        self.lab = lab
        self.tmp = tmp
        self.runs = 0
        self.snp = lab.node_of_profile("amd-snp-hgx")
        self.tdx = lab.node_of_profile("intel-tdx")
        self.kbs = lab.node_of_profile("plain")
        self.address = {n: d["address"] for n, d in lab.nodes.items()}
        self.tee = {n: d["tee"] for n, d in lab.nodes.items()}

    # ---- running the site

    def run(self, *args: str, inventory: Path | None = None, env: dict | None = None,
            on_line: Callable[[str], None] | None = None, on_start: Callable[[subprocess.Popen], None] | None = None,
            timeout: float = 1200) -> SiteRun:
        self.runs += 1
        report_dir = self.tmp / f"report-{self.runs}"
        cmd = [str(PYINFRA), "-y", "--json", *args, str(inventory or self.lab.inventory), str(SITE_DEPLOY)]
        full_env = {**os.environ, "PYINFRA_PROGRESS": "off", "CCFACTORY_REPORT_DIR": str(report_dir), **(env or {})}
        t0 = time.monotonic()
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=full_env)
        if on_start is not None:
            on_start(proc)
        stdout: list[str] = []
        reader = threading.Thread(target=lambda: stdout.append(proc.stdout.read()), daemon=True)
        reader.start()
        err_lines: list[str] = []
        deadline = t0 + timeout
        for line in proc.stderr:
            err_lines.append(line)
            if on_line is not None:
                on_line(line)
            if time.monotonic() > deadline:
                proc.kill()
                break
        proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        reader.join(timeout=30)
        took = time.monotonic() - t0
        out = "".join(stdout)
        try:
            result = json.loads(out)
        except ValueError:
            result = None
        report_file = report_dir / "readiness.json"
        report = load_report(report_file.read_text()) if report_file.is_file() else None
        return SiteRun(proc.returncode, result, out + "".join(err_lines), took, report)

    def derived_inventory(self, name: str, overrides: dict[str, dict]) -> Path:
        """The lab inventory with some hosts' data changed (``{node name: {key: value}}``)."""
        path = self.tmp / f"{name}.py"
        by_address = {self.address[n]: data for n, data in overrides.items()}
        path.write_text(
            f"exec(open({str(self.lab.inventory)!r}).read())\n"
            f"for _address, _data in {by_address!r}.items():\n    _hosts[_address].update(_data)\n"
        )
        return path

    # ---- node state

    def ssh(self, node: str, command: str, check: bool = True) -> subprocess.CompletedProcess:
        return self.lab.ssh(node, command, check=check)

    def tee_active(self, node: str) -> bool:
        param = TEE_PARAM[self.tee[node]]
        return self.ssh(node, f"cat {param} 2>/dev/null || echo missing").stdout.strip() == "Y"

    def boot_id(self, node: str) -> str:
        return self.ssh(node, "cat /proc/sys/kernel/random/boot_id").stdout.strip()

    def unhang(self, node: str) -> None:
        """End a hung reset the way an operator does: another reset through the BMC."""
        from ccfactory.clients.redfish import RedfishClient
        from ccfactory.lab.bmc import service

        user, password = service.credentials(self.lab.dir, node)
        info = self.lab.nodes[node]
        with RedfishClient(f"https://{info['bmc_address']}", user, password, vendor=info["bmc_vendor"],
                           verify=str(service.ca_bundle(self.lab.dir))) as client:
            client.reset()
        self.lab.wait_ssh(node, timeout=120)

    def assert_converged(self, run: SiteRun) -> None:
        """Exit 0, no failed host, every node ready in the readiness report, every TEE on."""
        assert run.rc == 0 and not run.failed, run.why()
        assert run.ready() == {a: True for a in self.address.values()}, run.ready()
        for node, tee in self.tee.items():
            if tee != "none":
                assert self.tee_active(node), f"{node}: {tee} not active after a converged run"


def require_firmware_stage() -> str:
    """Which path the site tests take to an active TEE (the brief: say which one ran)."""
    if "firmware" not in deploys.STAGES:
        raise AssertionError(
            "the site tests need the firmware stage in ccfactory.deploys.STAGES: without it no site run "
            "can turn a TEE on from the BMC"
        )
    return "real firmware stage (ccfactory.roles.firmware, BMC platform source)"


@contextlib.contextmanager
def site_lab(lab, tmp: Path) -> Iterator[SiteLab]:
    """The session's lab with the nodes' BIOS state read from their BMCs; restored afterwards:
    fault switches off, factory BIOS, the previous platform source (the next tests expect it)."""
    previous = json.loads((lab.dir / "spec.json").read_text())
    print(f"\nsite tests: {require_firmware_stage()}")
    manager.up(lab_dir=lab.dir, inventory=lab.inventory, platform_source="bmc")
    for node in lab.nodes:
        lab.wait_ssh(node, timeout=120)
    site = SiteLab(lab, tmp)
    try:
        yield site
    finally:
        for node in lab.nodes:
            clear_faults(lab.dir, node)
            reset_bios(lab.dir, node)
        manager.up(lab_dir=lab.dir, inventory=lab.inventory, platform_source=previous.get("platform_source", "local"))
        for node in lab.nodes:
            lab.wait_ssh(node, timeout=120)


@contextlib.contextmanager
def resource_policy_replaced(inventory: Path, kbs_host: str, text: str, tmp: Path) -> Iterator[None]:
    """The KBS of ``kbs_host`` holds ``text`` as its resource policy inside the block, then the
    policy the kbs stage renders for this inventory again (Trustee cannot read a policy back:
    ``GET resource-policy`` lists ids only, so the stage's own rendering is restored)."""
    from ccfactory.config import load_node_config
    from ccfactory.inventory import load_inventory
    from ccfactory.kbs.client import KbsClient, Ledger
    from ccfactory.kbs.settings import kbs_settings
    from ccfactory.roles import kbs as kbs_role

    hosts = load_inventory(inventory)
    host = next(h for h in hosts if h.name == kbs_host)
    cfg = load_node_config(host.name, host.groups, host.data.dict())
    settings = kbs_settings(cfg, host.data.dict())
    _, tees, gpus = kbs_role._fleet(hosts)
    rendered = kbs_role.resource_policy(settings, tees, gpus)
    client = KbsClient(settings.url, ca_cert=settings.pki_dir / "ca.crt", admin_key=settings.pki_dir / "admin.key", lab=True)
    scratch = Ledger(tmp / "replaced-policy-ledger.json", "test")  # never the stage's own ledger
    client.set_resource_policy(text, scratch)
    try:
        yield
    finally:
        client.set_resource_policy(rendered, scratch)

"""The attestation end-to-end check on the lab, after the kbs and runtime stages.

Both workers (node1 SNP + 8 H100, node2 TDX) run ``attestation.end_to_end`` through pyinfra,
with the check context the verify stage builds (``CheckContext(..., fleet=fleet_of(
state.inventory))``). What must hold, independently of what the check says about itself:

* containerd really created the smoke container with the node's Kata TEE handler's runtime
  type (both lab workers have GPUs: ``io.containerd.kata-qemu-nvidia-gpu-snp.v2`` / ``-tdx``),
  with ``cc_init_data`` as its only Kata annotation, seen in containerd's own event
  stream (``ctr events`` on the node), and it started, exited and was deleted;
* the KBS (the lab Trustee stand-in on node3) registered the fresh resource
  (``ccfactory-verify/attestation-smoke-<tee>-gpu/...``, bound by the strict policy to the
  node's TEE and an affirming GPU), denied it to the sample evidence of the lab CDH stand-in
  (PolicyDeny), and deleted it (its journal and its storage directory);
* the outcome is ``pass`` with exactly ``LAB_SIMULATED``, which names every step and whether
  the lab ran it or simulated it; with a lab-permissive policy the
  same check fails (the KBS released the resource to sample evidence);
* nothing is left on the workers: no smoke container, no stand-in process, no work dir.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ccfactory.kbs.policy import PolicySpec, render_resource_policy
from ccfactory.lab import artifacts
from ccfactory.verify.attestation import CHECK_ID, CONTAINER_PREFIX, LAB_SIMULATED, NAMESPACE, SMOKE_REPO

pytestmark = pytest.mark.lab

REPO = Path(__file__).resolve().parents[2]
PYINFRA = str(Path(sys.executable).with_name("pyinfra"))
KBS_NODE = "node3"
WORKERS = {"node1": "snp", "node2": "tdx"}

INVENTORY = """\
# the lab inventory, with controller-side runtime output kept in the test's directory
import runpy as _runpy

_ns = _runpy.run_path({inventory!r})
for _data in _ns["_hosts"].values():
    _data["runtime_output_dir"] = {out!r}
workers, kbs, snp, tdx, gpu = (_ns[g] for g in ("workers", "kbs", "snp", "tdx", "gpu"))
"""

# What the verify stage does once the lead registers the module and passes the fleet
# (ccfactory.verify.collect.record_node), for this one check.
DEPLOY = """\
import os

from pyinfra import host
from pyinfra.api import FunctionCommand, operation

from ccfactory.config import node_config
from ccfactory.deploys import run_stages
from ccfactory.verify import attestation  # noqa: F401 - registers the check
from ccfactory.verify.checks import REGISTRY, CheckContext, run_check
from ccfactory.verify.collect import fleet_of
from ccfactory.verify.collect import pyinfra_runner

run_stages(["preflight"])


@operation(is_idempotent=False)
def attestation_checked(cfg):
    def run(state, host):
        ctx = CheckContext(cfg=cfg, run=pyinfra_runner(host, sudo=bool(host.data.get("_sudo"))),
                           data=host.data.dict(), fleet=fleet_of(state.inventory))
        result = run_check(REGISTRY[attestation.CHECK_ID], ctx)
        with open(os.path.join(os.environ["CCF_ATTEST_OUT"], host.name + ".json"), "w") as handle:
            handle.write(result.model_dump_json())
        return True

    yield FunctionCommand(run, (), {})


attestation_checked(name="attestation end to end", cfg=node_config(host))
"""

# The verify stage itself (deploy/verify.py), with the two lines the lead adds emulated here
# until they land: the import that registers the check in ccfactory.roles.verify, and
# ``fleet=fleet_of(state.inventory)`` in ccfactory.verify.collect.record_node.
VERIFY = """\
from pyinfra import state

import ccfactory.verify.collect as collect
from ccfactory.verify import attestation  # noqa: F401 - roles/verify: registers the check
from ccfactory.verify.checks import CheckContext
from ccfactory.verify.collect import fleet_of

if "fleet=" not in open(collect.__file__).read():
    def _with_fleet(**kw):
        kw.setdefault("fleet", fleet_of(state.inventory))
        return CheckContext(**kw)

    collect.CheckContext = _with_fleet

from ccfactory.deploys import run_stages  # noqa: E402

run_stages(["verify"])
"""

EVENT = re.compile(r"^\S+ \S+ \S+ \S+ (?P<ns>\S+) (?P<topic>/\S+) (?P<body>\{.*\})\s*$")


def pyinfra(inventory: Path, deploy: Path, env: dict | None = None, limit: str | None = None) -> subprocess.CompletedProcess:
    argv = [PYINFRA, "-y", *(["--limit", limit] if limit else []), str(inventory), str(deploy)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=1200, cwd=REPO,
                          env={**os.environ, "PYINFRA_PROGRESS": "off", **(env or {})})  # fmt: skip


@pytest.fixture(scope="module")
def site(lab, tmp_path_factory):
    """The lab with the kbs and runtime stages applied (deploy/kbs.py, then deploy/runtime.py)."""
    started = artifacts.status(lab.dir) is None
    artifacts.start(lab.dir)
    try:
        work = tmp_path_factory.mktemp("attestation")
        inventory = work / "lab_attest.py"
        inventory.write_text(INVENTORY.format(inventory=str(lab.inventory), out=str(work / "runtime-out")))
        for stage in ("kbs", "runtime"):
            t0 = time.monotonic()
            r = pyinfra(inventory, REPO / "deploy" / f"{stage}.py")
            print(f"\n{stage} stage: {time.monotonic() - t0:.1f} s, rc {r.returncode}")
            assert r.returncode == 0, (r.stdout + r.stderr)[-5000:]
        deploy = work / "attestation.py"
        deploy.write_text(DEPLOY)
        yield lab, inventory, deploy, work
    finally:
        if started:
            artifacts.stop(lab.dir)


class Events:
    """``ctr events`` on a node while something runs (containerd's own account)."""

    def __init__(self, lab, node: str):
        self.proc = subprocess.Popen(
            ["ssh", "-F", str(lab.dir / "ssh_config"), f"root@{lab.nodes[node]['address']}", "timeout 600 ctr events"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, text=True,
        )  # fmt: skip
        time.sleep(1.0)  # subscribed before the check starts

    def stop(self) -> list[tuple[str, str, dict]]:
        time.sleep(1.0)
        self.proc.terminate()
        out, _ = self.proc.communicate(timeout=30)
        events = []
        for line in out.splitlines():
            m = EVENT.match(line)
            if m:
                events.append((m["ns"], m["topic"], json.loads(m["body"])))
        return events


def run_check_on_workers(site) -> tuple[dict, dict]:
    lab, inventory, deploy, work = site
    out = work / f"results-{time.monotonic_ns()}"
    out.mkdir()
    watchers = {node: Events(lab, node) for node in WORKERS}
    t0 = time.monotonic()
    r = pyinfra(inventory, deploy, {"CCF_ATTEST_OUT": str(out)}, limit="workers")
    print(f"\nattestation check on the workers: {time.monotonic() - t0:.1f} s")
    events = {node: w.stop() for node, w in watchers.items()}
    assert r.returncode == 0, (r.stdout + r.stderr)[-5000:]
    results = {}
    for node in WORKERS:
        path = out / f"{lab.nodes[node]['address']}.json"
        assert path.is_file(), (r.stdout + r.stderr)[-3000:]
        results[node] = json.loads(path.read_text())
    return results, events


def smoke_events(events: list, topic: str) -> list[dict]:
    return [body for ns, t, body in events if ns == NAMESPACE and t == topic
            and str(body.get("id") or body.get("container_id") or "").startswith(CONTAINER_PREFIX)]  # fmt: skip


def kbs_journal(lab, since: str) -> str:
    return lab.ssh(KBS_NODE, f"journalctl -u trustee-kbs --since '{since}' --no-pager -o cat").stdout


def node_time(lab, node: str) -> str:
    return lab.ssh(node, "date '+%Y-%m-%d %H:%M:%S'").stdout.strip()


def assert_workers_clean(lab) -> None:
    for node in WORKERS:
        left = lab.ssh(node, f"ctr -n {NAMESPACE} containers ls -q; ls -d /run/ccfactory-attest.* 2>/dev/null; "
                             "pgrep -af '[c]dh.py' || true").stdout.split()  # fmt: skip
        assert left == [], f"{node}: left behind: {left}"


def test_attestation_check_passes_in_the_lab_with_what_was_simulated(site):
    lab = site[0]
    since = node_time(lab, KBS_NODE)
    results, events = run_check_on_workers(site)
    journal = kbs_journal(lab, since)
    print(json.dumps(results, indent=1))
    for node, tee in WORKERS.items():
        result = results[node]
        assert result["check"] == CHECK_ID and result["stage"] == "attestation"
        assert result["status"] == "pass", result
        assert result["simulated"] == LAB_SIMULATED
        detail = result["detail"]
        path = re.search(rf"resource ({SMOKE_REPO}/\S+),", detail)[1]
        assert f"through kata-qemu-nvidia-gpu-{tee} (io.containerd.kata-qemu-nvidia-gpu-{tee}.v2)" in detail
        assert "denied it (PolicyDeny) to a token of TEE type sample" in detail and f"only to {tee} evidence" in detail
        assert path.startswith(f"{SMOKE_REPO}/attestation-smoke-{tee}-gpu/")
        assert "resource deleted" in detail and "smoke container removed" in detail
        # containerd's own account: created with the Kata TEE handler's runtime, ran, exited, deleted
        created = smoke_events(events[node], "/containers/create")
        assert len(created) == 1, events[node]
        assert created[0]["runtime"]["name"] == f"io.containerd.kata-qemu-nvidia-gpu-{tee}.v2"
        cid = created[0]["id"]
        assert [e for e in smoke_events(events[node], "/tasks/start") if e["container_id"] == cid]
        exits = [e for e in smoke_events(events[node], "/tasks/exit") if e["container_id"] == cid]
        assert exits and exits[0]["exit_status"] == 64 + 2  # denied (to a token of type sample)
        assert [e for e in smoke_events(events[node], "/containers/delete") if e["id"] == cid]
        # the KBS's own account: registered, denied to the sample evidence, deleted
        assert f"resource {path} written (32 bytes)" in journal
        assert re.search(rf"GET /kbs/v0/resource/{re.escape(path)}: PolicyDeny: Access denied by policy", journal), \
            journal[-3000:]
        assert f"resource {path} deleted" in journal
    stored = lab.ssh(KBS_NODE, "ls /var/lib/trustee/storage/repository/").stdout
    assert SMOKE_REPO not in stored
    assert_workers_clean(lab)


def test_the_image_is_cached_and_small(site):
    lab = site[0]
    for node in WORKERS:
        images = lab.ssh(node, f"ctr -n {NAMESPACE} images ls").stdout
        line = next(x for x in images.splitlines() if x.startswith("localhost/ccfactory/attestation-smoke:busybox-1"))
        size = re.search(r"(\d+(?:\.\d+)?) (KiB|MiB)", line)
        assert size and (size[2] == "KiB" or float(size[1]) < 3), line


def test_a_lab_permissive_policy_fails_the_check(site):
    """The KBS releasing the fresh resource to sample evidence is a failure, in the lab too."""
    lab = site[0]
    from site_lab import resource_policy_replaced

    permissive = render_resource_policy(PolicySpec("lab-permissive"), header="test, LAB ONLY")
    with resource_policy_replaced(lab.inventory, lab.nodes[KBS_NODE]["address"], permissive, lab.dir):
        results, _ = run_check_on_workers(site)
    for result in results.values():
        assert result["status"] == "fail", result
        assert "released the fresh resource to sample (non-TEE) evidence" in result["detail"]
        assert "remove kbs_lab_permissive" in result["hint"]
        assert result["simulated"] == LAB_SIMULATED and "resource deleted" in result["detail"]
    assert_workers_clean(lab)


def test_the_verify_stage_reports_it(site):
    """pyinfra <inventory> deploy/verify.py: every check, this one included, in the readiness report."""
    lab, inventory, _, work = site
    deploy = work / "verify.py"
    deploy.write_text(VERIFY)
    reports = work / "reports"
    t0 = time.monotonic()
    r = pyinfra(inventory, deploy, {"CCFACTORY_REPORT_DIR": str(reports)})
    print(f"\nverify stage: {time.monotonic() - t0:.1f} s")
    assert (reports / "readiness.json").is_file(), (r.stdout + r.stderr)[-4000:]
    rows = {n["node"]: {c["check"]: c for c in n["checks"]} for n in json.loads((reports / "readiness.json").read_text())["nodes"]}
    for node in WORKERS:
        row = rows[lab.nodes[node]["address"]][CHECK_ID]
        assert (row["stage"], row["status"], row["simulated"]) == ("attestation", "pass", LAB_SIMULATED), row
    assert rows[lab.nodes[KBS_NODE]["address"]][CHECK_ID]["status"] == "n/a"
    page = (reports / "readiness.md").read_text()
    header = next(line for line in page.splitlines() if line.startswith("| node | ready |"))
    assert header.endswith("| attestation |"), header
    assert f"- `{CHECK_ID}`: {LAB_SIMULATED}" in page
    assert_workers_clean(lab)


# The shipped suite's fixture (ccfactory/verify/test_fleet.py) with the lead's one-line change
# (``fleet=fleet_of(pyinfra_host.inventory)``), for this one check: testinfra over paramiko.
SUITE = """\
import pytest

from ccfactory.verify import attestation
from ccfactory.verify.checks import REGISTRY, CheckContext, CommandOutput, run_check
from ccfactory.verify.collect import fleet_of


@pytest.fixture(scope="module")
def check_context(host, node_config, pyinfra_host):
    def run(command):
        result = host.run(command)
        return CommandOutput(result.rc, result.stdout, result.stderr)

    return CheckContext(cfg=node_config, run=run, data=pyinfra_host.data.dict(), fleet=fleet_of(pyinfra_host.inventory))


def test_readiness(check_context):
    result = run_check(REGISTRY[attestation.CHECK_ID], check_context)
    print(result.status, result.detail)
    assert result.status in ("pass", "n/a"), f"{result.status}: {result.detail}"
"""


def test_the_shipped_suite_runs_it_over_testinfra(site):
    lab, inventory, _, work = site
    suite = work / "suite"
    suite.mkdir()
    (suite / "test_attestation_suite.py").write_text(SUITE)
    (suite / "pytest.ini").write_text("[pytest]\n")
    r = subprocess.run([str(Path(sys.executable).with_name("pytest")), "-p", "no:cacheprovider", "-q", "-s", "--rootdir", str(suite),
                        "-c", str(suite / "pytest.ini"), str(suite), "--pyinfra-inventory", str(inventory)],
                       cwd=suite, capture_output=True, text=True, timeout=900)  # fmt: skip
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    assert "3 passed" in r.stdout and r.stdout.count("pass lab: the smoke container ran through kata-qemu-nvidia-gpu-") == 2
    assert_workers_clean(lab)

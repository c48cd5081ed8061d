"""``ccfactory firmware plan`` (read only) over a fleet of lab BMCs: 20 to 1,000 of them.

The BMCs are the lab's emulator (``ccfactory.lab.bmc.service``) in BMC-only mode, mixed
vendors and TEEs (dell, hpe, lenovo, supermicro, generic x snp, tdx, in turn), each on its
own management address with its own TLS certificate (lab CA), random credentials and
state; one emulator process serves ``per_process`` of them (one HTTPS listener per BMC).
The lab's IPv4 BMC network has room for 200 BMCs, so the fleet lives in the lab's IPv6 BMC
network (``fdcc:f199:0:1::/64`` on bridge ``ccfbmc0``), from ``...::1:0`` up, clear of the
lab's own BMCs; every address is added for the run and removed after it.

The controller side is the operator's command, unchanged: a generated inventory (one
0600 password file per host, the lab CA as ``bmc_ca_bundle``) and ``ccfactory firmware
plan INVENTORY --json`` as a child process. Figures per run: wall time of that command
(start-up and inventory validation included), its peak RSS and CPU time (``wait4``), the
emulators' CPU time over the run (``/proc/<pid>/stat``), Redfish requests per host (the
command's own count), and from the emulators' request logs: requests, logins, logouts
and TCP/TLS connections per BMC. Nothing is asserted.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

MIXED = [(v, t) for v in ("dell", "hpe", "lenovo", "supermicro", "generic") for t in ("snp", "tdx")]
FIRST = 0x10000  # fdcc:f199:0:1::1:0 + i: clear of the lab's own BMCs (::b ..)
LOG_LINE = re.compile(
    r"ccfactory\.lab\.bmc: (?P<node>\S+) (?P<method>[A-Z]+) (?P<path>\S+) -> (?P<status>\S+) \([0-9.]+ ms"
    r"(?:, connection (?P<conn>\d+))?\)"
)
TICK = os.sysconf("SC_CLK_TCK")


@dataclass
class PlanRun:
    wall_s: float
    rc: int
    cli_cpu_s: float
    cli_peak_rss_mb: float
    emulator_cpu_s: float
    planned: int
    failed: list[str]
    requests: list[int]  # per host, the command's own count
    bmc_requests: Counter  # node -> requests seen by the emulator
    logins: Counter
    logouts: Counter
    connections: Counter
    progress_lines: int
    errors: list[str] = field(default_factory=list)


@dataclass
class FleetPlanResult:
    count: int
    per_process: int
    processes: int
    combos: Counter
    start_s: float
    emulator_rss_mb: float  # all emulator processes, after the runs
    runs: list[PlanRun]
    notes: list[str] = field(default_factory=list)

    @property
    def median_wall(self) -> float:
        return statistics.median(r.wall_s for r in self.runs) if self.runs else float("nan")


def _address(i: int) -> str:
    from ccfactory.lab import network

    return str(network.BMC_NET6.network_address + FIRST + i)


def _ip_batch(lines: list[str]) -> None:
    if lines:
        subprocess.run(["ip", "-6", "-batch", "-"], input="\n".join(lines) + "\n", text=True, check=True,
                       capture_output=True)


def _cpu_s(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICK
    except (OSError, IndexError, ValueError):
        return 0.0


def _rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def write_inventory(work: Path, lab_dir: Path, specs) -> Path:
    """The operator's inventory for the fleet: one 0600 password file per host, the lab CA."""
    from ccfactory.lab.bmc import service

    ca = service.ca_bundle(lab_dir)
    secrets_dir = work / "secrets"
    secrets_dir.mkdir(mode=0o700, exist_ok=True)
    rows, groups = [], {"snp": [], "tdx": []}
    for spec in specs:
        user, password = service.credentials(lab_dir, spec.node)
        pw = secrets_dir / f"{spec.node}.password"
        _write_private(pw, password + "\n")
        data = {"bmc_vendor": spec.vendor, "bmc_address": spec.address, "bmc_port": spec.port,
                "bmc_username": user, "bmc_password_file": str(pw), "bmc_ca_bundle": str(ca)}
        rows.append(f"    ({spec.node!r}, {data!r}),")
        groups[spec.tee].append(spec.node)
    path = work / "fleet_inventory.py"
    path.write_text("workers = [\n" + "\n".join(rows) + "\n]\n"
                    + "".join(f"{tee} = {names!r}\n" for tee, names in groups.items()))
    return path


def _emulator_pids(lab_dir: Path) -> list[int]:
    from ccfactory.lab.bmc import service

    return sorted({s.pid for s in service.status(lab_dir) if s.pid})


def _log_offsets(lab_dir: Path) -> dict[Path, int]:
    from ccfactory.lab.bmc.spec import run_dir

    return {p: p.stat().st_size for p in run_dir(lab_dir).glob("*.log")}


def _read_logs(lab_dir: Path, offsets: dict[Path, int]) -> tuple[Counter, Counter, Counter, Counter]:
    from ccfactory.lab.bmc.spec import run_dir

    requests, logins, logouts = Counter(), Counter(), Counter()
    conns: dict[str, set[str]] = {}
    for path in run_dir(lab_dir).glob("*.log"):
        with path.open("rb") as f:
            f.seek(offsets.get(path, 0))
            text = f.read().decode(errors="replace")
        for m in LOG_LINE.finditer(text):
            node, method, p = m["node"], m["method"], m["path"].rstrip("/")
            requests[node] += 1
            if method == "POST" and p.endswith("/SessionService/Sessions"):
                logins[node] += 1
            if method == "DELETE" and "/SessionService/Sessions/" in p:
                logouts[node] += 1
            conns.setdefault(node, set()).add(m["conn"] or f"r{requests[node]}")  # no number: one per request
    return requests, logins, logouts, Counter({n: len(c) for n, c in conns.items()})


def plan_once(inventory: Path, lab_dir: Path, work: Path, label: str, pids: list[int],
              extra_args: list[str] | None = None) -> PlanRun:
    """One ``ccfactory firmware plan INVENTORY --json`` as a child process, measured."""
    cli = Path(sys.executable).with_name("ccfactory")
    offsets = _log_offsets(lab_dir)
    cpu0 = {p: _cpu_s(p) for p in pids}
    out_path, err_path = work / f"{label}.json", work / f"{label}.stderr"
    with out_path.open("wb") as out, err_path.open("wb") as err:
        t0 = time.monotonic()
        proc = subprocess.Popen([str(cli), "firmware", "plan", str(inventory), "--json", *(extra_args or [])],
                                stdout=out, stderr=err, stdin=subprocess.DEVNULL, cwd=work)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.monotonic() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
    emulator_cpu = sum(_cpu_s(p) - cpu0.get(p, 0.0) for p in pids)
    time.sleep(0.5)  # the emulators' last log lines (logouts)
    bmc_requests, logins, logouts, connections = _read_logs(lab_dir, offsets)
    errors: list[str] = []
    try:
        data = json.loads(out_path.read_text())
    except ValueError:
        data = {}
        errors.append(f"no JSON from the command (exit {proc.returncode}): {err_path.read_text()[-500:]}")
    failed = sorted(h for h, v in data.items() if "error" in v)
    requests = [int(v.get("requests", -1)) for v in data.values() if "skipped" not in v]
    errors += [f"{h}: {data[h]['error'][:200]}" for h in failed[:3]]
    progress = sum(1 for line in err_path.read_text(errors="replace").splitlines() if line.startswith("planned "))
    return PlanRun(
        wall_s=wall, rc=proc.returncode, cli_cpu_s=usage.ru_utime + usage.ru_stime,
        cli_peak_rss_mb=usage.ru_maxrss / 1024, emulator_cpu_s=emulator_cpu,
        planned=sum(1 for v in data.values() if "stage" in v or "compliant" in v), failed=failed,
        requests=requests, bmc_requests=bmc_requests, logins=logins, logouts=logouts, connections=connections,
        progress_lines=progress, errors=errors,
    )


@dataclass
class Fleet:
    count: int
    per_process: int
    work: Path
    lab_dir: Path
    specs: list
    inventory: Path
    pids: list[int]
    start_s: float


@contextlib.contextmanager
def fleet(count: int, *, per_process: int | None = None, combos=None, progress=print,
          keep: bool = False) -> Iterator[Fleet]:
    """``count`` BMC-only lab BMCs of mixed vendors, up for the block, and their inventory;
    every process, address and file made for them is gone afterwards (unless ``keep``)."""
    from ccfactory.lab import network
    from ccfactory.lab.bmc import service
    from ccfactory.lab.bmc.spec import BmcSpec

    combos = combos or MIXED
    per_process = per_process or max(8, -(-count // 16))  # at most 16 processes
    work = Path(tempfile.mkdtemp(prefix="ccf-bench-fleetplan-", dir="/var/tmp"))
    lab_dir = work / "lab"
    specs = []
    for i in range(count):
        vendor, tee = combos[i % len(combos)]
        specs.append(BmcSpec(node=f"fp{i:04d}", index=i, vendor=vendor, tee=tee, address=_address(i),
                             power="simulated", reset_seconds=5.0))
    bridges_made = network.ensure_bridges()
    present = network.bmc_addresses_present()
    added = [s.address for s in specs if s.address not in present]
    try:
        _ip_batch([f"addr add {a}/128 dev {network.BMC_BRIDGE} nodad" for a in added])
        t0 = time.monotonic()
        statuses = service.start(lab_dir, specs, per_process=per_process, power="simulated", reset_seconds=5.0,
                                 timeout=600)
        start_s = time.monotonic() - t0
        pids = sorted({s.pid for s in statuses if s.pid})
        rss = sum(_rss_mb(p) for p in pids)
        progress(f"  plan fleet of {count}: {len(pids)} emulator process(es) ({per_process} BMCs each) up in "
                 f"{start_s:.1f} s, {rss:.0f} MB RSS in all ({rss / count:.1f} MB per BMC)")
        yield Fleet(count, per_process, work, lab_dir, specs, write_inventory(work, lab_dir, specs), pids, start_s)
    finally:
        service.stop(lab_dir)
        _ip_batch([f"addr del {a}/128 dev {network.BMC_BRIDGE}" for a in added
                   if a in network.bmc_addresses_present()])
        if bridges_made and not (Path(os.environ.get("CCFACTORY_LAB_DIR", "/var/lib/ccfactory/lab")) / "lab.json").exists():
            network.teardown()
        if keep:
            progress(f"  plan fleet of {count}: outputs kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def run_fleet_plan(count: int, *, runs: int = 3, per_process: int | None = None, combos=None,
                   progress=print, keep: bool = False) -> FleetPlanResult:
    """Start ``count`` BMC-only lab BMCs of mixed vendors, run ``firmware plan`` ``runs`` times."""
    with fleet(count, per_process=per_process, combos=combos, progress=progress, keep=keep) as f:
        result = FleetPlanResult(count, f.per_process, len(f.pids), Counter(f"{s.vendor}/{s.tee}" for s in f.specs),
                                 f.start_s, 0.0, [])
        for k in range(runs):
            r = plan_once(f.inventory, f.lab_dir, f.work, f"plan{count}-{k + 1}", f.pids)
            result.runs.append(r)
            progress(f"  plan fleet of {count}, run {k + 1}/{runs}: {r.wall_s:.1f} s (exit {r.rc}), "
                     f"{count / r.wall_s:.1f} plans/s, {len(r.failed)} failed, controller CPU {r.cli_cpu_s:.1f} s "
                     f"peak RSS {r.cli_peak_rss_mb:.0f} MB, emulators CPU {r.emulator_cpu_s:.1f} s")
            for e in r.errors:
                progress(f"    {e}")
        result.emulator_rss_mb = sum(_rss_mb(p) for p in f.pids)
        return result


def _span(values: list[int]) -> str:
    v = sorted(values)
    if not v:
        return "-"
    return f"{v[0]}" if v[0] == v[-1] else f"{v[0]}-{v[-1]} (median {statistics.median(v):g})"


def plan_table(results: list[FleetPlanResult]) -> str:
    """One row per fleet size: medians of its runs (wall time: median of the runs, all listed)."""
    from run import (
        table,  # run.py is the entry point; it put this directory on sys.path
    )

    headers = ["BMCs", "processes x BMCs", "wall s (median)", "runs s", "plans/s", "Redfish req/host",
               "req/BMC seen", "logins/host", "logouts/host", "TLS conns/host", "controller CPU s", "emulators CPU s",
               "controller peak RSS MB", "emulators RSS MB", "failed"]
    rows = []
    for f in results:
        if not f.runs:
            continue
        mid = sorted(f.runs, key=lambda r: r.wall_s)[len(f.runs) // 2]
        rows.append([
            str(f.count), f"{f.processes} x {f.per_process}", f"{f.median_wall:.1f}",
            ", ".join(f"{r.wall_s:.1f}" for r in f.runs), f"{f.count / f.median_wall:.1f}",
            _span([x for x in mid.requests if x >= 0]), _span(list(mid.bmc_requests.values())),
            _span(list(mid.logins.values())),
            _span(list(mid.logouts.values())), _span(list(mid.connections.values())),
            f"{mid.cli_cpu_s:.1f}", f"{mid.emulator_cpu_s:.1f}", f"{max(r.cli_peak_rss_mb for r in f.runs):.0f}",
            f"{f.emulator_rss_mb:.0f}", str(max(len(r.failed) for r in f.runs)),
        ])
    return table(headers, rows)

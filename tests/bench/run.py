"""ccfactory benchmarks on the lab (not tests: nothing is asserted; figures are printed).

    .venv/bin/python tests/bench/run.py              # full: N = 1, 3, 5 nodes; fleets of 50 and 100 BMCs
    .venv/bin/python tests/bench/run.py --quick      # smoke: N = 1; a fleet of 10 BMCs, 1 s resets
    .venv/bin/python tests/bench/run.py --write docs/performance.md   # also (re)write the figures page

1. **Cold full-site converge** of N lab nodes: ``ccfactory lab reset`` (fresh disks, factory BIOS
   and GPU state), then the operator's command ``pyinfra -y inventories/lab.py deploy/site.py``;
   wall time per phase (connect, prepare = facts and planning) and per stage (sum of the
   execution time of the stage's operations; pyinfra runs one operation at a time for all hosts,
   so these add up to the execution phase), total.
2. **No-op re-run** of the full site right after: wall time and remote commands per host (facts
   read + operation commands + file transfers, counted inside pyinfra), next to a **bare pyinfra
   run** that reads exactly the same facts (same classes, same arguments, recorded during the
   no-op run) with no ccfactory logic, as a ratio.
3. **Firmware stage at fleet scale**: 50-100 lab BMCs in BMC-only mode (a reset takes a set
   simulated time, no node boots), rolling batch of 10: wall time of the BIOS passes against the
   floor (per pass: ceil(hosts rebooting / batch) x reset time), Redfish requests per host
   (converge and no-op) - see ``fleet.py``.
4. **Firmware plan at fleet scale**: ``ccfactory firmware plan`` (read only) over 100, 500 and
   1,000 BMC-only lab BMCs of mixed vendors (quick: 20): wall time (median of 3 runs), plans/s,
   Redfish requests, logins and TLS connections per BMC, controller and emulator CPU, peak
   controller RSS, failures - see ``fleet_plan.py``. ``--fleet-plan N[,N]`` alone runs only this.

Needs root and the lab's host packages (as ``scripts/test.sh`` installs them). Takes the lab
test lock (``/run/lock/ccfactory-lab-tests.lock``): it waits for a running test session, and a
test session waits for it. The lab is left down, as test sessions leave it.
"""

from __future__ import annotations

# pyinfra_cli monkey-patches gevent on import; it must come before ssl (the fleet's HTTPS)
import pyinfra_cli  # noqa: F401,E402  isort: skip

import argparse
import datetime
import fcntl
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parents[1]
sys.path.insert(0, str(BENCH))
sys.path.insert(1, str(BENCH.parent))  # tests/support.py

from fleet import FleetResult, run_fleet  # noqa: E402
from fleet_plan import FleetPlanResult, plan_table, run_fleet_plan  # noqa: E402

PYINFRA = Path(sys.executable).with_name("pyinfra")
LOCK = Path("/run/lock/ccfactory-lab-tests.lock")
# stage prefixes of the operation names, in site order ("Boot": the one reboot the host and
# gpu stages share in a site run, ccfactory.deploys.schedule)
STAGES = ["Preflight", "Firmware", "Boot", "Host", "GPU", "KBS", "Runtime", "Verify"]
PROFILES = ["amd-snp-hgx", "intel-tdx", "plain"]  # the lab's default cycle: SNP+8 H100, TDX+2 B200, KBS

SITE_DEPLOY = f"""\
import sys
sys.path.insert(0, {str(BENCH)!r})
from instrument import install
install()
exec(compile(open({str(REPO / "deploy" / "site.py")!r}).read(), "deploy/site.py", "exec"))
"""
BARE_DEPLOY = f"""\
import json, os, sys
sys.path.insert(0, {str(BENCH)!r})
from instrument import install, replay_facts
install()
from pyinfra import host
replay_facts(host, json.load(open(os.environ["CCF_BENCH_FACTS"]))["facts"].get(host.name, []))
"""


@dataclass
class Run:
    """One ``pyinfra`` CLI run with the instrumentation."""

    rc: int
    wall: float
    phases: dict[str, float]
    stages: dict[str, float]
    changed_ops: int
    failed_hosts: list[str]
    commands: dict[str, int]
    fact_commands: dict[str, int]
    transfers: dict[str, int]
    record: dict
    tail: str = ""

    def per_host(self, what: str) -> float:
        values = list(getattr(self, what).values())
        return statistics.mean(values) if values else 0.0


@dataclass
class SiteResult:
    nodes: int
    hosts: list[str]
    up_s: float
    cold: Run
    noop: Run
    bare: Run
    notes: list[str] = field(default_factory=list)
    reboots: dict[str, int] = field(default_factory=dict)  # node -> boots during the cold run
    noop_reboots: dict[str, int] = field(default_factory=dict)  # node -> boots during the no-op run


def log(message: str) -> None:
    print(message, flush=True)


def pyinfra_run(inventory: Path, deploy: Path, work: Path, label: str, extra_env: dict | None = None) -> Run:
    record = work / f"{label}.record.json"
    env = {
        **os.environ,
        "PYINFRA_PROGRESS": "off",
        "CCF_BENCH_RECORD": str(record),
        "CCFACTORY_REPORT_DIR": str(work / f"{label}-report"),
        **(extra_env or {}),
    }
    t0 = time.time()
    proc = subprocess.run(
        [str(PYINFRA), "-y", "--json", str(inventory), str(deploy)],
        cwd=REPO, capture_output=True, text=True, env=env, timeout=3600,
    )
    t_end = time.time()
    (work / f"{label}.stdout").write_text(proc.stdout)
    (work / f"{label}.stderr").write_text(proc.stderr)
    try:
        data = json.loads(record.read_text())
    except (OSError, ValueError):
        data = {"t_loaded": None, "ops": [], "commands": {}, "fact_commands": {}, "transfers": {}, "facts": {}}
    try:
        result = json.loads(proc.stdout)["results"]
    except (ValueError, KeyError):
        result = {"operations": [], "failed_hosts": []}
    ops = sorted(data["ops"], key=lambda o: o["start"])
    phases: dict[str, float] = {}
    stages = {s: 0.0 for s in STAGES}
    if data["t_loaded"]:
        phases["connect"] = data["t_loaded"] - t0
        first = ops[0]["start"] if ops else t_end
        phases["prepare"] = first - data["t_loaded"]
        for op in ops:
            stage = op["names"][0].split(" | ", 1)[0] if op["names"] else "?"
            stages[stage] = stages.get(stage, 0.0) + (op["end"] - op["start"])
        phases["exit"] = t_end - (ops[-1]["end"] if ops else first)
    changed = sum(1 for op in result.get("operations", []) if op.get("success"))
    return Run(
        rc=proc.returncode, wall=t_end - t0, phases=phases, stages=stages, changed_ops=changed,
        failed_hosts=list(result.get("failed_hosts", [])), commands=data["commands"],
        fact_commands=data["fact_commands"], transfers=data["transfers"], record=data,
        tail=proc.stderr[-3000:],
    )


def noop_and_bare(inventory: Path, work: Path, label: str) -> tuple[Run, Run]:
    """The no-op re-run of the site, then the bare run reading the facts it read."""
    site = work / "bench_site.py"
    site.write_text(SITE_DEPLOY)
    bare = work / "bench_bare.py"
    bare.write_text(BARE_DEPLOY)
    noop = pyinfra_run(inventory, site, work, f"{label}-noop")
    log(f"  {label}: no-op re-run {noop.wall:.1f} s (exit {noop.rc}, {noop.changed_ops} operation(s) changed)")
    bare_run = pyinfra_run(inventory, bare, work, f"{label}-bare", {"CCF_BENCH_FACTS": str(work / f"{label}-noop.record.json")})
    log(f"  {label}: bare fact run {bare_run.wall:.1f} s")
    return noop, bare_run


def reuse_bench(inventory: Path, work: Path) -> SiteResult:
    """No-op and bare runs on a lab that is up already (left as it is)."""
    import runpy

    hosts = {h[0] for g in ("workers", "kbs") for h in runpy.run_path(str(inventory)).get(g, [])}
    noop, bare = noop_and_bare(inventory, work, "reuse")
    empty = Run(0, 0.0, {}, {}, 0, [], {}, {}, {}, {})
    notes = [] if noop.rc == 0 else [f"reused lab: no-op run exit {noop.rc} (output in {work})"]
    return SiteResult(len(hosts), sorted(hosts), 0.0, empty, noop, bare, notes)


def site_bench(nodes: int, work: Path) -> SiteResult:
    from ccfactory.lab import manager
    from ccfactory.lab.layout import lab_path

    lab = lab_path(None)
    inventory = work / f"lab{nodes}.py"
    profiles = [PROFILES[i % len(PROFILES)] for i in range(nodes)]
    t0 = time.monotonic()
    manager.up(nodes, profiles, None, lab_dir=lab, inventory=inventory, platform_source="bmc")
    manager.reset(lab_dir=lab, inventory=inventory)  # fresh disks, factory BIOS and GPU state
    up_s = time.monotonic() - t0
    log(f"  N={nodes}: lab up and reset to factory state in {up_s:.1f} s ({', '.join(profiles)})")
    site = work / "bench_site.py"
    site.write_text(SITE_DEPLOY)

    def boots() -> dict[str, int]:
        return {n["name"]: n["boots"] for n in manager.status(lab_dir=lab)["nodes"] if n["in_lab"]}

    boots0 = boots()
    cold = pyinfra_run(inventory, site, work, f"n{nodes}-cold")
    boots1 = boots()
    log(f"  N={nodes}: cold converge {cold.wall:.1f} s (exit {cold.rc}, {len(cold.failed_hosts)} host(s) failed)")
    noop, bare_run = noop_and_bare(inventory, work, f"n{nodes}")
    boots2 = boots()
    notes = []
    for label, run in (("cold", cold), ("no-op", noop)):
        if run.rc != 0:
            notes.append(f"N={nodes} {label} run exit {run.rc}; failed: {', '.join(run.failed_hosts) or '-'} "
                         f"(output in {work})")
    unreplayable = sum(noop.record.get("unreplayable", {}).values())
    if unreplayable:
        notes.append(f"N={nodes}: {unreplayable} fact read(s) with non-JSON arguments not replayed in the bare run")
    hosts = sorted(set(noop.commands) | set(cold.commands))
    return SiteResult(nodes, hosts, up_s, cold, noop, bare_run, notes,
                      reboots={n: boots1[n] - boots0.get(n, 0) for n in boots1},
                      noop_reboots={n: boots2[n] - boots1.get(n, 0) for n in boots2})


def reboot_summary(reboots: dict[str, int]) -> str:
    """``node1 3, node2 4, node3 0``."""
    return ", ".join(f"{n} {k}" for n, k in sorted(reboots.items())) or "-"


# ------------------------------------------------------------------ tables


def table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    out = ["| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths)) + " |"]
    out.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    out += ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |" for r in rows]
    return "\n".join(out)


def cold_table(results: list[SiteResult]) -> str:
    headers = ["N", "connect", "prepare", *[s.lower() for s in STAGES], "exit", "total", "result", "reboots per node"]
    rows = []
    for r in results:
        if not r.cold.wall:  # a reused lab: no cold run
            continue
        c = r.cold
        result = "converged" if c.rc == 0 else f"exit {c.rc}: {len(c.failed_hosts)} failed"
        rows.append([str(r.nodes), f"{c.phases.get('connect', 0):.1f}", f"{c.phases.get('prepare', 0):.1f}",
                     *[f"{c.stages.get(s, 0):.1f}" for s in STAGES], f"{c.phases.get('exit', 0):.1f}",
                     f"{c.wall:.1f}", result, reboot_summary(r.reboots)])
    return table(headers, rows)


def noop_table(results: list[SiteResult]) -> str:
    headers = ["N", "no-op wall s", "bare wall s", "wall ratio", "changes", "cmds/host ccf (facts+ops, files)",
               "cmds/host bare", "cmds ratio", "reboots"]
    rows = []
    for r in results:
        n, b = r.noop, r.bare
        ccf_cmds = n.per_host("commands")
        bare_cmds = b.per_host("commands")
        ops_cmds = ccf_cmds - n.per_host("fact_commands")
        rows.append([
            str(r.nodes), f"{n.wall:.1f}", f"{b.wall:.1f}", f"{n.wall / b.wall:.2f}" if b.wall else "-",
            str(n.changed_ops),
            f"{ccf_cmds:.0f} ({n.per_host('fact_commands'):.0f}+{ops_cmds:.0f}, {n.per_host('transfers'):.0f})",
            f"{bare_cmds:.0f}", f"{ccf_cmds / bare_cmds:.2f}" if bare_cmds else "-",
            str(sum(r.noop_reboots.values())) if r.noop_reboots else "-",
        ])
    return table(headers, rows)


def per_host_table(results: list[SiteResult]) -> str:
    headers = ["N", "host", "no-op commands (facts + ops)", "file transfers", "bare commands"]
    rows = []
    for r in results:
        for h in r.hosts:
            f = r.noop.fact_commands.get(h, 0)
            c = r.noop.commands.get(h, 0)
            rows.append([str(r.nodes), h, f"{c} ({f} + {c - f})", str(r.noop.transfers.get(h, 0)), str(r.bare.commands.get(h, 0))])
    return table(headers, rows)


def fleet_table(results: list[FleetResult]) -> str:
    headers = ["BMCs", "mix", "batch", "reset s", "passes x hosts", "floor s", "BIOS passes s", "ratio",
               "pyinfra batch floor s", "converge s", "Redfish req/host", "no-op req/host", "no-op s", "failed"]
    rows = []
    for f in results:
        mix = ", ".join(f"{n} {c}" for c, n in sorted(f.combos.items()))
        passes = ", ".join(f"{p}x{n}" for p, n in sorted(f.passes_per_host.items()))
        req = sorted(x for x in f.requests if x >= 0)
        noop = sorted(x for x in f.noop_requests if x >= 0)
        span = lambda v: (f"{v[0]}" if v[0] == v[-1] else f"{v[0]}-{v[-1]} (median {statistics.median(v):.0f})") if v else "-"  # noqa: E731
        rows.append([str(f.count), mix, str(f.batch), f"{f.reset_seconds:g}", passes, f"{f.ideal_floor_s:.0f}",
                     f"{f.passes_s:.1f}", f"{f.ratio:.2f}", f"{f.batch_floor_s:.0f}", f"{f.prepare_s + f.execute_s:.1f}",
                     span(req), span(noop), f"{f.noop_s:.1f}", str(len(f.failed))])
    return table(headers, rows)


def machine() -> dict[str, str]:
    def sh(cmd: str) -> str:
        try:
            return subprocess.run(shlex.split(cmd), capture_output=True, text=True, timeout=10).stdout.strip()
        except OSError:
            return "?"

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    mem_kb = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal"))
    from importlib.metadata import version

    return {
        "cpus (nproc)": sh("nproc"),
        "cpu": cpu,
        "memory": f"{mem_kb / 1024 / 1024:.1f} GiB",
        "kernel": sh("uname -r"),
        "os": next((line.split("=", 1)[1].strip('"') for line in Path("/etc/os-release").read_text().splitlines()
                    if line.startswith("PRETTY_NAME=")), "?"),
        "python": platform.python_version(),
        "pyinfra": version("pyinfra"),
        "ccfactory commit": sh(f"git -C {REPO} rev-parse --short HEAD") + (" + local changes" if sh(f"git -C {REPO} status --porcelain") else ""),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


def report(command: str, sites: list[SiteResult], fleets: list[FleetResult], notes: list[str], total_s: float,
           plans: list[FleetPlanResult] | None = None) -> str:
    parts = ["## Machine", "", table(["", ""], [[k, v] for k, v in machine().items()]), "",
             f"Command: `{command}` ({total_s / 60:.1f} min in all)", ""]
    if any(s.cold.wall for s in sites):
        parts += ["## 1. Cold full-site converge (seconds)", "",
                  "Fresh lab nodes (new disks, factory BIOS and GPU state), one `pyinfra -y <lab inventory> deploy/site.py`. "
                  "connect: start-up, inventory, validation and SSH connections; prepare: facts and planning of every "
                  "stage; stage columns: execution time of that stage's operations; exit: disconnect.", "",
                  cold_table(sites), ""]
    if sites:
        parts += ["## 2. No-op re-run vs a bare pyinfra run reading the same facts", "",
                  "Remote commands are counted inside pyinfra (`Host.run_shell_command`, per host, averaged over hosts): "
                  "facts read + operation commands; file transfers apart. The bare run reads the very facts the no-op "
                  "run read (same classes and arguments) and does nothing else.", "",
                  noop_table(sites), "", per_host_table(sites), ""]
    if fleets:
        parts += ["## 3. Firmware stage at fleet scale (BMC-only lab BMCs)", "",
                  "floor = for each BIOS pass, ceil(hosts rebooting in it / batch) x reset time; ratio = BIOS passes wall "
                  "time / floor. pyinfra batch floor: pyinfra's `_parallel` batches cut the host list in order, so a batch "
                  "whose hosts need no reboot in that pass still takes a slot.", "",
                  fleet_table(fleets), ""]
    if plans:
        parts += ["## 4. Firmware plan (read only) at fleet scale (BMC-only lab BMCs, mixed vendors)", "",
                  "`ccfactory firmware plan INVENTORY --json` as the operator runs it (start-up and inventory validation "
                  "included), median of the runs. Redfish req/host: the command's own count; logins, logouts and TLS "
                  "connections per BMC: from the emulators' request logs; CPU: the command (wait4) and every emulator "
                  "process (/proc) over the run; both share the machine's CPUs.", "",
                  plan_table(plans), ""]
    if notes:
        parts += ["## Notes", "", *[f"- {n}" for n in notes], ""]
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tests/bench/run.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke: N=1 and a fleet of 10 BMCs with 1 s resets")
    parser.add_argument("--nodes", default=None, help="comma-separated lab sizes (default 1,3,5)")
    parser.add_argument("--fleet", default=None, help="comma-separated BMC counts (default 50,100; 0 = none)")
    parser.add_argument("--fleet-mix", choices=["uniform", "mixed"], default="uniform",
                        help="uniform: every BMC dell/snp (3 passes); mixed: every vendor x TEE (2-5 passes)")
    parser.add_argument("--fleet-plan", default=None, metavar="N[,N]",
                        help="BMC counts for `firmware plan` (default 100,500,1000; quick 20; 0 = none); given "
                             "alone (without --nodes/--fleet/--reuse-lab) it runs only this part")
    parser.add_argument("--plan-runs", type=int, default=3, help="runs of `firmware plan` per fleet size (median)")
    parser.add_argument("--reset-seconds", type=float, default=None, help="simulated BMC reset time (default 5; quick 1)")
    parser.add_argument("--batch", type=int, default=None, help="reboot_batch_size for the fleet (default 10; quick 5)")
    parser.add_argument("--write", metavar="FILE", help="also write the report (Markdown) to FILE")
    parser.add_argument("--no-lock", action="store_true", help="do not take the lab test lock (the caller holds it)")
    parser.add_argument("--work-dir", metavar="DIR", help="keep every run's output here (default: a new /var/tmp/ccf-bench-*)")
    parser.add_argument("--reuse-lab", metavar="INVENTORY",
                        help="instead of 1: only the no-op and bare runs, on the lab that is up (left as it is)")
    args = parser.parse_args(argv)

    if os.geteuid() != 0:
        parser.error("the benchmarks need root (the lab)")
    others_given = args.nodes is not None or args.fleet is not None or args.reuse_lab
    if args.fleet_plan is not None and not others_given:  # `--fleet-plan N` alone: only the plan benchmark
        args.nodes, args.fleet = "0", "0"
    plan_default = "0" if others_given else ("20" if args.quick else "100,500,1000")
    nodes = [int(n) for n in (args.nodes or ("1" if args.quick else "1,3,5")).split(",") if n.strip() and int(n)]
    fleets = [int(n) for n in (args.fleet or ("10" if args.quick else "50,100")).split(",") if n.strip() and int(n)]
    plan_fleets = [int(n) for n in (args.fleet_plan or plan_default).split(",") if n.strip() and int(n)]
    reset_seconds = args.reset_seconds if args.reset_seconds is not None else (1.0 if args.quick else 5.0)
    batch = args.batch or (5 if args.quick else 10)
    combos = [("dell", "snp")]
    if args.fleet_mix == "mixed":
        combos = [(v, t) for v in ("dell", "hpe", "lenovo", "supermicro", "generic") for t in ("snp", "tdx")]
    given = sys.argv[1:] if argv is None else argv
    command = " ".join([".venv/bin/python tests/bench/run.py", *map(shlex.quote, given)])

    lock = None
    if not args.no_lock:
        LOCK.parent.mkdir(parents=True, exist_ok=True)
        lock = LOCK.open("w")
        t = time.monotonic()
        fcntl.flock(lock, fcntl.LOCK_EX)
        if time.monotonic() - t > 1:
            log(f"waited {time.monotonic() - t:.0f} s for a lab test session to finish")

    if args.work_dir:
        work = Path(args.work_dir)
        work.mkdir(parents=True, exist_ok=True)
    else:
        work = Path(tempfile.mkdtemp(prefix="ccf-bench-", dir="/var/tmp"))
    log(f"ccfactory benchmarks (outputs of every run in {work})")
    t0 = time.monotonic()
    sites: list[SiteResult] = []
    fleet_results: list[FleetResult] = []
    plan_results: list[FleetPlanResult] = []
    notes: list[str] = []
    try:
        if args.reuse_lab:
            log("2. full site on the lab as it is: no-op re-run, bare fact run")
            result = reuse_bench(Path(args.reuse_lab), work)
            sites.append(result)
            notes += result.notes
        elif nodes:
            from ccfactory.lab import manager

            log("1-2. full site: cold converge, no-op re-run, bare fact run")
            try:
                for n in nodes:
                    try:
                        result = site_bench(n, work)
                    except Exception as exc:  # noqa: BLE001 - a benchmark reports what it could measure
                        notes.append(f"N={n}: not measured: {type(exc).__name__}: {exc}")
                        log(f"  N={n}: FAILED: {type(exc).__name__}: {exc}")
                        continue
                    sites.append(result)
                    notes += result.notes
            finally:
                manager.down()
        for count in fleets:
            log(f"3. firmware stage, {count} BMC-only BMCs, batch {batch}, resets of {reset_seconds:g} s")
            try:
                fr = run_fleet(count, batch=batch, reset_seconds=reset_seconds, combos=combos, progress=log)
            except Exception as exc:  # noqa: BLE001
                notes.append(f"fleet of {count}: not measured: {type(exc).__name__}: {exc}")
                log(f"  fleet of {count}: FAILED: {type(exc).__name__}: {exc}")
                continue
            fleet_results.append(fr)
            notes += [f"fleet of {count}: {n}" for n in fr.notes]
            if fr.failed:
                notes.append(f"fleet of {count}: {len(fr.failed)} host(s) failed, e.g. {', '.join(fr.failed[:3])}")
        for count in plan_fleets:
            log(f"4. firmware plan (read only), {count} BMC-only BMCs of mixed vendors, {args.plan_runs} run(s)")
            try:
                pr = run_fleet_plan(count, runs=args.plan_runs, progress=log)
            except Exception as exc:  # noqa: BLE001
                notes.append(f"plan fleet of {count}: not measured: {type(exc).__name__}: {exc}")
                log(f"  plan fleet of {count}: FAILED: {type(exc).__name__}: {exc}")
                continue
            plan_results.append(pr)
            notes += [f"plan fleet of {count}: {n}" for n in pr.notes]
            for k, r in enumerate(pr.runs, 1):
                if r.failed or r.rc:
                    notes.append(f"plan fleet of {count}, run {k}: exit {r.rc}, {len(r.failed)} host(s) failed, "
                                 f"e.g. {'; '.join(r.errors[:2]) or ', '.join(r.failed[:3])}")
    finally:
        if lock is not None:
            lock.close()
    text = report(command, sites, fleet_results, notes, time.monotonic() - t0, plan_results)
    print()
    print(text)
    if args.write:
        Path(args.write).write_text(text + "\n")
        log(f"\nwrote {args.write}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

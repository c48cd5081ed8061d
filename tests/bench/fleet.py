"""Firmware stage at fleet scale: the real firmware role against 50-100 lab BMCs in BMC-only mode.

The BMCs are the lab's emulator (``ccfactory.lab.bmc.service``: real processes, HTTPS on
their own addresses 10.199.1.111.., lab CA, random credentials, vendor personalities) with
``power="simulated"``: a reset takes ``reset_seconds`` and boots no node. The controller side
is the real one (profiles, resolver, planner, ``RedfishClient``, ``ccfactory.roles.firmware``,
the shared reboot mechanism, ``_parallel`` rolling batches), run through pyinfra's API on
``@fake`` hosts whose SSH side is simulated from the BMC: the boot id is the BMC's POST count,
the TEE status is what the lab renders from the BMC's *applied* BIOS (as a lab node would see
it), the one-shot marker file lives in memory.

Figures: wall time of the BIOS passes against the floor (the reboots a rolling batch cannot
avoid: for each pass, ceil(hosts rebooting / batch) x reset time), Redfish requests per host
(from the role's own per-host summary line), reboots per host.
"""

from __future__ import annotations

import logging
import math
import os
import re
import shutil
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from support import SimulatedFirmwareHost  # tests/ is on sys.path (run.py puts it there)

ANSI = re.compile(r"\x1b\[[0-9;]*m")
SUMMARY = re.compile(
    r"ccfactory firmware: (?P<stages>\d+) stage\(s\).*?, (?P<reboots>\d+) reboot\(s\), (?P<requests>\d+) Redfish request\(s\)"
)
FIRST_INDEX = 101  # BMC addresses 10.199.1.111.. stay clear of the lab's own nodes (10.199.1.11..)


@dataclass
class FleetResult:
    count: int
    batch: int
    reset_seconds: float
    combos: Counter
    prepare_s: float
    execute_s: float
    passes_s: float
    ideal_floor_s: float
    batch_floor_s: float
    passes_per_host: Counter  # passes -> hosts
    requests: list[int]  # per host, converging run
    noop_requests: list[int]  # per host, second run
    noop_s: float
    failed: list[str]
    bmc_processes: int
    notes: list[str] = field(default_factory=list)

    @property
    def ratio(self) -> float:
        return self.passes_s / self.ideal_floor_s if self.ideal_floor_s else float("nan")


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(ANSI.sub("", record.getMessage()))


def _run_role(lab_dir: Path, hosts: list[tuple[str, dict]], groups: dict[str, list[str]], nodes: dict[str, SimulatedFirmwareHost]):
    """One pyinfra API run of the firmware role; returns (state, inventory, capture, prepare_s, execute_s, op times)."""
    from pyinfra.api import Config, Inventory, State
    from pyinfra.api.connect import connect_all
    from pyinfra.api.deploy import add_deploy
    from pyinfra.api.exceptions import PyinfraError
    from pyinfra.api.operations import run_ops
    from pyinfra.api.state import BaseStateCallback, StateStage

    from ccfactory.roles import firmware

    inventory = Inventory((hosts, {}), **{g: (members, {}) for g, members in groups.items() if members})
    state = State(inventory, Config(), check_for_changes=True)
    ops: list[dict] = []
    current: dict[str, dict] = {}

    class Timer(BaseStateCallback):
        @staticmethod
        def operation_start(state, op_hash):
            current[op_hash] = {"names": sorted(state.get_op_meta(op_hash).names), "start": time.monotonic()}

        @staticmethod
        def operation_end(state, op_hash):
            entry = current.pop(op_hash)
            entry["end"] = time.monotonic()
            ops.append(entry)

    state.add_callback_handler(Timer())
    capture = _Capture()
    log = logging.getLogger("pyinfra")
    log.addHandler(capture)
    old = log.level
    log.setLevel(logging.INFO)
    try:
        state.set_stage(StateStage.Connect)
        connect_all(state)
        for host in inventory:
            sim = nodes[host.name.removeprefix("@fake/")]
            host.get_fact = sim.facts
            host.run_shell_command = sim.shell
        state.set_stage(StateStage.Prepare)
        t0 = time.monotonic()
        add_deploy(state, firmware.apply)
        t1 = time.monotonic()
        state.set_stage(StateStage.Execute)
        try:
            run_ops(state)
        except PyinfraError as exc:  # every host failed
            capture.lines.append(f"pyinfra: {exc}")
        t2 = time.monotonic()
    finally:
        log.removeHandler(capture)
        log.setLevel(old)
    return state, inventory, capture, t1 - t0, t2 - t1, ops


def _changed_passes(state, inventory) -> dict[str, list[int]]:
    """host -> the BIOS pass numbers that changed it."""
    out: dict[str, list[int]] = {h.name: [] for h in inventory}
    for op_hash in state.get_op_order():
        names = ", ".join(sorted(state.get_op_meta(op_hash).names))
        m = re.search(r"BIOS pass (\d+)", names)
        if not m:
            continue
        for host in inventory:
            op = state.ops[host].get(op_hash)
            if op is None:
                continue
            meta = op.operation_meta
            if meta.is_complete() and meta.did_succeed(_raise_if_not_complete=False) and meta.did_change():
                out[host.name].append(int(m[1]))
    return out


def _requests(lines: list[str]) -> dict[str, int]:
    found = {}
    for line in lines:
        m = SUMMARY.search(line)
        if m:
            host = re.search(r"\[(@fake/[^\]]+)\]", line)
            if host:
                found[host[1]] = int(m["requests"])
    return found


def run_fleet(
    count: int,
    *,
    batch: int = 10,
    reset_seconds: float = 5.0,
    combos: list[tuple[str, str]] | None = None,
    per_process: int = 8,
    progress=print,
) -> FleetResult:
    """Start ``count`` BMC-only BMCs, run the firmware role from a factory BIOS, then again (no-op)."""
    from ccfactory.lab import network
    from ccfactory.lab.bmc import service
    from ccfactory.lab.bmc.spec import BmcSpec
    from ccfactory.lab.bmc.state import StateStore

    combos = combos or [("dell", "snp")]
    if FIRST_INDEX + count - 1 > network.MAX_NODES:
        raise SystemExit(f"at most {network.MAX_NODES - FIRST_INDEX + 1} BMCs (address plan 10.199.1.111..210)")
    work = Path(tempfile.mkdtemp(prefix="ccf-bench-fleet-", dir="/var/tmp"))
    lab_dir = work / "lab"
    specs = []
    for i in range(count):
        index = FIRST_INDEX + i
        vendor, tee = combos[i % len(combos)]
        specs.append(BmcSpec.for_node(f"fleet{index}", index, vendor=vendor, tee=tee, power="simulated",
                                      reset_seconds=reset_seconds))
    bridges_made = network.ensure_bridges()
    added = [s.address for s in specs if network.ensure_bmc_address(s.address)]
    try:
        t0 = time.monotonic()
        statuses = service.start(lab_dir, specs, per_process=per_process, power="simulated", reset_seconds=reset_seconds)
        bmc_processes = len({s.pid for s in statuses if s.pid})
        progress(f"  fleet of {count}: {bmc_processes} BMC emulator process(es) up in {time.monotonic() - t0:.1f} s")
        ca = service.ca_bundle(lab_dir)
        hosts, nodes, groups = [], {}, {"workers": [], "snp": [], "tdx": []}
        for spec in specs:
            user, password = service.credentials(lab_dir, spec.node)
            pw = work / f"{spec.node}.password"
            fd = os.open(pw, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(password + "\n")
            name = f"@fake/{spec.node}"
            hosts.append((name, {
                "bmc_vendor": spec.vendor, "bmc_address": spec.address, "bmc_port": spec.port, "bmc_username": user,
                "bmc_password_file": str(pw), "bmc_ca_bundle": str(ca), "reboot_batch_size": batch,
                "reboot_timeout": max(120, int(reset_seconds * 10)), "fake_delay": 0, "fake_delay_jitter": 0,
            }))
            groups["workers"].append(name)
            groups[spec.tee].append(name)
            nodes[spec.node] = SimulatedFirmwareHost(lab_dir, spec.node, spec.tee, work / "render" / spec.node)

        state, inventory, capture, prep, execute, ops = _run_role(lab_dir, hosts, groups, nodes)
        passes = _changed_passes(state, inventory)
        failed = sorted(h.name for h in state.failed_hosts)
        per_pass = Counter(p for ps in passes.values() for p in ps)
        order = [h.name for h in inventory]
        ideal = sum(math.ceil(n / batch) for n in per_pass.values()) * reset_seconds
        batch_floor = 0.0
        for p in per_pass:
            for k in range(0, len(order), batch):
                if any(p in passes[h] for h in order[k:k + batch]):
                    batch_floor += reset_seconds
        bios_ops = [o for o in ops if any("BIOS pass" in n for n in o["names"])]
        passes_s = (max(o["end"] for o in bios_ops) - min(o["start"] for o in bios_ops)) if bios_ops else 0.0
        requests = _requests(capture.lines)
        boots = {s.node: StateStore(lab_dir, s.node).load().boots for s in specs}
        notes = []
        if any(boots[n.removeprefix("@fake/")] != len(passes[n]) for n in passes):
            notes.append("BMC POST count differs from the passes that changed")
        progress(f"  fleet of {count}: converge {prep + execute:.1f} s (BIOS passes {passes_s:.1f} s, floor {ideal:.0f} s), "
                 f"{len(failed)} failed")
        if failed:
            for line in capture.lines:
                if any(f"[{h}]" in line and ("ccfactory" in line or "rror" in line) for h in failed[:3]):
                    progress("    " + line[:300])

        state2, inventory2, capture2, prep2, execute2, _ = _run_role(lab_dir, hosts, groups, nodes)
        noop_requests = _requests(capture2.lines)
        changed_again = [h for h, ps in _changed_passes(state2, inventory2).items() if ps]
        if changed_again or state2.failed_hosts:
            notes.append(f"second run: {len(changed_again)} host(s) changed, {len(state2.failed_hosts)} failed")
        return FleetResult(
            count=count, batch=batch, reset_seconds=reset_seconds, combos=Counter(f"{s.vendor}/{s.tee}" for s in specs),
            prepare_s=prep, execute_s=execute, passes_s=passes_s, ideal_floor_s=ideal, batch_floor_s=batch_floor,
            passes_per_host=Counter(len(ps) for ps in passes.values()),
            requests=[requests.get(h, -1) for h in order], noop_requests=[noop_requests.get(h, -1) for h in order],
            noop_s=prep2 + execute2, failed=failed, bmc_processes=bmc_processes, notes=notes,
        )
    finally:
        service.stop(lab_dir)
        for address in added:
            network.remove_bmc_address(address)
        if bridges_made and not (Path(os.environ.get("CCFACTORY_LAB_DIR", "/var/lib/ccfactory/lab")) / "lab.json").exists():
            network.teardown()
        shutil.rmtree(work, ignore_errors=True)

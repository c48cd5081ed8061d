"""Start, stop and inspect the lab's BMC emulators (what ``ccfactory lab up/down/status`` calls).

BMCs are grouped into emulator processes by index: group ``k`` serves the BMCs with
``index // per_process == k``. ``per_process=1`` (isolation, realism: one process per
BMC, ~45 MB each) or larger groups for many BMCs (one process serves many
addresses; 100 BMC-only BMCs in a few processes). Groups are stable when nodes are
added, so ``start`` is idempotent: running groups with unchanged specs are left
alone, changed ones are restarted, groups no longer wanted are stopped.

Processes are recorded in ``<lab>/bmc/run/<group>.pid`` (PID + start time, via
``ccfactory.lab.proc``) with their manifest and log next to them; ``stop`` signals
only those recorded PIDs.

Example::

    specs = [BmcSpec.for_node(f"node{i}", i, vendor="dell", tee="snp") for i in (1, 2)]
    start(lab_dir, specs)
    user, password = credentials(lab_dir, "node1")
    sushy.Sushy(specs[0].url + "/redfish/v1", auth=sushy.auth.BasicAuth(user, password),
                verify=str(ca_bundle(lab_dir)))
    stop(lab_dir)
"""

from __future__ import annotations

import errno
import importlib.util
import json
import os
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from ccfactory.lab import proc
from ccfactory.lab.bmc.credentials import credentials_path, ensure_credentials, read_credentials
from ccfactory.lab.bmc.faults import clear_faults, faults_path, get_faults, set_faults
from ccfactory.lab.bmc.personality import load_personality
from ccfactory.lab.bmc.pki import ensure_lab_ca, ensure_server_cert
from ccfactory.lab.bmc.spec import BmcSpec, known_nodes, node_dir, read_spec, run_dir, write_json_atomic, write_spec
from ccfactory.lab.bmc.state import ensure_state
from ccfactory.lab.errors import LabError

__all__ = [
    "BmcSpec", "BmcStatus", "start", "stop", "status", "credentials_file", "credentials", "ca_bundle",
    "set_faults", "get_faults", "clear_faults", "DEFAULT_PER_PROCESS",
]

DEFAULT_PER_PROCESS = 8
SERVER_MODULE = "ccfactory.lab.bmc.server"
START_TIMEOUT = 30.0


@dataclass(frozen=True)
class BmcStatus:
    """One BMC as ``status`` sees it."""

    node: str
    vendor: str
    tee: str
    url: str
    group: str | None
    pid: int | None
    listening: bool
    log: Path | None


def credentials_file(lab_dir: Path, node: str) -> Path:
    """The 0600 JSON file with the BMC's ``username`` and ``password``.

    Example: ``json.loads(credentials_file(lab_dir, "node1").read_text())["username"]`` -> ``'root'``
    """
    path = credentials_path(lab_dir, node)
    if not path.is_file():
        raise LabError(f"no BMC credentials for {node!r}: start its BMC first (ccfactory.lab.bmc.service.start)")
    return path


def credentials(lab_dir: Path, node: str) -> tuple[str, str]:
    """(username, password) of a BMC, for the controller side. Never print the password."""
    return read_credentials(lab_dir, node)


def ca_bundle(lab_dir: Path) -> Path:
    """The lab CA certificate clients verify the BMCs with (created if missing).

    Example: ``requests.get(url, verify=str(ca_bundle(lab_dir)))``
    """
    return ensure_lab_ca(lab_dir)


def _group_name(index: int, per_process: int) -> str:
    return f"bmc-p{per_process}-{index // per_process:03d}"


def _check_runtime_deps() -> None:
    from importlib import metadata

    try:
        version = metadata.version("sushy-tools")
        if importlib.util.find_spec("bcrypt") is None:
            raise ImportError("bcrypt")
    except ImportError:  # metadata.PackageNotFoundError is one too
        raise LabError("the lab BMC needs sushy-tools==2.2.0 (and bcrypt): pip install 'ccfactory[lab]'") from None
    if version != "2.2.0":
        raise LabError(f"the lab BMC needs sushy-tools==2.2.0, found {version}")


def _check_address(spec: BmcSpec) -> None:
    """Fail early and clearly when the management address is not on this host."""
    with socket.socket(socket.AF_INET6 if ":" in spec.address else socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((spec.address, 0))
        except OSError as exc:
            if exc.errno == errno.EADDRNOTAVAIL:
                raise LabError(
                    f"BMC address {spec.address} of {spec.node} is not configured on this host: "
                    "bring the lab network (bridge ccfbmc0) up first"
                ) from None
            raise


def _prepare(lab_dir: Path, spec: BmcSpec) -> None:
    node_dir(lab_dir, spec.node).mkdir(parents=True, exist_ok=True)
    os.chmod(node_dir(lab_dir, spec.node), 0o700)
    write_spec(lab_dir, spec)
    ensure_credentials(lab_dir, spec.node, load_personality(spec.vendor).identity.default_username)
    ensure_server_cert(lab_dir, f"{spec.node}-bmc", spec.address, node_dir(lab_dir, spec.node) / "tls")
    ensure_state(lab_dir, spec)
    if not faults_path(lab_dir, spec.node).exists():
        clear_faults(lab_dir, spec.node)


def _child_env() -> dict[str, str]:
    import ccfactory

    env = {k: v for k, v in os.environ.items() if k != "SUSHY_EMULATOR_CONFIG"}
    # The child must import this very ccfactory (a clone or an installed wheel alike).
    src_root = str(Path(ccfactory.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join([src_root, *filter(None, [env.get("PYTHONPATH")])])
    return env


def _manifest(nodes: list[str], specs: dict[str, BmcSpec]) -> dict[str, object]:
    return {"nodes": nodes, "specs": {n: specs[n].model_dump() for n in nodes}}


def _recorded_groups(lab_dir: Path) -> dict[str, int | None]:
    rd = run_dir(lab_dir)
    if not rd.is_dir():
        return {}
    return {p.stem: _our_pid(p) for p in rd.glob("*.pid")}


def _our_pid(pidfile: Path) -> int | None:
    """The recorded PID if it is still our emulator (never an unrelated reused PID)."""
    pid = proc.read_pidfile(pidfile)
    if pid is None or SERVER_MODULE not in proc.cmdline(pid):
        return None
    return pid


def _stop_group(lab_dir: Path, group: str) -> None:
    rd = run_dir(lab_dir)
    pid = _our_pid(rd / f"{group}.pid")
    if pid is not None:
        proc.stop(pid, timeout=10, what=f"BMC emulator {group}")
    for suffix in (".pid", ".json", ".ready"):
        (rd / f"{group}{suffix}").unlink(missing_ok=True)


def start(lab_dir: Path, bmcs: list[BmcSpec], *, per_process: int | None = None, power: str | None = None,
          reset_seconds: float | None = None, timeout: float = START_TIMEOUT) -> list[BmcStatus]:
    """Start (or keep) the emulators serving exactly ``bmcs``; returns their status.

    Idempotent; raises ``LabError`` (with the emulator log's tail) if a BMC does not come up.
    ``per_process`` (BMCs per emulator process), ``power`` ("node" or "simulated": BMC-only
    mode) and ``reset_seconds`` override the specs; unset, they come from
    ``$CCFACTORY_BMC_PER_PROCESS`` / ``$CCFACTORY_BMC_POWER`` / ``$CCFACTORY_BMC_RESET_SECONDS``
    (so a benchmark can run ``ccfactory lab up`` with 100 BMC-only BMCs), else from the specs.

    Example: ``start(lab_dir, [BmcSpec.for_node("node1", 1, vendor="hpe", tee="tdx")])``
    """
    lab_dir = Path(lab_dir).resolve()
    per_process = per_process or int(os.environ.get("CCFACTORY_BMC_PER_PROCESS", DEFAULT_PER_PROCESS))
    if per_process < 1:
        raise LabError("per_process must be at least 1")
    overrides: dict[str, object] = {}
    power = power or os.environ.get("CCFACTORY_BMC_POWER")
    if power:
        overrides["power"] = power
    seconds = reset_seconds if reset_seconds is not None else os.environ.get("CCFACTORY_BMC_RESET_SECONDS")
    if seconds is not None:
        overrides["reset_seconds"] = seconds
    if overrides:
        try:
            bmcs = [BmcSpec.model_validate({**b.model_dump(), **overrides}) for b in bmcs]
        except ValueError as exc:
            raise LabError(f"invalid BMC power override: {exc}") from None
    _check_runtime_deps()
    nodes = [b.node for b in bmcs]
    dupes = {n for n in nodes if nodes.count(n) > 1}
    endpoints = [(b.address, b.port) for b in bmcs]
    if dupes:
        raise LabError(f"duplicate BMC node name(s): {sorted(dupes)}")
    if len(set(endpoints)) != len(endpoints):
        raise LabError("two BMCs share an address and port")
    specs = {b.node: b for b in bmcs}
    for spec in bmcs:
        _check_address(spec)
    ensure_lab_ca(lab_dir)
    for spec in bmcs:
        _prepare(lab_dir, spec)

    wanted: dict[str, list[str]] = {}
    for spec in sorted(bmcs, key=lambda s: (s.index, s.node)):
        wanted.setdefault(_group_name(spec.index, per_process), []).append(spec.node)

    rd = run_dir(lab_dir)
    rd.mkdir(parents=True, exist_ok=True)
    recorded = _recorded_groups(lab_dir)
    for group in set(recorded) - set(wanted):
        _stop_group(lab_dir, group)

    started: list[str] = []
    for group, members in wanted.items():
        manifest = _manifest(members, specs)
        manifest_path = rd / f"{group}.json"
        pid = recorded.get(group)
        try:
            same = json.loads(manifest_path.read_text()) == manifest
        except (OSError, ValueError):
            same = False
        if pid is not None and same:
            continue
        _stop_group(lab_dir, group)
        (rd / f"{group}.ready").unlink(missing_ok=True)
        argv = [sys.executable, "-m", SERVER_MODULE, "--lab-dir", str(lab_dir), "--nodes", ",".join(members),
                "--ready-file", str(rd / f"{group}.ready")]
        pid = proc.spawn(argv, logfile=rd / f"{group}.log", env=_child_env())
        proc.write_pidfile(rd / f"{group}.pid", pid)
        write_json_atomic(manifest_path, manifest)
        started.append(group)

    _wait_up(lab_dir, wanted, started, timeout)
    return status(lab_dir)


def _wait_up(lab_dir: Path, wanted: dict[str, list[str]], started: list[str], timeout: float) -> None:
    """Wait until each started emulator says it listens (its ready file holds its PID)."""
    rd = run_dir(lab_dir)
    deadline = time.monotonic() + timeout
    pending = set(started)
    while pending:
        for group in sorted(pending):
            pid = proc.read_pidfile(rd / f"{group}.pid")  # not _our_pid: argv may not be exec'd yet
            try:
                ready = int((rd / f"{group}.ready").read_text().strip()) == pid
            except (OSError, ValueError):
                ready = False
            if ready:
                pending.discard(group)
            elif pid is None:
                raise LabError(f"BMC emulator {group} ({', '.join(wanted[group])}) exited: "
                               f"{_log_tail(rd / f'{group}.log')}")
        if pending and time.monotonic() > deadline:
            raise LabError(f"BMC emulator(s) {sorted(pending)} not up after {timeout:.0f} s; see {rd}/*.log")
        if pending:
            time.sleep(0.05)


def _log_tail(path: Path, lines: int = 5) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return f"(no log at {path})"


def stop(lab_dir: Path) -> None:
    """Stop every recorded emulator of the lab (only recorded PIDs); BMC state is kept.

    Example: ``stop(lab_dir)``
    """
    lab_dir = Path(lab_dir).resolve()
    for group in _recorded_groups(lab_dir):
        _stop_group(lab_dir, group)


def status(lab_dir: Path) -> list[BmcStatus]:
    """Every BMC known in the lab dir: its process, and whether it accepts connections.

    Example: ``[s.node for s in status(lab_dir) if not s.listening]``
    """
    lab_dir = Path(lab_dir).resolve()
    rd = run_dir(lab_dir)
    owner: dict[str, str] = {}
    for manifest in rd.glob("*.json") if rd.is_dir() else []:
        try:
            for node in json.loads(manifest.read_text()).get("nodes", []):
                owner[node] = manifest.stem
        except (OSError, ValueError):
            continue
    out = []
    for node in known_nodes(lab_dir):
        spec = read_spec(lab_dir, node)
        group = owner.get(node)
        pid = _our_pid(rd / f"{group}.pid") if group else None
        out.append(BmcStatus(
            node=node, vendor=spec.vendor, tee=spec.tee, url=spec.url, group=group, pid=pid,
            listening=bool(pid) and proc.listening(spec.address, spec.port, timeout=0.3),
            log=(rd / f"{group}.log") if group else None,
        ))
    return out

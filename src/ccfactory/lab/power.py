"""Power control of lab nodes, callable from any process (the BMC emulator calls it).

``power(lab_dir, node, action)`` works through files and signals only:

* ``nodes/<n>/power.json``: the desired state, ``{"desired": "on"|"off", "seq": N}``,
  written under ``flock`` by ``power()``; each request bumps ``seq``.
* ``nodes/<n>/power-state.json``: the actual state, written by the node supervisor:
  ``{"power": "on"|"off", "boot": N, "booted_seq": N, "nspawn_pid": PID|null}``.
  ``boot`` counts boots; it grows on every (re)boot.
* signals: SIGUSR1 wakes the supervisor; the container's systemd gets SIGRTMIN+4
  (poweroff) or SIGRTMIN+5 (reboot) for graceful actions, SIGKILL for forced ones.

The supervisor boots the node when ``desired`` is on and ``seq`` is newer than its last
boot, or when the guest rebooted itself (nspawn exit 133). Any other exit (guest
``poweroff``, forced off) leaves the node off until the next "on" request, like a
real server. Hardware (BIOS state, boot config, GPU modes) is re-rendered at every boot.

=================  ===============================================  ================
action             what happens                                     Redfish ResetType
=================  ===============================================  ================
``on``             boot (no-op if on)                               On, ForceOn
``off``            graceful poweroff (systemd halts)                GracefulShutdown
``force-off``      SIGKILL the container's init                     ForceOff
``restart``        graceful reboot (off → on if it was off)         GracefulRestart
``force-restart``  SIGKILL init, boot again (off → on)              ForceRestart, PowerCycle
``status``         ``"On"`` or ``"Off"``                            (PowerState)
=================  ===============================================  ================

Every action returns the resulting power state, ``"On"`` or ``"Off"``, after waiting (up
to ``timeout`` seconds) for the action to take effect.

Example::

    >>> power(Path("/var/lib/ccfactory/lab"), "node1", "status")   # doctest: +SKIP
    'On'
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import time
from contextlib import contextmanager
from pathlib import Path

from ccfactory.lab import proc
from ccfactory.lab.errors import LabError
from ccfactory.lab.layout import NodePaths

ACTIONS = ("on", "off", "force-off", "restart", "force-restart", "status")
SIG_POWEROFF = signal.SIGRTMIN + 4  # systemd: start poweroff.target
SIG_REBOOT = signal.SIGRTMIN + 5  # systemd: start reboot.target


def read_json(path: Path, default: dict) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return dict(default)


def write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(json.dumps(data) + "\n")
    tmp.replace(path)


def read_request(paths: NodePaths) -> dict:
    return read_json(paths.power_request, {"desired": "off", "seq": 0})


def read_state(paths: NodePaths) -> dict:
    return read_json(paths.power_state, {"power": "off", "boot": 0, "booted_seq": 0, "nspawn_pid": None})


@contextmanager
def _locked(paths: NodePaths):
    paths.dir.mkdir(parents=True, exist_ok=True)
    with open(paths.power_lock, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def request(paths: NodePaths, desired: str) -> int:
    """Record a new desired state (bumps ``seq``); returns the new seq. Caller holds no lock."""
    req = read_request(paths)
    req = {"desired": desired, "seq": int(req.get("seq", 0)) + 1}
    write_json(paths.power_request, req)
    return req["seq"]


def container_init(nspawn_pid: int | None) -> int | None:
    """PID (host view) of the container's PID 1: the child of nspawn that is PID 1 in its namespace."""
    if not nspawn_pid or not proc.alive(nspawn_pid):
        return None
    for child in proc.children(nspawn_pid):
        try:
            status = Path(f"/proc/{child}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("NSpid:"):
                ids = line.split()[1:]
                if len(ids) > 1 and ids[-1] == "1":
                    return child
    return None


def supervisor_pid(paths: NodePaths) -> int | None:
    return proc.read_pidfile(paths.supervisor_pid)


def status(lab_dir: Path, node: str) -> str:
    """``"On"`` if the node's container is running (or rebooting), else ``"Off"``."""
    paths = NodePaths(Path(lab_dir), node)
    if not supervisor_pid(paths):
        return "Off"
    st = read_state(paths)
    return "On" if st.get("power") == "on" else "Off"


def _wait(paths: NodePaths, cond, timeout: float, seq: int | None = None) -> tuple[bool, str | None]:
    """Wait for ``cond(state)``; gives up early when the supervisor handled request ``seq`` and
    reported the node off with an error (a boot that failed). Returns (ok, error)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        st = read_state(paths)
        if cond(st):
            return True, None
        if not supervisor_pid(paths):
            return False, "the node supervisor exited"
        if seq is not None and st.get("power") == "off" and int(st.get("booted_seq", 0)) >= seq and st.get("error"):
            return False, st["error"]
        time.sleep(0.05)
    return cond(read_state(paths)), None


def power(lab_dir: Path, node: str, action: str, *, timeout: float = 60.0) -> str:
    """Apply a power action to a lab node and return its power state, ``"On"`` or ``"Off"``.

    ``action``: on | off | force-off | restart | force-restart | status (see the module
    docstring). Safe to call from any process; concurrent calls for one node serialize.
    Raises ``LabError`` if the node is not managed by a running lab (except ``status``),
    or if the action does not take effect within ``timeout`` seconds.

    Example: ``power(Path("/var/lib/ccfactory/lab"), "node1", "force-restart")`` → ``'On'``
    """
    if action not in ACTIONS:
        raise LabError(f"unknown power action {action!r}; use one of {', '.join(ACTIONS)}")
    lab_dir = Path(lab_dir)
    if action == "status":
        return status(lab_dir, node)
    paths = NodePaths(lab_dir, node)
    if not paths.dir.is_dir():
        raise LabError(f"lab {lab_dir} has no node {node!r}")
    with _locked(paths):
        sup = supervisor_pid(paths)
        if not sup:
            raise LabError(f"node {node} is not running under the lab supervisor: run `ccfactory lab up`")
        before = read_state(paths)
        is_on = before.get("power") == "on"
        boot0 = int(before.get("boot", 0))
        init = container_init(before.get("nspawn_pid"))
        if action in ("restart", "force-restart") and not is_on:
            action = "on"

        def booted(st):
            return st.get("power") == "on" and int(st.get("boot", 0)) > boot0

        if action == "on":
            if is_on:
                return "On"
            seq = request(paths, "on")
            proc.signal_pid(sup, signal.SIGUSR1)
            ok, err = _wait(paths, booted, timeout, seq)
        elif action in ("off", "force-off"):
            request(paths, "off")
            if not is_on:
                return "Off"
            _kill_container(before.get("nspawn_pid"), init, SIG_POWEROFF if action == "off" else signal.SIGKILL)
            ok, err = _wait(paths, lambda st: st.get("power") == "off", timeout)
        else:  # restart / force-restart of a running node
            seq = request(paths, "on")
            _kill_container(before.get("nspawn_pid"), init, SIG_REBOOT if action == "restart" else signal.SIGKILL)
            ok, err = _wait(paths, booted, timeout, seq)
        if not ok:
            why = f"boot failed: {err}" if err else f"did not take effect within {timeout:.0f} s"
            raise LabError(f"node {node}: power {action}: {why} (see {paths.supervisor_log})")
        return status(lab_dir, node)


def _kill_container(nspawn_pid: int | None, init: int | None, sig: int) -> None:
    if init:
        proc.signal_pid(init, sig)
    elif nspawn_pid and proc.alive(nspawn_pid):
        # container still starting (no init yet): nspawn turns SIGTERM into a shutdown
        proc.signal_pid(nspawn_pid, signal.SIGTERM)

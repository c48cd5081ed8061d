"""Processes the lab starts: running commands, pid files, and stopping by recorded PID.

A pid file holds ``<pid> <start-time>`` (field 22 of ``/proc/<pid>/stat``), so a PID
reused by an unrelated process after a crash is never mistaken for ours.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from ccfactory.lab.errors import LabError

log = logging.getLogger("ccfactory.lab")


def run(
    cmd: Sequence[str],
    *,
    check: bool = True,
    input: str | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float | None = 120,
) -> subprocess.CompletedProcess:
    """Run a command, capture its output, raise ``LabError`` with its stderr on failure.

    Example: ``run(["ip", "-j", "link", "show"]).stdout``
    """
    try:
        proc = subprocess.run(
            list(cmd), input=input, capture_output=True, text=True, env=dict(env) if env else None, timeout=timeout
        )
    except FileNotFoundError:
        raise LabError(f"command not found: {cmd[0]} (run `ccfactory lab up` to see which package is missing)") from None
    except subprocess.TimeoutExpired:
        raise LabError(f"command timed out after {timeout} s: {' '.join(cmd)}") from None
    if check and proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        raise LabError(f"command failed (exit {proc.returncode}): {' '.join(cmd)}: {' | '.join(tail)}")
    return proc


def listening(host: str, port: int, timeout: float = 0.5) -> bool:
    """Whether something accepts TCP connections on ``host:port`` (a lab server came up)."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot, or None if it is gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # comm (field 2) may contain spaces and parentheses: split after the last ')'
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] in ("Z", "X"):  # zombie or dead: exited, only waiting to be reaped
        return None
    return int(fields[19])


def alive(pid: int | None) -> bool:
    """True if the process exists and has not exited (reaps it first if it is our child)."""
    if not pid:
        return False
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
    return start_time(pid) is not None


def write_pidfile(path: Path, pid: int) -> None:
    """Record ``pid`` with its start time; see ``read_pidfile``."""
    st = start_time(pid)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(f"{pid} {st or 0}\n")
    tmp.replace(path)


def read_pidfile(path: Path) -> int | None:
    """The recorded PID if that very process is still running, else None.

    Example: ``pid = read_pidfile(lab / "run" / "acng.pid")``
    """
    try:
        parts = path.read_text().split()
        pid, recorded = int(parts[0]), int(parts[1]) if len(parts) > 1 else 0
    except (OSError, ValueError, IndexError):
        return None
    if not alive(pid):
        return None
    if recorded and start_time(pid) != recorded:
        return None  # PID reused by another process
    return pid


def cmdline(pid: int) -> list[str]:
    """argv of a process ([] if gone)."""
    try:
        return [a for a in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0") if a]
    except OSError:
        return []


def children(pid: int) -> list[int]:
    """Direct children of a process."""
    kids: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            kids += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return kids


def signal_pid(pid: int | None, sig: int) -> bool:
    """Send a signal; False if the process is already gone."""
    if not pid:
        return False
    try:
        os.kill(pid, sig)
        return True
    except ProcessLookupError:
        return False


def wait_gone(pid: int, timeout: float) -> bool:
    """Wait until the process has exited; True if it did within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive(pid):
            return True
        time.sleep(0.05)
    return not alive(pid)


def stop(pid: int | None, *, timeout: float = 10, sig: int = signal.SIGTERM, what: str = "process") -> None:
    """Stop a process: ``sig``, wait ``timeout`` seconds, then SIGKILL.

    Example: ``stop(read_pidfile(pidfile), what="apt-cacher-ng")``
    """
    if not pid or not alive(pid):
        return
    signal_pid(pid, sig)
    if wait_gone(pid, timeout):
        return
    log.warning("%s (pid %d) did not stop within %.0f s: killing it", what, pid, timeout)
    signal_pid(pid, signal.SIGKILL)
    wait_gone(pid, 5)


def spawn(argv: Sequence[str], *, logfile: Path, env: Mapping[str, str] | None = None) -> int:
    """Start a background process in its own session, output appended to ``logfile``.

    The caller records the returned PID (``write_pidfile``); the process outlives us.
    Example: ``pid = spawn(["/usr/sbin/apt-cacher-ng", "-c", conf], logfile=lab / "logs/acng.log")``
    """
    logfile.parent.mkdir(parents=True, exist_ok=True)
    with open(logfile, "ab", buffering=0) as out, open(os.devnull, "rb") as devnull:
        proc = subprocess.Popen(
            list(argv),
            stdin=devnull,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None,
            start_new_session=True,
            close_fds=True,
        )
    return proc.pid


def find_processes(path: Path, programs: tuple[str, ...]) -> list[int]:
    """PIDs of ``programs`` whose command line names ``path`` or a path below it.

    Used by ``down`` after a crash, when pid files are stale: every lab process has the
    lab directory on its command line (``--lab-dir D``, ``-D D/nodes/..``, ``-c D/acng``).
    ``programs`` are matched against argv[0]'s basename or, for Python, a module name
    in argv, so an operator's shell that merely mentions the path is never touched.
    """
    me, marker = os.getpid(), str(path).rstrip("/")
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        args = cmdline(int(entry.name))
        if not args:
            continue
        names = {os.path.basename(args[0]), *args[1:3]}
        if not any(p in names for p in programs):
            continue
        values = [a.split("=", 1)[1] if a.startswith("--") and "=" in a else a for a in args]
        if any(v == marker or v.startswith(marker + "/") for v in values) and start_time(int(entry.name)):
            found.append(int(entry.name))
    return found

"""Paths shared by the tests (a module with a unique name: several conftest.py exist)."""

from __future__ import annotations

import importlib
import os
import socket
import subprocess
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# Real recordings (nvidia-smi from an H100/H200, vendor Redfish payloads), copied into the repository
# with their provenance (tests/fixtures/RECORDINGS.md, tests/fixtures/redfish/SOURCES.tsv).
FIXTURES = REPO / "tests" / "fixtures"


def materialize(files: dict, root: Path) -> None:
    """Lay the lab's rendered hardware view (``ccfactory.lab.render.render``) out under ``root``
    as plain files, so facts can read it without a node: devices become empty files."""
    from ccfactory.lab.render import CharDevice, Directory, Symlink

    for path, content in files.items():
        dest = root / path.lstrip("/")
        if isinstance(content, Directory):
            dest.mkdir(parents=True, exist_ok=True)
            continue
        dest.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, Symlink):
            dest.symlink_to(content.target)
        elif isinstance(content, CharDevice):
            dest.write_text("")
        else:
            dest.write_bytes(content.encode() if isinstance(content, str) else content)


def run_fact_command(command: str, work: Path) -> list[str]:
    """Run a fact's shell command here, with a ``dmesg`` that fails as it does inside a lab node
    (so the fact reads the lab's kernel log); its stdout lines."""
    import os
    import subprocess

    fake_bin = work / "bin"
    fake_bin.mkdir(parents=True, exist_ok=True)
    dmesg = fake_bin / "dmesg"
    if not dmesg.exists():  # written once: rewriting it while another call runs it gives "Text file busy"
        staged = fake_bin / f".dmesg.{os.getpid()}"
        staged.write_text("#!/bin/sh\necho 'dmesg: read kernel buffer failed: Operation not permitted' >&2\nexit 1\n")
        staged.chmod(0o755)
        staged.replace(dmesg)
    env = dict(os.environ, PATH=f"{fake_bin}:{os.environ['PATH']}")
    return subprocess.run(["sh", "-c", command], capture_output=True, text=True, env=env, check=True).stdout.splitlines()


class CountingListener:
    """A TCP listener on 127.0.0.1 that counts connection attempts (stands in for the nodes'
    sshd, to prove that a run made no connection)."""

    def __init__(self) -> None:
        import socket
        import threading

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        threading.Thread(target=self._loop, daemon=True).start()

    def _loop(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            conn.close()

    def close(self) -> None:
        self.sock.close()


# The lab's hardware profile for each TEE, and what the host stage adds to its command line
HW_PROFILE = {"snp": "amd-snp-hgx", "tdx": "intel-tdx"}
KERNEL_SIDE = {"snp": "", "tdx": " intel_iommu=on kvm_intel.tdx=1 nohibernate"}
# Firmware passes (= PATCH + reboot) from a factory BIOS, per BMC vendor and TEE: one per stage
# of the profile, plus one where the BMC locks SGXFactoryReset until SGX is applied.
EXPECTED_PASSES = {
    ("dell", "snp"): 3,
    ("dell", "tdx"): 4,
    ("hpe", "snp"): 2,
    ("hpe", "tdx"): 4,
    ("lenovo", "snp"): 3,
    ("lenovo", "tdx"): 3,
    ("supermicro", "snp"): 3,
    ("supermicro", "tdx"): 5,
    ("generic", "snp"): 3,
    ("generic", "tdx"): 5,
}


class SimulatedFirmwareHost:
    """The SSH side of a host whose BMC is a lab emulator and which boots no node, as the
    firmware stage sees it: the boot id is the BMC's POST count, ``TeeHostStatus`` is what
    the lab renders from the BMC's *applied* BIOS, the one-shot marker file lives in memory.

    Attach it to a pyinfra host: ``host.get_fact = sim.facts; host.run_shell_command = sim.shell``.
    """

    def __init__(self, lab_dir: Path, name: str, tee: str, render_root: Path) -> None:
        self.lab_dir, self.name, self.tee, self.render_root = lab_dir, name, tee, render_root
        self.marker: list[str] | None = None
        self.kernel_ready = True  # the host stage's kernel side is in place
        self.shell_log: list[str] = []

    def features(self):
        from ccfactory.lab.bmc.state import platform_features_for

        return platform_features_for(self.lab_dir, self.name)

    def facts(self, cls, *args, **kwargs):
        from pyinfra.facts.files import FileContents

        from ccfactory.facts.node import BootId
        from ccfactory.facts.tee import TeeHostStatus
        from ccfactory.lab.bmc.state import StateStore
        from ccfactory.roles.firmware import operations as firmware_ops
        if cls is FileContents:
            return list(self.marker) if kwargs.get("path") == firmware_ops.MARKER and self.marker else None
        if cls is BootId:
            return f"boot-{StateStore(self.lab_dir, self.name).load().boots}"
        if cls is TeeHostStatus:
            return self.tee_status()
        raise AssertionError(f"{self.name}: fact {cls} is not simulated")

    def shell(self, command, *args, **kwargs):
        import shlex

        from pyinfra.connectors.util import CommandOutput

        from ccfactory.roles.firmware import operations as firmware_ops
        text = command.get_raw_value() if hasattr(command, "get_raw_value") else str(command)
        self.shell_log.append(text)
        if firmware_ops.MARKER in text:
            if text.startswith("rm -f"):
                self.marker = None
            else:
                words = shlex.split(text.split("&&", 1)[1])
                self.marker = [line for line in words[2].split("\n") if line]
        return True, CommandOutput([])

    def tee_status(self):
        """What TeeHostStatus reads on the node, rendered by the lab from the applied BIOS."""
        import shutil

        from ccfactory.facts.tee import TeeHostStatus, tee_command
        from ccfactory.lab.bootconfig import BootConfig
        from ccfactory.lab.hwprofile import load_profile
        from ccfactory.lab.render import RenderInput, render

        profile = load_profile(HW_PROFILE[self.tee])
        cmdline = profile.kernel["cmdline"] + (KERNEL_SIDE[self.tee] if self.kernel_ready else "")
        files = render(RenderInput(self.name, profile, self.features(), BootConfig(cmdline)))
        shutil.rmtree(self.render_root, ignore_errors=True)
        materialize(files, self.render_root)
        return TeeHostStatus().process(run_fact_command(tee_command(str(self.render_root)), self.render_root.parent))


def plan_role_on_fake_host(host_name: str, data: dict, groups: dict[str, list[str]], get_fact, apply, *,
                           strip: str = "") -> tuple[list[tuple], object]:
    """Prepare a role (its ``@deploy`` ``apply``) for one ``@fake`` host whose facts come from
    ``get_fact``, as pyinfra's CLI would before executing; nothing runs.

    Returns ``([(operation name without the prefix strip, will change, commands, global
    arguments)], the host's meta)``, in operation order.
    """
    from pyinfra.api import Config, Inventory, State
    from pyinfra.api.connect import connect_all
    from pyinfra.api.deploy import add_deploy
    from pyinfra.api.state import StateStage
    from pyinfra.context import ctx_host, ctx_state

    inventory = Inventory(([(host_name, data)], {}), **{g: (members, {}) for g, members in groups.items()})
    state = State(inventory, Config())
    state.set_stage(StateStage.Connect)
    connect_all(state)
    host = inventory.get_host(host_name)
    host.get_fact = get_fact
    state.set_stage(StateStage.Prepare)
    add_deploy(state, apply)
    ops = []
    for op_hash in state.get_op_order():
        if op_hash not in state.ops[host]:
            continue
        op_data = state.get_op_data_for_host(host, op_hash)
        meta = state.get_op_meta(op_hash)
        with ctx_state.use(state), ctx_host.use(host):
            commands = list(op_data.command_generator())
        arguments = {**op_data.global_arguments, **meta.global_arguments}  # + _parallel ...
        ops.append((", ".join(meta.names).removeprefix(strip), op_data.operation_meta._maybe_is_change, commands, arguments))
    return ops, state.get_meta_for_host(host)


def exit_code(proc: subprocess.Popen, timeout: float) -> int:
    """The exit code of ``proc`` once it has exited, polling its pid directly.

    Under gevent's monkey patching (pyinfra, imported by other test modules) ``Popen.wait``
    waits on the hub's SIGCHLD watcher, which a loaded CI machine was seen to miss: the wait
    ran out although the process had gone. ``waitpid(WNOHANG)`` asks the kernel (gevent's own
    version returns the status its watcher already reaped). Fails naming the process state
    when it really is still running."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            pid, status = os.waitpid(proc.pid, os.WNOHANG)
        except ChildProcessError:  # reaped already (by gevent's watcher): Popen has the code
            return proc.wait(timeout=5)
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            return proc.returncode
        if time.monotonic() > deadline:
            try:
                state = next(line for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines()
                             if line.startswith("State:"))
            except (OSError, StopIteration):
                state = "State: unknown"
            proc.kill()
            raise AssertionError(f"pid {proc.pid} still running {timeout} s after the signal ({state})")
        time.sleep(0.05)


def undo_gevent_patching(monkeypatch) -> None:
    """pyinfra_cli (imported by other test modules) runs gevent's monkey.patch_all() late: TLS
    contexts built from urllib3's pre-patch SSLContext then recurse forever, and gevent's
    subprocess/waitpid slow down spawning real servers. Undo the patching for one test
    (``monkeypatch`` restores it afterwards)."""
    try:
        from gevent import monkey
    except ImportError:
        return
    for name, originals in list(monkey.saved.items()):
        if name.startswith("_gevent"):  # gevent's own bookkeeping, not a patched module
            continue
        module = importlib.import_module(name)
        for attr, original in originals.items():
            monkeypatch.setattr(module, attr, original, raising=False)


def free_port_on(address: str) -> int:
    """A TCP port free on ``address`` now (the OS picks it)."""
    with socket.socket() as s:
        s.bind((address, 0))
        return s.getsockname()[1]

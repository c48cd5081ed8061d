"""Paths shared by the tests (a module with a unique name: several conftest.py exist)."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# Real recordings (nvidia-smi from an H100/H200, vendor Redfish payloads) live beside the checkout.
FIXTURES = REPO.parent / "shared" / "fixtures"


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

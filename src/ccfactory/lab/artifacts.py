"""The lab's artifact server: stand-in artifacts, their BOM overlay, and an HTTP server for them.

``build(lab_dir)`` packs every lab stand-in (``ccfactory.lab.standins``) into a
deterministic tarball in ``<lab_dir>/artifacts/`` (fixed mtimes, owner root/0, sorted
members, gzip header without name or time: the same sources give the same sha256) and
writes ``<lab_dir>/bom-lab.toml``, the overlay ``ccfactory.bom.bom_for`` lays over the
packaged BOM for lab hosts only. ``start(lab_dir)`` builds, then serves
``<lab_dir>/artifacts`` over HTTP on the lab bridge (``10.199.0.1:8080``) as a background
process (PID in ``<lab_dir>/run/artifacts.pid``, log in ``<lab_dir>/logs/artifacts.log``);
``stop(lab_dir)`` ends it. The controller fetches artifacts from there like from any
upstream URL, and the sha256 in the overlay decides.

Adding a stand-in is one ``StandIn`` entry in ``standins()``: the artifact name it
replaces, version, file name, top directory and a function returning its files.

Example::

    bom_path = build(lab)                       # <lab>/bom-lab.toml
    start(lab)                                  # http://10.199.0.1:8080/<file>
    stop(lab)
"""

from __future__ import annotations

import argparse
import functools
import gzip
import io
import json
import lzma
import os
import sys
import tarfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from hashlib import sha256
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import tomli_w

from ccfactory.bom import LAB_BOM
from ccfactory.lab import proc
from ccfactory.lab.errors import LabError
from ccfactory.lab.network import LAB_GATEWAY

DEFAULT_ADDRESS = LAB_GATEWAY  # 10.199.0.1, on the lab bridge ccflab0 (created by `lab up`)
DEFAULT_PORT = 8080
SOURCE = "ccfactory lab stand-in"
FIXED_MTIME = 1767225600  # 2026-01-01T00:00:00Z: every member of every stand-in tarball
SERVER_MODULE = "ccfactory.lab.artifacts"
START_TIMEOUT = 10.0


@dataclass(frozen=True)
class StandIn:
    """One stand-in artifact: what it replaces in the BOM and how to produce its files."""

    name: str  # the BOM artifact it replaces, e.g. "gpu-admin-tools"
    version: str
    filename: str  # .tar.gz or .tar.xz
    top_dir: str  # the single top directory inside the tarball
    files: Callable[[], Mapping[str, bytes]]  # relative path -> content
    executables: frozenset[str] = field(default_factory=frozenset)  # relative paths packed 0755
    note: str = ""


def _gpu_admin_tools() -> StandIn:
    from ccfactory.lab.standins import gpu_admin_tools_version, tree_files

    version = gpu_admin_tools_version()
    return StandIn(
        name="gpu-admin-tools",
        version=version,
        filename=f"gpu-admin-tools-{version}.tar.gz",
        top_dir=f"gpu-admin-tools-{version}",  # like a GitHub tag archive
        files=lambda: tree_files("gpu_admin_tools"),
        executables=frozenset({"nvidia_gpu_tools.py"}),
        note="lab only: NVIDIA gpu-admin-tools' CLI acting on the lab node's simulated GPUs",
    )


def standins() -> tuple[StandIn, ...]:
    """Every lab stand-in, one entry each: what cannot run here, served as if from upstream."""
    from ccfactory.lab.standins.kata_static import standin as kata_static_standin

    # Trustee is an image (upstream's form), served by the lab registry (ccfactory.lab.registry)
    return (_gpu_admin_tools(), kata_static_standin())


# ------------------------------------------------------------------ deterministic tarballs


def tarball_bytes(standin: StandIn) -> bytes:
    """The stand-in's tarball, byte for byte the same for the same files (pure)."""
    files = dict(standin.files())
    dirs = {standin.top_dir}
    for rel in files:
        parts = rel.split("/")[:-1]
        dirs |= {"/".join([standin.top_dir, *parts[:i]]) for i in range(1, len(parts) + 1)}
    entries = [(d, None) for d in dirs] + [(f"{standin.top_dir}/{rel}", data) for rel, data in files.items()]
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for path, data in sorted(entries, key=lambda e: e[0]):
            info = tarfile.TarInfo(path)
            info.mtime = FIXED_MTIME
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            if data is None:
                info.type = tarfile.DIRTYPE
                info.mode = 0o755
                tar.addfile(info)
            else:
                info.size = len(data)
                info.mode = 0o755 if path.removeprefix(standin.top_dir + "/") in standin.executables else 0o644
                tar.addfile(info, io.BytesIO(data))
    if standin.filename.endswith((".tar.gz", ".tgz")):
        return gzip.compress(raw.getvalue(), compresslevel=9, mtime=0)
    if standin.filename.endswith((".tar.xz", ".txz")):
        return lzma.compress(raw.getvalue(), preset=6)
    raise LabError(f"stand-in {standin.name}: unsupported archive type for {standin.filename} (use .tar.gz or .tar.xz)")


def _write_if_changed(path: Path, data: bytes, mode: int = 0o644) -> bool:
    if path.is_file() and path.read_bytes() == data:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_bytes(data)
    tmp.chmod(mode)
    tmp.replace(path)
    return True


def artifacts_dir(lab_dir: str | os.PathLike) -> Path:
    return Path(lab_dir) / "artifacts"


def base_url(address: str = DEFAULT_ADDRESS, port: int = DEFAULT_PORT) -> str:
    host = f"[{address}]" if ":" in address else address
    return f"http://{host}:{port}"


def bom_overlay(entries: list[dict]) -> str:
    """Text of ``bom-lab.toml`` (same schema as ``ccfactory/bom/bom.toml``)."""
    header = (
        "# Written by ccfactory.lab.artifacts for this lab: stand-in artifacts served by the lab's\n"
        "# artifact server. Only hosts validated as nodes of this lab use it (ccfactory.bom.bom_for).\n"
    )
    return header + tomli_w.dumps({"schema_version": 1, "artifact": entries})


IMAGE_ENTRIES = "registry/bom-entries.json"  # written by ccfactory.lab.registry.start


def build(lab_dir: str | os.PathLike, url: str | None = None) -> Path:
    """Pack every stand-in into ``<lab_dir>/artifacts/`` and write ``<lab_dir>/bom-lab.toml``.

    ``url``: base URL the artifacts are served from (default ``http://10.199.0.1:8080``).
    Idempotent: unchanged files are not rewritten; files of the artifacts directory that
    no stand-in produces any more are removed. Returns the path of ``bom-lab.toml``.
    """
    lab = Path(lab_dir)
    out = artifacts_dir(lab)
    out.mkdir(parents=True, exist_ok=True)
    root = (url or base_url()).rstrip("/")
    entries = []
    for s in standins():
        data = tarball_bytes(s)
        _write_if_changed(out / s.filename, data)
        entry = {
            "name": s.name,
            "version": s.version,
            "filename": s.filename,
            "url": f"{root}/{s.filename}",
            "sha256": sha256(data).hexdigest(),
            "pin": "lab-stand-in",
            "source": SOURCE,
        }
        if s.note:
            entry["note"] = s.note
        entries.append(entry)
    wanted = {e["filename"] for e in entries}
    images = lab / IMAGE_ENTRIES
    if images.is_file():
        entries += json.loads(images.read_text())
    for stale in out.iterdir():
        if stale.is_file() and stale.name not in wanted:
            stale.unlink()
    bom_path = lab / LAB_BOM
    _write_if_changed(bom_path, bom_overlay(entries).encode())
    return bom_path


# ------------------------------------------------------------------ the server process


def _run_dir(lab: Path) -> Path:
    return lab / "run"


def pidfile(lab_dir: str | os.PathLike) -> Path:
    return _run_dir(Path(lab_dir)) / "artifacts.pid"


def _state_file(lab: Path) -> Path:
    return _run_dir(lab) / "artifacts.json"


def _logfile(lab: Path) -> Path:
    return lab / "logs" / "artifacts.log"


def status(lab_dir: str | os.PathLike) -> dict | None:
    """``{"pid", "address", "port", "url"}`` of the running server, or None."""
    lab = Path(lab_dir)
    pid = proc.read_pidfile(pidfile(lab))
    if not pid:
        return None
    try:
        state = json.loads(_state_file(lab).read_text())
    except (OSError, ValueError):
        state = {}
    return {**state, "pid": pid}


def _env() -> dict[str, str]:
    # the server must import this very ccfactory, installed or from a checkout
    pkg_root = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ)
    env["PYTHONPATH"] = pkg_root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def start(lab_dir: str | os.PathLike, address: str = DEFAULT_ADDRESS, port: int = DEFAULT_PORT) -> dict:
    """Build the artifacts, then serve them on ``address:port`` (idempotent); returns ``status()``.

    The address must exist on this machine (``10.199.0.1`` is the lab bridge that
    ``lab up`` creates; tests use ``127.0.0.1``). Raises ``LabError`` with the server's
    log when it does not come up.
    """
    lab = Path(lab_dir).resolve()
    url = base_url(address, port)
    build(lab, url)
    current = status(lab)
    if current and current.get("address") == address and current.get("port") == port and proc.listening(address, port):
        return current
    stop(lab)
    root = artifacts_dir(lab)
    argv = [sys.executable, "-m", SERVER_MODULE, "serve", "--root", str(root), "--address", address, "--port", str(port)]
    log = _logfile(lab)
    offset = log.stat().st_size if log.exists() else 0
    pid = proc.spawn(argv, logfile=log, env=_env())
    proc.write_pidfile(pidfile(lab), pid)
    ready = f"serving {root} on {url}"
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        with open(log, "rb") as f:
            f.seek(offset)
            text = f.read().decode(errors="replace")
        if ready in text:
            break
        if not proc.alive(pid) or time.monotonic() > deadline:
            proc.stop(pid, timeout=2, what="lab artifact server")
            pidfile(lab).unlink(missing_ok=True)
            tail = " | ".join(text.strip().splitlines()[-2:]) or "no output"
            raise LabError(f"lab artifact server did not start on {address}:{port} (log {log}): {tail}")
        time.sleep(0.05)
    state = {"address": address, "port": port, "url": url, "root": str(root)}
    _state_file(lab).write_text(json.dumps(state, indent=2) + "\n")
    return {**state, "pid": pid}


def stop(lab_dir: str | os.PathLike) -> None:
    """Stop the server this lab started (by its recorded PID); no-op when none runs."""
    lab = Path(lab_dir).resolve()
    proc.stop(proc.read_pidfile(pidfile(lab)), timeout=5, what="lab artifact server")
    pidfile(lab).unlink(missing_ok=True)
    _state_file(lab).unlink(missing_ok=True)


class _Handler(SimpleHTTPRequestHandler):
    """Files of the artifacts directory, GET/HEAD only, no directory listings."""

    def list_directory(self, path):  # noqa: ARG002 - stdlib signature
        self.send_error(404, "No listing")
        return None


def serve(root: Path, address: str, port: int) -> None:
    """Serve ``root`` forever (the background process ``start`` runs)."""
    handler = functools.partial(_Handler, directory=str(root))
    with ThreadingHTTPServer((address, port), handler) as httpd:
        print(f"serving {root} on {base_url(address, port)}", flush=True)
        httpd.serve_forever()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m {SERVER_MODULE}")
    sub = parser.add_subparsers(dest="action", required=True)
    srv = sub.add_parser("serve", help="serve a directory over HTTP (what start() runs)")
    srv.add_argument("--root", required=True, type=Path)
    srv.add_argument("--address", default=DEFAULT_ADDRESS)
    srv.add_argument("--port", type=int, default=DEFAULT_PORT)
    bld = sub.add_parser("build", help="build the stand-in artifacts and bom-lab.toml")
    bld.add_argument("--lab-dir", required=True, type=Path)
    bld.add_argument("--url", default=None)
    args = parser.parse_args(argv)
    if args.action == "serve":
        serve(args.root, args.address, args.port)
        return 0
    print(build(args.lab_dir, args.url))
    return 0


if __name__ == "__main__":
    sys.exit(main())

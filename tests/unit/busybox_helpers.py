"""Debian's busybox-static, as the attestation smoke image holds it, for running the in-guest
workload on this machine (helpers, no tests)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from ccfactory.verify.attestation import APPLETS


def busybox_bin(work: Path) -> Path:
    """A directory of the image's applets (symlinks to busybox): ``apt-get download busybox-static``
    (what the node does), else a busybox on PATH; skips the test when neither is available."""
    r = subprocess.run(["apt-get", "download", "busybox-static"], cwd=work, capture_output=True, text=True)
    debs = list(work.glob("busybox-static_*.deb"))
    if r.returncode == 0 and debs and shutil.which("dpkg-deb"):
        subprocess.run(["dpkg-deb", "-x", str(debs[0]), str(work / "x")], check=True)
        binary = work / "x" / "bin" / "busybox"
    elif shutil.which("busybox"):
        binary = Path(shutil.which("busybox"))
    else:
        pytest.skip("neither apt-get download busybox-static nor a busybox binary is available here")
    bindir = work / "bin"
    bindir.mkdir()
    for applet in APPLETS:
        (bindir / applet).symlink_to(binary)
    return bindir

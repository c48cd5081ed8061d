"""The shared unpack command of BOM tarballs, run for real with sh on real tarballs:
checksum checked on the host, the tree checked, the old tree replaced only when all passed."""

from __future__ import annotations

import hashlib
import io
import subprocess
import tarfile
from pathlib import Path

import pytest

from ccfactory.operations.artifacts import INSTALLED_MARKER, verified_unpack


def tarball(path: Path, files: dict[str, tuple[bytes, int]]) -> str:
    with tarfile.open(path, "w:gz") as tar:
        for name, (data, mode) in files.items():
            info = tarfile.TarInfo(f"tool-1.0/{name}")  # one top directory, as release archives have
            info.size, info.mode = len(data), mode
            tar.addfile(info, io.BytesIO(data))
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run(command) -> subprocess.CompletedProcess:
    return subprocess.run(["sh", "-c", command.get_raw_value()], capture_output=True, text=True)


@pytest.fixture
def installed(tmp_path):
    dest = tmp_path / "opt" / "tool"
    dest.mkdir(parents=True)
    (dest / "old").write_text("previous tree\n")
    return dest


def test_a_good_tarball_replaces_the_tree_whole_with_its_marker(tmp_path, installed):
    archive = tmp_path / "tool.tar.gz"
    sha = tarball(archive, {"bin/tool": (b"#!/bin/sh\n", 0o6777), "README": (b"hi\n", 0o666)})
    r = run(verified_unpack(str(archive), str(installed), sha, entry="bin/tool", executable=True))
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in installed.iterdir()) == sorted(["bin", "README", INSTALLED_MARKER])
    assert (installed / INSTALLED_MARKER).read_text().strip() == sha
    mode = (installed / "bin" / "tool").stat().st_mode
    assert mode & 0o022 == 0 and mode & 0o6000 == 0, f"{oct(mode)}: no group/other write, no setuid/setgid"
    assert mode & 0o100, "still executable"
    assert not Path(f"{installed}.ccfactory-new").exists()


@pytest.mark.parametrize(
    "case",
    ["wrong checksum", "entry missing", "entry not executable"],
)
def test_a_bad_tarball_leaves_the_previous_tree_untouched(tmp_path, installed, case):
    archive = tmp_path / "tool.tar.gz"
    files = {"bin/tool": (b"#!/bin/sh\n", 0o644 if case == "entry not executable" else 0o755)}
    if case == "entry missing":
        files = {"bin/other": (b"x", 0o755)}
    sha = tarball(archive, files)
    if case == "wrong checksum":
        sha = "0" * 64
    r = run(verified_unpack(str(archive), str(installed), sha, entry="bin/tool", executable=True))
    assert r.returncode != 0
    assert [p.name for p in installed.iterdir()] == ["old"], "the previous tree is still in place"
    if case == "wrong checksum":
        assert "FAILED" in r.stdout + r.stderr and not Path(f"{installed}.ccfactory-new").exists()

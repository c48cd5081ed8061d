"""Lab artifacts: deterministic stand-in tarballs, the BOM overlay, and the artifact server."""

from __future__ import annotations

import hashlib
import io
import socket
import tarfile
import urllib.request

import pytest

from ccfactory.bom import BomError, bom_for, parse_bom
from ccfactory.bom.fetch import fetch_artifact
from ccfactory.config import ArtifactSource
from ccfactory.lab import artifacts
from support import free_port_on


def _free_port() -> int:
    return free_port_on("127.0.0.1")


def test_tarball_is_deterministic_and_has_the_real_layout(tmp_path):
    a = artifacts.build(tmp_path / "a")
    b = artifacts.build(tmp_path / "b")
    # one file per stand-in; this test looks at gpu-admin-tools'
    (fa,) = (tmp_path / "a" / "artifacts").glob("gpu-admin-tools-*")
    (fb,) = (tmp_path / "b" / "artifacts").glob("gpu-admin-tools-*")
    assert fa.read_bytes() == fb.read_bytes()
    assert parse_bom(a.read_text(), lab_overlay=True) == parse_bom(b.read_text(), lab_overlay=True)
    mtime = fa.stat().st_mtime
    artifacts.build(tmp_path / "a")  # unchanged: not rewritten
    assert fa.stat().st_mtime == mtime
    with tarfile.open(fa) as tar:
        members = tar.getmembers()
    top = members[0].name
    assert top.startswith("gpu-admin-tools-v2025.10.20o-ccfactory-lab.1") and members[0].isdir()
    names = [m.name.removeprefix(top + "/") for m in members[1:]]
    assert "nvidia_gpu_tools.py" in names and "cli/main.py" in names and "cli/__init__.py" in names
    assert names == sorted(names)
    assert {(m.mtime, m.uid, m.gid, m.uname) for m in members} == {(artifacts.FIXED_MTIME, 0, 0, "root")}
    entry = next(m for m in members if m.name.endswith("/nvidia_gpu_tools.py"))
    assert entry.mode == 0o755


def test_bom_overlay_schema(tmp_path):
    path = artifacts.build(tmp_path, url="https://artifacts.lab.invalid:8443")
    bom = parse_bom(path.read_text(), origin=str(path))
    a = bom.artifact("gpu-admin-tools")  # one entry per stand-in
    data = (tmp_path / "artifacts" / a.filename).read_bytes()
    assert (a.name, a.source) == ("gpu-admin-tools", "ccfactory lab stand-in")
    assert a.sha256 == hashlib.sha256(data).hexdigest()
    assert a.url == f"https://artifacts.lab.invalid:8443/{a.filename}"
    assert a.version in a.filename


def test_overlay_with_the_lab_server_url_is_used_for_lab_hosts_only(tmp_path):
    artifacts.build(tmp_path)
    a = bom_for(True, str(tmp_path)).artifact("gpu-admin-tools")
    assert a.url == f"http://10.199.0.1:8080/{a.filename}"
    with pytest.raises(BomError, match="must be an https:// URL"):
        parse_bom((tmp_path / "bom-lab.toml").read_text())  # plain http is for the lab overlay only
    # any other host gets the packaged pin (NVIDIA's commit), never the stand-in
    assert bom_for(False, str(tmp_path)).artifact("gpu-admin-tools").kind == "git"


def test_server_serves_the_artifacts_and_stops(tmp_path):
    port = _free_port()
    info = artifacts.start(tmp_path, "127.0.0.1", port)
    try:
        assert artifacts.start(tmp_path, "127.0.0.1", port)["pid"] == info["pid"]  # idempotent
        text = (tmp_path / "bom-lab.toml").read_text()
        assert f'url = "http://127.0.0.1:{port}/gpu-admin-tools-' in text
        bom = parse_bom(text, lab_overlay=True)
        a = bom.artifact("gpu-admin-tools")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/{a.filename}", timeout=5) as r:
            assert hashlib.sha256(r.read()).hexdigest() == a.sha256
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5)  # no listings
        # the controller's verifying fetcher, pointed at the server as a mirror
        source = ArtifactSource(kind="mirror", mirror_url=f"http://127.0.0.1:{port}", cache_dir=str(tmp_path / "cache"))
        path = fetch_artifact(a, source)
        with tarfile.open(fileobj=io.BytesIO(path.read_bytes())) as tar:
            assert any(n.endswith("/nvidia_gpu_tools.py") for n in tar.getnames())
    finally:
        artifacts.stop(tmp_path)
    assert artifacts.status(tmp_path) is None
    assert not artifacts.pidfile(tmp_path).exists()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()


def test_start_reports_a_server_that_cannot_bind(tmp_path):
    from ccfactory.lab.errors import LabError

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(LabError, match=f"did not start on 127.0.0.1:{port}.*Address already in use"):
            artifacts.start(tmp_path, "127.0.0.1", port)
    assert artifacts.status(tmp_path) is None

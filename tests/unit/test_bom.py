"""The BOM file and the artifact fetcher: pinned, verified, cached, never half-written."""

from __future__ import annotations

import hashlib
import http.server
import threading
from pathlib import Path

import pytest

from ccfactory.bom import Artifact, BomError, load_bom, parse_bom
from ccfactory.bom.fetch import ArtifactFetchError, ChecksumMismatch, cache_path, fetch_artifact
from ccfactory.config import ArtifactSource

PAYLOAD = b"pretend tarball\n" * 1000
SHA = hashlib.sha256(PAYLOAD).hexdigest()


def artifact(**kw) -> Artifact:
    base = dict(
        name="demo", version="1.0", filename="demo-1.0.tar.gz", url="https://example.invalid/demo-1.0.tar.gz",
        sha256=SHA, source="test",
    )
    return Artifact(**{**base, **kw})


def test_packaged_bom_is_valid_and_pins_everything():
    bom = load_bom()
    assert bom.artifacts, "the BOM pins at least one artifact"
    for a in bom.artifacts:
        assert len(a.sha256) == 64 and a.source
    assert bom.artifact("kata-static").filename.endswith(".tar.zst")


def test_unpinned_artifact_says_why():
    with pytest.raises(KeyError, match="gpu-admin-tools .* is not pinned in the BOM: NVIDIA publishes tags only"):
        load_bom().artifact("gpu-admin-tools")


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ('name="a"\nversion="1"\nfilename="a.tgz"\nurl="https://x/a.tgz"\nsource="s"', "a: sha256: missing"),
        ('name="a"\nversion="1"\nfilename="a.tgz"\nurl="https://x/a.tgz"\nsha256="abc"\nsource="s"', "a: sha256: Value error, must be 64"),
        (f'name="a"\nversion="1"\nfilename="../a"\nurl="https://x/a"\nsha256="{SHA}"\nsource="s"', "a: filename: Value error, must be a plain"),
        (f'name="a"\nversion="1"\nfilename="a"\nurl="http://x/a"\nsha256="{SHA}"\nsource="s"', "a: url: Value error, must be an https"),
        (f'name="a"\nversion="1"\nfilename="a"\nurl="https://x/a"\nsha256="{SHA}"\nsource="s"\ncolour=1', "a: colour: Extra inputs"),
    ],
)
def test_bad_bom_entries_are_named(entry, message):
    with pytest.raises(BomError, match=message):
        parse_bom(f"schema_version = 1\n[[artifact]]\n{entry}\n")


def test_duplicate_and_unknown_keys():
    entry = f'[[artifact]]\nname="a"\nversion="1"\nfilename="a"\nurl="https://x/a"\nsha256="{SHA}"\nsource="s"\n'
    with pytest.raises(BomError, match="a: listed twice"):
        parse_bom(entry + entry)
    with pytest.raises(BomError, match="artefacts: unknown top-level key"):
        parse_bom("artefacts = 1\n")


def test_fetch_from_local_dir_then_cache(tmp_path):
    src = tmp_path / "mirror"
    src.mkdir()
    (src / "demo-1.0.tar.gz").write_bytes(PAYLOAD)
    source = ArtifactSource(kind="local", directory=str(src), cache_dir=str(tmp_path / "cache"))
    path = fetch_artifact(artifact(), source)
    assert path == cache_path(artifact(), source) and path.read_bytes() == PAYLOAD
    (src / "demo-1.0.tar.gz").unlink()  # the second call must come from the cache
    assert fetch_artifact(artifact(), source) == path


def test_checksum_mismatch_refuses_and_leaves_nothing(tmp_path):
    src = tmp_path / "mirror"
    src.mkdir()
    (src / "demo-1.0.tar.gz").write_bytes(PAYLOAD + b"tampered")
    cache = tmp_path / "cache"
    source = ArtifactSource(kind="local", directory=str(src), cache_dir=str(cache))
    with pytest.raises(ChecksumMismatch, match="does not match the BOM's .* the file was deleted"):
        fetch_artifact(artifact(), source)
    assert [p for p in cache.rglob("*") if p.is_file()] == []


def test_corrupt_cache_entry_is_replaced(tmp_path):
    src = tmp_path / "mirror"
    src.mkdir()
    (src / "demo-1.0.tar.gz").write_bytes(PAYLOAD)
    source = ArtifactSource(kind="local", directory=str(src), cache_dir=str(tmp_path / "cache"))
    target = cache_path(artifact(), source)
    target.parent.mkdir(parents=True)
    target.write_bytes(b"bit rot")
    assert fetch_artifact(artifact(), source).read_bytes() == PAYLOAD


class _Handler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def http_mirror(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), lambda *a: _Handler(*a, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}/pub"
    server.shutdown()


def test_fetch_from_mirror_url(http_mirror, tmp_path):
    root, url = http_mirror
    (root / "pub").mkdir()
    (root / "pub" / "demo-1.0.tar.gz").write_bytes(PAYLOAD)
    source = ArtifactSource(kind="mirror", mirror_url=url, cache_dir=str(tmp_path / "cache"))
    assert fetch_artifact(artifact(), source).read_bytes() == PAYLOAD


def test_mirror_404_is_clear(http_mirror, tmp_path):
    _, url = http_mirror
    source = ArtifactSource(kind="mirror", mirror_url=url, cache_dir=str(tmp_path / "cache"))
    with pytest.raises(ArtifactFetchError, match=r"/pub/demo-1.0.tar.gz: HTTP 404"):
        fetch_artifact(artifact(), source)


def test_missing_local_file_is_clear(tmp_path):
    source = ArtifactSource(kind="local", directory=str(tmp_path), cache_dir=str(tmp_path / "c"))
    with pytest.raises(ArtifactFetchError, match="cannot read .*demo-1.0.tar.gz: No such file"):
        fetch_artifact(artifact(), source)


def test_lab_overlay_only_for_lab_hosts(tmp_path):
    from ccfactory.bom import bom_for

    (tmp_path / "bom-lab.toml").write_text(
        "schema_version = 1\n[[artifact]]\nname = \"gpu-admin-tools\"\nversion = \"lab\"\n"
        f"filename = \"gpu-admin-tools-lab.tar.gz\"\nurl = \"https://lab.invalid/g.tgz\"\nsha256 = \"{SHA}\"\n"
        "source = \"lab stand-in\"\n"
    )
    lab = bom_for(True, str(tmp_path))
    assert lab.artifact("gpu-admin-tools").version == "lab"
    assert lab.artifact("kata-static") == load_bom().artifact("kata-static")
    with pytest.raises(KeyError, match="not pinned"):
        bom_for(False, str(tmp_path)).artifact("gpu-admin-tools")


def test_plain_http_only_in_lab_overlay():
    entry = f'[[artifact]]\nname="a"\nversion="1"\nfilename="a"\nurl="http://10.199.0.1:8080/a"\nsha256="{SHA}"\nsource="s"\n'
    with pytest.raises(BomError, match="url: Value error, must be an https"):
        parse_bom(entry)
    assert parse_bom(entry, lab_overlay=True).artifact("a").url.startswith("http://")


def test_artifact_for_host_reports_problems_instead_of_raising(tmp_path):
    from ccfactory.bom.fetch import artifact_for_host
    from ccfactory.config import load_node_config

    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the cache directory should be")
    local = tmp_path / "local"
    local.mkdir()
    data = {"tee": "none", "artifact_source": "local", "artifact_dir": str(local), "artifact_cache_dir": str(blocker / "cache")}
    cfg = load_node_config("k1", ("kbs",), data, check_files=False)
    artifact, path, problem = artifact_for_host(cfg, "kata-static")
    assert artifact is not None and path is None
    assert problem.startswith(f"kata-static: cannot fetch it into the cache {blocker / 'cache'}:"), problem
    artifact, path, problem = artifact_for_host(cfg, "gpu-admin-tools")  # pending: not pinned
    assert artifact is None and path is None and "is not pinned in the BOM" in problem

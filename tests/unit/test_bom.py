"""The BOM file and the artifact fetcher: pinned, verified, cached, never half-written."""

from __future__ import annotations

import hashlib
import http.server
import threading

import pytest

from ccfactory.bom import Artifact, BomError, load_bom, parse_bom
from ccfactory.bom.fetch import ArtifactFetchError, ChecksumMismatch, cache_path, fetch_artifact
from ccfactory.config import ArtifactSource

PAYLOAD = b"pretend tarball\n" * 1000
SHA = hashlib.sha256(PAYLOAD).hexdigest()


def artifact(**kw) -> Artifact:
    base = dict(
        name="demo", version="1.0", filename="demo-1.0.tar.gz", url="https://example.invalid/demo-1.0.tar.gz",
        sha256=SHA, source="test", pin="upstream-checksum-file",
    )
    return Artifact(**{**base, **kw})


def test_packaged_bom_is_valid_and_pins_everything():
    bom = load_bom()
    assert bom.artifacts, "the BOM pins at least one artifact"
    for a in bom.artifacts:
        assert a.source and a.pin
        assert len(a.sha256) == 64 if a.kind == "file" else a.digest or a.commit
    assert bom.artifact("kata-static").filename.endswith(".tar.zst")


@pytest.mark.parametrize("name", ["trustee", "nydus-snapshotter"])
def test_unpinned_artifact_says_why_and_how_to_pin(name):
    with pytest.raises(KeyError) as err:
        load_bom().artifact(name)
    message = err.value.args[0]
    assert f"{name} " in message and "is not pinned in the BOM" in message
    assert f"ccfactory bom pin {name} --site-bom FILE" in message and "bom_site_file" in message


def test_trustee_is_an_image_to_pin_by_digest():
    (entry,) = [u for u in load_bom().unpinned if u.name == "trustee"]
    assert entry.kind == "oci-image"
    assert entry.reference == "ghcr.io/confidential-containers/key-broker-service:built-in-as-v0.21.0"


DIGEST = "sha256:" + "ab" * 32


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ('kind="oci-image"\nimage="ghcr.io/org/kbs"\ntag="v1"', "a: digest: missing .an? oci-image artifact needs one."),
        (f'kind="oci-image"\nimage="ghcr.io/org/kbs:v1"\ntag="v1"\ndigest="{DIGEST}"', "image: must be registry/repository"),
        (f'kind="oci-image"\nimage="ghcr.io/org/kbs@{DIGEST}"\ntag="v1"\ndigest="{DIGEST}"', "image: must be"),
        ('kind="oci-image"\nimage="ghcr.io/org/kbs"\ntag="v1"\ndigest="sha256:abc"', "digest: must be sha256:"),
        (f'kind="oci-image"\nimage="ghcr.io/org/kbs"\ntag="v1"\ndigest="{DIGEST}"\nsha256="{SHA}"', "sha256: not a field of a oci-image artifact"),
        (f'kind="oci-image"\nimage="ghcr.io/org/kbs"\ntag="v1 $(id)"\ndigest="{DIGEST}"', "tag: must be an OCI/git tag"),
        ('kind="git"\nurl="https://x/r"\ntag="v1"\ncommit="abc"', "commit: must be a full 40"),
    ],
)
def test_bad_image_and_git_entries(entry, message):
    with pytest.raises(BomError, match=message):
        parse_bom(f'schema_version = 1\n[[artifact]]\nname="a"\nversion="1"\npin="oci-digest"\nsource="s"\n{entry}\n')


def test_an_image_entry_runs_by_digest():
    bom = parse_bom(f'[[artifact]]\nname="trustee"\nversion="v0.21.0"\nkind="oci-image"\npin="oci-digest"\n'
                    f'source="registry"\nimage="ghcr.io/org/kbs"\ntag="built-in-as-v0.21.0"\ndigest="{DIGEST}"\n')  # fmt: skip
    assert bom.artifact("trustee").reference == f"ghcr.io/org/kbs@{DIGEST}"


def test_a_site_bom_pins_an_unpinned_entry(tmp_path):
    from ccfactory.bom import bom_for

    site = tmp_path / "site-bom.toml"
    site.write_text(f'[[artifact]]\nname="trustee"\nversion="v0.21.0"\nkind="oci-image"\npin="oci-digest"\n'
                    f'source="registry"\nimage="ghcr.io/org/kbs"\ntag="built-in-as-v0.21.0"\ndigest="{DIGEST}"\n')  # fmt: skip
    assert bom_for(False, None, str(site)).artifact("trustee").digest == DIGEST
    with pytest.raises(KeyError, match="not pinned"):
        bom_for(False, None, None).artifact("trustee")
    site.write_text('[[artifact]]\nname="trustee"\nversion="v0.21.0"\nkind="oci-image"\n')
    with pytest.raises(BomError, match="trustee: pin: missing"):
        bom_for(False, None, str(site))


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ('name="a"\nversion="1"\nfilename="a.tgz"\nurl="https://x/a.tgz"\nsource="s"\npin="package-index-hash"', "a: sha256: missing .a file artifact needs one."),
        ('name="a"\nversion="1"\nfilename="a.tgz"\nurl="https://x/a.tgz"\nsha256="abc"\nsource="s"\npin="package-index-hash"', "a: sha256: must be 64"),
        (f'name="a"\nversion="1"\nfilename="../a"\nurl="https://x/a"\nsha256="{SHA}"\nsource="s"\npin="package-index-hash"', "a: filename: must be a plain"),
        (f'name="a"\nversion="1"\nfilename="a"\nurl="http://x/a"\nsha256="{SHA}"\nsource="s"\npin="package-index-hash"', "a: url: must be an https"),
        (f'name="a"\nversion="1"\nfilename="a"\nurl="https://x/a"\nsha256="{SHA}"\nsource="s"\npin="package-index-hash"\ncolour=1', "a: colour: Extra inputs"),
        (f'name="a"\nversion="1"\nfilename="a"\nurl="https://x/a"\nsha256="{SHA}"\nsource="s"', "a: pin: missing"),
        (f'name="a"\nversion="1"\nfilename="a"\nurl="https://x/a"\nsha256="{SHA}"\nsource="s"\npin="trust-me"', "a: pin: Input should be"),
    ],
)
def test_bad_bom_entries_are_named(entry, message):
    with pytest.raises(BomError, match=message):
        parse_bom(f"schema_version = 1\n[[artifact]]\n{entry}\n")


def test_duplicate_and_unknown_keys():
    entry = f'[[artifact]]\nname="a"\nversion="1"\nfilename="a"\nurl="https://x/a"\nsha256="{SHA}"\nsource="s"\npin="package-index-hash"\n'
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
        "schema_version = 1\n[[artifact]]\nname = \"nydus-snapshotter\"\nversion = \"lab\"\n"
        f"filename = \"nydus-snapshotter-lab.tar.gz\"\nurl = \"https://lab.invalid/g.tgz\"\nsha256 = \"{SHA}\"\n"
        "source = \"lab stand-in\"\npin = \"lab-stand-in\"\n"
    )
    lab = bom_for(True, str(tmp_path))
    assert lab.artifact("nydus-snapshotter").version == "lab"
    assert lab.artifact("kata-static") == load_bom().artifact("kata-static")
    with pytest.raises(KeyError, match="not pinned"):
        bom_for(False, str(tmp_path)).artifact("nydus-snapshotter")


def test_plain_http_only_in_lab_overlay():
    entry = f'[[artifact]]\nname="a"\nversion="1"\nfilename="a"\nurl="http://10.199.0.1:8080/a"\nsha256="{SHA}"\nsource="s"\npin="lab-stand-in"\n'
    with pytest.raises(BomError, match="url: must be an https"):
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
    artifact, path, problem = artifact_for_host(cfg, "nydus-snapshotter")  # not pinned
    assert artifact is None and path is None and "is not pinned in the BOM" in problem

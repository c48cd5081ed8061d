"""``ccfactory bom pin``: pins resolved from upstream-shaped servers on this machine.

* OCI: a local HTTP server speaking the distribution API's manifest endpoint
  (distribution-spec v1.1 "Pulling manifests": ``HEAD /v2/<name>/manifests/<reference>``
  -> ``Docker-Content-Digest``) behind the docker token-auth challenge ghcr.io uses
  (401 + ``WWW-Authenticate: Bearer realm,service,scope`` -> ``GET realm?service&scope`` ->
  ``{"token"}``). It serves one manifest; the digest is sha256 of its bytes.
* git: a real local repository with an annotated tag (``git ls-remote`` + fetch + archive).
* file: a local HTTP server holding ``<file>.sha256sum`` in upstream's ``sha256sum`` format.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import subprocess
import threading

import pytest

from ccfactory.bom import bom_for, cli_main, parse_bom
from ccfactory.bom.pin import PinError, RegistryAccess, resolve_checksum_file, resolve_git, resolve_oci_digest

MANIFEST = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": []}).encode()
DIGEST = "sha256:" + hashlib.sha256(MANIFEST).hexdigest()


class Registry:
    def __init__(self, *, token_required=True, send_digest=True):
        self.seen = []
        registry = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _manifest(self, head: bool):
                registry.seen.append((self.command, self.path, self.headers.get("Authorization"), self.headers.get("Accept")))
                if self.path.startswith("/token?"):
                    body = json.dumps({"token": "anon-token"}).encode()
                    self.send_response(200)
                    self.send_header("content-length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                if token_required and self.headers.get("Authorization") != "Bearer anon-token":
                    self.send_response(401)
                    realm = f"http://127.0.0.1:{self.server.server_address[1]}/token"
                    self.send_header("WWW-Authenticate", f'Bearer realm="{realm}",service="reg",scope="repository:org/kbs:pull"')
                    self.send_header("content-length", "0")
                    self.end_headers()
                    return
                if self.path != "/v2/org/kbs/manifests/built-in-as-v0.21.0":
                    self.send_response(404)
                    self.send_header("content-length", "0")
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("content-type", "application/vnd.oci.image.index.v1+json")
                if send_digest:
                    self.send_header("Docker-Content-Digest", DIGEST)
                self.send_header("content-length", str(len(MANIFEST)))
                self.end_headers()
                if not head:
                    self.wfile.write(MANIFEST)

            def do_HEAD(self):
                self._manifest(True)

            def do_GET(self):
                self._manifest(False)

            def log_message(self, *a):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.host = f"127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def registry():
    r = Registry()
    yield r
    r.server.shutdown()


LAB = RegistryAccess(plain_http=True, timeout=5)


def test_oci_digest_through_the_token_challenge(registry):
    assert resolve_oci_digest(f"{registry.host}/org/kbs", "built-in-as-v0.21.0", LAB) == DIGEST
    methods = [(m, p.split("?")[0], auth) for m, p, auth, _ in registry.seen]
    assert methods == [("HEAD", "/v2/org/kbs/manifests/built-in-as-v0.21.0", None), ("GET", "/token", None),
                       ("HEAD", "/v2/org/kbs/manifests/built-in-as-v0.21.0", "Bearer anon-token")]  # fmt: skip
    assert "application/vnd.oci.image.index.v1+json" in registry.seen[0][3]
    assert "scope=repository%3Aorg%2Fkbs%3Apull" in registry.seen[1][1]


def test_digest_computed_from_the_body_when_the_header_is_missing():
    r = Registry(token_required=False, send_digest=False)
    try:
        assert resolve_oci_digest(f"{r.host}/org/kbs", "built-in-as-v0.21.0", LAB) == DIGEST
    finally:
        r.server.shutdown()


def test_unknown_tag_and_ambiguous_names(registry):
    with pytest.raises(PinError, match="no such tag"):
        resolve_oci_digest(f"{registry.host}/org/kbs", "v9.9.9", LAB)
    with pytest.raises(PinError, match="name the registry"):
        resolve_oci_digest("confidential-containers/kbs", "v1", LAB)
    with pytest.raises(PinError, match="cannot reach"):
        resolve_oci_digest("127.0.0.1:9/org/kbs", "v1", LAB)


def test_pin_command_writes_a_site_bom_the_stage_accepts(registry, tmp_path, monkeypatch, capsys):
    """The whole operator path: an unpinned trustee, one command, a BOM that resolves it."""
    import ccfactory.bom as bom_module

    site = tmp_path / "site-bom.toml"
    packaged = bom_module.load_bom()
    (trustee,) = [u for u in packaged.unpinned if u.name == "trustee"]
    local = trustee.model_copy(update={"reference": f"{registry.host}/org/kbs:built-in-as-v0.21.0"})
    monkeypatch.setattr(bom_module, "load_bom", lambda path=None: packaged.model_copy(
        update={"unpinned": tuple(local if u.name == "trustee" else u for u in packaged.unpinned)}))  # fmt: skip
    assert cli_main(["pin", "trustee", "--site-bom", str(site), "--registry-plain-http"]) == 0
    out = capsys.readouterr().out
    assert DIGEST in out and "bom_site_file" in out
    artifact = bom_for(False, None, str(site)).artifact("trustee")
    assert (artifact.kind, artifact.digest, artifact.pin) == ("oci-image", DIGEST, "oci-digest")
    assert artifact.reference == f"{registry.host}/org/kbs@{DIGEST}"
    # re-pinning keeps one entry
    assert cli_main(["pin", "trustee", "--site-bom", str(site), "--registry-plain-http"]) == 0
    assert len(parse_bom(site.read_text()).artifacts) == 1


def test_a_failed_pin_writes_nothing(tmp_path, capsys):
    site = tmp_path / "site-bom.toml"
    assert cli_main(["pin", "no-such-thing", "--site-bom", str(site)]) == 2
    assert "no artifact 'no-such-thing'" in capsys.readouterr().err and not site.exists()


@pytest.fixture
def git_repo(tmp_path):
    repo = tmp_path / "gpu-admin-tools"
    env = {"GIT_AUTHOR_DATE": "2025-10-21T00:00:00Z", "GIT_COMMITTER_DATE": "2025-10-21T00:00:00Z",
           "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@e", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@e",
           "PATH": "/usr/bin:/bin"}  # fmt: skip
    subprocess.run(["git", "init", "-q", str(repo)], check=True, env=env)
    (repo / "nvidia_gpu_tools.py").write_text("print('tool')\n")
    subprocess.run(["git", "-C", str(repo), "add", "."], check=True, env=env)
    subprocess.run(["git", "-C", str(repo), "commit", "-qm", "release"], check=True, env=env)
    subprocess.run(["git", "-C", str(repo), "tag", "-a", "v2025.10.20", "-m", "annotated"], check=True, env=env)
    return repo


def test_git_pin_is_the_peeled_commit_with_tree_and_tar_hash(git_repo):
    pin = resolve_git(f"file://{git_repo}", "v2025.10.20")
    head = subprocess.run(["git", "-C", str(git_repo), "rev-parse", "HEAD", "HEAD^{tree}"], capture_output=True,
                          text=True, check=True).stdout.split()  # fmt: skip
    assert (pin.commit, pin.tree) == (head[0], head[1])  # the commit, not the annotated tag object
    tar = subprocess.run(["git", "-C", str(git_repo), "archive", "--format=tar", head[0]], capture_output=True, check=True)
    assert pin.tar_sha256 == hashlib.sha256(tar.stdout).hexdigest()
    with pytest.raises(PinError, match="no tag v0"):
        resolve_git(f"file://{git_repo}", "v0")
    with pytest.raises(PinError, match="starts with '-'"):
        resolve_git(f"file://{git_repo}", "--upload-pack=evil")


@pytest.fixture
def release_server(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    handler = lambda *a: http.server.SimpleHTTPRequestHandler(*a, directory=str(root))  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_checksum_file_as_containerd_publishes_it(release_server):
    root, url = release_server
    name = "containerd-2.3.5-linux-amd64.tar.gz"
    sha = hashlib.sha256(b"tarball").hexdigest()
    (root / f"{name}.sha256sum").write_text(f"{sha}  {name}\n")  # sha256sum's own output format
    assert resolve_checksum_file(f"{url}/{name}", name) == sha
    (root / f"{name}.sha256sum").write_text(f"{sha}  other.tar.gz\n")
    with pytest.raises(PinError, match="no sha256 line for containerd"):
        resolve_checksum_file(f"{url}/{name}", name)
    with pytest.raises(PinError, match="HTTP 404"):
        resolve_checksum_file(f"{url}/missing.tar.gz", "missing.tar.gz")


def test_a_git_artifact_is_built_from_the_pinned_commit_and_verified(git_repo, tmp_path):
    """The controller makes the uncompressed git archive of the pinned commit, checks tree and
    sha256, and caches it; a repository whose commit has another tree is refused."""
    from ccfactory.bom import Artifact
    from ccfactory.bom.fetch import ChecksumMismatch, fetch_artifact
    from ccfactory.config import ArtifactSource

    pin = resolve_git(f"file://{git_repo}", "v2025.10.20")
    artifact = Artifact(name="gpu-admin-tools", version="v2025.10.20", kind="git", url=f"file://{git_repo}",
                        tag="v2025.10.20", commit=pin.commit, tree=pin.tree, sha256=pin.tar_sha256,
                        filename=f"gpu-admin-tools-{pin.commit[:12]}.tar", pin="git-commit+tar-sha256", source="test")  # fmt: skip
    source = ArtifactSource(cache_dir=str(tmp_path / "cache"))
    path = fetch_artifact(artifact, source)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == pin.tar_sha256
    import tarfile

    assert tarfile.open(path).getnames() == ["nvidia_gpu_tools.py"]  # no top directory: strip 0 on the node
    # air-gapped: the same tar from the artifact directory
    local = ArtifactSource(kind="local", directory=str(path.parent), cache_dir=str(tmp_path / "cache2"))
    assert fetch_artifact(artifact, local).read_bytes() == path.read_bytes()
    wrong = artifact.model_copy(update={"tree": "0" * 40, "sha256": "1" * 64})
    with pytest.raises(ChecksumMismatch, match="has tree .* not the BOM's 0000"):
        fetch_artifact(wrong, ArtifactSource(cache_dir=str(tmp_path / "cache3")))
    assert not list((tmp_path / "cache3").rglob("*.tar"))


def test_the_packaged_gpu_admin_tools_pin_is_nvidias_commit():
    from ccfactory.bom import load_bom

    a = load_bom().artifact("gpu-admin-tools")
    assert (a.kind, a.pin, a.commit) == ("git", "git-commit+tar-sha256", "82422cc1811cf7d04b69733cef3fa46e4144e203")
    assert a.url == "https://github.com/NVIDIA/gpu-admin-tools" and a.tag == "v2025.10.20"


def test_the_controllers_git_config_cannot_change_the_pin(git_repo, tmp_path, monkeypatch):
    """core.autocrlf / tar.umask in a user's config change `git archive`'s bytes; pinning ignores them."""
    clean = resolve_git(f"file://{git_repo}", "v2025.10.20")
    hostile = tmp_path / "gitconfig"
    hostile.write_text("[core]\n\tautocrlf = true\n[tar]\n\tumask = 0022\n")
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / ".gitconfig").write_text(hostile.read_text())
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(hostile))
    assert resolve_git(f"file://{git_repo}", "v2025.10.20") == clean


def test_an_unpinned_git_entry_is_pinned_into_a_site_bom(git_repo, tmp_path):
    from ccfactory.bom import UnpinnedArtifact
    from ccfactory.bom.pin import pinned_entry, write_site_bom

    entry = UnpinnedArtifact(name="gpu-admin-tools", version="v2025.10.20", kind="git",
                             reference=f"file://{git_repo}@v2025.10.20", reason="test")  # fmt: skip
    table = pinned_entry(entry)
    pin = resolve_git(f"file://{git_repo}", "v2025.10.20")
    assert (table["commit"], table["tree"], table["sha256"]) == (pin.commit, pin.tree, pin.tar_sha256)
    artifact = write_site_bom(tmp_path / "site.toml", table).artifact("gpu-admin-tools")
    assert artifact.pin == "git-commit+tar-sha256" and artifact.filename == f"gpu-admin-tools-{pin.commit[:12]}.tar"

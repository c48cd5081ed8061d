"""Fetch BOM artifacts once on the controller, verify their sha256, cache them.

Sources: the artifact's upstream URL, a mirror base URL (``<mirror>/<filename>``) or a
local directory (``<dir>/<filename>``) for air-gapped sites. A file whose checksum does
not match is deleted and refused; nothing unverified is ever left in the cache.

A ``git`` artifact from upstream is the uncompressed ``git archive --format=tar`` of its
pinned commit, made here from a shallow fetch of the repository (``url``: upstream, or a
site mirror of the repository set in the site BOM) after checking the commit's tree; its
sha256 is then checked like any file's. Air-gapped sites put that tar in the artifact
directory or mirror under the BOM's ``filename``.

Example::

    path = fetch_artifact(load_bom().artifact("kata-static"), ArtifactSource())
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from ccfactory.bom import Artifact
from ccfactory.model import ArtifactSource

CHUNK = 1 << 20


class ArtifactFetchError(RuntimeError):
    """An artifact could not be fetched or verified; says which, from where, and why."""


class ChecksumMismatch(ArtifactFetchError):
    pass


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def cache_path(artifact: Artifact, source: ArtifactSource) -> Path:
    """Where the verified file lives: keyed by checksum, so versions never collide."""
    return Path(source.cache_dir).expanduser() / artifact.sha256 / artifact.filename


def origin_of(artifact: Artifact, source: ArtifactSource) -> str:
    """The URL or path the artifact is taken from for this source."""
    if source.kind == "mirror":
        return f"{(source.mirror_url or '').rstrip('/')}/{artifact.filename}"
    if source.kind == "local":
        return str(Path(source.directory or "").expanduser() / artifact.filename)
    if artifact.kind == "git":
        return f"{artifact.url}@{artifact.commit}"
    return artifact.url


def _git_archive(artifact: Artifact, handle, timeout: float) -> None:
    """``git archive --format=tar <commit>`` of the pinned commit, fetched from its repository
    (or a site mirror of it), after checking the commit's tree against the BOM."""
    from ccfactory.bom.pin import PinError, git_archive, run_git

    with tempfile.TemporaryDirectory(prefix="ccfactory-git-") as tmp:
        try:
            run_git("init", "-q", "--bare", tmp, timeout=timeout)
            # a commit id is fetchable where the server allows it (GitHub does); else the tag
            try:
                run_git("fetch", "-q", "--depth", "1", "--", artifact.url, artifact.commit, cwd=tmp, timeout=timeout * 5)
            except PinError:
                run_git("fetch", "-q", "--depth", "1", "--", artifact.url, f"refs/tags/{artifact.tag}", cwd=tmp,
                     timeout=timeout * 5)  # fmt: skip
            tree = run_git("rev-parse", "--verify", "--quiet", f"{artifact.commit}^{{tree}}", cwd=tmp).strip()
        except PinError as exc:
            raise ArtifactFetchError(f"{artifact.url}: cannot fetch commit {artifact.commit}: {exc}") from None
        if tree != artifact.tree:
            raise ChecksumMismatch(
                f"{artifact.name}: commit {artifact.commit} of {artifact.url} has tree {tree or 'none'}, not the BOM's "
                f"{artifact.tree}; nothing was used"
            )
        try:
            git_archive(tmp, artifact.commit, handle, timeout=timeout * 5)
        except PinError as exc:
            raise ArtifactFetchError(str(exc)) from None


def _pip_download(requirement: str, handle, timeout: float) -> None:
    """Fetch a wheel through pip, so the site's configured package index is used."""
    with tempfile.TemporaryDirectory() as tmp:
        result = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d", tmp, requirement],
            capture_output=True,
            text=True,
            timeout=timeout * 5,
        )
        files = list(Path(tmp).iterdir())
        if result.returncode != 0 or len(files) != 1:
            last = (result.stderr.strip().splitlines() or ["no output"])[-1]
            raise ArtifactFetchError(f"pip could not download {requirement}: {last}")
        with files[0].open("rb") as src:
            shutil.copyfileobj(src, handle, CHUNK)


def _copy_from(origin: str, kind: str, handle, timeout: float, progress: Callable[[str], None] | None) -> None:
    if kind == "upstream" and origin.startswith("pip:"):
        _pip_download(origin.removeprefix("pip:"), handle, timeout)
        return
    if kind == "local":
        try:
            with open(origin, "rb") as src:
                shutil.copyfileobj(src, handle, CHUNK)
        except OSError as exc:
            raise ArtifactFetchError(f"cannot read {origin}: {exc.strerror}") from None
        return
    try:
        with urllib.request.urlopen(origin, timeout=timeout) as response:  # noqa: S310 - http(s) only, validated
            total = int(response.headers.get("Content-Length") or 0)
            done, last = 0, time.monotonic()
            while chunk := response.read(CHUNK):
                handle.write(chunk)
                done += len(chunk)
                if progress and time.monotonic() - last > 5:
                    share = f" of {total >> 20} MiB" if total else ""
                    progress(f"  {done >> 20} MiB{share} from {origin}")
                    last = time.monotonic()
    except urllib.error.HTTPError as exc:
        raise ArtifactFetchError(f"{origin}: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ArtifactFetchError(f"{origin}: {reason}") from None


def fetch_artifact(
    artifact: Artifact,
    source: ArtifactSource,
    *,
    timeout: float = 60.0,
    progress: Callable[[str], None] | None = None,
) -> Path:
    """Return the path of the verified, cached file; fetch it first if needed."""
    target = cache_path(artifact, source)
    if target.is_file():
        if sha256_of(target) == artifact.sha256:
            return target
        target.unlink()  # a cache entry that no longer verifies is worthless
    origin = origin_of(artifact, source)
    if progress:
        progress(f"fetching {artifact.name} {artifact.version} from {origin}")
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=".partial-", dir=target.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as handle:
            if artifact.kind == "git" and source.kind == "upstream":
                _git_archive(artifact, handle, timeout)
            else:
                _copy_from(origin, source.kind, handle, timeout, progress)
        actual = sha256_of(tmp)
        if actual != artifact.sha256:
            raise ChecksumMismatch(
                f"{artifact.name} {artifact.version} from {origin}: sha256 {actual} does not match "
                f"the BOM's {artifact.sha256}; the file was deleted. Check the mirror holds the "
                f"pinned release, or update the BOM deliberately."
            )
        tmp.chmod(0o644)
        tmp.replace(target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


def artifact_for_host(cfg, name: str, progress: Callable[[str], None] | None = None) -> tuple[Artifact | None, str | None, str]:
    """``(artifact, controller path, problem)`` of BOM artifact ``name`` for a host's
    ``NodeConfig``: from its BOM (site BOM, and the lab overlay for lab hosts only), fetched
    from its ``artifact_*`` source and verified. ``problem`` is ``""`` when both are there;
    else it says why not (not pinned and the command that pins it, not reachable, checksum
    mismatch) and the path is None. An ``oci-image`` has no controller path (None, no problem).

    Example::

        artifact, local, problem = artifact_for_host(cfg, "trustee", progress=host.log)
    """
    from ccfactory.bom import BomError, bom_for

    try:
        artifact = bom_for(cfg.lab, cfg.lab_dir, cfg.artifacts.site_bom).artifact(name)
    except (KeyError, BomError) as exc:
        return None, None, exc.args[0] if exc.args else str(exc)
    if artifact.kind == "oci-image":
        return artifact, None, ""  # the node pulls it by digest; nothing to fetch here
    try:
        path = fetch_artifact(artifact, cfg.artifacts, progress=progress)
    except ArtifactFetchError as exc:
        return artifact, None, str(exc)
    except (OSError, RuntimeError, subprocess.SubprocessError) as exc:  # cache dir, ~user, pip: one host, not the run
        return artifact, None, f"{artifact.name}: cannot fetch it into the cache {cfg.artifacts.cache_dir}: {exc}"
    return artifact, str(path), ""

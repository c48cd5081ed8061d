"""Resolve pins on a controller that reaches upstream, and record them in a site BOM.

``ccfactory bom pin NAME --site-bom FILE`` turns an entry of the packaged BOM (pinned or
``[[unpinned]]``) into a pinned ``[[artifact]]`` of the site's BOM file, the way upstream
publishes it, so an operator never hand-copies a hash:

``oci-image``
    the manifest digest of ``image:tag``, read from the registry with the OCI distribution
    API: ``HEAD /v2/<name>/manifests/<tag>`` with the manifest media types in ``Accept``,
    answer header ``Docker-Content-Digest`` (distribution-spec v1.1 "Pulling manifests";
    the digest is re-computed from a ``GET`` body when the header is missing). A registry
    that answers 401 with ``WWW-Authenticate: Bearer realm=...,service=...,scope=...``
    gets the anonymous token flow (docker token-auth spec), as ghcr.io requires.
``git``
    ``git ls-remote`` gives tag -> commit (the peeled ``^{}`` entry for annotated tags);
    a shallow fetch of that commit gives its tree and the sha256 of the uncompressed
    ``git archive --format=tar <commit>`` (deterministic for a commit).
``file``
    upstream's own checksum file beside the release file (``<url>.sha256sum``, as
    containerd and nydus-snapshotter publish: ``<hex>  <filename>``).

Nothing is written unless the result validates as a BOM entry; the site BOM is written
atomically (0644) with every other entry kept.

Example::

    ccfactory bom pin trustee --site-bom /etc/ccfactory/site-bom.toml
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import ssl
import subprocess
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import tomli_w

from ccfactory.bom import Artifact, Bom, BomError, UnpinnedArtifact, parse_bom

MANIFEST_TYPES = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
)
_CHALLENGE = re.compile(r'(\w+)="([^"]*)"')
_SHA256SUM_LINE = re.compile(r"^([0-9a-f]{64})\s+\*?(\S+)\s*$")


class PinError(RuntimeError):
    """A pin could not be resolved: says what, from where, and why."""


@dataclass(frozen=True)
class RegistryAccess:
    """How to reach registries: ``plain_http`` only for a lab registry; ``ca_file`` for a private CA."""

    plain_http: bool = False
    ca_file: str | None = None
    timeout: float = 30.0

    def context(self) -> ssl.SSLContext | None:
        return None if self.plain_http else ssl.create_default_context(cafile=self.ca_file)


def _split_image(image: str) -> tuple[str, str]:
    registry, _, name = image.partition("/")
    if not name or "." not in registry and ":" not in registry and registry != "localhost":
        raise PinError(f"{image}: name the registry (e.g. ghcr.io/org/image); a Docker Hub short name is ambiguous")
    return registry, name


def _open(request: urllib.request.Request, access: RegistryAccess):
    return urllib.request.urlopen(request, timeout=access.timeout, context=access.context())  # noqa: S310


def _bearer_token(challenge: str, access: RegistryAccess) -> str:
    """Anonymous token for a ``WWW-Authenticate: Bearer realm=...,service=...,scope=...`` challenge."""
    params = dict(_CHALLENGE.findall(challenge))
    realm = params.pop("realm", "")
    if not realm.startswith("https://") and not (access.plain_http and realm.startswith("http://")):
        raise PinError(f"registry token realm {realm!r} is not an https URL")
    url = f"{realm}?{urllib.parse.urlencode(params)}"
    try:
        with _open(urllib.request.Request(url), access) as resp:
            body = json.loads(resp.read())
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise PinError(f"registry token from {realm}: {getattr(exc, 'reason', exc)}") from None
    token = body.get("token") or body.get("access_token") if isinstance(body, dict) else None
    if not isinstance(token, str) or not token:
        raise PinError(f"registry token from {realm}: no token in the answer")
    return token


def resolve_oci_digest(image: str, tag: str, access: RegistryAccess = RegistryAccess()) -> str:
    """``sha256:...`` of ``image:tag``'s manifest (an index for multi-arch images)."""
    registry, name = _split_image(image)
    scheme = "http" if access.plain_http else "https"
    url = f"{scheme}://{registry}/v2/{name}/manifests/{urllib.parse.quote(tag, safe='')}"
    headers = {"Accept": ", ".join(MANIFEST_TYPES)}
    for attempt in range(2):
        for method in ("HEAD", "GET"):
            request = urllib.request.Request(url, headers=headers, method=method)
            try:
                with _open(request, access) as resp:
                    digest = resp.headers.get("Docker-Content-Digest", "")
                    if method == "GET":
                        computed = "sha256:" + hashlib.sha256(resp.read()).hexdigest()
                        if digest and digest != computed:
                            raise PinError(f"{image}:{tag}: the registry's digest {digest} is not the manifest's {computed}")
                        digest = computed
            except urllib.error.HTTPError as exc:
                challenge = exc.headers.get("WWW-Authenticate", "")
                if exc.code == 401 and attempt == 0 and challenge.lower().startswith("bearer "):
                    headers["Authorization"] = f"Bearer {_bearer_token(challenge[7:], access)}"
                    break  # retry both methods with the token
                if exc.code == 401 and attempt == 1:
                    raise PinError(f"{image}:{tag}: the registry refused the anonymous token (HTTP 401 with it): "
                                   "a private image needs registry credentials, which ccfactory does not handle") from None
                if exc.code == 404:
                    raise PinError(f"{image}:{tag}: no such tag in {registry} (HTTP 404)") from None
                raise PinError(f"{image}:{tag}: registry answered HTTP {exc.code} {exc.reason}") from None
            except (urllib.error.URLError, OSError) as exc:
                raise PinError(f"{image}:{tag}: cannot reach {registry}: {getattr(exc, 'reason', exc)}") from None
            if re.fullmatch(r"sha256:[0-9a-f]{64}", digest):
                return digest
        else:
            raise PinError(f"{image}:{tag}: the registry gave no sha256 manifest digest")
    raise PinError(f"{image}:{tag}: the registry refused the anonymous token (HTTP 401 with the token)")


# git as every controller runs it: no user/system config (core.autocrlf or tar.umask would change
# the archive's bytes), no credential prompt (an https URL that needs one would hang on the tty).
GIT_ENV = {"GIT_CONFIG_GLOBAL": "/dev/null", "GIT_CONFIG_NOSYSTEM": "1", "GIT_TERMINAL_PROMPT": "0",
           "GIT_ASKPASS": "true", "SSH_ASKPASS": "true", "LC_ALL": "C"}  # fmt: skip
GIT_FIXED = ("-c", "core.autocrlf=false", "-c", "tar.umask=0002", "-c", "core.attributesFile=/dev/null")


def git_env() -> dict[str, str]:
    return {**os.environ, **GIT_ENV}


def run_git(*args: str, cwd: str | None = None, timeout: float = 300) -> str:
    """stdout of ``git <args>`` run with ``GIT_ENV``/``GIT_FIXED``; ``PinError`` with git's last line."""
    try:
        result = subprocess.run(["git", *GIT_FIXED, *args], cwd=cwd, capture_output=True, timeout=timeout, check=False,
                                env=git_env(), stdin=subprocess.DEVNULL)  # fmt: skip
    except FileNotFoundError:
        raise PinError("git is not installed on this controller") from None
    except subprocess.TimeoutExpired:
        raise PinError(f"git {args[0]} timed out after {timeout:.0f} s") from None
    if result.returncode != 0:
        last = (result.stderr.decode(errors="replace").strip().splitlines() or ["no output"])[-1]
        raise PinError(f"git {args[0]} failed: {last}")
    return result.stdout.decode()


@dataclass(frozen=True)
class GitPin:
    commit: str
    tree: str
    tar_sha256: str


def resolve_git(url: str, tag: str) -> GitPin:
    """Commit, tree and uncompressed ``git archive`` sha256 of ``url``'s tag ``tag``."""
    if tag.startswith("-") or url.startswith("-"):
        raise PinError(f"refusing a tag or URL that starts with '-': {tag!r} {url!r}")
    refs = {}
    for line in run_git("ls-remote", "--tags", "--", url, f"refs/tags/{tag}", f"refs/tags/{tag}^{{}}").splitlines():
        sha, _, ref = line.partition("\t")
        refs[ref] = sha
    commit = refs.get(f"refs/tags/{tag}^{{}}") or refs.get(f"refs/tags/{tag}")
    if not commit:
        raise PinError(f"{url}: no tag {tag}")
    with tempfile.TemporaryDirectory(prefix="ccfactory-pin-") as tmp:
        run_git("init", "-q", "--bare", tmp)
        run_git("fetch", "-q", "--depth", "1", "--", url, f"refs/tags/{tag}", cwd=tmp)
        if run_git("rev-parse", "FETCH_HEAD^{commit}", cwd=tmp).strip() != commit:
            raise PinError(f"{url}: tag {tag} moved while pinning; run again")
        tree = run_git("rev-parse", f"{commit}^{{tree}}", cwd=tmp).strip()
        with tempfile.TemporaryFile() as tar:
            git_archive(tmp, commit, tar)
            tar.seek(0)
            tar_sha256 = hashlib.file_digest(tar, "sha256").hexdigest()
    return GitPin(commit=commit, tree=tree, tar_sha256=tar_sha256)


def git_archive(repo: str, commit: str, out, timeout: float = 300) -> None:
    """Write the uncompressed ``git archive --format=tar <commit>`` of ``repo`` to the file ``out``:
    the bytes a ``git``-kind BOM entry's sha256 is taken over."""
    result = subprocess.run(["git", *GIT_FIXED, "archive", "--format=tar", commit], cwd=repo, stdout=out,
                            stderr=subprocess.PIPE, check=False, timeout=timeout, env=git_env(),
                            stdin=subprocess.DEVNULL)  # fmt: skip
    if result.returncode != 0:
        raise PinError(f"git archive of {commit} failed: {result.stderr.decode(errors='replace').strip()}")


def resolve_checksum_file(url: str, filename: str, timeout: float = 60.0) -> str:
    """The sha256 upstream publishes in ``<url>.sha256sum`` for ``filename``."""
    sums = f"{url}.sha256sum"
    try:
        with urllib.request.urlopen(sums, timeout=timeout) as resp:  # noqa: S310 - https validated by the BOM model
            text = resp.read(1 << 16).decode()
    except urllib.error.HTTPError as exc:
        raise PinError(f"{sums}: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError, UnicodeDecodeError) as exc:
        raise PinError(f"{sums}: {getattr(exc, 'reason', exc)}") from None
    for line in text.splitlines():
        match = _SHA256SUM_LINE.match(line.strip())
        if match and Path(match.group(2)).name == filename:
            return match.group(1)
    raise PinError(f"{sums}: no sha256 line for {filename}")


def pinned_entry(entry: Artifact | UnpinnedArtifact, access: RegistryAccess = RegistryAccess()) -> dict:
    """The site BOM ``[[artifact]]`` table that pins ``entry`` (resolved from upstream now)."""
    today = date.today().isoformat()
    base = {"name": entry.name, "version": entry.version, "kind": entry.kind}
    if entry.kind == "oci-image":
        if isinstance(entry, Artifact):
            image, tag = entry.image, entry.tag
        else:
            image, _, tag = entry.reference.rpartition(":")
        digest = resolve_oci_digest(image, tag, access)
        return base | {"pin": "oci-digest", "image": image, "tag": tag, "digest": digest,
                       "source": f"registry manifest digest of {image}:{tag}, read {today} by ccfactory bom pin"}  # fmt: skip
    if entry.kind == "git":
        if isinstance(entry, Artifact):
            url, tag = entry.url, entry.tag
        else:
            url, _, tag = entry.reference.rpartition("@")
        pin = resolve_git(url, tag)
        repo = url.rstrip("/").rsplit("/", 1)[-1].removesuffix(".git")
        return base | {"pin": "git-commit+tar-sha256", "url": url, "tag": tag, "commit": pin.commit, "tree": pin.tree,
                       "sha256": pin.tar_sha256, "filename": f"{repo}-{pin.commit[:12]}.tar",
                       "source": f"git ls-remote {url} {tag}, read {today}; sha256 of the uncompressed git archive"}  # fmt: skip
    url = entry.url if isinstance(entry, Artifact) else entry.reference
    filename = entry.filename if isinstance(entry, Artifact) and entry.filename else url.rsplit("/", 1)[-1]
    sha = resolve_checksum_file(url, filename)
    return base | {"pin": "upstream-checksum-file", "url": url, "filename": filename, "sha256": sha,
                   "source": f"{url}.sha256sum, read {today}"}  # fmt: skip


def write_site_bom(path: Path, table: dict) -> Bom:
    """Put ``table`` into the site BOM at ``path`` (replacing the entry of that name); atomic."""
    existing: dict = {"schema_version": 1, "artifact": []}
    if path.exists():
        import tomllib

        try:
            existing = tomllib.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise PinError(f"{path}: cannot read the site BOM: {exc}") from None
    artifacts = [a for a in existing.get("artifact", []) if a.get("name") != table["name"]] + [table]
    existing["artifact"] = sorted(artifacts, key=lambda a: a.get("name", ""))
    existing.setdefault("schema_version", 1)
    text = "# Site BOM: pins laid over ccfactory's packaged BOM (bom_site_file). `ccfactory bom pin` writes it.\n"
    text += tomli_w.dumps(existing)
    try:
        bom = parse_bom(text, origin=str(path))
    except BomError as exc:
        raise PinError(f"the pinned entry does not validate, nothing written: {exc}") from None
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(text)
    tmp.chmod(0o644)
    tmp.replace(path)
    return bom

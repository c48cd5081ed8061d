"""The bill of materials: one pinned, tested set of upstream artifacts.

The BOM is data (``ccfactory/bom/bom.toml``). Each artifact has a ``kind``, in the form
upstream publishes it, and says how its pin was confirmed (``pin``):

``file``
    a release file: ``url``, ``filename``, ``sha256``. Fetched once on the controller,
    verified, cached, pushed to nodes (``ccfactory.bom.fetch``).
``oci-image``
    a container image: ``image`` (registry/repository), ``tag`` (for people) and
    ``digest`` (``sha256:...``, what nodes run: ``image@digest``, never the tag).
``git``
    a git tag: ``url`` (the repository), ``tag``, ``commit``, ``tree`` and ``sha256`` of the
    uncompressed ``git archive --format=tar <commit>`` (deterministic for a commit).

An artifact a stage needs that is not pinned yet is an ``[[unpinned]]`` entry; asking for
it raises ``KeyError`` with the command that pins it (``ccfactory bom pin NAME``). A site
can pin or override entries in its own BOM file (``bom_site_file``), laid over the
packaged one.

Example::

    >>> bom = load_bom()
    >>> bom.artifact("kata-static").filename.startswith("kata-static-")
    True
"""

from __future__ import annotations

import re
import sys
import tomllib
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

_SHA256 = re.compile(r"[0-9a-f]{64}")
_GIT_ID = re.compile(r"[0-9a-f]{40}")
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
# registry[:port]/path of an OCI image, lower case (distribution spec: repository name grammar)
_IMAGE = re.compile(r"[a-z0-9.\-]+(:[0-9]{1,5})?(/[a-z0-9]+([._\-]|__)*[a-z0-9]*)+")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127}")

ArtifactKind = Literal["file", "oci-image", "git"]
PinMethod = Literal[
    "upstream-checksum-file",  # upstream's own .sha256sum beside the file
    "package-index-hash",  # the package index's published hash
    "git-commit+tar-sha256",  # tag -> commit read from upstream git; tree and tar hash computed
    "oci-digest",  # manifest digest read from the registry
    "third-party-corroborated",  # independent third-party pins agree; no upstream checksum exists
    "lab-stand-in",  # lab overlay only: built here
]
PIN_COMMAND = "ccfactory bom pin {name} --site-bom FILE"
KIND_FIELDS = {
    "file": {"url", "filename", "sha256"},
    "oci-image": {"image", "tag", "digest"},
    "git": {"url", "tag", "commit", "tree", "sha256", "filename"},
}


class BomError(ValueError):
    """The BOM file is malformed (names the artifact and the field)."""


class Artifact(BaseModel):
    """One pinned artifact (``kind`` says which fields it has)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    version: str
    kind: ArtifactKind = "file"
    pin: PinMethod = Field(description="how the pin was confirmed")
    source: str = Field(description="where the pin was read (checksum file, registry, commit)")
    url: str = ""
    filename: str = ""
    sha256: str = ""
    image: str = ""
    tag: str = ""
    digest: str = ""
    commit: str = ""
    tree: str = ""
    note: str = ""

    @field_validator("sha256")
    @classmethod
    def _sha256_hex(cls, value: str) -> str:
        if value and not _SHA256.fullmatch(value):
            raise ValueError("must be 64 lower-case hex characters")
        return value

    @field_validator("commit", "tree")
    @classmethod
    def _git_id(cls, value: str) -> str:
        if value and not _GIT_ID.fullmatch(value):
            raise ValueError("must be a full 40-character lower-case git object id")
        return value

    @field_validator("digest")
    @classmethod
    def _digest(cls, value: str) -> str:
        if value and not _DIGEST.fullmatch(value):
            raise ValueError("must be sha256:<64 lower-case hex> (an image is pinned by digest, never by tag alone)")
        return value

    @field_validator("image")
    @classmethod
    def _image(cls, value: str) -> str:
        if value and (not _IMAGE.fullmatch(value) or "@" in value or value.count(":") > 1):
            raise ValueError("must be registry/repository without tag or digest (e.g. ghcr.io/org/image)")
        return value

    @field_validator("tag")
    @classmethod
    def _tag(cls, value: str) -> str:
        if value and not _TAG.fullmatch(value):
            raise ValueError("must be an OCI/git tag: letters, digits, '_', '.', '-' (at most 128)")
        return value

    @field_validator("url")
    @classmethod
    def _fetchable_url(cls, value: str, info: ValidationInfo) -> str:
        # plain http only for the lab's own artifact server on its bridge; the
        # checksum, not the transport, is what protects the node either way
        lab = bool((info.context or {}).get("lab_overlay"))
        if info.data.get("kind") == "git":
            # the repository: upstream, or a site mirror of it (the commit and tree decide)
            if not value.startswith(("https://", "ssh://", "file:///")):
                raise ValueError("must be an https://, ssh:// or file:/// git repository URL")
            return value
        if value and not (value.startswith("https://") or value.startswith("pip:") or (lab and value.startswith("http://"))):
            raise ValueError("must be an https:// URL or a pip:<requirement>")
        return value

    @field_validator("filename")
    @classmethod
    def _plain_filename(cls, value: str) -> str:
        if value and ("/" in value or value in (".", "..") or "\0" in value):
            raise ValueError("must be a plain file name")
        return value

    @model_validator(mode="after")
    def _fields_of_kind(self) -> Artifact:
        needed = KIND_FIELDS[self.kind]
        every = set().union(*KIND_FIELDS.values())
        missing = sorted(f for f in needed if not getattr(self, f))
        extra = sorted(f for f in every - needed if getattr(self, f))
        if missing:
            raise ValueError(f"a {self.kind} artifact needs {', '.join(missing)}")
        if extra:
            raise ValueError(f"a {self.kind} artifact has no {', '.join(extra)}")
        return self

    @property
    def reference(self) -> str:
        """What a node runs (``image@digest``) or fetches (URL / repository@commit)."""
        if self.kind == "oci-image":
            return f"{self.image}@{self.digest}"
        if self.kind == "git":
            return f"{self.url}@{self.commit}"
        return self.url


class UnpinnedArtifact(BaseModel):
    """An artifact a stage needs that is not pinned yet: where it lives, why, and how to pin it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    version: str
    kind: ArtifactKind
    reference: str = Field(description="what to pin: image:tag, repository URL@tag, or release URL")
    reason: str

    def problem(self) -> str:
        return (
            f"{self.name} {self.version} ({self.reference}) is not pinned in the BOM: {self.reason}. "
            f"Pin it on a controller that reaches upstream: {PIN_COMMAND.format(name=self.name)}, "
            "then set bom_site_file = FILE in the inventory's group data"
        )


class Bom(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: int
    artifacts: tuple[Artifact, ...]
    unpinned: tuple[UnpinnedArtifact, ...] = ()

    def artifact(self, name: str) -> Artifact:
        for artifact in self.artifacts:
            if artifact.name == name:
                return artifact
        for entry in self.unpinned:
            if entry.name == name:
                raise KeyError(entry.problem())
        known = ", ".join(a.name for a in self.artifacts)
        raise KeyError(f"no artifact {name!r} in the BOM (known: {known})")

    def entry(self, name: str) -> Artifact | UnpinnedArtifact | None:
        return next((e for e in (*self.artifacts, *self.unpinned) if e.name == name), None)

    def overlaid(self, overlay: Bom) -> Bom:
        """This BOM with ``overlay``'s artifacts replacing (or pinning) entries of the same name."""
        replaced = {a.name for a in overlay.artifacts}
        return Bom(
            schema_version=self.schema_version,
            artifacts=tuple(a for a in self.artifacts if a.name not in replaced) + overlay.artifacts,
            unpinned=tuple(u for u in self.unpinned if u.name not in replaced) + overlay.unpinned,
        )


def parse_bom(text: str, origin: str = "bom.toml", *, lab_overlay: bool = False) -> Bom:
    """Parse and validate BOM TOML; errors name the artifact and field."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise BomError(f"{origin}: not valid TOML: {exc}") from None
    entries = raw.get("artifact", [])
    problems = []
    artifacts = []
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        problems.append(f"{origin}: artifact: must be a list of [[artifact]] tables")
        entries = []
    for index, entry in enumerate(entries):
        label = entry.get("name", f"artifact #{index + 1}")
        kind = entry.get("kind", "file")
        # fields that depend on the kind, named one by one (the model checks them as a whole)
        if kind in KIND_FIELDS:
            every = set().union(*KIND_FIELDS.values())
            problems += [f"{origin}: {label}: {f}: missing (a {kind} artifact needs one)"
                         for f in sorted(KIND_FIELDS[kind]) if entry.get(f) in (None, "")]  # fmt: skip
            problems += [f"{origin}: {label}: {f}: not a field of a {kind} artifact"
                         for f in sorted(every - KIND_FIELDS[kind]) if entry.get(f) not in (None, "")]  # fmt: skip
        try:
            artifacts.append(Artifact.model_validate(entry, context={"lab_overlay": lab_overlay}))
        except ValidationError as exc:
            for err in exc.errors():
                if not err["loc"]:
                    continue  # the kind's fields, named above
                field = ".".join(str(p) for p in err["loc"])
                msg = "missing (every artifact needs one)" if err["type"] == "missing" else err["msg"]
                problems.append(f"{origin}: {label}: {field}: {msg.removeprefix('Value error, ')}")
    names = [a.name for a in artifacts]
    problems += [f"{origin}: {n}: listed twice" for n in sorted({n for n in names if names.count(n) > 1})]
    unknown = set(raw) - {"schema_version", "artifact", "unpinned"}
    problems += [f"{origin}: {key}: unknown top-level key" for key in sorted(unknown)]
    unpinned = []
    raw_unpinned = raw.get("unpinned", [])
    if not isinstance(raw_unpinned, list) or not all(isinstance(p, dict) for p in raw_unpinned):
        problems.append(f"{origin}: unpinned: must be a list of [[unpinned]] tables")
        raw_unpinned = []
    for index, entry in enumerate(raw_unpinned):
        try:
            unpinned.append(UnpinnedArtifact.model_validate(entry))
        except ValidationError as exc:
            label = entry.get("name", f"unpinned #{index + 1}")
            problems += [f"{origin}: unpinned {label}: {'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()]
    version = raw.get("schema_version", 1)
    if type(version) is not int:
        problems.append(f"{origin}: schema_version: must be an integer, got {version!r}")
    if problems:
        raise BomError("\n".join(problems))
    return Bom(schema_version=version, artifacts=tuple(artifacts), unpinned=tuple(unpinned))


@cache
def load_bom(path: str | None = None) -> Bom:
    """The packaged BOM, or the one at ``path``."""
    if path:
        return parse_bom(Path(path).read_text(), origin=path)
    text = resources.files("ccfactory.bom").joinpath("bom.toml").read_text()
    return parse_bom(text)


LAB_BOM = "bom-lab.toml"  # written by the lab next to its stand-in artifacts


def _read_overlay(path: Path, *, lab_overlay: bool) -> Bom:
    try:
        text = path.read_text()
    except (OSError, ValueError) as exc:  # unreadable, or not UTF-8 text
        raise BomError(f"{path}: cannot read it: {exc}") from None
    return parse_bom(text, origin=str(path), lab_overlay=lab_overlay)


def bom_for(lab: bool, lab_dir: str | None, site_file: str | None = None) -> Bom:
    """The BOM a host uses: the packaged one; with the site's own BOM file (``bom_site_file``)
    laid over it; and, for lab hosts only, the lab's stand-in artifacts (same names, their
    own pins) laid over that.

    Stand-ins can reach a node only through the lab overlay, and only a host that
    validation accepted as a node of a running lab gets it: any other host checks
    artifacts against the packaged or site pins, which no stand-in matches.

    Example::

        bom = bom_for(cfg.lab, cfg.lab_dir, cfg.artifacts.site_bom)
    """
    bom = load_bom()
    if site_file:
        bom = bom.overlaid(_read_overlay(Path(site_file).expanduser(), lab_overlay=False))
    if not lab:
        return bom
    if not lab_dir:
        raise BomError("a lab host needs lab_dir to find the lab's artifacts")
    path = Path(lab_dir) / LAB_BOM
    if not path.is_file():
        return bom
    return bom.overlaid(_read_overlay(path, lab_overlay=True))


def _pin(bom: Bom, args) -> int:
    from ccfactory.bom.pin import PinError, RegistryAccess, pinned_entry, write_site_bom

    site = Path(args.site_bom).expanduser()
    try:
        current = bom_for(False, None, str(site) if site.exists() else None)
    except BomError as exc:
        print(f"ccfactory bom pin: {exc}", file=sys.stderr)
        return 2
    entry = current.entry(args.name)
    if entry is None:
        known = ", ".join(e.name for e in (*current.artifacts, *current.unpinned))
        print(f"ccfactory bom pin: no artifact {args.name!r} (known: {known})", file=sys.stderr)
        return 2
    access = RegistryAccess(plain_http=args.registry_plain_http, ca_file=args.registry_ca_file)
    print(f"resolving {entry.name} {entry.version} ({entry.kind}) from upstream...", file=sys.stderr)
    try:
        table = pinned_entry(entry, access)
        write_site_bom(site, table)
    except PinError as exc:
        print(f"ccfactory bom pin: {entry.name}: {exc}; nothing was written", file=sys.stderr)
        return 1
    pin = table.get("digest") or table.get("commit") or table.get("sha256")
    print(f"{entry.name} {entry.version}: {table['pin']} {pin} -> {site}")
    print(f"set bom_site_file = {str(site)!r} in the inventory's group data to use it")
    return 0


def cli_main(argv: list[str]) -> int:
    """``ccfactory bom list|fetch|pin``."""
    import argparse

    from ccfactory.bom.fetch import ArtifactFetchError, fetch_artifact
    from ccfactory.model import ArtifactSource

    parser = argparse.ArgumentParser(prog="ccfactory bom")
    sub = parser.add_subparsers(dest="action", required=True)
    sub.add_parser("list", help="print the pinned artifacts")
    fetch = sub.add_parser("fetch", help="download and verify artifacts into the cache")
    fetch.add_argument("names", nargs="*", help="artifact names (default: all)")
    fetch.add_argument("--mirror-url", help="take files from this base URL instead of upstream")
    fetch.add_argument("--from-dir", help="take files from this local directory (air-gapped)")
    fetch.add_argument("--cache-dir", default="~/.cache/ccfactory/artifacts")
    pin = sub.add_parser("pin", help="resolve an artifact's pin from upstream and record it in a site BOM")
    pin.add_argument("name", help="artifact name (see `ccfactory bom list`)")
    pin.add_argument("--site-bom", required=True, help="site BOM file to write (set bom_site_file to it)")
    pin.add_argument("--registry-ca-file", help="CA bundle of a private registry")
    pin.add_argument("--registry-plain-http", action="store_true", help="a lab registry without TLS (never upstream)")
    args = parser.parse_args(argv)

    bom = load_bom()
    if args.action == "pin":
        return _pin(bom, args)
    if args.action == "list":
        for a in bom.artifacts:
            pin = a.digest or a.commit or a.sha256
            print(f"{a.name:<22} {a.version:<14} {a.kind:<9} {pin[:23]}…  {a.pin:<26} {a.reference}")
        for p in bom.unpinned:
            print(f"{p.name:<22} {p.version:<14} {p.kind:<9} NOT PINNED: {p.reason}; pin: {PIN_COMMAND.format(name=p.name)}")
        return 0
    kind = "mirror" if args.mirror_url else "local" if args.from_dir else "upstream"
    source = ArtifactSource(kind=kind, mirror_url=args.mirror_url, directory=args.from_dir, cache_dir=args.cache_dir)
    failed = 0
    for name in args.names or [a.name for a in bom.artifacts]:
        try:
            path = fetch_artifact(bom.artifact(name), source, progress=lambda m: print(m, file=sys.stderr))
            print(f"{name}: ok {path}")
        except (ArtifactFetchError, KeyError) as exc:
            print(f"{name}: FAILED: {exc}", file=sys.stderr)
            failed += 1
    return 1 if failed else 0

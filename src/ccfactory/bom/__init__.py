"""The bill of materials: one pinned, tested set of upstream artifacts.

The BOM is data (``ccfactory/bom/bom.toml``): every artifact has a version, a file
name, an upstream URL and a sha256. Artifacts are fetched once on the controller,
verified, cached, and pushed to nodes from there (``ccfactory.bom.fetch``).

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

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class BomError(ValueError):
    """The BOM file is malformed (names the artifact and the field)."""


class Artifact(BaseModel):
    """One pinned file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    version: str
    filename: str
    url: str
    sha256: str = Field(description="lower-case hex sha256 of the file; required")
    source: str = Field(description="where the checksum was read (release page, checksum file)")
    note: str = ""

    @field_validator("sha256")
    @classmethod
    def _sha256_hex(cls, value: str) -> str:
        if not _SHA256.match(value):
            raise ValueError("must be 64 lower-case hex characters")
        return value

    @field_validator("url")
    @classmethod
    def _fetchable_url(cls, value: str, info: ValidationInfo) -> str:
        # plain http only for the lab's own artifact server on its bridge; the
        # checksum, not the transport, is what protects the node either way
        lab = bool((info.context or {}).get("lab_overlay"))
        if not (value.startswith("https://") or value.startswith("pip:") or (lab and value.startswith("http://"))):
            raise ValueError("must be an https:// URL or a pip:<requirement>")
        return value

    @field_validator("filename")
    @classmethod
    def _plain_filename(cls, value: str) -> str:
        if "/" in value or value in ("", ".", ".."):
            raise ValueError("must be a plain file name")
        return value


class PendingArtifact(BaseModel):
    """An artifact a stage needs but that is not pinned yet, and why."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    version: str
    reason: str


class Bom(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: int
    artifacts: tuple[Artifact, ...]
    pending: tuple[PendingArtifact, ...] = ()

    def artifact(self, name: str) -> Artifact:
        for artifact in self.artifacts:
            if artifact.name == name:
                return artifact
        for pending in self.pending:
            if pending.name == name:
                raise KeyError(f"{name} {pending.version} is not pinned in the BOM: {pending.reason}")
        known = ", ".join(a.name for a in self.artifacts)
        raise KeyError(f"no artifact {name!r} in the BOM (known: {known})")


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
        try:
            artifacts.append(Artifact.model_validate(entry, context={"lab_overlay": lab_overlay}))
        except ValidationError as exc:
            for err in exc.errors():
                field = ".".join(str(p) for p in err["loc"])
                msg = "missing (every artifact needs one)" if err["type"] == "missing" else err["msg"]
                problems.append(f"{origin}: {label}: {field}: {msg}")
    names = [a.name for a in artifacts]
    problems += [f"{origin}: {n}: listed twice" for n in sorted({n for n in names if names.count(n) > 1})]
    unknown = set(raw) - {"schema_version", "artifact", "pending"}
    problems += [f"{origin}: {key}: unknown top-level key" for key in sorted(unknown)]
    pending = []
    raw_pending = raw.get("pending", [])
    if not isinstance(raw_pending, list) or not all(isinstance(p, dict) for p in raw_pending):
        problems.append(f"{origin}: pending: must be a list of [[pending]] tables")
        raw_pending = []
    for index, entry in enumerate(raw_pending):
        try:
            pending.append(PendingArtifact.model_validate(entry))
        except ValidationError as exc:
            label = entry.get("name", f"pending #{index + 1}")
            problems += [f"{origin}: pending {label}: {'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()]
    version = raw.get("schema_version", 1)
    if type(version) is not int:
        problems.append(f"{origin}: schema_version: must be an integer, got {version!r}")
    if problems:
        raise BomError("\n".join(problems))
    return Bom(schema_version=version, artifacts=tuple(artifacts), pending=tuple(pending))


@cache
def load_bom(path: str | None = None) -> Bom:
    """The packaged BOM, or the one at ``path``."""
    if path:
        return parse_bom(Path(path).read_text(), origin=path)
    text = resources.files("ccfactory.bom").joinpath("bom.toml").read_text()
    return parse_bom(text)


LAB_BOM = "bom-lab.toml"  # written by the lab next to its stand-in artifacts


def bom_for(lab: bool, lab_dir: str | None) -> Bom:
    """The BOM a host uses: the packaged one, or, for lab hosts only, the packaged one
    with the lab's stand-in artifacts (same names, their own checksums) laid over it.

    Stand-ins can reach a node only through this overlay, and only a host that
    validation accepted as a node of a running lab gets it: any other host checks
    artifacts against the packaged checksums, which no stand-in matches.

    Example::

        bom = bom_for(cfg.lab, cfg.lab_dir)
    """
    bom = load_bom()
    if not lab:
        return bom
    if not lab_dir:
        raise BomError("a lab host needs lab_dir to find the lab's artifacts")
    path = Path(lab_dir) / LAB_BOM
    if not path.is_file():
        return bom
    try:
        text = path.read_text()
    except (OSError, ValueError) as exc:  # unreadable, or not UTF-8 text
        raise BomError(f"{path}: cannot read it: {exc}") from None
    overlay = parse_bom(text, origin=str(path), lab_overlay=True)
    replaced = {a.name for a in overlay.artifacts}
    return Bom(
        schema_version=bom.schema_version,
        artifacts=tuple(a for a in bom.artifacts if a.name not in replaced) + overlay.artifacts,
        pending=tuple(p for p in bom.pending if p.name not in replaced),
    )


def cli_main(argv: list[str]) -> int:
    """``ccfactory bom list|fetch``."""
    import argparse

    from ccfactory.bom.fetch import ArtifactFetchError, fetch_artifact
    from ccfactory.config import ArtifactSource

    parser = argparse.ArgumentParser(prog="ccfactory bom")
    sub = parser.add_subparsers(dest="action", required=True)
    sub.add_parser("list", help="print the pinned artifacts")
    fetch = sub.add_parser("fetch", help="download and verify artifacts into the cache")
    fetch.add_argument("names", nargs="*", help="artifact names (default: all)")
    fetch.add_argument("--mirror-url", help="take files from this base URL instead of upstream")
    fetch.add_argument("--from-dir", help="take files from this local directory (air-gapped)")
    fetch.add_argument("--cache-dir", default="~/.cache/ccfactory/artifacts")
    args = parser.parse_args(argv)

    bom = load_bom()
    if args.action == "list":
        for a in bom.artifacts:
            print(f"{a.name:<22} {a.version:<14} {a.sha256[:16]}…  {a.url}")
        for p in bom.pending:
            print(f"{p.name:<22} {p.version:<14} NOT PINNED: {p.reason}")
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

"""Shared pieces for installing a BOM tarball on a host: one checked, atomic unpack.

The tarball is already on the host (``files.put``). One shell command checks its sha256
again on the host, unpacks it into a staging directory beside ``dest`` (top directory
stripped: release and tag archives have one), checks the tree, records the checksum in
``dest/.ccfactory-sha256`` and only then replaces ``dest`` (``rm -rf`` then ``mv``: a run
cut off before that leaves the previous tree in place; between the two there is a moment
without one). Modes from the archive lose group/other write and setuid/setgid bits.

Example (inside an ``@operation``)::

    if unpacked_as(dest, artifact.sha256):
        host.noop(f"already unpacked in {dest}")
        return
    yield verified_unpack(archive, dest, artifact.sha256, entry="bin/kbs", executable=True)
"""

from __future__ import annotations

import shlex

from pyinfra import host
from pyinfra.api import StringCommand
from pyinfra.facts.files import FileContents

INSTALLED_MARKER = ".ccfactory-sha256"


def unpacked_as(dest: str, sha256: str) -> bool:
    """Whether ``dest`` holds the tree of the tarball with this checksum (its marker says so)."""
    current = host.get_fact(FileContents, path=f"{dest}/{INSTALLED_MARKER}")
    return bool(current) and current[0].strip() == sha256


def verified_unpack(archive: str, dest: str, sha256: str, *, entry: str, executable: bool = False,
                    strip: int = 1) -> StringCommand:  # fmt: skip
    """The command that unpacks ``archive`` into ``dest`` if its sha256 matches and the tree
    has ``entry`` (an executable one with ``executable``); group/other write bits removed.
    ``strip``: leading directories to drop (1 for release tarballs with a top directory, 0 for
    a ``git archive`` without ``--prefix``)."""
    a, d, tmp = shlex.quote(archive), shlex.quote(dest), shlex.quote(f"{dest}.ccfactory-new")
    return StringCommand(
        " && ".join(
            [
                f"echo {shlex.quote(f'{sha256}  {archive}')} | sha256sum -c --quiet -",
                f"rm -rf {tmp}",
                f"mkdir -p {tmp}",
                f"tar -xf {a} -C {tmp} --strip-components={int(strip)} --no-same-owner --no-same-permissions",
                f"test {'-x' if executable else '-f'} {tmp}/{shlex.quote(entry)}",
                f"chmod -R go-w,ug-s {tmp}",
                f"echo {shlex.quote(sha256)} > {tmp}/{INSTALLED_MARKER}",
                f"rm -rf {d}",
                f"mv {tmp} {d}",
            ]
        )
    )

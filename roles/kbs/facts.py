"""Podman images on a node, by reference (pyinfra facts; ``ccfactory.operations`` pulls them).

Example::

    image_id = host.get_fact(PodmanImage, reference="ghcr.io/org/kbs@sha256:...", _sudo=True)
    # '3f5e...' when the image is in podman's store, None when it is not (or podman is absent)
"""

from __future__ import annotations

import re
import shlex

from pyinfra.api import FactBase

_ID = re.compile(r"[0-9a-f]{64}")


class PodmanImage(FactBase):
    """The image ID of ``reference`` in podman's store, or None (absent, or podman not installed)."""

    def command(self, reference: str) -> str:
        # `podman image inspect` exits 125 for an unknown image; no podman: 127. Both mean "not here".
        return f"podman image inspect --format '{{{{.Id}}}}' {shlex.quote(reference)} 2>/dev/null || true"

    def process(self, output) -> str | None:
        lines = [line.strip() for line in output if line.strip()]
        return lines[0] if len(lines) == 1 and _ID.fullmatch(lines[0]) else None

"""Reboot markers: how a stage records a reboot it needs, and when that reboot is still pending.

A stage that changed the boot configuration writes ``<REBOOT_MARKER_DIR>/<stage>``: the running
boot id on the first line, then why. The reboot is still to happen while that first line is the
running boot id; a marker from an earlier boot is a reboot that happened. The host stage's plan,
the gpu stage's plan and the site run's shared boot step (``facts.node.PendingReboots``) all
judge a marker with ``marker_pending``.

Example::

    >>> marker_pending(["6f1c...", "host boot configuration changed"], "6f1c...")
    True
    >>> marker_pending(["0a2b...", "gpu-vfio"], "6f1c...")  # written before the last boot
    False
    >>> marker_path("host")
    '/var/lib/ccfactory/reboot-required/host'
"""

from __future__ import annotations

from collections.abc import Sequence

REBOOT_MARKER_DIR = "/var/lib/ccfactory/reboot-required"


def marker_path(stage: str) -> str:
    """The marker file of ``stage`` (its name is the stage's: ``host``, ``gpu-vfio``)."""
    return f"{REBOOT_MARKER_DIR}/{stage}"


def marker_text(boot_id: str, reason: str) -> str:
    """What a stage writes: the boot id it is recorded in, then why."""
    return f"{boot_id}\n{reason}\n"


def marker_pending(lines: Sequence[str] | None, boot_id: str) -> bool:
    """True if a marker (its lines; None or empty when absent) was written in the running boot."""
    return bool(lines) and bool(boot_id) and lines[0].strip() == boot_id.strip()


__all__ = ["REBOOT_MARKER_DIR", "marker_path", "marker_pending", "marker_text"]

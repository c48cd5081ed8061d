"""The one exception type the lab raises for problems an operator can fix."""

from __future__ import annotations


class LabError(RuntimeError):
    """A lab problem with a message meant for the operator (no traceback needed).

    Example: ``raise LabError("systemd-nspawn is missing: apt-get install systemd-container")``
    """

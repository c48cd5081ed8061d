"""``CheckResult``: the outcome of one readiness check, with the fix for the operator.

Example::

    >>> c = CheckResult("dev_sev", False, "/dev/sev is missing", "load the PSP driver: modprobe ccp")
    >>> c.failed, str(c)
    (True, 'dev_sev: FAIL: /dev/sev is missing; fix: load the PSP driver: modprobe ccp')
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

ERROR = "error"
WARNING = "warning"


@dataclass(frozen=True)
class CheckResult:
    """One check. ``ok`` is None when the host did not give enough to decide."""

    name: str
    ok: bool | None
    detail: str
    hint: str = ""  # what the operator does to fix it; empty when ok
    severity: str = ERROR  # ERROR blocks the stage, WARNING is reported only

    @property
    def failed(self) -> bool:
        return self.ok is False and self.severity == ERROR

    @property
    def warned(self) -> bool:
        return self.ok is False and self.severity == WARNING

    def __str__(self) -> str:
        state = {True: "ok", False: "FAIL" if self.severity == ERROR else "WARN", None: "unknown"}[self.ok]
        fix = f"; fix: {self.hint}" if self.hint and self.ok is not True else ""
        return f"{self.name}: {state}: {self.detail}{fix}"


def failed(results: Iterable[CheckResult]) -> tuple[CheckResult, ...]:
    """The results that block (``ok is False`` with severity ``error``)."""
    return tuple(r for r in results if r.failed)

"""Errors of the KBS stage; every message says what is wrong and how to fix it."""

from __future__ import annotations

from typing import NamedTuple


class KbsError(RuntimeError):
    """Base class: the KBS stage cannot go on for this host."""


class SettingProblem(NamedTuple):
    """One problem of a KBS host's inventory keys: which host and key, what, and the fix."""

    host: str
    key: str
    message: str
    fix: str = ""

    def __str__(self) -> str:
        return f"{self.host}: {self.key}: {self.message}" + (f"; fix: {self.fix}" if self.fix else "")


class KbsSettingsError(KbsError, ValueError):
    """The inventory's KBS keys are inconsistent: ``problems`` lists every one (structured, for
    ``ccfactory.config``'s report), and the message prints them.

    Example::

        raise KbsSettingsError([SettingProblem("kbs1", "kbs_policy_file", "set together with kbs_lab_permissive", "keep one")])
    """

    def __init__(self, problems) -> None:
        if isinstance(problems, str):  # a single problem already worded
            self.problems: tuple[SettingProblem, ...] = ()
            super().__init__(problems)
            return
        self.problems = tuple(problems)
        super().__init__("KBS settings are not usable, nothing was touched:\n  - " + "\n  - ".join(map(str, self.problems)))


class PkiError(KbsError):
    """A key or certificate is missing, unreadable, too open, or does not fit."""


class SanMismatch(PkiError):
    """The KBS HTTPS certificate does not cover the host of kbs_url."""


class ResourcePathError(KbsError, ValueError):
    """A resource path breaks the KBS rule ``<repo>/<type>/<tag>``."""


class ResourceFileError(KbsError):
    """A controller-side resource file is missing or unreadable."""


class KbsHttpError(KbsError):
    """The KBS answered with an error (status, ErrorInformation type and detail)."""

    def __init__(self, message: str, status: int = 0, kind: str = "", detail: str = ""):
        super().__init__(message)
        self.status, self.kind, self.detail = status, kind, detail


class KbsUnreachable(KbsError):
    """No HTTPS connection to the KBS (refused, timeout, or certificate not trusted)."""


class AdminAuthError(KbsHttpError):
    """The KBS refused the admin credential."""


class PolicyDenied(KbsHttpError):
    """The resource policy denied the request (``PolicyDeny``; status 401 at Trustee v0.21.0)."""


class HealthCheckFailed(KbsError):
    """A KBS health check found the service unsafe or not working."""

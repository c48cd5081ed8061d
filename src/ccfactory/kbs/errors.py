"""Errors of the KBS stage; every message says what is wrong and how to fix it."""

from __future__ import annotations


class KbsError(RuntimeError):
    """Base class: the KBS stage cannot go on for this host."""


class KbsSettingsError(KbsError, ValueError):
    """The inventory's KBS keys are inconsistent (lists every problem)."""


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

"""Errors of the firmware stage. Every message names where (file, host/BMC, TEE, stage,
setting, attribute) and, where one exists, the fix. None ever carries a secret."""

from __future__ import annotations


class FirmwareError(Exception):
    """Base class of every firmware-stage error."""


class ProfileError(FirmwareError, ValueError):
    """A BIOS profile file, or an operator override, is wrong.

    The message starts with the file (or ``overrides``), then the TEE, stage and setting.
    """


class ResolutionError(FirmwareError):
    """A logical setting matches no attribute of the BMC, or more than one."""

    def __init__(
        self, message: str, *, bmc: str, setting: str, tried: tuple[str, ...] = (), suggestions: tuple[str, ...] = ()
    ):
        super().__init__(message)
        self.bmc = bmc
        self.setting = setting
        self.tried = tried
        self.suggestions = suggestions


class PlanError(FirmwareError):
    """The stage to apply cannot be applied: a read-only attribute, or a value the BMC refuses."""

    def __init__(self, message: str, *, bmc: str, setting: str, attribute: str, stage: str):
        super().__init__(message)
        self.bmc = bmc
        self.setting = setting
        self.attribute = attribute
        self.stage = stage

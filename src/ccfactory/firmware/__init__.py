"""Firmware stage, controller side: BIOS profiles as data, name resolution against the
BMC's attribute registry, the staged plan (one stage, one PATCH, one reboot), and the
driver that applies and verifies one stage on one BMC (``ccfactory.firmware.driver``;
the pyinfra side is ``ccfactory.roles.firmware.operations`` and the role ``ccfactory.roles.firmware``).

Example::

    >>> from ccfactory.firmware import bios_profile_for, resolve_settings, plan_firmware, render_plan
    >>> profile = bios_profile_for("dell", "snp", overrides={"min_sev_asid": 100})
    >>> current = {"Sme": "Enabled", "IommuSupport": "Enabled", "ProcVirtualization": "Enabled",
    ...            "ProcX2Apic": "Enabled", "Snp": "Disabled", "CpuMinSevAsid": 1, "Rmp": "Disabled"}
    >>> plan = plan_firmware(profile, resolve_settings(profile, None, current, bmc="gpu-01"), current, {}, None)
    >>> plan.stage, dict(plan.patch)
    ('snp', {'Snp': 'Enabled', 'CpuMinSevAsid': 100})
"""

from ccfactory.firmware.capability import Capability, CapabilityError, assess
from ccfactory.firmware.errors import FirmwareError, PlanError, ProfileError, ResolutionError
from ccfactory.firmware.plan import FirmwarePlan, SettingState, StagePlan, plan_firmware, render_plan
from ccfactory.firmware.profile import (
    BiosProfile,
    BiosSetting,
    BiosStage,
    bios_profile_for,
    known_vendors,
    parse_profile,
)
from ccfactory.firmware.resolve import (
    AttributeInfo,
    AttributeRegistry,
    Resolution,
    ResolvedName,
    check_value,
    normalise,
    resolve_settings,
)

__all__ = [
    "AttributeInfo",
    "AttributeRegistry",
    "assess",
    "BiosProfile",
    "BiosSetting",
    "BiosStage",
    "Capability",
    "CapabilityError",
    "FirmwareError",
    "FirmwarePlan",
    "PlanError",
    "ProfileError",
    "Resolution",
    "ResolutionError",
    "ResolvedName",
    "SettingState",
    "StagePlan",
    "bios_profile_for",
    "check_value",
    "known_vendors",
    "normalise",
    "parse_profile",
    "plan_firmware",
    "render_plan",
    "resolve_settings",
]

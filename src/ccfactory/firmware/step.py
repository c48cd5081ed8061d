"""One turn on one BMC: read, resolve, plan, and (unless dry) PATCH; for scripts and tests.

The firmware role does the same through :class:`ccfactory.firmware.driver.FirmwareDriver`,
which adds what a full run needs around it (Dell jobs for values found pending, the reset
and the wait for the BMC, the verification after the reset, deferred one-shots) and is
what ``ccfactory firmware plan`` and ``pyinfra ... deploy/firmware.py --dry`` read with.

Example::

    with RedfishClient.from_config(cfg.bmc, host=cfg.name) as client:
        step = firmware_step(client, cfg.tee, overrides={"min_sev_asid": 100}, dry=True)
        print(render_plan(step.plan))
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from ccfactory.clients.redfish import ApplyResult, BiosSnapshot, RedfishClient
from ccfactory.firmware.plan import FirmwarePlan, plan_firmware
from ccfactory.firmware.profile import Value, bios_profile_for
from ccfactory.firmware.resolve import AttributeRegistry, resolve_settings


@dataclass(frozen=True)
class FirmwareStep:
    plan: FirmwarePlan
    snapshot: BiosSnapshot
    applied: ApplyResult | None = None  # the PATCH sent; None on a dry run or when nothing was patched


def firmware_step(
    client: RedfishClient,
    tee: str,
    *,
    vendor: str | None = None,
    extra_dirs: Iterable[str | Path] = (),
    overrides: Mapping[str, Value] | None = None,
    dry: bool = False,
) -> FirmwareStep:
    """Read the BMC, plan the next BIOS stage and, unless ``dry``, PATCH it (no reboot here).

    ``vendor`` defaults to the client's. Raises the firmware errors (``ProfileError``,
    ``ResolutionError``, ``PlanError``) and the client's ``RedfishError``s.
    See the module docstring for an example.
    """
    profile = bios_profile_for(vendor or client.vendor, tee, extra_dirs=extra_dirs, overrides=overrides)
    snapshot = client.read_bios()
    registry = AttributeRegistry.from_redfish(snapshot.registry, snapshot.attributes)
    resolved = resolve_settings(profile, registry, bmc=client.label)
    plan = plan_firmware(profile, resolved, snapshot.attributes, snapshot.pending, registry, cpus=snapshot.processors)
    applied = None
    if plan.patch and not dry:
        applied = client.apply_bios(plan.patch, snapshot=snapshot)
    return FirmwareStep(plan, snapshot, applied)

"""The firmware stage's checks: the BIOS settings of the vendor profile, as the BMC reports them (read only).

Registered on import; the verify stage loads this module (``ccfactory.verify.node_checks``).
"""

from __future__ import annotations

from ccfactory.verify.checks import CheckContext, Outcome, check, fail, lab_note, ok


LAB_BMC = "the BMC is the lab's Redfish emulator (sushy-tools with vendor personalities)"


@check("firmware.bios_compliant", stage="firmware", applies=lambda cfg: cfg.tee in ("snp", "tdx") and cfg.bmc is not None)
def bios_compliant(ctx: CheckContext) -> Outcome:
    """Every BIOS setting of the vendor profile is applied, as the BMC reports it (read only)."""
    from ccfactory.firmware.driver import FirmwareDriver

    driver = FirmwareDriver(ctx.cfg.bmc, ctx.cfg.tee, host=ctx.cfg.name)
    try:
        plan, _ = driver.read_plan()
    finally:
        driver.close()
    if plan.compliant:
        return ok(f"{ctx.cfg.bmc.vendor} BIOS profile for {ctx.cfg.tee} applied ({driver.requests} Redfish requests)",
                  simulated=lab_note(ctx, LAB_BMC))
    return fail(
        f"BIOS stage(s) not applied: {', '.join(plan.unapplied)}",
        hint="run the firmware stage (`ccfactory firmware plan` shows the attribute diff)",
        simulated=lab_note(ctx, LAB_BMC),
    )

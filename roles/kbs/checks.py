"""The kbs stage's checks: the KBS answering over HTTPS with the site CA, admin auth working, sample evidence denied.

Registered on import; the verify stage loads this module (``ccfactory.verify.node_checks``).
"""

from __future__ import annotations

from ccfactory.verify.checks import CheckContext, Outcome, check, fail, lab_note, ok


LAB_KBS = "the KBS is the lab's Trustee stand-in; it can verify sample evidence only (no SNP/TDX verifier)"


@check("kbs.health", stage="kbs", applies=lambda cfg: cfg.is_kbs)
def kbs_health(ctx: CheckContext) -> Outcome:
    """HTTPS with the site CA, the admin credential works, and sample (non-TEE) evidence is denied."""
    from ccfactory.kbs.client import KbsClient
    from ccfactory.kbs.settings import kbs_settings

    settings = kbs_settings(ctx.cfg, ctx.data)
    pki = settings.pki_dir
    client = KbsClient(settings.url, ca_cert=pki / "ca.crt" if not settings.sources.ca_cert else settings.sources.ca_cert,
                       admin_key=pki / "admin.key", lab=ctx.cfg.lab)
    try:
        auth = client.check_admin_auth()
        denial = client.negative_health_check(expect_denial=not settings.lab_permissive)
    except Exception as exc:  # noqa: BLE001 - every failure is this check's finding
        return fail(f"{type(exc).__name__}: {exc}", hint="run the kbs stage; check the KBS service log (journalctl -u trustee-kbs)",
                    simulated=lab_note(ctx, LAB_KBS))
    if settings.lab_permissive:
        return fail(f"{auth}; {denial}", hint="remove kbs_lab_permissive: the policy must require TEE attestation")
    return ok(f"{auth}; {denial}", simulated=lab_note(ctx, LAB_KBS))

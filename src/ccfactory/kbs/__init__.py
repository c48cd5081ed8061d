"""The Key Broker Service's controller-side library: Trustee v0.21.0 keys, policies, admin client.

What more than the kbs stage needs lives here (config validates the stage's keys with
``ccfactory.kbs.settings``; the verify stage's checks use the client, the settings and the
policy): ``ccfactory.kbs.pki`` (site CA, KBS HTTPS certificate, the admin Ed25519 key, the
attestation-token signer; everything secret stays on the controller), ``ccfactory.kbs.client``
(admin API with short-lived EdDSA bearer tokens over HTTPS with the site CA verified, and the
KBS attestation protocol for the negative health check: ``sample`` evidence must be denied),
``ccfactory.kbs.policy`` (the resource policy), ``ccfactory.kbs.refvalues`` and ``rego``.
What only the kbs stage does is in its role package, ``roles/kbs`` (operations, config
rendering, reference-value collection). What was confirmed from Trustee's source, and where:
docs/trustee.md.
"""

from ccfactory.kbs.schema import TRUSTEE_RELEASE

KBS_PROTOCOL_VERSION = "0.4.0"  # kbs/src/attestation/backend.rs: VERSION_REQ "=0.4.0"

__all__ = ["KBS_PROTOCOL_VERSION", "TRUSTEE_RELEASE"]

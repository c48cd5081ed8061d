"""The Key Broker Service stage's controller side: Trustee v0.21.0 keys, config, policies, admin client.

Everything secret stays on the controller (``ccfactory.kbs.pki``: site CA, KBS HTTPS
certificate, the admin Ed25519 key, the attestation-token signer); nodes get public keys,
certificates and the service's own keys. ``ccfactory.kbs.client`` talks to a KBS over
HTTPS (site CA verified): admin API with short-lived EdDSA bearer tokens, and the KBS
attestation protocol for the negative health check (``sample`` evidence must be denied by
the resource policy). ``ccfactory.kbs.policy`` renders the resource policy;
``ccfactory.kbs.settings`` reads the stage's inventory keys; ``ccfactory.kbs.render`` the
config files. What was confirmed from Trustee's source, and where: docs/trustee.md.

Modules ``jose``, ``policy`` and ``schema`` use only the standard library and
``cryptography``: the lab's Trustee stand-in ships copies of them.
"""

from ccfactory.kbs.schema import TRUSTEE_RELEASE

KBS_PROTOCOL_VERSION = "0.4.0"  # kbs/src/attestation/backend.rs: VERSION_REQ "=0.4.0"

__all__ = ["KBS_PROTOCOL_VERSION", "TRUSTEE_RELEASE"]

"""TDX reference values pinned on first use, from an attestation the operator approves by name.

No trustworthy offline method computes the RTMRs of Kata's TDX guests here
(``docs/reference-values.md`` §4), so the values the default policy compares (``rtmr_1``,
``rtmr_2``, ``mr_td``, ``xfam``, and the TDVF kernel/command-line event digests when present) are
recorded from one real attestation: ``kbs_tdx_first_use = {"<worker>": "<file>"}`` names, per
TDX worker, a controller-side file holding the EAR token that this site's KBS issued to a guest
on that worker (the guest's attestation agent hands it out). Listing it is the approval; nothing
is pinned otherwise, and a file that changes changes the pinned values (the report says so).

The token is accepted only if its header's ``x5c`` leaf signed it (ES256) and that leaf was
issued by this site's attestation-token CA (``ccfactory.kbs.pki``; Trustee signs EAR tokens with
the ``[attestation_service]`` token signer, ``attestation-service/src/ear_token/broker.rs:
321-432``); its expiry does not matter for a recording. The evidence is the ``tdx`` annotated
evidence of ``submods.cpu0`` (``broker.rs:303-319``).
"""

from __future__ import annotations

import base64
from pathlib import Path

from cryptography import x509

from ccfactory.kbs import refvalues as rv
from ccfactory.kbs.jose import JoseError, jwt_unverified, jwt_verify
from ccfactory.kbs.pki import signed_by

EVIDENCE = "ear.veraison.annotated-evidence"


class PinError(ValueError):
    """The approved token cannot be used (message names the file and the fix)."""


def token_claims(token: str, token_ca: x509.Certificate) -> dict:
    """The claims of an EAR token signed by a signer this site's token CA issued."""
    try:
        header, _ = jwt_unverified(token)
        chain = (header.get("jwk") or {}).get("x5c") or []
        if not chain:
            raise PinError("the token header has no jwk.x5c: not an EAR token of Trustee")
        leaf = x509.load_der_x509_certificate(base64.b64decode(chain[0]))
        if not signed_by(leaf, token_ca):
            raise PinError("the token was not issued by this site's KBS (its signer is not from the site's token CA)")
        _, unverified = jwt_unverified(token)
        return jwt_verify(token, leaf.public_key(), now=float(unverified.get("iat") or 0), require_exp=False)
    except (JoseError, ValueError) as exc:
        if isinstance(exc, PinError):
            raise
        raise PinError(f"not a valid EAR token: {exc}") from None


def pinned_values(approved: dict[str, str], token_ca_cert: Path) -> tuple[list[rv.Reference], list[str]]:
    """(references, problems) for every approved worker -> token file."""
    refs: list[rv.Reference] = []
    problems: list[str] = []
    if not approved:
        return refs, problems
    try:
        token_ca = x509.load_pem_x509_certificate(token_ca_cert.read_bytes())
    except (OSError, ValueError) as exc:
        return refs, [f"kbs_tdx_first_use: the site's token CA {token_ca_cert} is not readable: {exc}"]
    for worker, path in sorted(approved.items()):
        where = f"kbs_tdx_first_use[{worker}] ({path})"
        try:
            token = Path(path).expanduser().read_text().strip()
            claims = token_claims(token, token_ca)
            evidence = claims["submods"]["cpu0"][EVIDENCE]["tdx"]
            refs += rv.tdx_pin_on_first_use(evidence, f"{worker}", approved_by=where)
        except (OSError, UnicodeDecodeError) as exc:
            problems.append(f"{where}: cannot read it: {exc}")
        except (KeyError, TypeError):
            problems.append(f"{where}: the token has no submods.cpu0 TDX evidence; fix: give a token of a TDX guest")
        except (PinError, rv.ReferenceValueError) as exc:
            problems.append(f"{where}: {exc}")
    return refs, problems

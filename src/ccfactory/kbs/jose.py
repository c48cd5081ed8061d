"""The few JOSE pieces the KBS protocol needs: JWT (EdDSA, ES256), JWK, JWE, JCS.

Used by ccfactory's KBS admin client on the controller and, as a copy, by the lab's
Trustee stand-in on a node. Only the standard library and ``cryptography`` (>= 38, the
version Debian 12 ships as ``python3-cryptography``) are used; no ccfactory imports.

* Admin tokens (Trustee v0.21.0 ``[admin.authentication.bearer_jwt]``): JWT signed with
  Ed25519 (``alg`` ``EdDSA``), verified by the KBS against a PEM public key; the
  ``jsonwebtoken`` crate's default validation requires ``exp``.
* Attestation result tokens: ES256 JWTs whose header carries the signer's ``jwk`` with an
  ``x5c`` chain (the KBS checks that chain against ``[attestation_token]
  trusted_certs_paths``).
* Resource responses: JWE flattened JSON, ``RSA-OAEP-256`` + ``A256GCM``, AAD =
  ``BASE64URL(protected header)`` (trustee ``kbs/src/jwe/mod.rs``).
* Runtime data binding: SHA-384 over the RFC 8785 (JCS) form of the runtime data.

Example::

    >>> from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    >>> key = Ed25519PrivateKey.generate()
    >>> token = jwt_sign({"alg": "EdDSA", "typ": "JWT"}, {"exp": 4102444800, "role": "r"}, key)
    >>> jwt_verify(token, key.public_key())["role"]
    'r'
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

LEEWAY = 60  # seconds, as jsonwebtoken's default validation


class JoseError(ValueError):
    """A token, key or JWE could not be produced or verified (says why)."""


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_decode(text: str) -> bytes:
    if not isinstance(text, str):
        raise JoseError("base64url value is not a string")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (ValueError, TypeError) as exc:
        raise JoseError(f"bad base64url: {exc}") from None


def jcs(value) -> bytes:
    """RFC 8785 canonical JSON for the values the protocol uses (objects, strings, ints)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def runtime_data_digest(runtime_data: dict) -> bytes:
    """SHA-384 of the canonical runtime data: what sample/snp/tdx evidence binds."""
    return hashlib.sha384(jcs(runtime_data)).digest()


# ------------------------------------------------------------------ JWT


def _segments(token: str) -> tuple[dict, dict, bytes, bytes]:
    if not isinstance(token, str) or token.count(".") != 2:
        raise JoseError("not a JWT (need three dot-separated parts)")
    h, p, s = token.split(".")
    try:
        header = json.loads(b64url_decode(h))
        claims = json.loads(b64url_decode(p))
    except ValueError as exc:
        raise JoseError(f"JWT header/claims are not JSON: {exc}") from None
    if not isinstance(header, dict) or not isinstance(claims, dict):
        raise JoseError("JWT header/claims are not JSON objects")
    return header, claims, f"{h}.{p}".encode(), b64url_decode(s)


def jwt_unverified(token: str) -> tuple[dict, dict]:
    """(header, claims) without checking anything (for display and routing only)."""
    header, claims, _, _ = _segments(token)
    return header, claims


def jwt_sign(header: dict, claims: dict, key) -> str:
    """Sign with an Ed25519 (``EdDSA``) or P-256 (``ES256``) private key."""
    signing_input = f"{b64url(jcs(header))}.{b64url(jcs(claims))}".encode()
    if isinstance(key, ed25519.Ed25519PrivateKey):
        if header.get("alg") != "EdDSA":
            raise JoseError("an Ed25519 key signs alg EdDSA")
        sig = key.sign(signing_input)
    elif isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1":
        if header.get("alg") != "ES256":
            raise JoseError("a P-256 key signs alg ES256")
        r, s = decode_dss_signature(key.sign(signing_input, ec.ECDSA(hashes.SHA256())))
        sig = r.to_bytes(32, "big") + s.to_bytes(32, "big")
    else:
        raise JoseError("unsupported signing key (Ed25519 or P-256 only)")
    return f"{signing_input.decode()}.{b64url(sig)}"


def _verify_signature(alg: str, key, signing_input: bytes, sig: bytes) -> None:
    try:
        if alg == "EdDSA" and isinstance(key, ed25519.Ed25519PublicKey):
            key.verify(sig, signing_input)
        elif alg == "ES256" and isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == "secp256r1":
            if len(sig) != 64:
                raise InvalidSignature()
            der = encode_dss_signature(int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big"))
            key.verify(der, signing_input, ec.ECDSA(hashes.SHA256()))
        else:
            raise JoseError(f"token alg {alg!r} does not match the verification key")
    except InvalidSignature:
        raise JoseError("bad signature") from None


def jwt_verify(token: str, key, *, now: float | None = None, require_exp: bool = True) -> dict:
    """Verify signature and time claims; return the claims."""
    header, claims, signing_input, sig = _segments(token)
    _verify_signature(str(header.get("alg")), key, signing_input, sig)
    check_times(claims, now=now, require_exp=require_exp)
    return claims


def check_times(claims: dict, *, now: float | None = None, require_exp: bool = True) -> None:
    now = time.time() if now is None else now
    exp = claims.get("exp")
    if exp is None:
        if require_exp:
            raise JoseError("token has no exp claim")
    elif not isinstance(exp, (int, float)) or exp + LEEWAY < now:
        raise JoseError("token expired")
    nbf = claims.get("nbf")
    if isinstance(nbf, (int, float)) and nbf - LEEWAY > now:
        raise JoseError("token not valid yet")


# ------------------------------------------------------------------ keys


def load_private_key(path: str):
    with open(path, "rb") as handle:
        data = handle.read()
    try:
        return serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise JoseError(f"{path}: not an unencrypted PEM private key ({exc})") from None


def load_public_key(path: str):
    with open(path, "rb") as handle:
        data = handle.read()
    try:
        return serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as exc:
        raise JoseError(f"{path}: not a PEM public key ({exc})") from None


def public_pem(key) -> bytes:
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def rsa_public_jwk(key: rsa.RSAPublicKey, alg: str = "RSA-OAEP-256") -> dict:
    numbers = key.public_numbers()
    n = numbers.n.to_bytes((numbers.n.bit_length() + 7) // 8, "big")
    e = numbers.e.to_bytes((numbers.e.bit_length() + 7) // 8, "big")
    return {"kty": "RSA", "alg": alg, "n": b64url(n), "e": b64url(e)}


def rsa_public_from_jwk(jwk: dict) -> rsa.RSAPublicKey:
    if not isinstance(jwk, dict) or jwk.get("kty") != "RSA":
        raise JoseError("tee-pubkey is not an RSA JWK")
    n = int.from_bytes(b64url_decode(jwk.get("n", "")), "big")
    e = int.from_bytes(b64url_decode(jwk.get("e", "")), "big")
    if n.bit_length() < 2048 or e < 3:
        raise JoseError("tee-pubkey RSA key too small")
    return rsa.RSAPublicNumbers(e, n).public_key()


def ec_public_jwk(key: ec.EllipticCurvePublicKey, *, x5c: list[str] | None = None) -> dict:
    numbers = key.public_numbers()
    jwk = {
        "kty": "EC",
        "crv": "P-256",
        "alg": "ES256",
        "x": b64url(numbers.x.to_bytes(32, "big")),
        "y": b64url(numbers.y.to_bytes(32, "big")),
    }
    if x5c:
        jwk["x5c"] = list(x5c)
    return jwk


def ec_public_from_jwk(jwk: dict) -> ec.EllipticCurvePublicKey:
    if not isinstance(jwk, dict) or jwk.get("kty") != "EC" or jwk.get("crv") != "P-256":
        raise JoseError("not a P-256 EC JWK")
    x = int.from_bytes(b64url_decode(jwk.get("x", "")), "big")
    y = int.from_bytes(b64url_decode(jwk.get("y", "")), "big")
    try:
        return ec.EllipticCurvePublicNumbers(x, y, ec.SECP256R1()).public_key()
    except ValueError as exc:
        raise JoseError(f"bad EC JWK: {exc}") from None


# ------------------------------------------------------------------ JWE


def _aad(protected_b64: str) -> bytes:
    return protected_b64.encode("ascii")


def jwe_encrypt(tee_pubkey: dict, plaintext: bytes) -> dict:
    """Flattened JWE to an RSA ``tee-pubkey`` with alg RSA-OAEP-256 and enc A256GCM."""
    if tee_pubkey.get("alg") != "RSA-OAEP-256":
        raise JoseError(f"tee-pubkey alg {tee_pubkey.get('alg')!r} not supported here (RSA-OAEP-256)")
    key = rsa_public_from_jwk(tee_pubkey)
    cek = AESGCM.generate_key(bit_length=256)
    iv = os.urandom(12)
    protected = b64url(jcs({"alg": "RSA-OAEP-256", "enc": "A256GCM"}))
    sealed = AESGCM(cek).encrypt(iv, plaintext, _aad(protected))
    encrypted_key = key.encrypt(
        cek, padding.OAEP(mgf=padding.MGF1(algorithm=hashes.SHA256()), algorithm=hashes.SHA256(), label=None)
    )
    return {
        "protected": protected,
        "encrypted_key": b64url(encrypted_key),
        "iv": b64url(iv),
        "ciphertext": b64url(sealed[:-16]),
        "tag": b64url(sealed[-16:]),
    }


def jwe_decrypt(private_key: rsa.RSAPrivateKey, jwe: dict) -> bytes:
    try:
        header = json.loads(b64url_decode(jwe["protected"]))
        if header.get("alg") != "RSA-OAEP-256" or header.get("enc") != "A256GCM":
            raise JoseError(f"unsupported JWE alg/enc {header.get('alg')}/{header.get('enc')}")
        cek = private_key.decrypt(
            b64url_decode(jwe["encrypted_key"]),
            padding.OAEP(mgf=padding.MGF1(algorithm=hashes.SHA256()), algorithm=hashes.SHA256(), label=None),
        )
        sealed = b64url_decode(jwe["ciphertext"]) + b64url_decode(jwe["tag"])
        return AESGCM(cek).decrypt(b64url_decode(jwe["iv"]), sealed, _aad(jwe["protected"]))
    except JoseError:
        raise
    except Exception as exc:  # noqa: BLE001 - any failure means the JWE is not for us
        raise JoseError(f"cannot decrypt the JWE: {type(exc).__name__}") from None

"""JOSE pieces the stand-in needs, written from Trustee v0.21.0 (standard library + cryptography).

Upstream references (trustee@v0.21.0, commit 258ea4ac):

* JWT verification: ``kbs/src/crypto/jwt.rs`` -- ``jsonwebtoken`` ``Validation::new(alg)``
  (``exp`` required and checked with 60 s leeway, ``aud`` not validated, jwt.rs:85-88);
  PEM keys tried as EC, then RSA, then Ed25519 (jwt.rs:67-78); a header ``jwk`` must carry
  ``alg`` and an ``x5c`` chain that verifies to ``trusted_certs_paths`` (jwt.rs:180-255).
* JWE response: ``kbs/src/jwe.rs`` -- RSA1_5, RSA-OAEP-256, ECDH-ES+A256KW (P-256, P-521) with
  A256GCM; AAD = BASE64URL(protected header JSON) (kbs-types ``ProtectedHeader::generate_aad``);
  body = ``{"protected","encrypted_key","iv","ciphertext","tag"}`` base64url without padding.
* Runtime-data binding: SHA-384 over the RFC 8785 form (``attestation-service/src/lib.rs:32-34,
  321-338``).

Works with Debian 12's python3-cryptography 38.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
import os
import time

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.keywrap import aes_key_wrap

LEEWAY = 60  # jsonwebtoken's default Validation leeway (seconds)


class JoseError(ValueError):
    """A token, key or JWE could not be verified or produced."""


# ------------------------------------------------------------------ encodings


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_nopad_decode(text: str) -> bytes:
    """``base64::engine::general_purpose::URL_SAFE_NO_PAD.decode``: padding is an error."""
    if not isinstance(text, str) or "=" in text:
        raise JoseError("Invalid padding")
    if len(text) % 4 == 1:
        raise JoseError("Invalid input length")
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)
    except (ValueError, TypeError) as exc:
        raise JoseError(f"Invalid byte: {exc}") from None


def b64_standard_decode(text: str) -> bytes:
    """``general_purpose::STANDARD.decode``: canonical padding required."""
    if not isinstance(text, str) or len(text) % 4:
        raise JoseError("Invalid padding")
    try:
        return base64.b64decode(text, validate=True)
    except (ValueError, TypeError) as exc:
        raise JoseError(f"Invalid byte: {exc}") from None


def canonical_json(value) -> bytes:
    """RFC 8785 (JCS) for the JSON shapes the protocol uses (objects, strings, integers)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


# ------------------------------------------------------------------ keys


def load_private_key(path: str):
    with open(path, "rb") as handle:
        return serialization.load_pem_private_key(handle.read(), password=None)


def load_public_key_pem(data: bytes):
    """EC, then RSA, then Ed25519 (jwt.rs:67-78); a certificate is not a public key."""
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError as exc:
        raise JoseError(f"failed to decode PEM public key: {exc}") from None
    if not isinstance(key, (ec.EllipticCurvePublicKey, rsa.RSAPublicKey, ed25519.Ed25519PublicKey)):
        raise JoseError("failed to decode PEM public key: unsupported key type")
    return key


def _int_b64(value: int, size: int | None = None) -> str:
    size = size or max(1, (value.bit_length() + 7) // 8)
    return b64url(value.to_bytes(size, "big"))


def _b64_int(text) -> int:
    if not isinstance(text, str):
        raise JoseError("JWK member is not a string")
    return int.from_bytes(b64url_nopad_decode(text), "big")


CURVES = {"P-256": (ec.SECP256R1, 32), "P-384": (ec.SECP384R1, 48), "P-521": (ec.SECP521R1, 66)}


def ec_public_jwk(key: ec.EllipticCurvePublicKey) -> dict:
    numbers = key.public_numbers()
    name, size = {"secp256r1": ("P-256", 32), "secp384r1": ("P-384", 48), "secp521r1": ("P-521", 66)}[key.curve.name]
    return {"kty": "EC", "crv": name, "x": _int_b64(numbers.x, size), "y": _int_b64(numbers.y, size)}


def public_key_from_jwk(jwk: dict):
    kty = jwk.get("kty")
    if kty == "EC":
        curve = CURVES.get(jwk.get("crv"))
        if not curve:
            raise JoseError("Unsupported elliptic curve")
        try:
            return ec.EllipticCurvePublicNumbers(_b64_int(jwk.get("x")), _b64_int(jwk.get("y")), curve[0]()).public_key()
        except ValueError as exc:
            raise JoseError(f"invalid EC JWK: {exc}") from None
    if kty == "RSA":
        return rsa.RSAPublicNumbers(_b64_int(jwk.get("e")), _b64_int(jwk.get("n"))).public_key()
    if kty == "OKP" and jwk.get("crv") == "Ed25519":
        return ed25519.Ed25519PublicKey.from_public_bytes(b64url_nopad_decode(jwk.get("x")))
    raise JoseError("Only RSA or EC JWKs are supported.")


def _public_raw(key) -> bytes:
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


# ------------------------------------------------------------------ JWT

_EC_ALGS = {"ES256": (hashes.SHA256, "secp256r1", 32), "ES384": (hashes.SHA384, "secp384r1", 48)}
_RSA_ALGS = {"RS256": hashes.SHA256, "RS384": hashes.SHA384, "RS512": hashes.SHA512,
             "PS256": hashes.SHA256, "PS384": hashes.SHA384, "PS512": hashes.SHA512}  # fmt: skip


def _segments(token: str) -> tuple[dict, dict, bytes, bytes]:
    if not isinstance(token, str) or token.count(".") != 2:
        raise JoseError("InvalidToken")
    head, body, sig = token.split(".")
    try:
        header = json.loads(b64url_nopad_decode(head))
        claims = json.loads(b64url_nopad_decode(body))
        signature = b64url_nopad_decode(sig)
    except (ValueError, UnicodeDecodeError) as exc:
        raise JoseError(f"InvalidToken: {exc}") from None
    if not isinstance(header, dict) or not isinstance(header.get("alg"), str):
        raise JoseError("InvalidToken: bad header")
    return header, claims, f"{head}.{body}".encode(), signature


def decode_header(token: str) -> dict:
    return _segments(token)[0]


def sign_jwt(header: dict, claims: dict, key) -> str:
    alg = header["alg"]
    signing_input = f"{b64url(json.dumps(header, separators=(',', ':')).encode())}.{b64url(json.dumps(claims, separators=(',', ':')).encode())}"
    data = signing_input.encode()
    if alg in _EC_ALGS:
        digest, _, size = _EC_ALGS[alg]
        r, s = decode_dss_signature(key.sign(data, ec.ECDSA(digest())))
        sig = r.to_bytes(size, "big") + s.to_bytes(size, "big")
    elif alg == "EdDSA":
        sig = key.sign(data)
    elif alg in _RSA_ALGS:
        pad = padding.PKCS1v15() if alg.startswith("RS") else padding.PSS(padding.MGF1(_RSA_ALGS[alg]()), _RSA_ALGS[alg]().digest_size)
        sig = key.sign(data, pad, _RSA_ALGS[alg]())
    else:
        raise JoseError(f"unsupported alg {alg}")
    return f"{signing_input}.{b64url(sig)}"


def _verify_signature(alg: str, key, data: bytes, sig: bytes) -> None:
    try:
        if alg in _EC_ALGS:
            digest, curve, size = _EC_ALGS[alg]
            if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != curve or len(sig) != 2 * size:
                raise JoseError("InvalidAlgorithm")
            key.verify(encode_dss_signature(int.from_bytes(sig[:size], "big"), int.from_bytes(sig[size:], "big")),
                       data, ec.ECDSA(digest()))  # fmt: skip
        elif alg == "EdDSA":
            if not isinstance(key, ed25519.Ed25519PublicKey):
                raise JoseError("InvalidAlgorithm")
            key.verify(sig, data)
        elif alg in _RSA_ALGS:
            if not isinstance(key, rsa.RSAPublicKey):
                raise JoseError("InvalidAlgorithm")
            digest = _RSA_ALGS[alg]
            pad = padding.PKCS1v15() if alg.startswith("RS") else padding.PSS(padding.MGF1(digest()), digest().digest_size)
            key.verify(sig, data, pad, digest())
        else:
            raise JoseError("InvalidAlgorithm")
    except InvalidSignature:
        raise JoseError("InvalidSignature") from None


def verify_jwt(token: str, key, alg: str, *, now: float | None = None) -> dict:
    """``jsonwebtoken::decode`` with ``Validation::new(alg)``, ``validate_aud = false`` (jwt.rs:80-89)."""
    header, claims, data, sig = _segments(token)
    if header["alg"] != alg:
        raise JoseError("InvalidAlgorithm")
    _verify_signature(alg, key, data, sig)
    if not isinstance(claims, dict):
        raise JoseError("InvalidClaims")
    exp = claims.get("exp")
    if exp is None:
        raise JoseError('MissingRequiredClaim("exp")')
    if not isinstance(exp, (int, float)) or isinstance(exp, bool):
        raise JoseError("InvalidClaimFormat(exp)")
    if exp < (time.time() if now is None else now) - LEEWAY:
        raise JoseError("ExpiredSignature")
    return claims


# ------------------------------------------------------------------ certificates (x5c endorsement)


def pem_certificates(data: bytes) -> list[x509.Certificate]:
    marker = b"-----BEGIN CERTIFICATE-----"
    certs = []
    for block in data.split(marker)[1:]:
        end = b"-----END CERTIFICATE-----"
        certs.append(x509.load_pem_x509_certificate(marker + block.split(end)[0] + end + b"\n"))
    return certs


def _valid_now(cert: x509.Certificate) -> bool:
    now = datetime.datetime.now(datetime.timezone.utc)
    if hasattr(cert, "not_valid_before_utc"):
        return cert.not_valid_before_utc <= now <= cert.not_valid_after_utc
    naive = now.replace(tzinfo=None)  # cryptography < 42: naive UTC
    return cert.not_valid_before <= naive <= cert.not_valid_after


def _signed_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    if cert.issuer != issuer.subject:
        return False
    key = issuer.public_key()
    try:
        if isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(cert.signature_hash_algorithm))
        elif isinstance(key, rsa.RSAPublicKey):
            key.verify(cert.signature, cert.tbs_certificate_bytes, padding.PKCS1v15(), cert.signature_hash_algorithm)
        elif isinstance(key, ed25519.Ed25519PublicKey):
            key.verify(cert.signature, cert.tbs_certificate_bytes)
        else:
            return False
    except (InvalidSignature, ValueError):
        return False
    return True


def chain_verifies(leaf: x509.Certificate, untrusted: list[x509.Certificate], anchors: list[x509.Certificate]) -> bool:
    """OpenSSL ``X509StoreContext::verify_cert`` as jwt.rs:243-252 uses it, reduced to: a path
    from ``leaf`` through ``untrusted`` to a trust anchor, every signature valid, every
    certificate inside its validity period."""
    fingerprints = {a.fingerprint(hashes.SHA256()) for a in anchors}
    cert, seen = leaf, 0
    while seen <= len(untrusted) + 1:
        if not _valid_now(cert):
            return False
        if cert.fingerprint(hashes.SHA256()) in fingerprints:
            return True
        anchor = next((a for a in anchors if _valid_now(a) and _signed_by(cert, a)), None)
        if anchor is not None:
            return True
        nxt = next((c for c in untrusted if _signed_by(cert, c)), None)
        if nxt is None:
            return False
        cert, seen = nxt, seen + 1
    return False


def verify_jwk_endorsement(jwk: dict, anchors: list[x509.Certificate]) -> None:
    """jwt.rs:180-255: the JWK must equal the x5c leaf key and the chain verify to an anchor."""
    key = public_key_from_jwk(jwk)
    if jwk.get("kty") == "EC" and jwk.get("crv") != "P-256":
        raise JoseError("Unsupported elliptic curve")
    x5c = jwk.get("x5c")
    if x5c is None:
        raise JoseError("No x5c extension inside JWK. Invalid public key.")
    if not x5c:
        raise JoseError("Empty x5c extension inside JWK. Invalid public key.")
    certs = []
    for entry in x5c:
        text = "".join(str(entry).split("\n")).strip()
        try:
            der = base64.b64decode(text, validate=True)
        except ValueError:
            try:
                der = b64url_nopad_decode(text)
            except JoseError:
                raise JoseError("Illegal x5c cert") from None
        try:
            certs.append(x509.load_der_x509_certificate(der))
        except ValueError:
            raise JoseError("Invalid x509 in x5c") from None
    if _public_raw(certs[0].public_key()) != _public_raw(key):
        raise JoseError("jwk does not match x5c")
    if not chain_verifies(certs[0], certs[1:], anchors):
        raise JoseError("JWK cannot be validated by trust anchor")


# ------------------------------------------------------------------ JWE (kbs/src/jwe.rs)


def _concat_kdf(alg: str, length: int, z: bytes) -> bytes:
    """jwe.rs:22-44: NIST SP 800-56A Concat KDF with SHA-256, empty apu/apv."""
    out = b""
    for i in range((length + 31) // 32):
        out += hashlib.sha256((i + 1).to_bytes(4, "big") + z + len(alg).to_bytes(4, "big") + alg.encode()
                              + (0).to_bytes(4, "big") + (0).to_bytes(4, "big") + (length * 8).to_bytes(4, "big")).digest()  # fmt: skip
    return out[:length]


def _protected(alg: str, other: dict | None = None) -> str:
    header = {"alg": alg, "enc": "A256GCM", **(other or {})}
    return b64url(json.dumps(header, separators=(",", ":")).encode())


def _seal(protected: str, cek: bytes, plaintext: bytes) -> tuple[bytes, bytes, bytes]:
    iv = os.urandom(12)
    sealed = AESGCM(cek).encrypt(iv, plaintext, protected.encode())
    return iv, sealed[:-16], sealed[-16:]


def jwe_encrypt(tee_pubkey, plaintext: bytes) -> dict:
    """``jwe()`` (jwe.rs:332-346) for a ``TeePubKey`` (kbs-types: ``kty`` RSA{alg,n,e} | EC{crv,alg,x,y})."""
    if not isinstance(tee_pubkey, dict):
        raise JoseError("tee-pubkey is not a JWK")
    kty, alg = tee_pubkey.get("kty"), tee_pubkey.get("alg")
    if kty == "RSA":
        key = rsa.RSAPublicNumbers(_b64_int(tee_pubkey.get("e")), _b64_int(tee_pubkey.get("n"))).public_key()
        cek = os.urandom(32)
        if alg == "RSA-OAEP-256":
            wrapped = key.encrypt(cek, padding.OAEP(padding.MGF1(hashes.SHA256()), hashes.SHA256(), None))
        elif alg == "RSA1_5":
            wrapped = key.encrypt(cek, padding.PKCS1v15())
        else:
            raise JoseError(f"algorithm {alg} is not supported")
        protected = _protected(alg)
    elif kty == "EC":
        crv = tee_pubkey.get("crv")
        if alg != "ECDH-ES+A256KW" or crv not in ("P-256", "P-521"):
            raise JoseError(f"curve {crv} and algorithm {alg} is not supported")
        curve, size = CURVES[crv]
        x, y = b64url_nopad_decode(tee_pubkey.get("x")), b64url_nopad_decode(tee_pubkey.get("y"))
        if len(x) != size or len(y) != size:
            raise JoseError("invalid bytes length of coordinates")
        try:
            peer = ec.EllipticCurvePublicNumbers(int.from_bytes(x, "big"), int.from_bytes(y, "big"), curve()).public_key()
        except ValueError:
            raise JoseError("invalid TEE public key") from None
        ephemeral = ec.generate_private_key(curve())
        z = ephemeral.exchange(ec.ECDH(), peer)
        cek = os.urandom(32)
        wrapped = aes_key_wrap(_concat_kdf("ECDH-ES+A256KW", 32, z), cek)
        epk = ec_public_jwk(ephemeral.public_key())
        protected = _protected(alg, {"epk": {"crv": crv, "kty": "EC", "x": epk["x"], "y": epk["y"]}})
    else:
        raise JoseError("unsupported tee-pubkey kty")
    iv, ciphertext, tag = _seal(protected, cek, plaintext)
    return {"protected": protected, "encrypted_key": b64url(wrapped), "iv": b64url(iv),
            "ciphertext": b64url(ciphertext), "tag": b64url(tag)}  # fmt: skip

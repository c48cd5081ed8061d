"""Admin bearer tokens for Trustee v0.21.0 (EdDSA JWT) and the JOSE pieces of the protocol."""

from __future__ import annotations

import json
import time

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from ccfactory.kbs import jose
from ccfactory.kbs.client import ADMIN_ISSUER, ADMIN_ROLE, admin_token


def test_admin_token_format():
    key = ed25519.Ed25519PrivateKey.generate()
    token = admin_token(key, now=1_800_000_000)
    header, claims = jose.jwt_unverified(token)
    assert header == {"alg": "EdDSA", "typ": "JWT"}
    assert claims["iss"] == ADMIN_ISSUER == "ccfactory" and claims["role"] == ADMIN_ROLE
    assert claims["aud"] == ["KBS"] and claims["exp"] - claims["iat"] == 300 and len(claims["jti"]) == 32
    # no padding, URL-safe alphabet, three parts
    assert token.count(".") == 2 and "=" not in token and "+" not in token and "/" not in token
    assert jose.jwt_verify(token, key.public_key(), now=1_800_000_100)["role"] == ADMIN_ROLE


def test_admin_token_is_verifiable_from_the_pem_the_kbs_reads(tmp_path):
    key = ed25519.Ed25519PrivateKey.generate()
    pem = tmp_path / "admin.pub"
    pem.write_bytes(jose.public_pem(key.public_key()))
    assert pem.read_text().startswith("-----BEGIN PUBLIC KEY-----")
    assert jose.jwt_verify(admin_token(key), jose.load_public_key(str(pem)))["iss"] == "ccfactory"


def test_wrong_key_expired_and_tampered_tokens_fail():
    key = ed25519.Ed25519PrivateKey.generate()
    token = admin_token(key)
    with pytest.raises(jose.JoseError, match="bad signature"):
        jose.jwt_verify(token, ed25519.Ed25519PrivateKey.generate().public_key())
    with pytest.raises(jose.JoseError, match="expired"):
        jose.jwt_verify(admin_token(key, now=time.time() - 3600), key.public_key())
    head, body, sig = token.split(".")
    claims = json.loads(jose.b64url_decode(body))
    claims["role"] = "root"
    forged = ".".join([head, jose.b64url(json.dumps(claims).encode()), sig])
    with pytest.raises(jose.JoseError, match="bad signature"):
        jose.jwt_verify(forged, key.public_key())
    with pytest.raises(jose.JoseError, match="does not match"):
        jose.jwt_verify(token, ec.generate_private_key(ec.SECP256R1()).public_key())
    with pytest.raises(jose.JoseError, match="three"):
        jose.jwt_verify("abc", key.public_key())


def test_es256_tokens_have_raw_signatures():
    key = ec.generate_private_key(ec.SECP256R1())
    token = jose.jwt_sign({"alg": "ES256", "typ": "JWT"}, {"exp": int(time.time()) + 60}, key)
    assert len(jose.b64url_decode(token.split(".")[2])) == 64
    assert jose.jwt_verify(token, key.public_key())["exp"] > 0
    jwk = jose.ec_public_jwk(key.public_key())
    assert jose.public_pem(jose.ec_public_from_jwk(jwk)) == jose.public_pem(key.public_key())


def test_jwe_round_trip_and_binding():
    tee = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwe = jose.jwe_encrypt(jose.rsa_public_jwk(tee.public_key()), b"model key")
    assert set(jwe) == {"protected", "encrypted_key", "iv", "ciphertext", "tag"}
    assert json.loads(jose.b64url_decode(jwe["protected"])) == {"alg": "RSA-OAEP-256", "enc": "A256GCM"}
    assert jose.jwe_decrypt(tee, jwe) == b"model key"
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with pytest.raises(jose.JoseError, match="cannot decrypt"):
        jose.jwe_decrypt(other, jwe)
    assert jose.runtime_data_digest({"b": 1, "a": "x"}) == jose.runtime_data_digest({"a": "x", "b": 1})
    assert jose.jcs({"tee-pubkey": {"e": "AQAB"}, "nonce": "n"}) == b'{"nonce":"n","tee-pubkey":{"e":"AQAB"}}'

"""The lab's Trustee KBS stand-in: Trustee v0.21.0's config file, CLI and HTTP protocol.

NOT Trustee. It exists so ccfactory's KBS stage can be rehearsed on lab nodes, which have
no TEE. It keeps what a deployment tool can observe of the real ``kbs`` binary with the
built-in attestation service (``coco_as_builtin``):

* ``kbs -c|--config-file FILE`` (or ``KBS_CONFIG_FILE``); the TOML config is checked with
  the release's schema (unknown keys refused, like serde's ``deny_unknown_fields``), and
  what the stand-in cannot simulate is refused with a message saying so;
* HTTPS with ``[http_server] private_key``/``certificate`` (plain HTTP only with
  ``insecure_http = true``, as the real one);
* ``POST /kbs/v0/auth`` and ``/kbs/v0/attest`` (KBS protocol 0.4.0, cookie
  ``kbs-session-id``). Only ``sample`` evidence can be verified (its report data must
  bind the runtime data: SHA-384 of its canonical JSON). **snp, tdx and every other TEE
  are refused: the stand-in cannot verify hardware evidence.** The result is an EAR
  token (ES256, signer key/chain from ``attestation_token_broker.signer``);
* ``GET /kbs/v0/resource/<repo>/<type>/<tag>`` with the session cookie or a bearer
  token: token checked against ``[attestation_token]``, then the resource policy, then
  the resource, returned as a JWE (RSA-OAEP-256/A256GCM) to the tee-pubkey;
* admin endpoints (``POST|DELETE resource/...``, ``GET|POST resource-policy``, ``POST
  attestation-policy``, ``GET|POST reference-value``) behind the configured
  ``[admin]`` mode; ``AuthenticatedAuthorization`` checks an EdDSA/ES256 JWT against the
  identity providers' PEM keys, issuer, audience, the ``role`` claim and the regex ACL;
* errors as the real ``ErrorInformation`` JSON (``{"type": ".../errors/PolicyDeny",
  "detail": "Access denied by policy"}``) with 401/403/404.

The resource policy is evaluated by ``policy.py``: a small evaluator for the policies
ccfactory renders (and upstream allow_all/deny_all). **It is not OPA.** Persistent state
(resources, policies, reference values) lives under ``[storage_backend.backends.local_fs]
dir_path``, one file per key.
"""

from __future__ import annotations

import base64
import datetime
import json
import os
import re
import secrets
import ssl
import sys
import threading
import time
import tomllib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from . import jose, policy, schema

VERSION = "v0.21.0-ccfactory-lab.1"
PROTOCOL_VERSION = "0.4.0"
ERROR_PREFIX = "https://github.com/confidential-containers/kbs/errors"
SESSION_COOKIE = "kbs-session-id"
KNOWN_TEES = (
    "az-snp-vtpm", "az-tdx-vtpm", "snp", "sgx", "tdx", "cca", "csv", "se", "tpm", "sample", "sampledevice",
)  # fmt: skip
TEE_PUBKEY_PATH = ("submods", "cpu0", "ear.veraison.annotated-evidence", "runtime_data_claims", "tee-pubkey")
EAR_PROFILE = "tag:github.com,2024:confidential-containers/Trustee"
RESOURCE_PATH = re.compile(
    r"^(?P<repo>[a-zA-Z0-9_\-]+[a-zA-Z0-9_\-.]*)/(?P<type>[a-zA-Z0-9_\-]+[a-zA-Z0-9_\-.]*)/(?P<tag>[a-zA-Z0-9_\-]+[a-zA-Z0-9_\-.]*)$"
)
UPSTREAM_DEFAULT_POLICY = """\
package policy

default allow = false

plugin = data.plugin

allow if {
\tplugin == "resource"
\tnot input["submods"]["cpu0"]["ear.veraison.annotated-evidence"]["sample"]
}
"""


def log(level: str, message: str) -> None:
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    print(f"[{stamp} {level:<5} kbs] {message}", file=sys.stderr, flush=True)


class KbsError(Exception):
    """An error answered as the real KBS answers it (ErrorInformation JSON)."""

    def __init__(self, kind: str, detail: str, status: int = 401):
        super().__init__(detail)
        self.kind, self.detail, self.status = kind, detail, status

    def body(self) -> bytes:
        return json.dumps({"type": f"{ERROR_PREFIX}/{self.kind}", "detail": self.detail}).encode()


# ------------------------------------------------------------------ config


def load_config(path: str) -> dict:
    """Parse, check against the release schema, then against what the stand-in simulates."""
    try:
        with open(path, "rb") as handle:
            config = tomllib.load(handle)
    except OSError as exc:
        raise schema.ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise schema.ConfigError(f"invalid config: {path} is not TOML: {exc}") from None
    schema.validate_kbs_config(config)
    limits = []
    service = config.get("attestation_service", {"type": "coco_as_builtin"})
    if service.get("type") != "coco_as_builtin":
        limits.append(f"attestation_service.type {service.get('type')!r} (only coco_as_builtin)")
    if service.get("rvps_config", {}).get("type", "BuiltIn") != "BuiltIn":
        limits.append("attestation_service.rvps_config.type other than BuiltIn")
    storage = config.get("storage_backend", {})
    if storage.get("storage_type", "Memory") not in ("Memory", "LocalFs"):
        limits.append(f"storage_backend.storage_type {storage.get('storage_type')!r} (only LocalFs, Memory)")
    if storage.get("storage_type") == "LocalFs" and not storage.get("backends", {}).get("local_fs", {}).get("dir_path"):
        limits.append("LocalFs storage without [storage_backend.backends.local_fs] dir_path")
    for plugin in config.get("plugins", []):
        if plugin.get("name") != "resource" or plugin.get("storage_backend_type", "kvstorage") != "kvstorage":
            limits.append(f"plugin {plugin.get('name')!r} (only name = \"resource\" with kvstorage)")
    if config.get("attestation_token", {}).get("trusted_jwk_sets"):
        limits.append("attestation_token.trusted_jwk_sets (use trusted_certs_paths)")
    admin = config.get("admin", {})
    bearer = admin.get("authentication", {}).get("bearer_jwt", {})
    for idp in bearer.get("identity_providers", []):
        uri = idp.get("public_key_uri") or ""
        if idp.get("jwk_set_uri") or uri.startswith(("http://", "https://")):
            limits.append("remote admin keys (public_key_uri must be a local path or file://)")
    http = config.get("http_server", {})
    if not http.get("insecure_http", False) and not (http.get("private_key") and http.get("certificate")):
        limits.append("HTTPS without [http_server] private_key and certificate (the real KBS would use a "
                      "generated certificate; the stand-in needs both)")  # fmt: skip
    if limits:
        raise schema.ConfigError("the lab Trustee stand-in does not simulate: " + "; ".join(limits))
    return config


# ------------------------------------------------------------------ storage


class Storage:
    """Key-value namespaces, as files under ``dir_path/<namespace>/`` (or in memory)."""

    def __init__(self, dir_path: str | None):
        self.root = dir_path
        self.memory: dict[tuple[str, str], bytes] = {}
        self.lock = threading.Lock()
        if self.root:
            os.makedirs(self.root, mode=0o700, exist_ok=True)

    def _file(self, namespace: str, key: str) -> str:
        return os.path.join(self.root, namespace, key.replace("/", "\\x2F"))

    def get(self, namespace: str, key: str) -> bytes | None:
        with self.lock:
            if not self.root:
                return self.memory.get((namespace, key))
            try:
                with open(self._file(namespace, key), "rb") as handle:
                    return handle.read()
            except FileNotFoundError:
                return None

    def set(self, namespace: str, key: str, value: bytes) -> None:
        with self.lock:
            if not self.root:
                self.memory[(namespace, key)] = value
                return
            path = self._file(namespace, key)
            os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
            tmp = f"{path}.{os.getpid()}.tmp"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as handle:
                handle.write(value)
            os.replace(tmp, path)

    def delete(self, namespace: str, key: str) -> bool:
        """Remove ``key``; False if it was not there."""
        with self.lock:
            if not self.root:
                return self.memory.pop((namespace, key), None) is not None
            try:
                os.remove(self._file(namespace, key))
            except FileNotFoundError:
                return False
            return True


# ------------------------------------------------------------------ certificates


def _pem_blocks(data: bytes) -> list[bytes]:
    return [b"-----BEGIN CERTIFICATE-----" + block.split(b"-----END CERTIFICATE-----")[0] + b"-----END CERTIFICATE-----\n"
            for block in data.split(b"-----BEGIN CERTIFICATE-----")[1:]]  # fmt: skip


def load_certs(path: str) -> list[x509.Certificate]:
    with open(path, "rb") as handle:
        return [x509.load_pem_x509_certificate(block) for block in _pem_blocks(handle.read())]


def _signed_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    if cert.issuer != issuer.subject:
        return False
    key = issuer.public_key()
    try:
        if isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(cert.signature_hash_algorithm))
        elif isinstance(key, rsa.RSAPublicKey):
            key.verify(cert.signature, cert.tbs_certificate_bytes, padding.PKCS1v15(), cert.signature_hash_algorithm)
        else:
            return False
    except InvalidSignature:
        return False
    return True


def _valid_now(cert: x509.Certificate) -> bool:
    now = datetime.datetime.now(datetime.timezone.utc)
    if hasattr(cert, "not_valid_before_utc"):  # cryptography >= 42
        return cert.not_valid_before_utc <= now <= cert.not_valid_after_utc
    now = now.replace(tzinfo=None)  # Debian 12's cryptography 38: naive UTC
    return cert.not_valid_before <= now <= cert.not_valid_after


def chain_is_trusted(chain: list[x509.Certificate], anchors: list[x509.Certificate]) -> bool:
    """Leaf first; every link signed by the next, the last by a trust anchor; all valid now."""
    if not chain or not all(_valid_now(c) for c in chain):
        return False
    for cert, issuer in zip(chain, chain[1:]):
        if not _signed_by(cert, issuer):
            return False
    last = chain[-1]
    return any(last.fingerprint(hashes.SHA256()) == a.fingerprint(hashes.SHA256()) or _signed_by(last, a)
               for a in anchors if _valid_now(a))  # fmt: skip


# ------------------------------------------------------------------ the service


class Kbs:
    def __init__(self, config: dict):
        self.config = config
        storage = config.get("storage_backend", {})
        dir_path = storage.get("backends", {}).get("local_fs", {}).get("dir_path") if storage.get(
            "storage_type") == "LocalFs" else None  # fmt: skip
        self.storage = Storage(dir_path)
        self.sessions: dict[str, dict] = {}
        self.session_lock = threading.Lock()
        service = config.get("attestation_service", {})
        self.session_minutes = int(service.get("timeout", 5))
        broker = service.get("attestation_token_broker", {})
        self.token_minutes = int(broker.get("duration_min", 5))
        self.issuer = broker.get("issuer_name", "CoCo-Attestation-Service")
        self.developer = broker.get("developer_name", "https://confidentialcontainers.org")
        self.build = broker.get("build_name", f"ccfactory-lab-trustee-{VERSION}")
        self.profile = broker.get("profile_name", EAR_PROFILE)
        signer = broker.get("signer")
        if signer:
            self.token_key = jose.load_private_key(signer["key_path"])
            chain = load_certs(signer["cert_path"]) if signer.get("cert_path") else []
            self.token_x5c = [base64.b64encode(c.public_bytes(_der())).decode() for c in chain]
        else:  # like the real AS: an ephemeral key, which a strict KBS will not trust
            self.token_key = ec.generate_private_key(ec.SECP256R1())
            self.token_x5c = []
        token_cfg = config.get("attestation_token", {})
        self.insecure_header_jwk = bool(token_cfg.get("insecure_header_jwk", False))
        self.trust_anchors = [c for p in token_cfg.get("trusted_certs_paths", []) for c in load_certs(p)]
        self.admin = config.get("admin", {})
        self.admin_keys = []
        bearer = self.admin.get("authentication", {}).get("bearer_jwt", {})
        for idp in bearer.get("identity_providers", []):
            uri = idp["public_key_uri"]
            self.admin_keys.append((idp, jose.load_public_key(uri[len("file://"):] if uri.startswith("file://") else uri)))
        self.acls = [(rule["role"], re.compile(rule.get("allowed_endpoints", "")))
                     for rule in self.admin.get("authorization", {}).get("regex_acl", {}).get("acls", [])]  # fmt: skip

    # ---------------------------------------------------------------- admin

    def check_admin(self, endpoint: str, headers) -> None:
        mode = self.admin.get("authorization_mode")
        if mode == "InsecureAllowAll":
            return
        if mode == "DenyAll":
            raise KbsError("AdminAuthAccess", f"admin access denied for endpoint {endpoint}: admin APIs are disabled")
        auth = headers.get("Authorization", "")
        if not auth.startswith("Bearer "):
            raise KbsError("AdminAuthAccess", f"admin access denied for endpoint {endpoint}: no bearer token")
        token = auth[len("Bearer "):].strip()
        for idp, key in self.admin_keys:
            try:
                claims = jose.jwt_verify(token, key)
            except jose.JoseError:
                continue
            if idp.get("issuer") and claims.get("iss") != idp["issuer"]:
                continue
            audiences = claims.get("aud") if isinstance(claims.get("aud"), list) else [claims.get("aud")]
            if idp.get("audience") and idp["audience"] not in audiences:
                continue
            role = claims.get("role")
            if not isinstance(role, str):
                raise KbsError("AdminAuthAccess", f"admin access denied for endpoint {endpoint}: "
                               "Missing required `role` claim in JWT")  # fmt: skip
            for acl_role, pattern in self.acls:
                if acl_role == role and pattern.fullmatch(endpoint):
                    return
            raise KbsError("AdminAuthAccess", f"admin access denied for endpoint {endpoint}: role not allowed")
        raise KbsError("AdminAuthAccess", f"admin access denied for endpoint {endpoint}: "
                       "Cannot verify token with any of the issuers")  # fmt: skip

    # ---------------------------------------------------------------- RCAR

    def auth(self, body: bytes) -> tuple[dict, str]:
        try:
            request = json.loads(body)
            version, tee = request["version"], request["tee"]
        except (ValueError, KeyError, TypeError):
            raise KbsError("AttestationError", "Attestation error: RCAR handshake Auth failed: deserialize Request") from None
        if version != PROTOCOL_VERSION:
            raise KbsError("AttestationError", "Attestation error: RCAR handshake Auth failed: KBS Client Protocol "
                           f"Version Mismatch: expect ={PROTOCOL_VERSION} while the request is {version}")  # fmt: skip
        if tee not in KNOWN_TEES:
            raise KbsError("AttestationError", f"Attestation error: RCAR handshake Auth failed: unknown tee {tee!r}")
        session_id = secrets.token_hex(16)
        challenge = {"nonce": base64.b64encode(os.urandom(32)).decode(), "extra-params": ""}
        with self.session_lock:
            now = time.time()
            for key in [k for k, s in self.sessions.items() if s["expires"] < now]:
                del self.sessions[key]
            self.sessions[session_id] = {"tee": tee, "nonce": challenge["nonce"], "token": None,
                                         "expires": now + 60 * self.session_minutes}  # fmt: skip
        return challenge, session_id

    def _session(self, session_id: str | None) -> dict | None:
        with self.session_lock:
            session = self.sessions.get(session_id or "")
        if session and session["expires"] < time.time():
            return None
        return session

    def attest(self, body: bytes, session_id: str | None) -> str:
        session = self._session(session_id)
        if session is None:
            raise KbsError("AttestationError", "Attestation error: RCAR handshake Attest failed: cookie not found")
        if session["token"]:
            return session["token"]
        try:
            attestation = json.loads(body)
            runtime = attestation["runtime-data"]
            evidence = attestation["tee-evidence"]
            primary = evidence["primary_evidence"]
            additional = evidence.get("additional_evidence", "")
        except (ValueError, KeyError, TypeError):
            raise KbsError("AttestationError", "Attestation error: RCAR handshake Attest failed: deserialize Attestation") from None
        if runtime.get("nonce") != session["nonce"]:
            raise KbsError("AttestationError", "Attestation error: RCAR handshake Attest failed: the nonce in the "
                           "handshake session is different from the client side in KBS protocol's Attestation message")  # fmt: skip
        if session["tee"] != "sample":
            raise KbsError("AttestationError", f"Attestation error: RCAR handshake Attest failed: verify TEE evidence "
                           f"failed: the lab Trustee stand-in cannot verify {session['tee']} evidence (sample only)")  # fmt: skip
        if additional:
            raise KbsError("AttestationError", "Attestation error: RCAR handshake Attest failed: the lab Trustee "
                           "stand-in cannot verify additional (device) evidence")  # fmt: skip
        runtime_data = {"tee-pubkey": runtime.get("tee-pubkey"), "nonce": session["nonce"], "additional-evidence": additional}
        expected = jose.runtime_data_digest(runtime_data)
        try:
            svn = primary["svn"]
            report = base64.b64decode(primary.get("report_data", ""), validate=True)
        except (KeyError, TypeError, ValueError):
            raise KbsError("AttestationError", "Attestation error: RCAR handshake Attest failed: verify TEE evidence "
                           "failed: Deserialize Quote failed.") from None  # fmt: skip
        if report != expected:
            raise KbsError("AttestationError", "Attestation error: RCAR handshake Attest failed: verify TEE evidence "
                           "failed: Evidence's identity verification error.")  # fmt: skip
        claims = {"svn": svn, "report_data": primary.get("report_data", ""), "launch_digest": "abcde",
                  "platform_version": {"major": 1, "minor": 4}, "debug": False}  # fmt: skip
        token = self._ear_token(claims, runtime_data)
        with self.session_lock:
            session["token"] = token
        return token

    def _reference_values(self, name: str) -> list:
        raw = self.storage.get("reference_value", name)
        return json.loads(raw) if raw else []

    def _ear_token(self, sample_claims: dict, runtime_data: dict) -> str:
        # The sample appraisal of the default CPU policy: affirming only with matching
        # reference values (svn, launch_digest); otherwise a warning.
        matched = sample_claims["svn"] in self._reference_values("svn") and "abcde" in self._reference_values(
            "launch_digest")  # fmt: skip
        tier = 2 if matched else 33
        now = int(time.time())
        claims = {
            "eat_profile": self.profile,
            "iat": now,
            "exp": now + 60 * self.token_minutes,
            "iss": self.issuer,
            "ear.verifier-id": {"developer": self.developer, "build": self.build},
            "submods": {
                "cpu0": {
                    "ear.status": "affirming" if matched else "warning",
                    "ear.trustworthiness-vector": {"instance-identity": 0, "configuration": 0, "executables": tier,
                                                   "file-system": 0, "hardware": tier, "runtime-opaque": 0,
                                                   "storage-opaque": 0, "sourced-data": 0},  # fmt: skip
                    "ear.appraisal-policy-id": "default",
                    "ear.veraison.annotated-evidence": {
                        "sample": sample_claims,
                        "runtime_data_claims": {"nonce": runtime_data["nonce"], "tee-pubkey": runtime_data["tee-pubkey"]},
                    },
                }
            },
        }
        header = {"alg": "ES256", "typ": "JWT", "jwk": jose.ec_public_jwk(self.token_key.public_key(), x5c=self.token_x5c)}
        return jose.jwt_sign(header, claims, self.token_key)

    def verify_token(self, token: str) -> dict:
        try:
            header, _ = jose.jwt_unverified(token)
            jwk = header.get("jwk")
            if not isinstance(jwk, dict):
                raise jose.JoseError("no jwk in the token header")
            key = jose.ec_public_from_jwk(jwk)
            if not self.insecure_header_jwk:
                if not self.trust_anchors:
                    raise jose.JoseError("Cannot verify token since trusted cert is empty")
                x5c = jwk.get("x5c") or []
                if not x5c:
                    raise jose.JoseError("No x5c extension inside JWK. Invalid public key.")
                chain = [x509.load_der_x509_certificate(base64.b64decode(c)) for c in x5c]
                if jose.public_pem(chain[0].public_key()) != jose.public_pem(key):
                    raise jose.JoseError("jwk does not match x5c")
                if not chain_is_trusted(chain, self.trust_anchors):
                    raise jose.JoseError("JWK cannot be validated by trust anchor")
            return jose.jwt_verify(token, key)
        except (jose.JoseError, ValueError) as exc:
            raise KbsError("TokenVerifierError", f"Token Verifier error: {exc}") from None

    # ---------------------------------------------------------------- policies and resources

    def resource_policy(self) -> str:
        stored = self.storage.get("kbs", "resource-policy")
        return stored.decode() if stored is not None else UPSTREAM_DEFAULT_POLICY

    def set_resource_policy(self, body: bytes) -> None:
        try:
            text = jose.b64url_decode(json.loads(body)["policy"]).decode()
        except (ValueError, KeyError, TypeError, jose.JoseError):
            raise KbsError("PolicyEngineError", "Policy engine error: Illegal SetPolicy Request Json") from None
        try:
            policy.spec_of(text)
        except policy.UnsupportedPolicy as exc:
            raise KbsError("PolicyEngineError", f"Policy engine error: {exc}") from None
        self.storage.set("kbs", "resource-policy", text.encode())
        log("INFO", "resource policy set")

    def allowed(self, data: dict, claims: dict) -> bool:
        text = self.resource_policy()
        if text == UPSTREAM_DEFAULT_POLICY:
            evidence = claims.get("submods", {}).get("cpu0", {}).get("ear.veraison.annotated-evidence", {})
            return data["plugin"] == "resource" and not evidence.get("sample")
        return policy.evaluate(text, data, claims)

    def get_resource(self, path: str, token: str | None) -> bytes:
        if not token:
            raise KbsError("TokenNotFound", "Attestation Token not found")
        claims = self.verify_token(token)
        data = {"plugin": "resource", "resource-path": "/" + path, "query": {}}
        if not self.allowed(data, claims):
            raise KbsError("PolicyDeny", "Access denied by policy", 403)
        if not RESOURCE_PATH.match(path):
            raise KbsError("PluginInternalError", "Plugin internal error: illegal ResourceDesc format.")
        value = self.storage.get("repository", path)
        if value is None:
            raise KbsError("PluginInternalError", f"Plugin internal error: resource {path} not found")
        node = claims
        for part in TEE_PUBKEY_PATH:
            node = node.get(part, {}) if isinstance(node, dict) else {}
        try:
            return json.dumps(jose.jwe_encrypt(node, value)).encode()
        except jose.JoseError as exc:
            raise KbsError("JweError", f"JWE failed: {exc}") from None

    def set_resource(self, path: str, body: bytes) -> None:
        if not RESOURCE_PATH.match(path):
            raise KbsError("PluginInternalError", "Plugin internal error: illegal ResourceDesc format.")
        self.storage.set("repository", path, body)
        log("INFO", f"resource {path} registered ({len(body)} bytes)")

    def delete_resource(self, path: str) -> None:
        # Trustee's resource plugin: DELETE is admin-authenticated; the KV backend answers an
        # error for an absent resource until trustee PR #1601 (after v0.21.0) made it idempotent
        if not RESOURCE_PATH.match(path):
            raise KbsError("PluginInternalError", "Plugin internal error: illegal ResourceDesc format.")
        if not self.storage.delete("repository", path):
            raise KbsError("PluginInternalError", f"Plugin internal error: resource not found: {path}")
        log("INFO", f"resource {path} deleted")

    def register_reference_value(self, body: bytes) -> None:
        try:
            message = json.loads(body)
            if message.get("type") != "sample" or message.get("version") != "0.1.0":
                raise ValueError("only version 0.1.0 sample messages")
            values = json.loads(base64.b64decode(message["payload"]))
            if not isinstance(values, dict):
                raise ValueError("payload is not a JSON object")
        except (ValueError, KeyError, TypeError) as exc:
            raise KbsError("RvpsError", f"RVPS configuration failed: Failed to register reference value: {exc}") from None
        for name, value in values.items():
            self.storage.set("reference_value", name, json.dumps(value if isinstance(value, list) else [value]).encode())
        log("INFO", f"reference values registered: {', '.join(sorted(values))}")

    # ---------------------------------------------------------------- routing

    def handle(self, method: str, target: str, headers, body: bytes) -> tuple[int, dict, bytes]:
        parts = urlsplit(target)
        endpoint = parts.path
        if not endpoint.startswith("/kbs/v0/"):
            return 404, {}, b""
        rest = unquote(endpoint[len("/kbs/v0/"):])
        base, _, sub = rest.partition("/")
        cookie = _cookie(headers.get("Cookie", ""))
        json_type = {"Content-Type": "application/json"}
        if base == "auth" and method == "POST":
            challenge, session_id = self.auth(body)
            return 200, {**json_type, "Set-Cookie": f"{SESSION_COOKIE}={session_id}; Path=/kbs; HttpOnly"}, json.dumps(challenge).encode()
        if base == "attest" and method == "POST":
            token = self.attest(body, cookie)
            return 200, {**json_type, "Set-Cookie": f"{SESSION_COOKIE}={cookie}; Path=/kbs; HttpOnly"}, json.dumps({"token": token}).encode()
        if base == "resource-policy" and not sub:
            self.check_admin(endpoint, headers)
            if method == "POST":
                self.set_resource_policy(body)
                return 200, {}, b""
            return 200, {"Content-Type": "text/xml"}, jose.b64url(self.resource_policy().encode()).encode()
        if base == "attestation-policy" and method == "POST" and not sub:
            self.check_admin(endpoint, headers)
            try:
                request = json.loads(body)
                text = jose.b64url_decode(request["policy"])
                policy_id = request["policy_id"]
            except (ValueError, KeyError, TypeError, jose.JoseError):
                raise KbsError("AttestationError", "Attestation error: Set policy failed: parse set policy request") from None
            self.storage.set("attestation_service_policy", policy_id, text)
            log("INFO", f"attestation policy {policy_id} set")
            return 200, {}, b""
        if base == "reference-value":
            self.check_admin(endpoint, headers)
            if method == "POST" and not sub:
                self.register_reference_value(body)
                return 200, json_type, b""
            if method == "GET" and sub:
                raw = self.storage.get("reference_value", sub)
                return 200, json_type, raw if raw is not None else b"null"
            raise KbsError("InvalidRequestPath", f"Request path {endpoint} is invalid", 404)
        if base == "resource" and sub:
            if method == "POST":
                self.check_admin(endpoint, headers)
                self.set_resource(sub, body)
                return 200, {"Content-Type": "text/xml"}, b""
            if method == "DELETE":
                self.check_admin(endpoint, headers)
                self.delete_resource(sub)
                return 200, {"Content-Type": "text/xml"}, b""
            token = self._session_token(cookie) or _bearer(headers)
            return 200, json_type, self.get_resource(sub, token)
        if base in ("auth", "attest", "resource-policy", "attestation-policy", "resource"):
            raise KbsError("InvalidRequestPath", f"Request path {endpoint} is invalid", 404)
        raise KbsError("PluginNotFound", f"Plugin {base} not found", 404)

    def _session_token(self, session_id: str | None) -> str | None:
        session = self._session(session_id)
        return session["token"] if session else None


def _der():
    from cryptography.hazmat.primitives.serialization import Encoding

    return Encoding.DER


def _cookie(header: str) -> str | None:
    for part in header.split(";"):
        name, _, value = part.strip().partition("=")
        if name == SESSION_COOKIE:
            return value
    return None


def _bearer(headers) -> str | None:
    auth = headers.get("Authorization", "")
    return auth[len("Bearer "):].strip() if auth.startswith("Bearer ") else None


# ------------------------------------------------------------------ HTTP


def make_handler(kbs: Kbs, max_body: int):
    class Handler(BaseHTTPRequestHandler):
        server_version = "kbs"
        sys_version = ""
        protocol_version = "HTTP/1.1"

        def _serve(self, method: str) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            if length > max_body:
                self._reply(413, {}, b"payload too large")
                return
            body = self.rfile.read(length) if length else b""
            try:
                status, headers, payload = kbs.handle(method, self.path, self.headers, body)
            except KbsError as exc:
                log("ERROR" if exc.status != 403 else "INFO", f"{method} {urlsplit(self.path).path}: {exc.detail}")
                status, headers, payload = exc.status, {"Content-Type": "application/json"}, exc.body()
            except Exception as exc:  # noqa: BLE001 - the real KBS answers 401 on internal errors too
                log("ERROR", f"{method} {urlsplit(self.path).path}: internal error {type(exc).__name__}: {exc}")
                status, headers, payload = 401, {"Content-Type": "application/json"}, KbsError(
                    "PluginInternalError", "Plugin internal error").body()  # fmt: skip
            self._reply(status, headers, payload)

        def _reply(self, status: int, headers: dict, payload: bytes) -> None:
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def do_GET(self):  # noqa: N802 - stdlib name
            self._serve("GET")

        def do_POST(self):  # noqa: N802 - stdlib name
            self._serve("POST")

        def do_DELETE(self):  # noqa: N802 - stdlib name
            self._serve("DELETE")

        def log_message(self, fmt, *args):  # noqa: ARG002 - stdlib signature
            log("INFO", f"{self.client_address[0]} \"{self.requestline}\" {args[1] if len(args) > 1 else ''}")

    return Handler


class _TlsServer(ThreadingHTTPServer):
    daemon_threads = True
    context: ssl.SSLContext | None = None

    def get_request(self):
        sock, addr = super().get_request()
        if self.context is not None:
            sock = self.context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return sock, addr

    def finish_request(self, request, client_address):
        if isinstance(request, ssl.SSLSocket):
            try:
                request.settimeout(30)
                request.do_handshake()
            except (ssl.SSLError, OSError):
                return  # a client that rejects our certificate: nothing to serve
        super().finish_request(request, client_address)


def _socket_address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


def serve(config: dict, ready: threading.Event | None = None) -> list[_TlsServer]:
    """Start one server per configured socket (in threads); returns them."""
    http = config["http_server"]
    context = None
    if not http.get("insecure_http", False):
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(http["certificate"], http["private_key"])
    kbs = Kbs(config)
    handler = make_handler(kbs, 1024 * 1024 * int(http.get("payload_request_size", 2)))
    servers = []
    for address in http.get("sockets", ["127.0.0.1:8080"]):
        server = _TlsServer(_socket_address(address), handler)
        server.context = context
        servers.append(server)
        threading.Thread(target=server.serve_forever, daemon=True).start()
    log("INFO", f"Starting HTTP{'' if context is None else 'S'} server at {http.get('sockets', ['127.0.0.1:8080'])}")
    if ready:
        ready.set()
    return servers


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="kbs", description="Trustee KBS (ccfactory lab stand-in, not Trustee)")
    parser.add_argument("-c", "--config-file", default=os.environ.get("KBS_CONFIG_FILE"),
                        help="Path to a KBS config file (env KBS_CONFIG_FILE)")  # fmt: skip
    parser.add_argument("-V", "--version", action="version", version=f"kbs {VERSION}")
    args = parser.parse_args(argv)
    if not args.config_file:
        parser.error("the following required arguments were not provided: --config-file <CONFIG_FILE>")
    log("INFO", f"Using config file {args.config_file} (ccfactory lab stand-in {VERSION}: sample evidence only, "
        "resource policies evaluated by a small evaluator, not OPA)")  # fmt: skip
    try:
        config = load_config(args.config_file)
        serve(config)
    except schema.ConfigError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    except (OSError, ValueError, jose.JoseError) as exc:
        print(f"Error: KBS initialization failed: {exc}", file=sys.stderr)
        return 1
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        return 0

"""The lab's Trustee KBS stand-in: Trustee v0.21.0's ``kbs`` (built-in AS), rewritten from its source.

NOT Trustee. Lab nodes have no TEE, so this program stands in for the ``kbs`` binary of
Trustee v0.21.0 (commit 258ea4ac) on them. Every behaviour below names the upstream file and
line it comes from (``trustee@v0.21.0:<path>:<line>``); the contract table with the tests
that check each one is ``docs/trustee-standin.md`` in ccfactory's repository.

* CLI ``kbs -c|--config-file FILE`` / env ``KBS_CONFIG_FILE`` (``kbs/src/config.rs:256-264``);
  config as serde reads it (``config.py``).
* Routes (``kbs/src/api_server.rs:165-188,215-472``): ``/kbs/v0/{path:.*}`` (GET, POST, PUT,
  DELETE), ``/metrics``, ``/healthz``. Errors are ``ErrorInformation`` JSON, 404 for
  ``InvalidRequestPath``/``PluginNotFound`` and 401 for every other error
  (``kbs/src/error.rs:108-136``).
* Policies are evaluated by regorus (``rego.py``) with the input/data Trustee builds.
* Only ``sample`` evidence can be verified (``deps/verifier/src/sample/mod.rs``); other TEEs
  fail verification as a Trustee without that verifier would (401 ``AttestationError``).
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
import os
import re
import secrets
import ssl
import signal
import sys
import threading
import time
import tomllib
import uuid
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, unquote, urlsplit

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from . import config as kbs_config
from . import jose, rego
from .upstream_policies import TEXTS as UPSTREAM_TEXTS

VERSION = "v0.21.0-ccfactory-lab.2"
ERROR_TYPE_PREFIX = "https://github.com/confidential-containers/kbs/errors"  # error.rs:15
KBS_PREFIX = "/kbs/v0/"  # api_server.rs:34
SESSION_COOKIE = "kbs-session-id"  # attestation/session.rs:18
KBS_POLICY_RULE = "data.policy.allow"  # api_server.rs:39
KBS_POLICY_ID = "resource-policy"  # api_server.rs:42
TRUST_CLAIMS_RULE = "data.policy.trust_claims"  # ear_token/broker.rs:35
EXTENSIONS_RULE = "data.policy.extensions"  # ear_token/broker.rs:37
# kbs_types::Tee (serde lowercase); auth accepts any of them, only sample can be verified
TEES = ("azsnpvtpm", "aztdxvtpm", "nvidia", "sev", "sgx", "snp", "tdx", "cca", "csv", "se", "hygondcu", "tpm",
        "sample", "sampledevice")  # fmt: skip
# token/mod.rs:15-20,88-93: where the TEE public key is looked up in the token claims
TEE_PUBKEY_PATHS = ("/tdx/attester_runtime_data/tee-pubkey", "/tdx/attester_user_data/tee-pubkey",
                    "/customized_claims/runtime_data/tee-pubkey",
                    "/submods/cpu0/ear.veraison.annotated-evidence/runtime_data_claims/tee-pubkey", "/tee-pubkey")  # fmt: skip
RESOURCE_DESC = re.compile(  # plugins/implementations/resource/backend.rs:57-62
    r"^(?P<repo>[a-zA-Z0-9_\-]+[a-zA-Z0-9_\-\.]*)\/(?P<type>[a-zA-Z0-9_\-]+[a-zA-Z0-9_\-\.]*)\/(?P<tag>[a-zA-Z0-9_\-]+[a-zA-Z0-9_\-\.]*)\Z"
)
TRUST_VECTOR = ("instance-identity", "configuration", "executables", "file-system", "hardware", "runtime-opaque",
                "storage-opaque", "sourced-data")  # fmt: skip  (ear crate TrustVector order)
TIERS = ("none", "affirming", "warning", "contraindicated")  # ear crate TrustTier, ascending


def _text(name: str) -> str:
    return UPSTREAM_TEXTS[name]


def log(level: str, message: str) -> None:
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    print(f"[{stamp} {level:<5} kbs] {message}", file=sys.stderr, flush=True)


class KbsError(Exception):
    """``kbs::Error`` answered by ``ResponseError::error_response`` (error.rs:108-136)."""

    def __init__(self, kind: str, detail: str):
        super().__init__(detail)
        self.kind, self.detail = kind, detail

    @property
    def status(self) -> int:
        return 404 if self.kind in ("InvalidRequestPath", "PluginNotFound") else 401

    def body(self) -> bytes:
        return json.dumps({"type": f"{ERROR_TYPE_PREFIX}/{self.kind}", "detail": self.detail}).encode()


class AdminDenied(Exception):
    """``kbs::admin::Error`` (admin/error.rs); its Display is the message."""


# ------------------------------------------------------------------ key-value storage


class Storage:
    """One namespace of ``deps/key-value-storage``: Memory or LocalFs (``dir_path/<namespace>/``,
    ``/`` in keys stored as ``\\x2F``, local_fs/mod.rs:47-175)."""

    def __init__(self, kind: str, dir_path: str | None, namespace: str):
        self.memory: dict[str, bytes] = {}
        self.lock = threading.Lock()
        self.dir = os.path.join(dir_path, namespace) if kind == "LocalFs" else None
        if self.dir:
            os.makedirs(self.dir, exist_ok=True)

    def _path(self, key: str) -> str:
        return os.path.join(self.dir, key.replace("/", "\\x2F"))

    def set(self, key: str, value: bytes, overwrite: bool = True) -> bool:
        with self.lock:
            if self.dir is None:
                if not overwrite and key in self.memory:
                    return False
                self.memory[key] = value
                return True
            # lib.rs:182-185: keys are [A-Za-z0-9._/-]
            if not key or not all(c.isascii() and (c.isalnum() or c in "-_./") for c in key):
                raise KeyError(f"failed to set key `{key}`: key contains invalid characters")
            path = self._path(key)
            if not overwrite and os.path.exists(path):
                return False
            tmp = f"{path}.{os.getpid()}.{threading.get_ident()}.tmp"
            with open(tmp, "wb") as handle:
                handle.write(value)
            os.replace(tmp, path)
            return True

    def get(self, key: str) -> bytes | None:
        with self.lock:
            if self.dir is None:
                return self.memory.get(key)
            path = self._path(key)
            if not os.path.exists(path):
                return None
            with open(path, "rb") as handle:
                return handle.read()

    def delete(self, key: str) -> bytes | None:
        with self.lock:
            if self.dir is None:
                return self.memory.pop(key, None)
            path = self._path(key)
            if not os.path.exists(path):
                return None
            with open(path, "rb") as handle:
                data = handle.read()
            os.remove(path)
            return data

    def list(self) -> list[str]:
        with self.lock:
            if self.dir is None:
                return list(self.memory)
            return [n.replace("\\x2F", "/") for n in sorted(os.listdir(self.dir)) if not n.endswith(".tmp")]


class PolicyEngine:
    """``deps/policy-engine/src/lib.rs:34-78``: policies stored as ``<id>.rego``, no check on set."""

    SUFFIX = ".rego"  # rego.rs:189-193

    def __init__(self, storage: Storage):
        self.storage = storage

    def set_policy(self, policy_id: str, policy: str, overwrite: bool) -> None:
        try:
            self.storage.set(policy_id + self.SUFFIX, policy.encode(), overwrite)
        except KeyError as exc:
            raise rego.RegoError("PolicyStorageError", f"policy storage error: {exc.args[0]}") from None

    def list_policies(self) -> list[str]:
        ids = []
        for key in self.storage.list():
            if not key.endswith(self.SUFFIX):
                raise rego.RegoError("MalformedPolicy", "Malformed policy: There is at least one policy in the storage "
                                     f"with invalid name. The policy name should contain the policy suffix {self.SUFFIX}.")  # fmt: skip
            ids.append(key[: -len(self.SUFFIX)])
        return ids

    def get_policy(self, policy_id: str) -> str:
        raw = self.storage.get(policy_id + self.SUFFIX)
        if raw is None:
            raise rego.RegoError("PolicyNotFound", f"Policy `{policy_id}{self.SUFFIX}` not found")
        return raw.decode("utf-8", errors="replace")

    def evaluate(self, data: dict | None, input_json: str, policy_id: str, rules: list[str],
                 reference_values: dict | None = None) -> dict:  # fmt: skip
        return rego.evaluate(self.get_policy(policy_id), data, input_json, rules, reference_values)


# ------------------------------------------------------------------ JWT verification (kbs/src/crypto/jwt.rs)


def _read_uri(uri: str, what: str) -> bytes:
    """jwt.rs:28-65: ``https://`` (not simulated), ``file://`` or a local path."""
    if uri.startswith("https://"):
        raise kbs_config.StandinLimit(f"the lab Trustee stand-in does not simulate: remote {what} {uri} "
                                      "(use a local path or file://)")  # fmt: skip
    if uri.startswith("file://"):
        uri = uri[len("file://"):]
    elif "://" in uri:
        raise kbs_config.ConfigError(f"unsupported scheme in {uri}")
    with open(uri, "rb") as handle:
        return handle.read()


class JwtVerifier:
    def __init__(self, jwk_set_uris, cert_paths, pem_uris, insecure: bool):
        self.jwks = []
        for uri in jwk_set_uris:
            data = json.loads(_read_uri(uri, "JWK set"))
            self.jwks.extend(data.get("keys", []) if isinstance(data, dict) else [])
        self.certs = []
        for path in cert_paths:
            with open(path, "rb") as handle:
                certs = jose.pem_certificates(handle.read())
            if not certs:
                raise ValueError(f"no certificates found in {path}")
            self.certs.extend(certs)
        self.pem_keys = [jose.load_public_key_pem(_read_uri(uri, "public key")) for uri in pem_uris]
        self.insecure = insecure
        if not self.jwks and not self.pem_keys and not self.certs and not insecure:  # jwt.rs:163-170
            raise ValueError("Cannot verify token since no trusted verification materials are provided. "
                             "Please provide at least one of trusted JWK sets, trusted PEM public keys, "
                             "or trusted certificates.")  # fmt: skip

    def _verification_jwk(self, header: dict) -> dict:  # jwt.rs:257-281
        jwk = header.get("jwk")
        if isinstance(jwk, dict):
            if self.insecure:
                return jwk
            if not self.certs:
                raise jose.JoseError("Cannot verify token since trusted cert is empty")
            jose.verify_jwk_endorsement(jwk, self.certs)
            return jwk
        if not self.jwks:
            raise jose.JoseError("Cannot verify token since trusted JWK Set is empty")
        kid = header.get("kid")
        if kid is None:
            raise jose.JoseError("Failed to decode kid in the token header")
        for key in self.jwks:
            if key.get("kid") == kid:
                return key
        raise jose.JoseError(f"Failed to find Jwk with kid {kid} in JwkSet")

    def verify(self, token: str) -> dict:  # jwt.rs:283-306
        header = jose.decode_header(token)
        try:
            jwk = self._verification_jwk(header)
        except (jose.JoseError, ValueError):
            jwk = None
        if jwk is not None:
            alg = jwk.get("alg")
            if not alg:
                raise jose.JoseError("Failed to find key_algorithm in Jwk")
            return jose.verify_jwt(token, jose.public_key_from_jwk(jwk), alg)
        if self.pem_keys:
            for key in self.pem_keys:
                try:
                    return jose.verify_jwt(token, key, header["alg"])
                except (jose.JoseError, ValueError):
                    continue
            raise jose.JoseError("Cannot verify token with any provided key")
        raise jose.JoseError("Cannot verify token: neither trusted jwk set nor trusted pem public key works")


# ------------------------------------------------------------------ admin (kbs/src/admin/**)


def _bearer(headers) -> str | None:
    """actix-web-httpauth ``Authorization::<Bearer>::parse``."""
    value = headers.get("Authorization")
    if not value:
        return None
    scheme, _, token = value.partition(" ")
    token = token.strip()
    return token if scheme == "Bearer" and token else None


class Admin:
    def __init__(self, cfg: dict):
        self.mode = cfg["mode"]
        self.issuers = []
        self.acls = cfg.get("acls", [])
        for idp in cfg.get("identity_providers", []):
            try:  # bearer_jwt.rs:58-83
                verifier = JwtVerifier([idp["jwk_set_uri"]] if idp["jwk_set_uri"] else [], [],
                                       [idp["public_key_uri"]] if idp["public_key_uri"] else [], False)  # fmt: skip
            except kbs_config.StandinLimit:
                raise
            except (OSError, ValueError, jose.JoseError, kbs_config.ConfigError) as exc:
                raise kbs_config.ConfigError("failed to initialize [admin] configuration: Invalid admin token "
                                             f"verifier config: {exc}") from None  # fmt: skip
            self.issuers.append((idp, verifier))

    def check(self, headers, uri: str) -> None:
        """``Admin::check_admin_access`` (admin/mod.rs:116-141); raises ``AdminDenied``."""
        if self.mode == "InsecureAllowAll":
            return
        if self.mode == "DenyAll":
            raise AdminDenied("Admin access denied: Admin access denied as DenyAll authorization_mode is enabled")
        token = _bearer(headers)
        if token is None:
            raise AdminDenied("Failed to parse HTTP Auth Bearer header")
        role = self._authenticate(token)
        for acl in self.acls:  # regex_acl.rs:59-80: subject = request.uri() (path and query)
            if acl["role"] == role and acl["regex"].search(uri):
                return
        raise AdminDenied(f"Admin access denied: Role {role} not allowed for path {uri}")

    def _authenticate(self, token: str) -> str:  # bearer_jwt.rs:86-141
        for idp, verifier in self.issuers:
            try:
                claims = verifier.verify(token)
            except (jose.JoseError, ValueError, KeyError):
                continue
            role = claims.get("role") if isinstance(claims, dict) else None
            if not isinstance(role, str):
                raise AdminDenied("Admin access denied: Missing required `role` claim in JWT")
            issuer = claims.get("iss") if isinstance(claims.get("iss"), str) else ""
            aud = claims.get("aud")
            audiences = [aud] if isinstance(aud, str) else [a for a in aud if isinstance(a, str)] if isinstance(aud, list) else []
            if idp["issuer"] is not None and issuer != idp["issuer"]:
                continue
            if idp["audience"] is not None and idp["audience"] not in audiences:
                continue
            return role
        raise AdminDenied("Admin access denied: Cannot verify token with any of the issuers")


# ------------------------------------------------------------------ the built-in attestation service


def _semver_is_0_4_0(text) -> bool:
    """``VersionReq "=0.4.0"`` (attestation/backend.rs:34-48,247-257): build metadata ignored."""
    match = re.fullmatch(r"(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(-[0-9A-Za-z.-]+)?(\+[0-9A-Za-z.-]+)?", text or "")
    if not match:
        raise ValueError("failed to parse KBS version")
    return match.group(1, 2, 3) == ("0", "4", "0") and not match.group(4)


def _tee_pubkey(value) -> dict:
    """kbs-types ``TeePubKey`` (``#[serde(tag = "kty")]``): unknown members dropped on re-serialisation."""
    if not isinstance(value, dict):
        raise ValueError("tee-pubkey")
    fields = {"RSA": ("alg", "n", "e"), "EC": ("crv", "alg", "x", "y")}.get(value.get("kty"))
    if not fields or not all(isinstance(value.get(f), str) for f in fields):
        raise ValueError("tee-pubkey")
    return {"kty": value["kty"], **{f: value[f] for f in fields}}


def _i8(value: int) -> int:
    return (value + 128) % 256 - 128  # `claim_value as i8` (broker.rs:268)


def _tier(value: int) -> str:  # ear crate TrustClaim::tier
    if -1 <= value <= 1:
        return "none"
    if -32 <= value < 32:
        return "affirming"
    if -96 <= value < 96:
        return "warning"
    return "contraindicated"


class AttestationService:
    def __init__(self, cfg: dict, storage_cfg: dict, session_type: str | None):
        store = lambda ns, kind=storage_cfg["type"]: Storage(kind, storage_cfg["dir_path"], ns)  # noqa: E731
        self.timeout = cfg["timeout"]
        self.sessions = store("kbs_protocol_session", session_type or storage_cfg["type"])  # backend.rs:32,179-184
        self.rvps = store("reference_value")  # rvps/src/lib.rs:28
        self.policies = PolicyEngine(store("attestation_service_policy"))  # attestation-service/src/lib.rs:30
        for name in ("cpu", "gpu", "switch", "ppcie"):  # broker.rs:54-76 (overwrite = false)
            self.policies.set_policy(f"default_{name}", _text(f"ear_default_policy_{name}.rego"), False)
        self.broker = cfg["broker"]
        signer = self.broker["signer"]
        self.x5c = None
        self.x5u = None
        if signer is None:  # broker.rs:78-87
            self.key = ec.generate_private_key(ec.SECP256R1())
            log("INFO", "No Token Signer key in config file, create an ephemeral key and without CA pubkey cert")
        else:
            try:
                key = jose.load_private_key(signer["key_path"])
            except OSError as exc:
                raise ValueError(f"Read Token Signer private key failed: {exc}") from None
            if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
                raise ValueError("Only P-256 attestation token signing keys are supported")
            self.key = key
            self.x5u = signer.get("cert_url")
            if signer.get("cert_path"):
                try:
                    with open(signer["cert_path"], "rb") as handle:
                        chain = jose.pem_certificates(handle.read())
                except OSError as exc:
                    raise ValueError(f"Read Token Signer cert file failed: {exc}") from None
                self.x5c = [base64.b64encode(c.public_bytes(serialization.Encoding.DER)).decode() for c in chain]

    # ---------------------------------------------------------------- RCAR

    def auth(self, body: bytes) -> tuple[dict, str]:
        """``AttestationService::auth`` (backend.rs:235-277); errors: RcarAuthFailed."""
        def fail(reason: str) -> KbsError:
            return KbsError("AttestationError", f"Attestation error: RCAR handshake Auth failed: {reason}")

        try:
            request = json.loads(body)
            version, tee, extra = request["version"], request["tee"], request["extra-params"]
            if not isinstance(version, str) or tee not in TEES:
                raise ValueError
        except (ValueError, KeyError, TypeError):
            raise fail("deserialize Request") from None
        try:
            exact = _semver_is_0_4_0(version)
        except ValueError:
            raise fail("failed to parse KBS version") from None
        if not exact:
            raise fail(f"KBS Client Protocol Version Mismatch: expect =0.4.0 while the request is {version}")
        # builtin.rs:107-128, backend.rs:60-82: 32 random bytes, base64 standard; extra-params ""
        challenge = {"nonce": base64.b64encode(secrets.token_bytes(32)).decode(), "extra-params": ""}
        session_id = uuid.uuid4().hex  # session.rs:59-70
        expires = time.time() + 60 * self.timeout
        record = {"status": "Authed", "tee": tee, "extra-params": extra, "challenge": challenge, "expires": expires}
        self.sessions.set(session_id, json.dumps(record).encode())
        return challenge, _cookie(session_id, expires)

    def _session(self, session_id: str | None) -> dict | None:
        if not session_id:
            return None
        raw = self.sessions.get(session_id)
        if raw is None:
            return None
        session = json.loads(raw)
        if session["expires"] < time.time():  # session.rs:134-145
            self.sessions.delete(session_id)
            return None
        return session

    def attest(self, body: bytes, session_id: str | None) -> tuple[str, str]:
        """``AttestationService::attest`` (backend.rs:279-435); every failure is
        ``RcarAttestFailed`` whose Display has no source: "RCAR handshake Attest failed"."""
        failed = KbsError("AttestationError", "Attestation error: RCAR handshake Attest failed")
        if session_id is None:
            log("ERROR", "attest: cookie not found")
            raise failed
        try:
            attestation = json.loads(body)
            runtime = attestation["runtime-data"]
            nonce, tee_pubkey = runtime["nonce"], _tee_pubkey(runtime["tee-pubkey"])
            evidence = attestation["tee-evidence"]
            primary, additional = evidence["primary_evidence"], evidence["additional_evidence"]
            init_data = attestation.get("init-data")
            if not isinstance(nonce, str) or not isinstance(additional, str):
                raise ValueError
        except (ValueError, KeyError, TypeError):
            log("ERROR", "attest: deserialize Attestation")
            raise failed from None
        session = self._session(session_id)
        if session is None:
            log("ERROR", "attest: session not found")
            raise failed
        if session["status"] == "Attested":  # backend.rs:319-334
            return session["token"], _cookie(session_id, session["expires"])
        if nonce != session["challenge"]["nonce"]:
            log("ERROR", "attest: the nonce in the handshake session is different from the client side")
            raise failed
        runtime_data = {"tee-pubkey": tee_pubkey, "nonce": nonce, "additional-evidence": additional}
        try:
            extra = json.loads(additional) if additional else {}
            if not isinstance(extra, dict):
                raise ValueError("additional evidence is not a map")
            token = self._verify(session["tee"], primary, runtime_data, init_data, extra)
        except (ValueError, KeyError, TypeError, rego.RegoError, jose.JoseError) as exc:
            log("ERROR", f"attest: verify TEE evidence failed: {exc}")
            raise failed from None
        session.update(status="Attested", token=token)
        self.sessions.set(session_id, json.dumps(session).encode())
        return token, _cookie(session_id, session["expires"])

    def _verify(self, tee: str, evidence, runtime_data: dict, init_data, extra: dict) -> str:
        if extra:
            raise ValueError(f"the lab Trustee stand-in cannot verify additional evidence ({', '.join(extra)})")
        if tee != "sample":
            raise ValueError(f"Verifier evaluate failed: the lab Trustee stand-in has only the sample verifier, "
                             f"not {tee}")  # fmt: skip
        # attestation-service/src/lib.rs:321-338: SHA-384 (builtin.rs:77-80) of the canonical JSON
        report_data = hashlib.sha384(jose.canonical_json(runtime_data)).digest()
        init_hash, init_claims = self._init_data(init_data)
        # deps/verifier/src/sample/mod.rs:9-99
        if not isinstance(evidence, dict) or not isinstance(evidence.get("svn"), str) or not isinstance(
                evidence.get("report_data", ""), str):  # fmt: skip
            raise ValueError("Verifier evaluate failed: Deserialize Quote failed.")
        try:
            reported = jose.b64_standard_decode(evidence.get("report_data", ""))
        except jose.JoseError:
            raise ValueError("Verifier evaluate failed: Evidence's identity verification error.") from None
        if reported != report_data:
            raise ValueError("Verifier evaluate failed: Evidence's identity verification error.")
        claims = {"svn": evidence["svn"], "report_data": evidence.get("report_data", ""), "launch_digest": "abcde",
                  "platform_version": {"major": 1, "minor": 4}, "debug": False}  # fmt: skip
        if init_hash is not None:
            claims["init_data"] = base64.b64encode(init_hash).decode()
        return self._issue(self._transform(claims, init_claims, dict(runtime_data), "sample"), "cpu")

    @staticmethod
    def _init_data(init_data):
        """builtin.rs:89-94 (format must be toml), attestation-service/src/lib.rs:342-381."""
        if init_data is None:
            return None, None
        if not isinstance(init_data, dict) or init_data.get("format") != "toml" or not isinstance(init_data.get("body"), str):
            raise ValueError(f"Unsupported initdata format: {init_data.get('format') if isinstance(init_data, dict) else None}")
        body = init_data["body"]
        parsed = tomllib.loads(body)
        algorithm = {"sha256": hashlib.sha256, "sha384": hashlib.sha384, "sha512": hashlib.sha512}[parsed["algorithm"]]
        data = dict(parsed.get("data", {}))
        for key in ("cdh.toml", "aa.toml"):
            if isinstance(data.get(key), str):
                try:
                    data[key] = tomllib.loads(data[key])
                except tomllib.TOMLDecodeError:
                    pass
        if isinstance(data.get("policy.rego"), str):
            text = data["policy.rego"]
            start = text.find("policy_data := {")
            if start >= 0:
                try:
                    policy_data = json.loads(text[start + len("policy_data := {") - 1:])
                    data.pop("policy.rego")
                    data["agent_policy_claims"] = policy_data
                except ValueError:
                    pass
        return algorithm(body.encode()).digest(), data

    def _transform(self, claims: dict, init_claims, runtime_claims: dict, tee: str) -> dict:
        """``transform_claims`` (broker.rs:446-517)."""
        out = {}
        if "init_data" in claims:
            out["init_data"] = claims.pop("init_data")
            out["init_data_claims"] = init_claims
        if "report_data" in claims:
            out["report_data"] = claims.pop("report_data")
            if not self.broker["verbose_token"]:
                runtime_claims.pop("additional-evidence", None)
            out["runtime_data_claims"] = runtime_claims
        out[tee] = claims
        return dict(sorted(out.items()))

    def reference_values(self) -> dict:
        values = {}
        for name in self.rvps.list():
            raw = self.rvps.get(name)
            if raw is not None:
                values[name] = json.loads(raw)["value"]
        return values

    def _issue(self, tcb_claims: dict, tee_class: str) -> str:
        """``EarAttestationTokenBroker::issue`` (broker.rs:135-358) for one TEE, policy ids ["default"]."""
        policy_id = f"default_{tee_class}"  # builtin.rs:99, broker.rs:166-168
        results = self.policies.evaluate(None, json.dumps(tcb_claims), policy_id, [TRUST_CLAIMS_RULE, EXTENSIONS_RULE],
                                         reference_values=self.reference_values())  # fmt: skip
        vector: dict[str, int] = {}
        trust = results[TRUST_CLAIMS_RULE]
        if trust is None:  # broker.rs:271-274
            vector = dict.fromkeys(TRUST_VECTOR, 0)
        else:
            if not isinstance(trust, dict):
                raise ValueError("Trust claims is not an object")
            for name, value in trust.items():
                if not isinstance(value, int) or isinstance(value, bool):
                    raise ValueError("Trust claim value not number")
                if name not in TRUST_VECTOR:
                    raise ValueError(f"unknown trust claim {name}")  # upstream: mut_by_name(k).unwrap() panics
                vector[name] = _i8(value)
        if not vector:
            raise ValueError("At least one policy claim must be set.")
        extensions = results[EXTENSIONS_RULE]
        extensions = [] if extensions is None else extensions
        if not isinstance(extensions, list) or not all(
                isinstance(e, dict) and isinstance(e.get("name"), str) and isinstance(e.get("key"), int) and "value" in e
                for e in extensions):  # fmt: skip
            raise ValueError("invalid extensions")
        status = max((_tier(v) for v in vector.values()), key=TIERS.index, default="none")
        appraisal = {"ear.status": status,
                     "ear.trustworthiness-vector": {k: vector[k] for k in TRUST_VECTOR if k in vector},
                     "ear.appraisal-policy-id": "default",
                     "ear.veraison.annotated-evidence": tcb_claims}  # fmt: skip
        for extension in extensions:
            appraisal[extension["name"]] = extension["value"]
        now = int(time.time())
        claims = {"eat_profile": self.broker["profile_name"], "iat": now,
                  "ear.verifier-id": {"build": self.broker["build_name"], "developer": self.broker["developer_name"]},
                  "submods": {f"{tee_class}0": appraisal},
                  "exp": now + 60 * self.broker["duration_min"], "iss": self.broker["issuer_name"]}  # fmt: skip
        jwk = {"alg": "ES256"}  # broker.rs:388-432
        if self.x5u:
            jwk["x5u"] = self.x5u
        if self.x5c is not None:
            jwk["x5c"] = self.x5c
        jwk.update(jose.ec_public_jwk(self.key.public_key()))
        return jose.sign_jwt({"typ": "JWT", "alg": "ES256", "jwk": jwk}, claims, self.key)

    # ---------------------------------------------------------------- admin-side AS calls

    def set_policy(self, body: bytes) -> None:
        """backend.rs:138-143,223-233 -> attestation-service/src/lib.rs:173-178: body
        ``{"policy_id", "policy": base64url-no-pad}``; no Rego check (policy-engine lib.rs:38-47)."""
        try:
            request = json.loads(body)
            policy_id, policy = request["policy_id"], request["policy"]
            if not isinstance(policy_id, str) or not isinstance(policy, str):
                raise ValueError
            text = jose.b64url_nopad_decode(policy).decode("utf-8")
            self.policies.set_policy(policy_id, text, True)
        except (ValueError, KeyError, TypeError, jose.JoseError, rego.RegoError) as exc:
            log("ERROR", f"set attestation policy: {exc}")
            raise KbsError("AttestationError", "Attestation error: Set Attestation Policy failed") from None
        log("INFO", f"attestation policy {policy_id} set")

    def register_reference_value(self, message: str) -> None:
        """rvps/src/lib.rs:41-111 + extractors/sample/mod.rs:27-50 (the stand-in has the sample extractor only)."""
        try:
            msg = json.loads(message)
            version = msg.get("version", "0.1.0")
            payload, kind = msg["payload"], msg["type"]
        except (ValueError, KeyError, TypeError, AttributeError):
            raise ValueError("register reference value") from None
        if version != "0.1.0" or not isinstance(payload, str):
            raise ValueError("register reference value")
        if kind != "sample":
            raise ValueError("register reference value")  # swid/corim: not simulated (docs: limits)
        try:
            values = json.loads(jose.b64_standard_decode(payload))
        except (ValueError, jose.JoseError):
            raise ValueError("register reference value") from None
        if not isinstance(values, dict):
            raise ValueError("register reference value")
        expiration = (datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0) + datetime.timedelta(days=365))
        for name, value in values.items():
            record = {"version": "0.1.0", "name": name, "expiration": expiration.strftime("%Y-%m-%dT%H:%M:%SZ"),
                      "value": value}  # fmt: skip
            try:
                self.rvps.set(name, json.dumps(record).encode())
            except KeyError:
                raise ValueError("register reference value") from None
        log("INFO", f"reference values registered: {', '.join(sorted(values))}")

    def query_reference_value(self, name: str) -> str:
        """rvps/src/lib.rs:113-122, backend.rs:473-483."""
        raw = self.rvps.get(name) if name else None
        if raw is None:
            raise ValueError(f"No reference value found for the given id: {name}")
        return json.dumps(json.loads(raw)["value"])

    def token_from_session(self, session_id: str | None) -> str | None:
        """backend.rs:437-465."""
        session = self._session(session_id)
        return session["token"] if session and session["status"] == "Attested" else None


def _cookie(session_id: str, expires: float) -> str:
    """actix ``Cookie::build(KBS_SESSION_ID, id).expires(timeout)`` (session.rs:72-83)."""
    when = format_datetime(datetime.datetime.fromtimestamp(expires, datetime.timezone.utc), usegmt=True)
    return f"{SESSION_COOKIE}={session_id}; Expires={when}"


def _request_cookie(header: str) -> str | None:
    for part in (header or "").split(";"):
        name, _, value = part.strip().partition("=")
        if name == SESSION_COOKIE:
            return value
    return None


def _pointer(value, path: str):
    for part in path.split("/")[1:]:
        part = part.replace("~1", "/").replace("~0", "~")
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return None, False
    return value, True


# ------------------------------------------------------------------ the KBS


class Kbs:
    def __init__(self, cfg: dict):
        self.cfg = cfg
        storage = cfg["storage_backend"]
        store = lambda ns: Storage(storage["type"], storage["dir_path"], ns)  # noqa: E731
        self.plugins = {"resource": store("repository")} if "resource" in cfg["plugins"] else {}  # backend.rs:29
        token = cfg["attestation_token"]
        try:  # token/mod.rs:78-99
            self.token_verifier = JwtVerifier(token["trusted_jwk_sets"], token["trusted_certs_paths"], [],
                                              token["insecure_header_jwk"])  # fmt: skip
        except kbs_config.StandinLimit:
            raise
        except (OSError, ValueError, jose.JoseError) as exc:
            raise kbs_config.ConfigError(f"Token Verifier error: Failed to initialize Token Verifier: {exc}") from None
        self.teekey_paths = list(token["extra_teekey_paths"]) + list(TEE_PUBKEY_PATHS)
        self.policy_engine = PolicyEngine(store("kbs"))  # api_server.rs:97-110
        self.policy_engine.set_policy(KBS_POLICY_ID, _text("default.rego"), False)
        self.admin = Admin(cfg["admin"])
        self.attestation = AttestationService(cfg["attestation_service"], storage, cfg["session_storage_type"])

    def _admin_access(self, headers, uri: str, endpoint: str | None) -> None:
        try:
            self.admin.check(headers, uri)
        except AdminDenied as exc:
            if endpoint is None:  # api_server.rs:397: `?` converts admin::Error via #[from]
                raise KbsError("AdminAuthInitialization", f"failed to initialize [admin] configuration: {exc}") from None
            raise KbsError("AdminAuthAccess", f"admin access denied for endpoint {endpoint}: {exc}") from None

    def handle(self, method: str, target: str, headers, body: bytes) -> tuple[int, dict, bytes]:
        """``api`` (api_server.rs:215-472)."""
        parts = urlsplit(target)
        path = "/".join(unquote(p) for p in parts.path.split("/"))[len(KBS_PREFIX):]
        query = dict(parse_qsl(parts.query, keep_blank_values=True))
        segments = path.split("/")
        plugin, resource_path = segments[0], segments[1:]
        policy_data = {"plugin": plugin, "resource-path": resource_path, "query": query}  # api_server.rs:236-248
        json_type = {"Content-Type": "application/json"}

        if plugin == "auth" and method == "POST":
            challenge, cookie = self.attestation.auth(body)
            return 200, {**json_type, "Set-Cookie": cookie}, json.dumps(challenge).encode()
        if plugin == "attest" and method == "POST":
            token, cookie = self.attestation.attest(body, _request_cookie(headers.get("Cookie", "")))
            return 200, {**json_type, "Set-Cookie": cookie}, json.dumps({"token": token}).encode()
        if plugin == "attestation-policy" and method == "POST":
            self._admin_access(headers, target, "attestation-policy")
            self.attestation.set_policy(body)
            return 200, {}, b""
        if plugin == "reference-value" and method == "GET":
            self._admin_access(headers, target, "reference-value")
            try:
                value = self.attestation.query_reference_value("/".join(resource_path))
            except ValueError as exc:
                raise KbsError("RvpsError", f"RVPS configuration failed: Failed to get reference_values: {exc}") from None
            return 200, json_type, value.encode()
        if plugin == "reference-value" and method == "POST":
            self._admin_access(headers, target, "reference-value")
            try:
                self.attestation.register_reference_value(body.decode("utf-8"))
            except UnicodeDecodeError:
                raise KbsError("RvpsError", "RVPS configuration failed: Failed to parse reference value message") from None
            except ValueError as exc:
                raise KbsError("RvpsError", f"RVPS configuration failed: Failed to register reference value: {exc}") from None
            return 200, json_type, b""
        if plugin == "resource-policy" and method == "POST":
            self._admin_access(headers, target, "resource-policy")
            self._set_resource_policy(body)
            return 200, {}, b""
        if plugin == "resource-policy" and method == "GET":
            self._admin_access(headers, target, "resource-policy")
            try:
                ids = self.policy_engine.list_policies()
            except rego.RegoError as exc:
                raise KbsError("PolicyEngineError", f"Policy engine error: {exc}") from None
            return 200, json_type, json.dumps(ids).encode()

        storage = self.plugins.get(plugin)
        if storage is None:
            raise KbsError("PluginNotFound", f"Plugin {plugin} not found")
        if method in ("POST", "DELETE"):  # resource/mod.rs:60-72 validate_auth
            self._admin_access(headers, target, None)
            self._resource(storage, method, resource_path, body)
            return 200, {"Content-Type": "text/xml"}, b""
        token = self.attestation.token_from_session(_request_cookie(headers.get("Cookie", ""))) or _bearer(headers)
        if token is None:
            raise KbsError("TokenNotFound", "Attestation Token not found")
        try:
            claims = self.token_verifier.verify(token)
        except (jose.JoseError, ValueError) as exc:
            log("ERROR", f"token verification: {exc}")
            raise KbsError("TokenVerifierError", "Token Verifier error") from None
        try:
            result = self.policy_engine.evaluate(policy_data, json.dumps(claims), KBS_POLICY_ID, [KBS_POLICY_RULE])
        except rego.RegoError as exc:
            raise KbsError("PolicyEngineError", f"Policy engine error: {exc}") from None
        if result[KBS_POLICY_RULE] is not True:  # api_server.rs:417-446: undefined/non-bool -> false
            raise KbsError("PolicyDeny", "Access denied by policy")
        data = self._resource(storage, method, resource_path, body)
        if method != "GET":  # resource/mod.rs:74-86: only GET is encrypted
            return 200, {"Content-Type": "text/xml"}, data
        tee_pubkey = None
        for pointer in self.teekey_paths:  # token/mod.rs:105-114
            value, found = _pointer(claims, pointer)
            if found:
                try:
                    tee_pubkey = _tee_pubkey(value)
                except ValueError:
                    raise KbsError("TokenVerifierError", "Token Verifier error") from None
                break
        if tee_pubkey is None:
            raise KbsError("TokenVerifierError", "Token Verifier error")
        try:
            response = jose.jwe_encrypt(tee_pubkey, data)
        except (jose.JoseError, ValueError) as exc:
            log("ERROR", f"JWE: {exc}")
            raise KbsError("JweError", "JWE failed") from None
        return 200, json_type, json.dumps(response).encode()

    def _set_resource_policy(self, body: bytes) -> None:
        """api_server.rs:325-364: ``{"policy": base64url-no-pad}``, stored without a Rego check."""
        try:
            request = json.loads(body)
        except ValueError:
            raise KbsError("ParsePolicyError", "Failed to parse policy: Illegal SetPolicy Request Json") from None
        if not isinstance(request, dict) or "policy" not in request:
            raise KbsError("ParsePolicyError", "Failed to parse policy: No `policy` field inside SetPolicy Request Json")
        if not isinstance(request["policy"], str):
            raise KbsError("ParsePolicyError", "Failed to parse policy: `policy` field is not a string in SetPolicy "
                           "Request Json")  # fmt: skip
        try:
            text = jose.b64url_nopad_decode(request["policy"]).decode("utf-8")
        except (jose.JoseError, UnicodeDecodeError) as exc:
            raise KbsError("ParsePolicyError", f"Failed to parse policy: Failed to decode policy: {exc}") from None
        try:
            self.policy_engine.set_policy(KBS_POLICY_ID, text, True)
        except rego.RegoError as exc:
            raise KbsError("PolicyEngineError", f"Policy engine error: {exc}") from None
        log("INFO", "resource policy set")

    @staticmethod
    def _resource(storage: Storage, method: str, resource_path: list[str], body: bytes) -> bytes:
        """resource/mod.rs:31-58 + kv_storage.rs:16-53; errors are PluginInternalError."""
        failed = KbsError("PluginInternalError", "Plugin internal error")
        desc = "/".join(resource_path)
        if method not in ("GET", "POST", "DELETE"):
            log("ERROR", "resource: Illegal HTTP method. Only supports `GET`, `POST` and `DELETE`")
            raise failed
        if not RESOURCE_DESC.match(desc):
            log("ERROR", f"resource {desc}: illegal ResourceDesc format.")
            raise failed
        if method == "POST":
            try:
                storage.set(desc, body)
            except KeyError as exc:
                log("ERROR", str(exc))
                raise failed from None
            log("INFO", f"resource {desc} written ({len(body)} bytes)")
            return b""
        if method == "DELETE":
            if storage.delete(desc) is None:
                log("ERROR", f"resource not found: {desc}")
                raise failed
            log("INFO", f"resource {desc} deleted")
            return b""
        data = storage.get(desc)
        if data is None:
            log("ERROR", f"resource not found: {desc}")
            raise failed
        return data


# ------------------------------------------------------------------ HTTP


def make_handler(kbs: Kbs, max_body: int):
    class Handler(BaseHTTPRequestHandler):
        server_version = "kbs"
        sys_version = ""
        protocol_version = "HTTP/1.1"

        def _serve(self, method: str) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            if length > max_body:  # actix PayloadConfig (api_server.rs:172-174)
                self.rfile.read(length)
                self._reply(413, {}, b"")
                return
            body = self.rfile.read(length) if length else b""
            path = urlsplit(self.path).path
            try:
                if path == "/healthz" and method == "GET":  # api_server.rs:187
                    status, headers, payload = 200, {}, b""
                elif path == "/metrics" and method == "GET":  # api_server.rs:182-186 (no metrics kept)
                    status, headers, payload = 200, {"Content-Type": "text/plain; version=0.0.4"}, b""
                elif path == "/metrics" and method == "POST":
                    status, headers, payload = 405, {}, b""
                elif path.startswith(KBS_PREFIX):
                    status, headers, payload = kbs.handle(method, self.path, self.headers, body)
                else:
                    status, headers, payload = 404, {}, b""
            except KbsError as exc:
                log("ERROR", f"{method} {path}: {exc.kind}: {exc.detail}")
                status, headers, payload = exc.status, {}, exc.body()
            except Exception as exc:  # noqa: BLE001 - keep serving; say what happened
                log("ERROR", f"{method} {path}: internal error {type(exc).__name__}: {exc}")
                status, headers, payload = 500, {}, b""
            self._reply(status, headers, payload)

        def _reply(self, status: int, headers: dict, payload: bytes) -> None:
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def do_GET(self):  # noqa: N802
            self._serve("GET")

        def do_POST(self):  # noqa: N802
            self._serve("POST")

        def do_PUT(self):  # noqa: N802
            self._serve("PUT")

        def do_DELETE(self):  # noqa: N802
            self._serve("DELETE")

        def log_message(self, fmt, *args):  # noqa: ARG002
            log("INFO", f'{self.client_address[0]} "{self.requestline}" {args[1] if len(args) > 1 else ""}')

    return Handler


class _Server(ThreadingHTTPServer):
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
                return
        super().finish_request(request, client_address)


def tls_context(http: dict) -> ssl.SSLContext:
    """``tls_config`` (kbs/src/http.rs:147-168): certificate, then key, are required."""
    if not http["certificate"]:
        raise kbs_config.ConfigError("HTTPS initialization failed: Missing certificate")
    if not http["private_key"]:
        raise kbs_config.ConfigError("HTTPS initialization failed: Missing private key")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_3 if http["tls_profile"] == "modern" else ssl.TLSVersion.TLSv1_2
    if http["tls_min_version"]:
        context.minimum_version = ssl.TLSVersion.TLSv1_3 if http["tls_min_version"] == "1.3" else ssl.TLSVersion.TLSv1_2
    if http["tls_max_version"]:
        context.maximum_version = ssl.TLSVersion.TLSv1_3 if http["tls_max_version"] == "1.3" else ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(http["certificate"], http["private_key"])
    except (OSError, ssl.SSLError) as exc:
        raise kbs_config.ConfigError(f"HTTPS initialization failed: {exc}") from None
    return context


def serve(cfg: dict) -> list[_Server]:
    """``ApiServer::new`` then ``server`` (api_server.rs:84-211); servers run in threads."""
    kbs = Kbs(cfg)
    http = cfg["http_server"]
    context = None if http["insecure_http"] else tls_context(http)
    handler = make_handler(kbs, 1024 * 1024 * http["payload_request_size"])
    servers = []
    # The server threads block SIGTERM/SIGINT (a thread inherits the mask it is started with): the
    # kernel gives a process signal to any thread that does not block it, Python runs handlers only
    # in the main thread, and a main thread asleep is not woken when another thread took the signal
    # (seen: the stand-in alive 30 s after SIGTERM, main thread in nanosleep). So the main thread
    # gets it, its sleep ends, and _stop runs at once.
    stoppers = {signal.SIGTERM, signal.SIGINT}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, stoppers)
    try:
        for address in http["sockets"]:
            server = _Server(address, handler)
            server.context = context
            servers.append(server)
            threading.Thread(target=server.serve_forever, daemon=True).start()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
    log("INFO", f"Starting HTTP{'' if context is None else 'S'} server at [{', '.join(http['socket_text'])}]")
    return servers


def _stop(*_) -> None:
    """SIGTERM: exit 0 now. ``sys.exit`` from the handler left the interpreter's shutdown
    waiting (a CI run saw the process alive 30 s after SIGTERM); the servers hold no state
    that needs a clean close (the storage is written per request)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="kbs", description="Trustee KBS v0.21.0 (ccfactory lab stand-in, not Trustee)")
    parser.add_argument("-c", "--config-file", default=os.environ.get("KBS_CONFIG_FILE"),
                        help="Path to a KBS config file [env: KBS_CONFIG_FILE=]")  # fmt: skip
    parser.add_argument("-V", "--version", action="version", version=f"kbs {VERSION}")
    args = parser.parse_args(argv)
    # Stop on SIGTERM as the real server does (actix-web's HttpServer handles SIGINT/SIGTERM/SIGQUIT,
    # api_server.rs:165-210 runs one). In a container the stand-in is PID 1, which the kernel
    # shields from signals without a handler: `podman stop` would wait, then SIGKILL. Installed
    # before the sockets listen: a SIGTERM sent as soon as the port answers is never lost (a
    # process started with SIGTERM ignored, as test runners may, would otherwise drop it).
    signal.signal(signal.SIGTERM, _stop)
    if not args.config_file:
        parser.error("the following required arguments were not provided: --config-file <CONFIG_FILE>")
    log("INFO", f"Welcome to Confidential Containers Key Broker Service! (ccfactory lab stand-in {VERSION}: "
        f"sample evidence only; Rego by regorus from {rego.module_origin()})")  # fmt: skip
    log("INFO", f"Using config file {args.config_file}")
    try:
        serve(kbs_config.load(args.config_file))
    except kbs_config.ConfigError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    except (OSError, ValueError, jose.JoseError, rego.RegoError) as exc:
        print(f"Error: KBS initialization failed: {exc}", file=sys.stderr)
        return 1
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        return 0

"""A client for Trustee v0.21.0's KBS: admin API and the attestation protocol, over verified HTTPS.

Admin requests carry ``Authorization: Bearer <JWT>``: a short-lived token (5 minutes)
minted per request, signed with the site's Ed25519 admin key (``alg`` ``EdDSA``), with the
claims the KBS checks (``iss`` against ``identity_providers[].issuer``, ``role`` against
the regex ACL, ``exp``). Tokens are never written to disk. The TLS peer is verified with
the site CA (``kbs_ca_cert``) and the host name; a ``http://`` URL is refused outside the
lab.

Attestation uses the KBS protocol 0.4.0 (``POST /kbs/v0/auth`` -> challenge and cookie
``kbs-session-id``, ``POST /kbs/v0/attest`` -> EAR token, ``GET /kbs/v0/resource/...`` ->
JWE). Only ``sample`` evidence is produced here (``{"svn", "report_data"}``, the report
data being SHA-384 of the canonical runtime data): it serves the negative health check,
which must see ``403 PolicyDeny``.

Resource content is read from controller-side files and never printed or logged; what
was uploaded is remembered as sha256 digests in a controller-side ledger (0600), tied to
the KBS instance, so a re-run uploads nothing unless a file changed or the KBS lost its
storage.

Example::

    client = KbsClient("https://kbs-01:8443", ca_cert="~/.ccfactory/sites/kbs-01/pki/ca.crt",
                       admin_key="~/.ccfactory/sites/kbs-01/pki/admin.key")
    client.set_resource_policy(text)
    client.ensure_resource("models/llama/key", Path("llama.key"), ledger)
    client.negative_health_check()
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import os
import socket
import ssl
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, urlsplit

from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from ccfactory.kbs import KBS_PROTOCOL_VERSION, jose
from ccfactory.kbs.errors import (
    AdminAuthError,
    HealthCheckFailed,
    KbsError,
    KbsHttpError,
    KbsUnreachable,
    PolicyDenied,
    ResourceFileError,
)
from ccfactory.kbs.pki import load_private_key
from ccfactory.kbs.settings import check_resource_path

ADMIN_ISSUER = "ccfactory"
ADMIN_ROLE = "ccfactory-admin"
ADMIN_TOKEN_SECONDS = 300
ERROR_PREFIX = "https://github.com/confidential-containers/kbs/errors/"
PROBE_PATH = "ccfactory/health/probe"  # never uploaded: the policy is evaluated before the lookup
# The admin endpoints ccfactory uses; the ACL the role renders allows exactly these.
ADMIN_ENDPOINTS = r"^/kbs/v0/(resource/[^?]+|resource-policy|attestation-policy|reference-value(/[^?]*)?)$"


def admin_token(key: ed25519.Ed25519PrivateKey, *, issuer: str = ADMIN_ISSUER, role: str = ADMIN_ROLE,
                lifetime: int = ADMIN_TOKEN_SECONDS, now: float | None = None) -> str:  # fmt: skip
    """A bearer token for Trustee v0.21.0's ``bearer_jwt`` admin authentication."""
    now = int(time.time() if now is None else now)
    claims = {
        "iss": issuer,
        "sub": "ccfactory",
        "aud": ["KBS"],
        "role": role,
        "iat": now,
        "exp": now + lifetime,
        "jti": uuid.uuid4().hex,
    }
    return jose.jwt_sign({"alg": "EdDSA", "typ": "JWT"}, claims, key)


@dataclass(frozen=True)
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self):
        return json.loads(self.body or b"null")

    def error(self) -> tuple[str, str]:
        """(ErrorInformation type without prefix, detail) of an error response."""
        try:
            info = json.loads(self.body)
            return str(info.get("type", "")).removeprefix(ERROR_PREFIX), str(info.get("detail", ""))
        except (ValueError, AttributeError):
            return "", self.body[:200].decode(errors="replace")


@dataclass
class AttestationSession:
    cookie: str
    token: str
    tee_key: rsa.RSAPrivateKey = field(repr=False)


class Ledger:
    """What this controller uploaded to one KBS instance: sha256 per item (never content)."""

    def __init__(self, path: str | os.PathLike, instance: str):
        self.path = Path(path).expanduser()
        self.instance = instance
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            data = {}
        self.items: dict[str, str] = data.get("items", {}) if data.get("instance") == instance and instance else {}

    def digest(self, key: str) -> str | None:
        return self.items.get(key)

    def record(self, key: str, digest: str) -> None:
        self.items[key] = digest
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump({"instance": self.instance, "items": dict(sorted(self.items.items()))}, handle, indent=1)
        tmp.replace(self.path)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class KbsClient:
    def __init__(
        self,
        url: str,
        *,
        ca_cert: str | os.PathLike | None = None,
        admin_key: str | os.PathLike | ed25519.Ed25519PrivateKey | None = None,
        lab: bool = False,
        timeout: float = 30.0,
        issuer: str = ADMIN_ISSUER,
        role: str = ADMIN_ROLE,
    ):
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise KbsError(f"kbs_url {url!r} is not an http(s) URL with a host")
        if parts.scheme == "http" and not lab:
            raise KbsError(f"kbs_url {url} is plain HTTP: refused outside the lab (admin tokens and cookies would travel in clear)")
        self.url, self.scheme, self.hostname = url.rstrip("/"), parts.scheme, parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.timeout, self.issuer, self.role = timeout, issuer, role
        self.context = None
        if self.scheme == "https":
            self.context = ssl.create_default_context(cafile=str(Path(ca_cert).expanduser()) if ca_cert else None)
        if isinstance(admin_key, (str, os.PathLike)):
            admin_key = load_private_key(admin_key, "admin key")
            if not isinstance(admin_key, ed25519.Ed25519PrivateKey):
                raise KbsError("the admin key is not Ed25519 (Trustee's admin tokens are EdDSA)")
        self.admin_key = admin_key

    # ---------------------------------------------------------------- transport

    def _connection(self):
        if self.scheme == "https":
            return http.client.HTTPSConnection(self.hostname, self.port, timeout=self.timeout, context=self.context)
        return http.client.HTTPConnection(self.hostname, self.port, timeout=self.timeout)

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None) -> Response:
        conn = self._connection()
        try:
            conn.request(method, path, body=body, headers=headers or {})
            raw = conn.getresponse()
            return Response(raw.status, {k.lower(): v for k, v in raw.getheaders()}, raw.read())
        except ssl.SSLCertVerificationError as exc:
            raise KbsUnreachable(
                f"{self.url}: the KBS certificate is not trusted: {exc.verify_message}; the client verifies it with the "
                "site CA (kbs_ca_cert) and the host of kbs_url"
            ) from None
        except (ConnectionError, socket.timeout, TimeoutError, OSError, http.client.HTTPException) as exc:
            raise KbsUnreachable(f"{self.url}: no answer from the KBS ({type(exc).__name__}: {exc})") from None
        finally:
            conn.close()

    def served_certificate(self) -> bytes:
        """DER of the certificate the KBS presents (after verification)."""
        if self.scheme != "https":
            raise KbsError(f"{self.url} is not HTTPS")
        try:
            with socket.create_connection((self.hostname, self.port), timeout=self.timeout) as raw:
                with self.context.wrap_socket(raw, server_hostname=self.hostname) as tls:
                    return tls.getpeercert(binary_form=True)
        except ssl.SSLCertVerificationError as exc:
            raise KbsUnreachable(f"{self.url}: the KBS certificate is not trusted: {exc.verify_message}") from None
        except OSError as exc:
            raise KbsUnreachable(f"{self.url}: no TLS connection ({type(exc).__name__}: {exc})") from None

    @staticmethod
    def _fail(resp: Response, what: str) -> KbsHttpError:
        kind, detail = resp.error()
        message = f"{what}: KBS answered {resp.status} {kind or ''}: {detail}".replace("  ", " ")
        if resp.status == 403 and kind == "PolicyDeny":
            return PolicyDenied(message, resp.status, kind, detail)
        if resp.status == 401 and kind.startswith("AdminAuth"):
            return AdminAuthError(
                f"{what}: the KBS refused the admin credential ({detail}); check that the KBS runs with this site's "
                "admin.pub (kbs_pki_dir/admin.pub) and that the controller uses the matching admin.key",
                resp.status,
                kind,
                detail,
            )
        return KbsHttpError(message, resp.status, kind, detail)

    # ---------------------------------------------------------------- admin API

    def _admin(self, method: str, path: str, body: bytes | None = None, key=None) -> Response:
        key = key or self.admin_key
        if key is None:
            raise KbsError("no admin key configured for this client")
        token = admin_token(key, issuer=self.issuer, role=self.role)
        headers = {"Authorization": f"Bearer {token}"}
        if body is not None:
            headers["Content-Type"] = "application/json" if body[:1] in (b"{", b"[") else "application/octet-stream"
        return self.request(method, path, body, headers)

    def get_resource_policy(self) -> str:
        resp = self._admin("GET", "/kbs/v0/resource-policy")
        if resp.status != 200:
            raise self._fail(resp, "read the resource policy")
        return jose.b64url_decode(resp.body.decode().strip()).decode()

    def set_resource_policy(self, text: str) -> bool:
        """Set the resource policy unless the KBS already has exactly this text; True if set."""
        if self.get_resource_policy() == text:
            return False
        body = json.dumps({"policy": jose.b64url(text.encode())}).encode()
        resp = self._admin("POST", "/kbs/v0/resource-policy", body)
        if resp.status != 200:
            raise self._fail(resp, "set the resource policy")
        return True

    def set_attestation_policy(self, text: str, ledger: Ledger, policy_id: str = "default") -> bool:
        """Set attestation policy ``policy_id`` (the API cannot read it back: the ledger remembers)."""
        key = f"attestation-policy/{policy_id}"
        digest = _sha256(text.encode())
        if ledger.digest(key) == digest:
            return False
        body = json.dumps({"type": "rego", "policy_id": policy_id, "policy": jose.b64url(text.encode())}).encode()
        resp = self._admin("POST", "/kbs/v0/attestation-policy", body)
        if resp.status != 200:
            raise self._fail(resp, f"set attestation policy {policy_id}")
        ledger.record(key, digest)
        return True

    def query_reference_value(self, name: str):
        resp = self._admin("GET", f"/kbs/v0/reference-value/{quote(name, safe='')}")
        if resp.status != 200:
            raise self._fail(resp, f"query reference value {name}")
        return resp.json()

    def ensure_reference_values(self, values: dict[str, list], ledger: Ledger) -> list[str]:
        """Register reference values with RVPS (sample message, API); returns the names registered."""
        todo = {}
        for name, wanted in sorted(values.items()):
            digest = _sha256(json.dumps(wanted, sort_keys=True).encode())
            if ledger.digest(f"reference-value/{name}") == digest and self.query_reference_value(name) not in (None, []):
                continue
            todo[name] = (wanted, digest)
        if not todo:
            return []
        payload = base64.b64encode(json.dumps({n: v for n, (v, _) in todo.items()}).encode()).decode()
        message = json.dumps({"version": "0.1.0", "type": "sample", "payload": payload}).encode()
        resp = self._admin("POST", "/kbs/v0/reference-value", message)
        if resp.status != 200:
            raise self._fail(resp, f"register reference values {', '.join(todo)}")
        for name, (_, digest) in todo.items():
            ledger.record(f"reference-value/{name}", digest)
        return list(todo)

    def set_resource(self, path: str, data: bytes) -> None:
        check_resource_path(path)
        resp = self._admin("POST", f"/kbs/v0/resource/{path}", data)
        if resp.status != 200:
            raise self._fail(resp, f"upload resource {path}")

    def delete_resource(self, path: str) -> None:
        """``DELETE /kbs/v0/resource/<path>`` (admin). Raises ``KbsHttpError`` when the KBS refuses.

        The resource plugin of Trustee's main branch handles DELETE (admin-authenticated)
        and PR #1374 (May 2026, before v0.21.0) already has ``delete_secret_resource`` in the
        storage trait; that v0.21.0 itself routes DELETE was not read (docs/attestation.md).
        Callers fall back to overwriting when the KBS refuses.
        """
        check_resource_path(path)
        resp = self._admin("DELETE", f"/kbs/v0/resource/{path}")
        if resp.status != 200:
            raise self._fail(resp, f"delete resource {path}")

    def ensure_resource(self, path: str, source: str | os.PathLike, ledger: Ledger) -> bool:
        """Upload ``source`` as resource ``path`` unless the ledger shows the same content there."""
        check_resource_path(path)
        source = Path(source).expanduser()
        try:
            data = source.read_bytes()
        except FileNotFoundError:
            raise ResourceFileError(f"resource {path}: file {source} does not exist on the controller; fix kbs_resources") from None
        except OSError as exc:
            raise ResourceFileError(f"resource {path}: file {source} cannot be read ({exc.strerror}); fix its permissions") from None
        digest = _sha256(data)
        if ledger.digest(f"resource/{path}") == digest:
            return False
        self.set_resource(path, data)
        ledger.record(f"resource/{path}", digest)
        return True

    def check_admin_auth(self) -> str:
        """Our credential is accepted and a foreign Ed25519 key is refused; raise otherwise."""
        resp = self._admin("GET", "/kbs/v0/resource-policy")
        if resp.status != 200:
            raise self._fail(resp, "admin API with the site admin key")
        wrong = self._admin("GET", "/kbs/v0/resource-policy", key=ed25519.Ed25519PrivateKey.generate())
        if wrong.status == 200:
            raise HealthCheckFailed("the KBS admin API accepted a token signed by an unknown key: admin authentication is off")
        kind, _ = wrong.error()
        return f"admin API accepts the site key and refuses an unknown key ({wrong.status} {kind})"

    # ---------------------------------------------------------------- attestation (sample)

    def attest_sample(self, svn: str = "1") -> AttestationSession:
        """Run auth + attest with sample evidence; the KBS must accept the evidence format."""
        resp = self.request("POST", "/kbs/v0/auth", json.dumps(
            {"version": KBS_PROTOCOL_VERSION, "tee": "sample", "extra-params": {}}).encode(),
            {"Content-Type": "application/json"})  # fmt: skip
        if resp.status != 200:
            raise self._fail(resp, "KBS auth (tee sample)")
        cookie = _session_cookie(resp.headers.get("set-cookie", ""))
        if not cookie:
            raise KbsError("KBS auth answered without a kbs-session-id cookie")
        nonce = resp.json()["nonce"]
        tee_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        tee_pubkey = jose.rsa_public_jwk(tee_key.public_key())
        digest = jose.runtime_data_digest({"tee-pubkey": tee_pubkey, "nonce": nonce, "additional-evidence": ""})
        evidence = {"svn": svn, "report_data": base64.b64encode(digest).decode()}
        attestation = {
            "runtime-data": {"nonce": nonce, "tee-pubkey": tee_pubkey},
            "tee-evidence": {"primary_evidence": evidence, "additional_evidence": ""},
        }
        resp = self.request("POST", "/kbs/v0/attest", json.dumps(attestation).encode(),
                            {"Content-Type": "application/json", "Cookie": f"kbs-session-id={cookie}"})  # fmt: skip
        if resp.status != 200:
            raise self._fail(resp, "KBS attest (sample evidence)")
        return AttestationSession(cookie=cookie, token=resp.json()["token"], tee_key=tee_key)

    def get_resource(self, session: AttestationSession, path: str) -> bytes:
        """The resource, decrypted with the session's TEE key; ``PolicyDenied`` on 403."""
        check_resource_path(path)
        resp = self.request("GET", f"/kbs/v0/resource/{path}", headers={"Cookie": f"kbs-session-id={session.cookie}"})
        if resp.status != 200:
            raise self._fail(resp, f"get resource {path}")
        return jose.jwe_decrypt(session.tee_key, resp.json())

    def negative_health_check(self, path: str = PROBE_PATH, *, expect_denial: bool = True) -> str:
        """Sample evidence must get ``403 PolicyDeny`` for ``path``; raise ``HealthCheckFailed`` if not.

        With ``expect_denial=False`` (lab-permissive policy only) the policy must let the
        request through (the probe path itself does not exist).
        """
        try:
            session = self.attest_sample()
        except KbsHttpError as exc:
            raise HealthCheckFailed(f"sample attestation did not complete, so the resource policy was not exercised: {exc}") from None
        try:
            self.get_resource(session, path)
        except PolicyDenied:
            if expect_denial:
                return "sample evidence is denied by the resource policy (403 PolicyDeny)"
            raise HealthCheckFailed("the lab-permissive policy is set but the KBS denied sample evidence") from None
        except KbsHttpError as exc:
            if expect_denial:
                raise HealthCheckFailed(f"expected 403 PolicyDeny for sample evidence, got: {exc}") from None
            return f"LAB PERMISSIVE: sample evidence passes the resource policy ({exc.status} {exc.kind} for the probe)"
        if expect_denial:
            raise HealthCheckFailed(
                f"the KBS released {path} to sample (non-TEE) evidence: the resource policy does not require TEE attestation"
            )
        return "LAB PERMISSIVE: sample evidence gets resources"


def _session_cookie(header: str) -> str | None:
    for part in header.split(";"):
        name, _, value = part.strip().partition("=")
        if name.endswith("kbs-session-id"):
            return value
    return None

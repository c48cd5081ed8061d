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
which must see a ``PolicyDeny`` error. Trustee answers every error but a bad path with
**401**, a policy denial included (``trustee@v0.21.0:kbs/src/error.rs:124-130``); the
client tells errors apart by their ``ErrorInformation`` type, never by status alone.

Resource content is read from controller-side files and never printed or logged. What
the API cannot read back (resources, policy texts: ``GET resource-policy`` lists policy
ids only) is remembered as sha256 digests in a controller-side ledger (0600), tied to the
KBS instance, so a re-run uploads nothing unless a file changed or the KBS lost its
storage (its instance id lives inside the storage directory, so a wiped storage changes
it). Reference values are read back from RVPS and compared.

Example::

    client = KbsClient("https://kbs-01:8443", ca_cert="~/.ccfactory/sites/kbs-01/pki/ca.crt",
                       admin_key="~/.ccfactory/sites/kbs-01/pki/admin.key")
    client.set_resource_policy(text, ledger)
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
ERROR_PREFIX = "https://github.com/confidential-containers/kbs/errors/"  # error.rs:15
# Error types that mean "the admin credential was refused": AdminAuthAccess for the built-in
# admin endpoints (api_server.rs:266-331), AdminAuthInitialization for plugin uploads and
# deletes (api_server.rs:397: the `?` converts admin::Error through `#[from]`, error.rs:21-22).
ADMIN_REFUSALS = ("AdminAuthAccess", "AdminAuthInitialization")
RESOURCE_POLICY_ID = "resource-policy"  # api_server.rs:42
_RESOURCE_POLICY_KEY = f"resource-policy/{RESOURCE_POLICY_ID}"  # in the ledger
# The built-in AS evaluates "<id>_<tee class>" with id "default" (kbs/src/attestation/coco/builtin.rs:99,
# attestation-service/src/ear_token/broker.rs:168): default_cpu, default_gpu, ...
ATTESTATION_POLICY_IDS = {"cpu": "default_cpu", "gpu": "default_gpu"}
NO_REFERENCE_VALUE = "No reference value found for the given id"  # kbs/src/attestation/backend.rs:481
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

    def json(self, what: str = "the KBS answer", *, quote_body: bool = True):
        """The body as JSON; ``KbsError`` (never a traceback) when it is not. ``quote_body=False``
        for answers that may carry a secret (a resource): the error then gives only the size."""
        try:
            return json.loads(self.body)
        except (ValueError, UnicodeDecodeError):
            body = _excerpt(self.body) if quote_body else f"{len(self.body)} bytes, not shown"
            raise KbsError(
                f"{what}: expected JSON, got {self.headers.get('content-type', 'no content type')} "
                f"({body}): is another service answering at this URL?"
            ) from None

    def error(self) -> tuple[str, str]:
        """(ErrorInformation type without prefix, detail) of an error response (error.rs:108-135)."""
        try:
            info = json.loads(self.body)
            if isinstance(info, dict) and str(info.get("type", "")).startswith(ERROR_PREFIX):
                return str(info["type"]).removeprefix(ERROR_PREFIX), str(info.get("detail", ""))[:500]
        except (ValueError, UnicodeDecodeError):
            pass
        return "", f"not a KBS error body ({_excerpt(self.body)})"


def _excerpt(body: bytes, limit: int = 120) -> str:
    text = body[:limit].decode("utf-8", errors="replace")
    text = " ".join(text.split())
    return repr(text + ("..." if len(body) > limit else "")) if text else "empty body"


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
        self._save()

    def forget(self, key: str) -> None:
        if self.items.pop(key, None) is not None:
            self._save()

    def keys(self, prefix: str) -> list[str]:
        return sorted(k for k in self.items if k.startswith(prefix))

    def _save(self) -> None:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump({"instance": self.instance, "items": dict(sorted(self.items.items()))}, handle, indent=1)
        tmp.replace(self.path)


RV_LEDGER = "reference-value/"


def retired_values(values: dict, ledger: Ledger) -> dict:
    """``{name: empty}`` for names in the ledger (registered by ccfactory) that ``values`` no
    longer has: ``[]`` for names the default policy tests with ``in``, ``None`` otherwise."""
    from ccfactory.kbs.refvalues import DEFAULT_CPU_SHAPES, SET

    out = {}
    for key in ledger.keys(RV_LEDGER):
        name = key[len(RV_LEDGER):]
        if name not in values:
            out[name] = [] if DEFAULT_CPU_SHAPES.get(name, SET) == SET else None
    return out


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

    # A connection the KBS left open is kept for the client's next request (one TLS handshake per
    # client, not per request). Trustee v0.21.0 serves HTTP/1.1 through actix-web without changing its
    # keep-alive (trustee@v0.21.0:kbs/src/api_server.rs:165-189: no ``keep_alive`` call, so actix-web's
    # default 5-s timeout), so a kept connection may have been closed by the KBS in between: such a
    # request (no answer at all on a reused connection) is sent once more on a new connection. One
    # idle connection per client: requests made at the same time (greenlets) get their own.
    _STALE = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None) -> Response:
        conn, self._idle = getattr(self, "_idle", None), None
        reused = conn is not None
        try:
            while True:
                if conn is None:
                    conn = self._connection()
                    self.connections = getattr(self, "connections", 0) + 1
                try:
                    conn.request(method, path, body=body, headers=headers or {})
                    raw = conn.getresponse()
                    resp = Response(raw.status, {k.lower(): v for k, v in raw.getheaders()}, raw.read())
                except self._STALE:
                    conn.close()
                    conn = None
                    if not reused:
                        raise
                    reused = False  # the KBS closed the kept connection: once more, on a new one
                    continue
                if not raw.will_close and getattr(self, "_idle", None) is None:
                    self._idle, conn = conn, None
                return resp
        except ssl.SSLCertVerificationError as exc:
            raise KbsUnreachable(
                f"{self.url}: the KBS certificate is not trusted: {exc.verify_message}; the client verifies it with the "
                "site CA (kbs_ca_cert) and the host of kbs_url"
            ) from None
        except (ConnectionError, socket.timeout, TimeoutError, OSError, http.client.HTTPException) as exc:
            raise KbsUnreachable(f"{self.url}: no answer from the KBS ({type(exc).__name__}: {exc})") from None
        finally:
            if conn is not None:
                conn.close()

    def close(self) -> None:
        """Close the kept connection (if any); the client stays usable."""
        conn, self._idle = getattr(self, "_idle", None), None
        if conn is not None:
            conn.close()

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001, S110 - interpreter shutdown
            pass

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
        if kind == "PolicyDeny":  # 401 at v0.21.0 (error.rs:124-130)
            return PolicyDenied(message, resp.status, kind, detail)
        if kind in ADMIN_REFUSALS:
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

    def list_resource_policies(self) -> list[str]:
        """Ids of the KBS's resource policies: ``GET resource-policy`` answers a JSON list of ids,
        never the text (``api_server.rs:367-379``, ``deps/policy-engine/src/lib.rs:50-57``)."""
        resp = self._admin("GET", "/kbs/v0/resource-policy")
        if resp.status != 200:
            raise self._fail(resp, "read the resource policy ids")
        ids = resp.json("read the resource policy ids")
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise KbsError(f"read the resource policy ids: expected a JSON list of ids, got {_excerpt(resp.body)}")
        return ids

    def set_resource_policy(self, text: str, ledger: Ledger) -> bool:
        """Set the resource policy unless the ledger shows this text is in place; True if set.

        The text cannot be read back, so the ledger (tied to this KBS instance) decides;
        ``RESOURCE_POLICY_ID`` must also be listed. Callers gate ``text`` through
        ``ccfactory.kbs.rego.refuse_unsafe_policy`` first.
        """
        if self.resource_policy_in_place(text, ledger):
            return False
        # body: {"policy": base64url-no-pad} (api_server.rs:332-357)
        body = json.dumps({"policy": jose.b64url(text.encode())}).encode()
        resp = self._admin("POST", "/kbs/v0/resource-policy", body)
        if resp.status != 200:
            raise self._fail(resp, "set the resource policy")
        ledger.record(_RESOURCE_POLICY_KEY, _sha256(text.encode()))
        return True

    def resource_policy_in_place(self, text: str, ledger: Ledger) -> bool:
        """The ledger says this KBS instance got ``text``, and the KBS lists the policy id."""
        return ledger.digest(_RESOURCE_POLICY_KEY) == _sha256(text.encode()) and (
            RESOURCE_POLICY_ID in self.list_resource_policies()
        )

    def set_attestation_policy(self, text: str, ledger: Ledger, policy_id: str = ATTESTATION_POLICY_IDS["cpu"]) -> bool:
        """Set attestation policy ``policy_id`` (``default_cpu``: what the built-in AS evaluates for
        CPU evidence). The API cannot read it back: the ledger remembers.

        Body ``{"policy_id", "policy": base64url-no-pad}`` (``kbs/src/attestation/backend.rs:139-143``,
        ``attestation-service/src/lib.rs:173-178``).
        """
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
        """The values RVPS holds for ``name``, or None when it holds none.

        RVPS answers 200 with the JSON value, or an ``RvpsError`` ("No reference value found
        for the given id", 401) when there is none (``kbs/src/attestation/backend.rs:473-483``,
        ``api_server.rs:279-298``).
        """
        resp = self._admin("GET", f"/kbs/v0/reference-value/{quote(name, safe='')}")
        if resp.status == 200:
            return resp.json(f"query reference value {name}")
        kind, detail = resp.error()
        if kind == "RvpsError" and NO_REFERENCE_VALUE in detail:
            return None
        raise self._fail(resp, f"query reference value {name}")

    def reference_values_to_register(self, values: dict, ledger: Ledger | None = None) -> dict:
        """The subset of ``values`` that RVPS does not hold exactly (read back, no ledger), plus
        the names this controller registered before and no longer wants (``retired_values``)."""
        todo = {name: wanted for name, wanted in sorted(values.items()) if self.query_reference_value(name) != wanted}
        if ledger is not None:
            for name, empty in retired_values(values, ledger).items():
                if self.query_reference_value(name) != empty:
                    todo[name] = empty
        return todo

    def ensure_reference_values(self, values: dict, ledger: Ledger | None = None) -> list[str]:
        """Register with RVPS the values it does not hold exactly; returns the names registered.

        Message ``{"version": "0.1.0", "type": "sample", "payload": base64(JSON {name: value})}``
        (``rvps/src/lib.rs:41-111``, ``rvps/src/extractors/sample/mod.rs:28-48``): each value is
        stored as given (a list for names the policy tests with ``in``, one value for ``==``).
        RVPS v0.21.0 has no delete, so a name this controller registered before and no longer
        wants (``ledger``) is overwritten with an empty list / null, which matches no claim.
        """
        todo = self.reference_values_to_register(values, ledger)
        if todo:
            payload = base64.b64encode(json.dumps(todo).encode()).decode()
            message = json.dumps({"version": "0.1.0", "type": "sample", "payload": payload}).encode()
            resp = self._admin("POST", "/kbs/v0/reference-value", message)
            if resp.status != 200:
                raise self._fail(resp, f"register reference values {', '.join(todo)}")
        if ledger is not None:  # what RVPS now holds from this controller (values already in place too)
            for name in retired_values(values, ledger):
                ledger.forget(f"{RV_LEDGER}{name}")
            for name, value in values.items():
                digest = _sha256(json.dumps(value, sort_keys=True).encode())
                if ledger.digest(f"{RV_LEDGER}{name}") != digest:
                    ledger.record(f"{RV_LEDGER}{name}", digest)
        return list(todo)

    def set_resource(self, path: str, data: bytes) -> None:
        check_resource_path(path)
        resp = self._admin("POST", f"/kbs/v0/resource/{path}", data)
        if resp.status != 200:
            raise self._fail(resp, f"upload resource {path}")

    def delete_resource(self, path: str) -> None:
        """``DELETE /kbs/v0/resource/<path>`` (admin). Raises ``KbsHttpError`` when the KBS refuses.

        v0.21.0's resource plugin handles DELETE behind admin auth
        (``kbs/src/plugins/implementations/resource/mod.rs:51-55,60-71``).
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
        self.list_resource_policies()
        wrong = self._admin("GET", "/kbs/v0/resource-policy", key=ed25519.Ed25519PrivateKey.generate())
        if wrong.status == 200:
            raise HealthCheckFailed("the KBS admin API accepted a token signed by an unknown key: admin authentication is off")
        kind, _ = wrong.error()
        if kind not in ADMIN_REFUSALS:
            raise HealthCheckFailed(f"an unknown admin key got {wrong.status} {kind or _excerpt(wrong.body)}, not an admin refusal")
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
        challenge = resp.json("KBS auth (tee sample)")
        nonce = challenge.get("nonce") if isinstance(challenge, dict) else None
        if not isinstance(nonce, str):
            raise KbsError(f"KBS auth (tee sample): the challenge has no nonce ({_excerpt(resp.body)})")
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
        answer = resp.json("KBS attest (sample evidence)")
        token = answer.get("token") if isinstance(answer, dict) else None
        if not isinstance(token, str):
            raise KbsError(f"KBS attest (sample evidence): no token in the answer ({_excerpt(resp.body)})")
        return AttestationSession(cookie=cookie, token=token, tee_key=tee_key)

    def get_resource(self, session: AttestationSession, path: str) -> bytes:
        """The resource, decrypted with the session's TEE key; ``PolicyDenied`` on a policy denial."""
        check_resource_path(path)
        resp = self.request("GET", f"/kbs/v0/resource/{path}", headers={"Cookie": f"kbs-session-id={session.cookie}"})
        if resp.status != 200:
            raise self._fail(resp, f"get resource {path}")
        try:
            return jose.jwe_decrypt(session.tee_key, resp.json(f"get resource {path}", quote_body=False))
        except (ValueError, KeyError, TypeError) as exc:
            raise KbsError(f"get resource {path}: the answer is not a JWE for this session's key ({type(exc).__name__})") from None

    def negative_health_check(self, path: str = PROBE_PATH, *, expect_denial: bool = True) -> str:
        """Sample evidence must get a ``PolicyDeny`` for ``path``; raise ``HealthCheckFailed`` if not.

        With ``expect_denial=False`` (lab-permissive policy only) the policy must let the
        request through (the probe path itself does not exist).
        """
        try:
            session = self.attest_sample()
        except KbsHttpError as exc:
            raise HealthCheckFailed(f"sample attestation did not complete, so the resource policy was not exercised: {exc}") from None
        try:
            self.get_resource(session, path)
        except PolicyDenied as denied:
            if expect_denial:
                return f"sample evidence is denied by the resource policy ({denied.status} PolicyDeny)"
            raise HealthCheckFailed("the lab-permissive policy is set but the KBS denied sample evidence") from None
        except KbsHttpError as exc:
            if expect_denial:
                raise HealthCheckFailed(f"expected a PolicyDeny for sample evidence, got: {exc}") from None
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

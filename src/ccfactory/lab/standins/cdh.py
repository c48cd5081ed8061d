#!/usr/bin/python3
"""ccflab-cdh: the guest's confidential-data-hub REST endpoint -- ccfactory LAB STAND-IN.

NOT guest-components. Lab nodes have no TEE and run no Kata guest, so there is no
attestation agent (AA), confidential data hub (CDH) or ``api-server-rest`` next to a
container. The attestation check (``ccfactory.verify.attestation``) starts this program on
a lab worker, for one smoke container only, so that the container can do what CoCo
workloads do: ``GET http://127.0.0.1:8006/cdh/resource/<repo>/<type>/<tag>``.

What it keeps of the real thing (guest-components ``api-server-rest/src/{main,cdh}.rs``,
``README.md``):

* it listens on ``127.0.0.1:8006`` (``DEFAULT_BIND``) *inside the container's network
  namespace* (``--netns-pid``: the socket is created there, the KBS connections leave from
  the node's namespace, as the guest's CDH reaches the KBS over the guest's network);
* ``GET /cdh/resource/<repo>/<type>/<tag>`` -> 200 ``application/octet-stream`` with the
  plain resource, or 500 with the error text; only loopback clients, only GET;
* features as upstream's ``--features`` (``resource`` by default: ``DEFAULT_FEATURE``,
  ``api-server-rest/src/main.rs:32,78-86``, and the Kata agent's default
  ``guest_components_rest_api``, kata-containers@4.1.0:src/agent/src/config.rs:104-112): with
  ``resource`` only, ``/aa/...`` answers 404 "Attestation Feature Not Enabled"
  (``router.rs:150-156``); with ``attestation`` only, ``/cdh/...`` answers 404 "Resource Feature Not
  Enabled" (``router.rs:247-252``);
* ``GET /aa/token?token_type=kbs`` (features ``attestation``/``all``) -> ``{"token": "<EAR JWT>"}``
  (the real one also returns ``tee_keypair``; the stand-in does not hand out private keys);
* ``GET /info`` -> ``{"version", "feature"}``, plus ``tee``/``additional_tees`` only with the
  attestation feature (``router.rs:114-148``);
* its KBS settings come from the same place as a guest's: the initdata the node's
  runtime stage rendered (``cdh.toml``: ``[kbc] name = "cc_kbc"``, ``url``, ``kbs_cert``).

What it cannot do, on purpose: it has **no TEE evidence**. It performs the KBS protocol
(``POST /kbs/v0/auth`` with ``tee = "sample"``, ``POST /kbs/v0/attest``, ``GET
/kbs/v0/resource/...`` with the session cookie; KBS protocol 0.4.0) with the only evidence a
machine without a TEE has: ``sample`` (``{"svn", "report_data"}``, report data = SHA-384 of
the canonical runtime data). A KBS with ccfactory's strict policy must deny it.

Every request is logged as one JSON line (``--log``) so the check can tell a policy denial
from any other failure. Secrets are never logged.

Standard library only (Debian 12's python3 on a lab node has no ``cryptography``): RSA-2048
key generation, RSA-OAEP-256 and AES-256-GCM decryption of the KBS's JWE are implemented
below and tested against ``cryptography`` (tests/unit/test_standin_cdh.py). Lab use only:
it refuses to run on a machine that is not a ccfactory lab node.
"""

from __future__ import annotations

import argparse
import base64
import ctypes
import gzip
import hashlib
import hmac
import http.client
import json
import os
import secrets
import socket
import ssl
import sys
import threading
import time
import tomllib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

VERSION = "ccfactory-lab-cdh-standin-1"
KBS_PROTOCOL_VERSION = "0.4.0"  # trustee kbs/src/attestation/backend.rs (docs/trustee.md section 4)
DEFAULT_LISTEN = "127.0.0.1:8006"  # guest-components api-server-rest/src/main.rs DEFAULT_BIND
FEATURES = ("resource", "attestation", "all")  # api-server-rest/src/main.rs:47-49, 78-86
DEFAULT_FEATURE = "resource"
RESOURCE_PREFIX = "/cdh/resource/"
TOKEN_PATH = "/aa/token"
INFO_PATH = "/info"
LAB_MARKER = "/var/log/ccfactory-lab/hardware.json"  # written at every boot of a lab node
LAB_MARKER_ENV = "CCFLAB_CDH_LAB_MARKER"  # tests point it at a file of their own
ERROR_PREFIX = "https://github.com/confidential-containers/kbs/errors/"
SESSION_COOKIE = "kbs-session-id"
CLONE_NEWNET = 0x40000000
EVIDENCE = "sample"  # the only evidence without a TEE


# ------------------------------------------------------------------ encodings


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def jcs(value) -> bytes:
    """RFC 8785 canonical JSON for the protocol's values (objects, strings), as the KBS hashes it."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def runtime_data_digest(runtime_data: dict) -> bytes:
    return hashlib.sha384(jcs(runtime_data)).digest()


# ------------------------------------------------------------------ RSA (keygen, OAEP-SHA256 decryption)

_SMALL_PRIMES = [p for p in range(3, 2000, 2) if all(p % q for q in range(3, int(p**0.5) + 1, 2))]


def _probable_prime(n: int, rounds: int = 40) -> bool:
    if n < 2:
        return False
    for p in _SMALL_PRIMES:
        if n % p == 0:
            return n == p
    d, s = n - 1, 0
    while d % 2 == 0:
        d, s = d // 2, s + 1
    for _ in range(rounds):
        a = 2 + secrets.randbelow(n - 3)
        x = pow(a, d, n)
        if x in (1, n - 1):
            continue
        for _ in range(s - 1):
            x = pow(x, 2, n)
            if x == n - 1:
                break
        else:
            return False
    return True


def _prime(bits: int, e: int) -> int:
    while True:
        candidate = secrets.randbits(bits) | (1 << (bits - 1)) | (1 << (bits - 2)) | 1
        if candidate % e != 1 and _probable_prime(candidate):
            return candidate


class RsaKey:
    """An RSA key pair (e = 65537) for the KBS's ``tee-pubkey``."""

    def __init__(self, n: int, e: int, d: int):
        self.n, self.e, self.d = n, e, d

    @classmethod
    def generate(cls, bits: int = 2048) -> RsaKey:
        e = 65537
        while True:
            p, q = _prime(bits // 2, e), _prime(bits // 2, e)
            n = p * q
            if p != q and n.bit_length() == bits:
                return cls(n, e, pow(e, -1, (p - 1) * (q - 1)))

    def public_jwk(self) -> dict:
        def raw(i: int) -> bytes:
            return i.to_bytes((i.bit_length() + 7) // 8, "big")

        return {"kty": "RSA", "alg": "RSA-OAEP-256", "n": b64url(raw(self.n)), "e": b64url(raw(self.e))}

    def decrypt_oaep_sha256(self, ciphertext: bytes) -> bytes:
        k = (self.n.bit_length() + 7) // 8
        if len(ciphertext) != k:
            raise ValueError("RSA-OAEP: ciphertext length does not match the key")
        em = pow(int.from_bytes(ciphertext, "big"), self.d, self.n).to_bytes(k, "big")
        h = 32
        masked_seed, masked_db = em[1 : 1 + h], em[1 + h :]
        seed = _xor(masked_seed, _mgf1(masked_db, h))
        db = _xor(masked_db, _mgf1(seed, k - h - 1))
        label_ok = hmac.compare_digest(db[:h], hashlib.sha256(b"").digest())
        rest = db[h:].lstrip(b"\0")
        if em[0] != 0 or not label_ok or not rest or rest[0] != 1:
            raise ValueError("RSA-OAEP: decryption error")
        return rest[1:]


def _xor(a: bytes, b: bytes) -> bytes:
    return bytes(x ^ y for x, y in zip(a, b))


def _mgf1(seed: bytes, length: int) -> bytes:
    out = b""
    counter = 0
    while len(out) < length:
        out += hashlib.sha256(seed + counter.to_bytes(4, "big")).digest()
        counter += 1
    return out[:length]


# ------------------------------------------------------------------ AES-256-GCM (decryption)


def _rotl8(x: int, shift: int) -> int:
    return ((x << shift) | (x >> (8 - shift))) & 0xFF


def _make_sbox() -> list[int]:
    # FIPS-197 S-box from the multiplicative inverse in GF(2^8) and the affine transform
    sbox = [0] * 256
    p = q = 1
    while True:
        p = (p ^ (p << 1) ^ (0x1B if p & 0x80 else 0)) & 0xFF  # p * 3
        q ^= q << 1
        q ^= q << 2
        q ^= q << 4
        q &= 0xFF
        if q & 0x80:
            q ^= 0x09  # q / 3
        sbox[p] = q ^ _rotl8(q, 1) ^ _rotl8(q, 2) ^ _rotl8(q, 3) ^ _rotl8(q, 4) ^ 0x63
        if p == 1:
            break
    sbox[0] = 0x63
    return sbox


_SBOX = _make_sbox()


def _xtime(a: int) -> int:
    return ((a << 1) ^ 0x1B) & 0xFF if a & 0x80 else a << 1


class Aes256:
    """The AES-256 forward cipher (all GCM needs)."""

    def __init__(self, key: bytes):
        if len(key) != 32:
            raise ValueError("AES-256 needs a 32-byte key")
        words = [list(key[i : i + 4]) for i in range(0, 32, 4)]
        rcon = 1
        for i in range(8, 60):
            t = list(words[i - 1])
            if i % 8 == 0:
                t = [_SBOX[b] for b in t[1:] + t[:1]]
                t[0] ^= rcon
                rcon = _xtime(rcon)
            elif i % 8 == 4:
                t = [_SBOX[b] for b in t]
            words.append([a ^ b for a, b in zip(words[i - 8], t)])
        self.round_keys = [sum(words[r * 4 : r * 4 + 4], []) for r in range(15)]

    def encrypt_block(self, block: bytes) -> bytes:
        s = [b ^ k for b, k in zip(block, self.round_keys[0])]
        for r in range(1, 15):
            s = [_SBOX[b] for b in s]
            # ShiftRows (state is column-major: byte i is row i % 4, column i // 4)
            s = [s[(i + 4 * (i % 4)) % 16] for i in range(16)]
            if r != 14:
                mixed = []
                for c in range(4):
                    a = s[4 * c : 4 * c + 4]
                    t = a[0] ^ a[1] ^ a[2] ^ a[3]
                    mixed += [a[i] ^ t ^ _xtime(a[i] ^ a[(i + 1) % 4]) for i in range(4)]
                s = mixed
            s = [b ^ k for b, k in zip(s, self.round_keys[r])]
        return bytes(s)


def _gf_mult(x: int, y: int) -> int:
    z, v = 0, y
    for i in range(127, -1, -1):
        if (x >> i) & 1:
            z ^= v
        v = (v >> 1) ^ (0xE1 << 120) if v & 1 else v >> 1
    return z


def _ghash(h: int, data: bytes) -> int:
    x = 0
    for i in range(0, len(data), 16):
        x = _gf_mult(x ^ int.from_bytes(data[i : i + 16].ljust(16, b"\0"), "big"), h)
    return x


def aes256_gcm_decrypt(key: bytes, iv: bytes, ciphertext: bytes, tag: bytes, aad: bytes) -> bytes:
    """NIST SP 800-38D decryption with a 96-bit IV; raises ``ValueError`` on a bad tag."""
    if len(iv) != 12 or len(tag) != 16:
        raise ValueError("AES-GCM: need a 12-byte IV and a 16-byte tag")
    aes = Aes256(key)
    h = int.from_bytes(aes.encrypt_block(bytes(16)), "big")
    j0 = iv + b"\0\0\0\1"

    def pad(b: bytes) -> bytes:
        return b + bytes(-len(b) % 16)

    lengths = (len(aad) * 8).to_bytes(8, "big") + (len(ciphertext) * 8).to_bytes(8, "big")
    s = _ghash(h, pad(aad) + pad(ciphertext) + lengths)
    expected = (s ^ int.from_bytes(aes.encrypt_block(j0), "big")).to_bytes(16, "big")
    if not hmac.compare_digest(expected, tag):
        raise ValueError("AES-GCM: authentication tag mismatch")
    out = bytearray()
    counter = int.from_bytes(j0[12:], "big")
    for i in range(0, len(ciphertext), 16):
        counter = (counter + 1) & 0xFFFFFFFF
        stream = aes.encrypt_block(iv + counter.to_bytes(4, "big"))
        out += _xor(ciphertext[i : i + 16], stream)
    return bytes(out)


def jwe_decrypt(key: RsaKey, jwe: dict) -> bytes:
    """The KBS's flattened JWE (RSA-OAEP-256 + A256GCM; trustee kbs/src/jwe/mod.rs)."""
    header = json.loads(b64url_decode(jwe["protected"]))
    if header.get("alg") != "RSA-OAEP-256" or header.get("enc") != "A256GCM":
        raise ValueError(f"JWE alg/enc {header.get('alg')}/{header.get('enc')} not supported (RSA-OAEP-256/A256GCM)")
    cek = key.decrypt_oaep_sha256(b64url_decode(jwe["encrypted_key"]))
    return aes256_gcm_decrypt(cek, b64url_decode(jwe["iv"]), b64url_decode(jwe["ciphertext"]),
                              b64url_decode(jwe["tag"]), jwe["protected"].encode("ascii"))  # fmt: skip


# ------------------------------------------------------------------ KBS client (sample evidence)


class KbsError(Exception):
    token = ""  # the EAR token of the attestation, when the failure came after it

    def __init__(self, message: str, status: int = 0, kind: str = ""):
        super().__init__(message)
        self.status, self.kind = status, kind


def kbc_settings(initdata_annotation: str) -> tuple[str, str]:
    """(KBS URL, KBS CA PEM) from the initdata annotation value, as the guest's CDH reads them."""
    document = gzip.decompress(base64.b64decode(initdata_annotation.strip())).decode()
    cdh = tomllib.loads(tomllib.loads(document)["data"]["cdh.toml"])
    kbc = cdh.get("kbc", {})
    if kbc.get("name") != "cc_kbc" or not kbc.get("url"):
        raise KbsError(f"initdata cdh.toml has no usable [kbc] (name {kbc.get('name')!r}, url {kbc.get('url')!r})")
    return str(kbc["url"]).rstrip("/"), str(kbc.get("kbs_cert", ""))


class Kbs:
    def __init__(self, url: str, ca_pem: str = "", timeout: float = 30.0):
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise KbsError(f"KBS URL {url!r} is not an http(s) URL")
        self.url, self.scheme, self.host = url, parts.scheme, parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.timeout = timeout
        self.context = ssl.create_default_context(cadata=ca_pem or None) if parts.scheme == "https" else None

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
        if self.scheme == "https":
            conn = http.client.HTTPSConnection(self.host, self.port, timeout=self.timeout, context=self.context)
        else:
            conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            raw = conn.getresponse()
            return raw.status, {k.lower(): v for k, v in raw.getheaders()}, raw.read()
        except (OSError, http.client.HTTPException) as exc:
            raise KbsError(f"no answer from the KBS at {self.url}: {type(exc).__name__}: {exc}") from None
        finally:
            conn.close()

    @staticmethod
    def _error(status: int, body: bytes, what: str) -> KbsError:
        try:
            info = json.loads(body)
            kind = str(info.get("type", "")).removeprefix(ERROR_PREFIX)
            detail = str(info.get("detail", ""))
        except (ValueError, AttributeError):
            kind, detail = "", body[:200].decode(errors="replace")
        return KbsError(f"{what}: KBS answered {status} {kind}: {detail}".replace("  ", " "), status, kind)

    def attest(self) -> tuple[str, str, RsaKey]:
        """RCAR with sample evidence: (session cookie, EAR token, TEE key)."""
        body = json.dumps({"version": KBS_PROTOCOL_VERSION, "tee": EVIDENCE, "extra-params": {}}).encode()
        status, headers, reply = self.request("POST", "/kbs/v0/auth", body, {"Content-Type": "application/json"})
        if status != 200:
            raise self._error(status, reply, "auth")
        cookie = ""
        for part in headers.get("set-cookie", "").split(";"):
            name, _, value = part.strip().partition("=")
            if name == SESSION_COOKIE:
                cookie = value
        if not cookie:
            raise KbsError("auth: the KBS answered without a kbs-session-id cookie")
        nonce = json.loads(reply)["nonce"]
        key = RsaKey.generate()
        tee_pubkey = key.public_jwk()
        digest = runtime_data_digest({"tee-pubkey": tee_pubkey, "nonce": nonce, "additional-evidence": ""})
        attestation = {
            "runtime-data": {"nonce": nonce, "tee-pubkey": tee_pubkey},
            "tee-evidence": {"primary_evidence": {"svn": "1", "report_data": base64.b64encode(digest).decode()},
                             "additional_evidence": ""},
        }  # fmt: skip
        status, _, reply = self.request("POST", "/kbs/v0/attest", json.dumps(attestation).encode(),
                                        {"Content-Type": "application/json", "Cookie": f"{SESSION_COOKIE}={cookie}"})  # fmt: skip
        if status != 200:
            raise self._error(status, reply, "attest")
        return cookie, json.loads(reply)["token"], key

    def resource(self, path: str) -> tuple[bytes, str]:
        """(plain resource, the EAR token of the attestation it was released to)."""
        cookie, token, key = self.attest()
        status, _, reply = self.request("GET", f"/kbs/v0/resource/{path}", headers={"Cookie": f"{SESSION_COOKIE}={cookie}"})
        if status != 200:
            error = self._error(status, reply, f"get resource {path}")
            error.token = token  # the token the KBS refused the resource to
            raise error
        try:
            return jwe_decrypt(key, json.loads(reply)), token
        except (ValueError, KeyError, TypeError) as exc:
            raise KbsError(f"get resource {path}: the KBS's JWE could not be decrypted: {exc}") from None


def token_tees(token: str) -> list[str]:
    """TEE types of an EAR token's evidence (keys of ``submods.*.ear.veraison.annotated-evidence``)."""
    claims = json.loads(b64url_decode(token.split(".")[1]))
    found = []
    for submod in (claims.get("submods") or {}).values():
        evidence = (submod or {}).get("ear.veraison.annotated-evidence") or {}
        # transform_claims (trustee@v0.21.0:attestation-service/src/ear_token/broker.rs:462-515) adds
        # report_data / init_data strings and *_claims objects beside the TEE's own claims
        found += [k for k in evidence if not k.endswith("_claims") and k not in ("report_data", "init_data")]
    return sorted(set(found))


# ------------------------------------------------------------------ the REST endpoint


class Log:
    def __init__(self, path: str | None):
        self.path, self.lock = path, threading.Lock()

    def __call__(self, event: str, **fields) -> None:
        line = json.dumps({"time": round(time.time(), 3), "event": event, **fields}, sort_keys=True)
        with self.lock:
            if self.path:
                with open(self.path, "a", encoding="utf-8") as handle:
                    handle.write(line + "\n")
            else:
                print(line, file=sys.stderr, flush=True)


def make_handler(kbs: Kbs, log: Log, feature: str = DEFAULT_FEATURE):
    attestation = feature in ("attestation", "all")
    resource = feature in ("resource", "all")

    class Handler(BaseHTTPRequestHandler):
        server_version = "api-server-rest"
        sys_version = ""
        protocol_version = "HTTP/1.1"

        def _reply(self, status: int, body: bytes, content_type: str = "text/plain") -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _method(self, method: str) -> None:
            if not ipaddress_is_loopback(self.client_address[0]):
                self._reply(403, b"")
                return
            target = urlsplit(self.path)
            if method != "GET":
                self._reply(405, b"")
                return
            if target.path == INFO_PATH:
                info = {"version": VERSION, "feature": feature}
                if attestation:
                    info["tee"] = EVIDENCE
                self._reply(200, json.dumps(info).encode(), "application/json")
            elif target.path.startswith("/aa/") and not attestation:
                log("aa", path=target.path, outcome="not-enabled", feature=feature)
                self._reply(404, b"Attestation Feature Not Enabled")
            elif target.path.startswith("/cdh/") and not resource:
                self._reply(404, b"Resource Feature Not Enabled")
            elif target.path.startswith(RESOURCE_PREFIX):
                self._resource(unquote(target.path[len(RESOURCE_PREFIX) :]))
            elif target.path == TOKEN_PATH:
                self._token(parse_qs(target.query).get("token_type", [""])[0])
            else:
                self._reply(404, b"")

        def _resource(self, path: str) -> None:
            parts = path.split("/")
            if len(parts) != 3 or not all(parts):
                log("resource", path=path, outcome="error", detail="not <repo>/<type>/<tag>")
                self._reply(500, b"resource path must be <repository>/<type>/<tag>")
                return
            try:
                value, token = kbs.resource(path)
            except KbsError as exc:
                denied = exc.kind == "PolicyDeny"  # 401 at Trustee v0.21.0 (kbs/src/error.rs:124-130)
                log("resource", path=path, outcome="denied" if denied else "error", evidence=EVIDENCE,
                    kbs_status=exc.status, kbs_error=exc.kind, detail=str(exc),
                    token_tees=token_tees(exc.token) if exc.token else [])  # fmt: skip
                self._reply(500, str(exc).encode())
                return
            log("resource", path=path, outcome="released", evidence=EVIDENCE, kbs_status=200, size=len(value),
                token_tees=token_tees(token))
            self._reply(200, value, "application/octet-stream")

        def _token(self, token_type: str) -> None:
            if token_type != "kbs":
                log("token", outcome="error", detail=f"token_type {token_type!r}")
                self._reply(500, f"unsupported token_type {token_type!r} (the stand-in serves kbs)".encode())
                return
            try:
                _, token, _ = kbs.attest()
            except KbsError as exc:
                log("token", outcome="error", kbs_status=exc.status, kbs_error=exc.kind, detail=str(exc))
                self._reply(500, str(exc).encode())
                return
            log("token", outcome="issued", evidence=EVIDENCE, token_tees=token_tees(token))
            self._reply(200, json.dumps({"token": token}).encode(), "application/json")

        def do_GET(self):  # noqa: N802 - stdlib name
            self._method("GET")

        def do_POST(self):  # noqa: N802 - stdlib name
            self._method("POST")

        def log_message(self, fmt, *args):  # noqa: ARG002 - quiet: requests are logged as events
            return

    return Handler


def ipaddress_is_loopback(address: str) -> bool:
    import ipaddress

    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def _setns(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def listening_socket(address: str, netns_pid: int | None = None) -> socket.socket:
    """A listening TCP socket; created in ``netns_pid``'s network namespace when given."""
    host, _, port = address.rpartition(":")
    own = target = None
    if netns_pid:
        own = os.open("/proc/self/ns/net", os.O_RDONLY)
        target = os.open(f"/proc/{netns_pid}/ns/net", os.O_RDONLY)
        _setns(target)
    try:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, int(port)))
        sock.listen(16)
        return sock
    finally:
        if own is not None:
            _setns(own)  # back: KBS connections leave from the node's own namespace
            os.close(own)
            os.close(target)


def serve(sock: socket.socket, kbs: Kbs, log: Log, timeout: float, feature: str = DEFAULT_FEATURE) -> None:
    server = ThreadingHTTPServer(sock.getsockname()[:2], make_handler(kbs, log, feature), bind_and_activate=False)
    server.socket.close()
    server.socket = sock
    server.daemon_threads = True
    timer = threading.Timer(timeout, server.shutdown)
    timer.daemon = True
    timer.start()
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        timer.cancel()
        server.server_close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ccflab-cdh", description="CDH REST endpoint (ccfactory LAB STAND-IN)")
    parser.add_argument("--initdata-file", required=True, help="file holding the initdata annotation value")
    parser.add_argument("--listen", default=DEFAULT_LISTEN)
    parser.add_argument("--netns-pid", type=int, default=0, help="listen in this process's network namespace")
    parser.add_argument("--log", default=None, help="JSON-lines event log (default: stderr)")
    parser.add_argument("--ready-file", default=None, help="created once the endpoint listens")
    parser.add_argument("--timeout", type=float, default=600.0, help="stop serving after this many seconds")
    parser.add_argument("--features", choices=FEATURES, default=DEFAULT_FEATURE,
                        help="as api-server-rest's --features (the agent's guest_components_rest_api)")
    args = parser.parse_args(argv)
    marker = os.environ.get(LAB_MARKER_ENV, LAB_MARKER)
    if not os.path.exists(marker):
        print(f"ccflab-cdh: {marker} does not exist: this lab stand-in only runs on ccfactory lab nodes", file=sys.stderr)
        return 3
    log = Log(args.log)
    try:
        with open(args.initdata_file, encoding="utf-8") as handle:
            url, ca_pem = kbc_settings(handle.read())
        kbs = Kbs(url, ca_pem)
        sock = listening_socket(args.listen, args.netns_pid or None)
    except (OSError, ValueError, KeyError, KbsError, tomllib.TOMLDecodeError) as exc:
        log("start", outcome="error", detail=f"{type(exc).__name__}: {exc}")
        print(f"ccflab-cdh: {exc}", file=sys.stderr)
        return 1
    log("start", outcome="listening", listen=args.listen, netns_pid=args.netns_pid, kbs_url=url, version=VERSION,
        feature=args.features)
    if args.ready_file:
        with open(args.ready_file, "w", encoding="utf-8") as handle:
            handle.write(args.listen + "\n")
    serve(sock, kbs, log, args.timeout, args.features)
    return 0


def program_source() -> str:
    """This file's text: what the attestation check ships to a lab node."""
    from importlib import resources

    return resources.files("ccfactory.lab.standins").joinpath("cdh.py").read_text(encoding="utf-8")


if __name__ == "__main__":
    sys.exit(main())

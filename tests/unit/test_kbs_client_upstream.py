"""The KBS client against answers shaped exactly as Trustee v0.21.0 gives them, and against bad ones.

Each canned answer quotes upstream (``trustee@v0.21.0:<path>:<line>``, tag commit 258ea4ac).
The server is a plain local HTTP server (the client's ``lab=True`` allows http): it replays
bodies, it implements nothing of Trustee. Bad answers (a list where a string was expected,
an HTML error page, 500, silence) must fail the call with ``KbsError``, never a traceback.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from ccfactory.kbs.client import KbsClient, Ledger
from ccfactory.kbs.errors import AdminAuthError, HealthCheckFailed, KbsError, KbsHttpError, KbsUnreachable, PolicyDenied
from ccfactory.roles.kbs.operations import AdminSpec, apply_admin_state, plan_admin_state, wait_ready
from ccfactory.kbs.policy import PolicySpec, render_resource_policy
from ccfactory.kbs.rego import UnsafePolicy

PREFIX = "https://github.com/confidential-containers/kbs/errors"  # kbs/src/error.rs:15


def err(kind: str, detail: str) -> bytes:
    """ErrorInformation {"type", "detail"} (kbs/src/error.rs:108-122)."""
    return json.dumps({"type": f"{PREFIX}/{kind}", "detail": detail}).encode()


# kbs/src/error.rs:71-72 + 124-130: a policy denial is 401, not 403
POLICY_DENY = (401, err("PolicyDeny", "Access denied by policy"))
# error.rs:24-29, api_server.rs:266-271
ADMIN_DENY = (401, err("AdminAuthAccess", "admin access denied for endpoint resource-policy: token verification failed"))
# api_server.rs:397 + error.rs:21-22: plugin (resource upload/delete) refusals
PLUGIN_ADMIN_DENY = (401, err("AdminAuthInitialization", "failed to initialize [admin] configuration: token verification failed"))
# backend.rs:473-482 + api_server.rs:286-293
NO_RV = (401, err("RvpsError", "RVPS configuration failed: Failed to get reference_values: No reference value found for the given id: snp_launch_measurement"))  # fmt: skip
HTML = (502, b"<html><head><title>502 Bad Gateway</title></head><body><h1>Bad Gateway</h1></body></html>")


class Replay:
    """A local HTTP server answering (method, path) with canned (status, body); records requests."""

    def __init__(self):
        self.routes: dict[tuple[str, str], tuple[int, bytes]] = {}
        self.requests: list[tuple[str, str, bytes]] = []
        self.hang = False
        replay = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self):
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else b""
                replay.requests.append((self.command, self.path, body))
                if replay.hang:
                    time.sleep(3)
                status, payload = replay.routes.get((self.command, self.path), (404, err("PluginNotFound", "Plugin x not found")))
                self.send_response(status)
                self.send_header("content-type", "application/json" if payload[:1] in b"[{" else "text/html")
                self.send_header("content-length", str(len(payload)))
                if self.path == "/kbs/v0/auth":
                    self.send_header("set-cookie", "kbs-session-id=abc; Path=/")
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = do_DELETE = _serve

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def client(self, **kw) -> KbsClient:
        return KbsClient(self.url, admin_key=ed25519.Ed25519PrivateKey.generate(), lab=True, timeout=1.0, **kw)

    def posted(self, path: str) -> list[bytes]:
        return [b for m, p, b in self.requests if m == "POST" and p == path]


@pytest.fixture
def kbs():
    replay = Replay()
    yield replay
    replay.server.shutdown()


STRICT = render_resource_policy(PolicySpec("strict"))


def test_resource_policy_get_is_a_list_of_ids(kbs, tmp_path):
    """api_server.rs:367-379: GET resource-policy -> JSON list of ids (policy-engine lib.rs:50-57)."""
    kbs.routes[("GET", "/kbs/v0/resource-policy")] = (200, b'["resource-policy"]')
    kbs.routes[("POST", "/kbs/v0/resource-policy")] = (200, b"")
    client, ledger = kbs.client(), Ledger(tmp_path / "l.json", "i1")
    assert client.list_resource_policies() == ["resource-policy"]
    assert client.set_resource_policy(STRICT, ledger) is True  # not in the ledger: uploaded
    (body,) = kbs.posted("/kbs/v0/resource-policy")
    from ccfactory.kbs import jose

    assert jose.b64url_decode(json.loads(body)["policy"]).decode() == STRICT  # URL_SAFE_NO_PAD, api_server.rs:349
    assert client.set_resource_policy(STRICT, ledger) is False
    assert client.set_resource_policy(STRICT, Ledger(tmp_path / "l.json", "i2")) is True  # another KBS instance


@pytest.mark.parametrize(
    "answer",
    [(200, b"cGFja2FnZSBwb2xpY3k"), (200, b'{"policy": "x"}'), (200, b"[1, 2]"), HTML, (500, b"internal error"), (200, b"\xff\xfe")],
    ids=["base64-text", "object", "list-of-ints", "html-502", "500", "not-utf8"],
)
def test_unexpected_resource_policy_bodies_fail_cleanly(kbs, answer):
    kbs.routes[("GET", "/kbs/v0/resource-policy")] = answer
    with pytest.raises(KbsError) as failure:
        kbs.client().list_resource_policies()
    message = str(failure.value)
    assert "resource policy ids" in message and "Traceback" not in message


def test_policy_denial_is_recognised_by_type_at_401(kbs):
    """error.rs:124-130: every error but InvalidRequestPath/PluginNotFound is 401, PolicyDeny included."""
    nonce = json.dumps({"nonce": "bm9uY2U=", "extra-params": ""}).encode()
    kbs.routes[("POST", "/kbs/v0/auth")] = (200, nonce)
    kbs.routes[("POST", "/kbs/v0/attest")] = (200, json.dumps({"token": "a.b.c"}).encode())
    kbs.routes[("GET", "/kbs/v0/resource/ccfactory/health/probe")] = POLICY_DENY
    client = kbs.client()
    assert client.negative_health_check() == "sample evidence is denied by the resource policy (401 PolicyDeny)"
    with pytest.raises(PolicyDenied) as denied:
        client.get_resource(client.attest_sample(), "ccfactory/health/probe")
    assert (denied.value.status, denied.value.kind, denied.value.detail) == (401, "PolicyDeny", "Access denied by policy")


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ((401, err("TokenVerifierError", "Token Verifier error")), "expected a PolicyDeny"),
        (HTML, "expected a PolicyDeny"),
        ((200, b'{"protected": "x"}'), "not a JWE"),  # released (or garbage): never a pass
    ],
)
def test_a_health_check_that_is_not_a_denial_fails(kbs, answer, expected):
    kbs.routes[("POST", "/kbs/v0/auth")] = (200, b'{"nonce": "bm9uY2U="}')
    kbs.routes[("POST", "/kbs/v0/attest")] = (200, b'{"token": "a.b.c"}')
    kbs.routes[("GET", "/kbs/v0/resource/ccfactory/health/probe")] = answer
    with pytest.raises((HealthCheckFailed, KbsError), match=expected):
        kbs.client().negative_health_check()


@pytest.mark.parametrize("answer", [(200, b"<html>ok</html>"), (200, b'{"no": "nonce"}'), (200, b"[]")])
def test_bad_auth_challenges_fail_cleanly(kbs, answer):
    kbs.routes[("POST", "/kbs/v0/auth")] = answer
    with pytest.raises(KbsError, match="KBS auth"):
        kbs.client().attest_sample()


def test_admin_refusals_of_both_types(kbs, tmp_path):
    kbs.routes[("GET", "/kbs/v0/resource-policy")] = ADMIN_DENY
    with pytest.raises(AdminAuthError, match="refused the admin credential"):
        kbs.client().list_resource_policies()
    kbs.routes[("POST", "/kbs/v0/resource/models/llama/key")] = PLUGIN_ADMIN_DENY
    with pytest.raises(AdminAuthError, match="upload resource models/llama/key: the KBS refused the admin credential"):
        kbs.client().set_resource("models/llama/key", b"k")
    kbs.routes[("DELETE", "/kbs/v0/resource/models/llama/key")] = PLUGIN_ADMIN_DENY
    with pytest.raises(AdminAuthError):
        kbs.client().delete_resource("models/llama/key")


def test_admin_auth_check_needs_a_typed_refusal(kbs):
    kbs.routes[("GET", "/kbs/v0/resource-policy")] = (200, b"[]")
    with pytest.raises(HealthCheckFailed, match="admin authentication is off"):
        kbs.client().check_admin_auth()


def test_reference_values_are_read_back(kbs):
    """A missing value is 401 RvpsError (backend.rs:481), an existing one its JSON (api_server.rs:295-297)."""
    path = "/kbs/v0/reference-value/snp_launch_measurement"
    kbs.routes[("GET", path)] = NO_RV
    kbs.routes[("POST", "/kbs/v0/reference-value")] = (200, b"")
    client = kbs.client()
    assert client.query_reference_value("snp_launch_measurement") is None
    assert client.ensure_reference_values({"snp_launch_measurement": ["ab"]}) == ["snp_launch_measurement"]
    (message,) = kbs.posted("/kbs/v0/reference-value")
    import base64

    body = json.loads(message)
    assert body["version"] == "0.1.0" and body["type"] == "sample"  # rvps/src/lib.rs:31,41-47
    assert json.loads(base64.b64decode(body["payload"])) == {"snp_launch_measurement": ["ab"]}  # sample/mod.rs:29-33
    kbs.routes[("GET", path)] = (200, b'["ab"]')
    assert client.ensure_reference_values({"snp_launch_measurement": ["ab"]}) == []
    kbs.routes[("GET", path)] = (401, err("RvpsError", "RVPS configuration failed: storage is down"))
    with pytest.raises(KbsHttpError, match="storage is down"):
        client.query_reference_value("snp_launch_measurement")


def test_reference_values_no_longer_wanted_are_retired(kbs, tmp_path):
    """RVPS v0.21.0 cannot delete (rvps/src/lib.rs: set with overwrite, no delete); a name this
    controller registered and no longer wants is overwritten with a value that matches nothing:
    [] for `in` names, null for `==` names. A second run changes nothing."""
    from ccfactory.kbs.client import Ledger

    held = {"snp_launch_measurement": ["aa"], "snp_smt_enabled": True}
    for name in held:
        kbs.routes[("GET", f"/kbs/v0/reference-value/{name}")] = (200, json.dumps(held[name]).encode())
    kbs.routes[("POST", "/kbs/v0/reference-value")] = (200, b"")
    ledger = Ledger(tmp_path / "ledger.json", "instance-1")
    client = kbs.client()
    assert client.ensure_reference_values(held, ledger) == []  # in place: only the ledger learns them
    assert ledger.keys("reference-value/") == ["reference-value/snp_launch_measurement", "reference-value/snp_smt_enabled"]
    wanted = {"snp_launch_measurement": ["bb"]}  # e.g. a new kata-static in the BOM; SMT value dropped
    assert client.reference_values_to_register(wanted, ledger) == {"snp_launch_measurement": ["bb"], "snp_smt_enabled": None}
    assert client.ensure_reference_values(wanted, ledger) == ["snp_launch_measurement", "snp_smt_enabled"]
    (message,) = kbs.posted("/kbs/v0/reference-value")
    payload = json.loads(base64.b64decode(json.loads(message)["payload"]))
    assert payload == {"snp_launch_measurement": ["bb"], "snp_smt_enabled": None}
    assert ledger.keys("reference-value/") == ["reference-value/snp_launch_measurement"]
    kbs.routes[("GET", "/kbs/v0/reference-value/snp_launch_measurement")] = (200, b'["bb"]')
    assert client.ensure_reference_values(wanted, Ledger(tmp_path / "ledger.json", "instance-1")) == []


def test_site_attestation_policy_goes_to_default_cpu(kbs, tmp_path):
    """builtin.rs:99 + broker.rs:168: the AS evaluates "default_cpu" for CPU evidence."""
    kbs.routes[("POST", "/kbs/v0/attestation-policy")] = (200, b"")
    client = kbs.client()
    assert client.set_attestation_policy("package policy\n", Ledger(tmp_path / "l.json", "i")) is True
    (body,) = kbs.posted("/kbs/v0/attestation-policy")
    assert json.loads(body)["policy_id"] == "default_cpu"


def test_timeouts_and_silence_are_unreachable(kbs):
    kbs.hang = True
    with pytest.raises(KbsUnreachable, match="no answer from the KBS"):
        kbs.client().list_resource_policies()


def test_wait_ready_uses_healthz_and_gives_up_with_the_reason(kbs):
    """api_server.rs:187: GET /healthz -> 200."""
    kbs.routes[("GET", "/healthz")] = (200, b"")
    wait_ready(kbs.client(), timeout=2)
    kbs.routes[("GET", "/healthz")] = (503, b"starting")
    with pytest.raises(KbsUnreachable, match="not ready after 1 s .GET /healthz answered 503"):
        wait_ready(kbs.client(), timeout=1)


def test_an_unsafe_policy_is_never_uploaded(kbs, tmp_path):
    kbs.routes[("GET", "/kbs/v0/resource-policy")] = (200, b'["resource-policy"]')
    kbs.routes[("POST", "/kbs/v0/resource-policy")] = (200, b"")
    allow_all = 'package policy\ndefault allow := false\nallow if data.plugin == "resource"\n'
    spec = AdminSpec(url=kbs.url, ca_cert="", admin_key="", server_cert="", ledger=str(tmp_path / "l.json"),
                     instance_file="/n/a", lab=True, resource_policy=allow_all)  # fmt: skip
    client = kbs.client()
    with pytest.raises(UnsafePolicy, match="cpu0=sample"):
        apply_admin_state(spec, client, Ledger(spec.ledger, "i"))
    assert kbs.posted("/kbs/v0/resource-policy") == []
    assert plan_admin_state(spec, client, Ledger(spec.ledger, "i")) == ["resource policy"]


def test_a_resource_answer_that_is_not_a_jwe_is_never_quoted(kbs):
    """A KBS (or something in its place) answering a resource in clear must not put it in the log."""
    kbs.routes[("POST", "/kbs/v0/auth")] = (200, b'{"nonce": "bm9uY2U="}')
    kbs.routes[("POST", "/kbs/v0/attest")] = (200, b'{"token": "a.b.c"}')
    kbs.routes[("GET", "/kbs/v0/resource/models/llama/key")] = (200, b"Zq9-plaintext-model-key")
    client = kbs.client()
    with pytest.raises(KbsError) as failure:
        client.get_resource(client.attest_sample(), "models/llama/key")
    assert "Zq9-plaintext-model-key" not in str(failure.value) and "23 bytes, not shown" in str(failure.value)

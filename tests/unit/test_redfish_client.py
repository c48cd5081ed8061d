"""The Redfish client against a small fake Redfish server on 127.0.0.1 (not the lab's emulator).

The fake serves either a tiny synthetic tree or the REAL recorded payloads of a vendor
(tests/fixtures/redfish, mapped to their URLs through SOURCES.tsv), and can be
scripted: queued answers (5xx, delays), job state sequences, an ETag check on PATCH.
"""

from __future__ import annotations

import base64
import copy
import csv
import http.server
import json
import logging
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from ccfactory.clients.redfish import (
    QUIRKS,
    RedfishAuthError,
    RedfishClient,
    RedfishError,
    RedfishJobFailed,
    RedfishRequestError,
    RedfishTimeout,
    RedfishUnavailable,
    RetryPolicy,
    quirks_for,
)
from ccfactory.firmware import ResolutionError, render_plan
from ccfactory.firmware.capability import CapabilityError
from ccfactory.firmware.step import firmware_step

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "redfish"
USER, PASSWORD = "root", "pw-Xq9!never-shown"
DELL_SYSTEM = "/redfish/v1/Systems/System.Embedded.1"


# ---------------------------------------------------------------- the fake BMC


@dataclass
class Answer:
    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: Any


def _key(path: str) -> str:
    # iLO links mix /systems and /Systems and trailing slashes: look up case- and slash-blind
    return path.split("?")[0].rstrip("/").lower() or "/"


class FakeBmc:
    """A programmable Redfish service: resources by path, sessions/basic auth, scripts."""

    def __init__(self, *, dell_jobs: bool = False):
        self.resources: dict[str, Any] = {}
        self.etags: dict[str, str] = {}
        self.queued: dict[tuple[str, str], list[Answer]] = {}
        self.requests: list[Seen] = []
        self.tokens: set[str] = set()
        self.job_states: dict[str, list[str]] = {}
        self.dell_jobs = dell_jobs
        self.echo_password_on_401 = True  # a careless BMC: must not leak through our messages
        self.lock = threading.Lock()
        self.add(
            "/redfish/v1",
            {
                "@odata.id": "/redfish/v1/",
                "Id": "RootService",
                "RedfishVersion": "1.11.0",
                "Systems": {"@odata.id": "/redfish/v1/Systems"},
                "Registries": {"@odata.id": "/redfish/v1/Registries"},
                "SessionService": {"@odata.id": "/redfish/v1/SessionService"},
                "Links": {"Sessions": {"@odata.id": "/redfish/v1/SessionService/Sessions"}},
            },
        )

    # -- content

    def add(self, path: str, body: Any, etag: str | None = None) -> None:
        self.resources[_key(path)] = body
        if etag or (isinstance(body, dict) and body.get("@odata.etag")):
            self.etags[_key(path)] = etag or body["@odata.etag"]

    def get(self, path: str) -> Any:
        return self.resources[_key(path)]

    def queue(self, method: str, path: str, *answers: Answer) -> None:
        self.queued.setdefault((method, _key(path)), []).extend(answers)

    def systems(self, *paths: str) -> None:
        self.add(
            "/redfish/v1/Systems", {"Members": [{"@odata.id": p} for p in paths], "Members@odata.count": len(paths)}
        )

    def registries_collection(self) -> None:
        members = sorted(k for k in self.resources if k.startswith("/redfish/v1/registries/"))
        self.add("/redfish/v1/Registries", {"Members": [{"@odata.id": m} for m in members]})

    def apply_pending(self, bios: str, settings: str) -> None:
        """What POST does at the next boot: pending values become applied."""
        pending = self.get(settings).get("Attributes") or {}
        self.get(bios)["Attributes"].update(pending)
        self.get(settings)["Attributes"] = {}

    def seen(self, method: str, path: str | None = None) -> list[Seen]:
        return [r for r in self.requests if r.method == method and (path is None or _key(r.path) == _key(path))]

    # -- protocol

    def _authorised(self, headers: dict[str, str]) -> bool:
        if headers.get("x-auth-token") in self.tokens:
            return True
        basic = headers.get("authorization", "")
        if basic.startswith("Basic "):
            return base64.b64decode(basic[6:]).decode() == f"{USER}:{PASSWORD}"
        return False

    def handle(self, method: str, path: str, headers: dict[str, str], body: Any) -> Answer:
        with self.lock:
            self.requests.append(Seen(method, path, headers, body))
            scripted = self.queued.get((method, _key(path)))
            if scripted:
                return scripted.pop(0)
        key = _key(path)
        if key == "/redfish/v1/sessionservice/sessions" and method == "POST":
            return self._login(body)
        if key != "/redfish/v1" and not self._authorised(headers):
            return _error(
                401, "Base.1.0.NoValidSession", "There is no valid session established with the implementation."
            )
        if method == "GET":
            return self._get(key)
        if method == "PATCH":
            return self._patch(key, headers, body)
        if method == "POST":
            return self._post(key, body)
        if method == "DELETE":
            return Answer(204)
        return Answer(405)

    def _login(self, body: Any) -> Answer:
        if body == {"UserName": USER, "Password": PASSWORD}:
            token = f"tok-{len(self.tokens)}-secret"
            self.tokens.add(token)
            return Answer(
                201, {"Id": "1"}, {"X-Auth-Token": token, "Location": "/redfish/v1/SessionService/Sessions/1"}
            )
        given = body.get("Password") if isinstance(body, dict) else ""
        detail = f"Login failed for password {given}" if self.echo_password_on_401 else "Login failed"
        return _error(401, "Base.1.0.InsufficientPrivilege", detail)

    def _get(self, key: str) -> Answer:
        if key.startswith("/redfish/v1/managers/idrac.embedded.1/oem/dell/jobs/"):
            job_id = key.rsplit("/", 1)[-1].upper()
            states = self.job_states.get(job_id, ["Scheduled"])
            state = states.pop(0) if len(states) > 1 else states[0]
            message = {"Failed": "Job failed: invalid attribute value."}.get(state, f"Job {state.lower()}.")
            return Answer(200, {"Id": job_id, "JobState": state, "Message": message, "PercentComplete": 0})
        if key not in self.resources:
            return _error(404, "Base.1.0.ResourceMissingAtURI", f"{key} not found")
        headers = {"ETag": self.etags[key]} if key in self.etags else {}
        return Answer(200, self.resources[key], headers)

    def _patch(self, key: str, headers: dict[str, str], body: Any) -> Answer:
        if key not in self.resources:
            return _error(404, "Base.1.0.ResourceMissingAtURI", key)
        if key in self.etags and headers.get("if-match") != self.etags[key]:
            return _error(412, "Base.1.0.PreconditionFailed", "ETag does not match")
        target = self.resources[key]
        target.setdefault("Attributes", {}).update(body.get("Attributes", {}))
        self.etags[key] = f'"etag-{len(self.requests)}"'
        if self.dell_jobs and "@Redfish.SettingsApplyTime" in body:
            job = f"JID_{len(self.requests):012d}"
            self.job_states.setdefault(job, ["Scheduled"])
            return Answer(202, None, {"Location": f"/redfish/v1/Managers/iDRAC.Embedded.1/Jobs/{job}"})
        return Answer(204)

    def _post(self, key: str, body: Any) -> Answer:
        if key.endswith("computersystem.reset"):
            return Answer(204)
        if key == "/redfish/v1/managers/idrac.embedded.1/oem/dell/jobs":
            job = f"JID_{len(self.requests):012d}"
            self.job_states.setdefault(job, ["Scheduled"])
            return Answer(200, None, {"Location": f"/redfish/v1/Managers/iDRAC.Embedded.1/Oem/Dell/Jobs/{job}"})
        return _error(404, "Base.1.0.ResourceMissingAtURI", key)


def _error(status: int, code: str, message: str) -> Answer:
    return Answer(
        status,
        {
            "error": {
                "code": code,
                "message": message,
                "@Message.ExtendedInfo": [{"MessageId": code, "Message": message}],
            }
        },
    )


class _Handler(http.server.BaseHTTPRequestHandler):
    bmc: FakeBmc

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        body = json.loads(raw) if raw else None
        answer = self.bmc.handle(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body)
        if answer.delay:
            time.sleep(answer.delay)
        payload = b"" if answer.body is None else json.dumps(answer.body).encode()
        try:
            self.send_response(answer.status)
            for name, value in answer.headers.items():
                self.send_header(name, value)
            if payload:
                self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):  # the client timed out and left
            pass

    do_GET = do_POST = do_PATCH = do_DELETE = _serve

    def log_message(self, *_args: Any) -> None:
        pass


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False


@pytest.fixture
def serve() -> Iterator[Any]:
    servers: list[_Server] = []

    def start(bmc: FakeBmc) -> str:
        handler = type("Handler", (_Handler,), {"bmc": bmc})
        server = _Server(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


# ---------------------------------------------------------------- trees


def _load(path: Path) -> Any:
    return json.loads(path.read_text())


def _url_for(repo: str, path: str) -> str | None:
    """Where a recorded file lives on its BMC (mockup layouts differ per source repository)."""
    rel = path.removesuffix("/index.json")
    if repo == "NVIDIA/libredfish" and rel.startswith("tests/mockups/"):
        return "/" + rel.split("/", 3)[3]
    if repo in ("HewlettPackard/ilo-redfish-emulator", "Cray-HPE/csm-redfish-interface-emulator"):
        return "/redfish/v1/" + rel.split("/", 2)[2]
    return None


def fixture_bmc(vendor: str, prefix: str, **kw: Any) -> FakeBmc:
    """A FakeBmc serving one recorded machine: every SOURCES.tsv row whose path starts with ``prefix``."""
    bmc = FakeBmc(**kw)
    with (FIXTURES / "SOURCES.tsv").open() as f:
        for row in csv.DictReader(f, delimiter="\t"):
            if row["vendor"] == vendor and row["path"].startswith(prefix):
                url = _url_for(row["repository"], row["path"])
                if url:
                    bmc.add(url, _load(FIXTURES / vendor / row["file"]))
    system = next(k for k in bmc.resources if k.count("/") == 4 and k.startswith("/redfish/v1/systems/"))
    bmc.systems(bmc.get(system).get("@odata.id", system))
    bmc.registries_collection()
    return bmc


def dell_bmc() -> FakeBmc:
    """The real R750 recordings (System, Bios, Bios/Settings, BiosRegistry) with job behaviour."""
    return fixture_bmc("dell", "tests/mockups/dell/", dell_jobs=True)


def client_for(url: str, **kw: Any) -> RedfishClient:
    kw.setdefault("retry", RetryPolicy(attempts=3, backoff=0.01))
    kw.setdefault("sleep", lambda _s: None)
    return RedfishClient(url, USER, kw.pop("password", PASSWORD), **kw)


# ---------------------------------------------------------------- reading


def test_reads_bios_pending_registry_and_etag_from_recorded_dell(serve):
    bmc = dell_bmc()
    with client_for(serve(bmc), vendor="dell", name="gpu-01") as client:
        snap = client.read_bios()
        assert client.system_path == DELL_SYSTEM
        assert snap.attributes["MemoryEncryption"] == "Disabled"
        assert snap.settings_path == f"{DELL_SYSTEM}/Bios/Settings" and snap.pending == {}
        assert snap.registry and snap.registry["Id"] == "BiosAttributeRegistry.v1_0_3"
        assert "OnReset" in snap.apply_times
        assert client.power_state() == "On"
        sent = client.requests_made
    # every request the server saw was counted (logout included after close)
    assert sent == len(bmc.requests) - len(bmc.seen("DELETE"))
    assert bmc.seen("GET", f"{DELL_SYSTEM}/Bios/BiosRegistry"), "Dell: registry at Bios/BiosRegistry"


def test_registry_is_read_once_per_client(serve):
    bmc = dell_bmc()
    with client_for(serve(bmc), vendor="dell") as client:
        client.read_bios()
        client.read_bios()
    assert len(bmc.seen("GET", f"{DELL_SYSTEM}/Bios/BiosRegistry")) == 1


@pytest.mark.parametrize(
    "vendor, prefix, settings, registry_file",
    [
        (
            "hpe",
            "mockups/DL380a/",
            "/redfish/v1/systems/1/bios/settings/",
            "/redfish/v1/registrystore/registries/en/biosattributeregistryu58.v1_2_44",
        ),
        (
            "lenovo",
            "tests/mockups/lenovo/",
            "/redfish/v1/Systems/1/Bios/Pending",
            "/redfish/v1/schemas/registries/BiosAttributeRegistry.1.0.0.json",
        ),
        (
            "supermicro",
            "tests/mockups/supermicro/",
            "/redfish/v1/Systems/1/Bios/SD",
            "/registries/BiosAttributeRegistry.1.0.0.json",
        ),
    ],
)
def test_generic_registry_route_on_recorded_layouts(serve, vendor, prefix, settings, registry_file):
    # AttributeRegistry -> /redfish/v1/Registries/<id> (or the one Bios registry listed) -> Location -> file
    bmc = fixture_bmc(vendor, prefix)
    with client_for(serve(bmc), vendor=vendor) as client:
        snap = client.read_bios()
    assert snap.settings_path == settings
    assert snap.registry and len(snap.registry["RegistryEntries"]["Attributes"]) > 100
    assert bmc.seen("GET", registry_file)


def test_several_systems_need_a_system_id(serve):
    bmc = dell_bmc()
    bmc.systems(DELL_SYSTEM, "/redfish/v1/Systems/System.Embedded.2")
    url = serve(bmc)
    with (
        client_for(url, vendor="dell") as client,
        pytest.raises(RedfishError, match=r"manages 2 systems .*set bmc_system_id"),
    ):
        client.read_bios()
    with client_for(url, vendor="dell", system_id="System.Embedded.1") as client:
        assert client.system_path == DELL_SYSTEM
    with (
        client_for(url, vendor="dell", system_id="Nope") as client,
        pytest.raises(RedfishError, match="no system 'Nope'"),
    ):
        client.read_bios()


def test_system_without_bios_link_is_a_clear_error(serve):
    bmc = dell_bmc()
    del bmc.get(DELL_SYSTEM)["Bios"]
    with client_for(serve(bmc), vendor="dell") as client, pytest.raises(RedfishError, match="has no Bios link"):
        client.read_bios()


# ---------------------------------------------------------------- retries, errors, secrets


def test_5xx_then_recovery_is_retried_with_exponential_backoff(serve):
    bmc = dell_bmc()
    bios = f"{DELL_SYSTEM}/Bios"
    bmc.queue("GET", bios, Answer(503), Answer(500))
    waits: list[float] = []
    with client_for(
        serve(bmc), vendor="dell", retry=RetryPolicy(attempts=4, backoff=0.5), sleep=waits.append
    ) as client:
        assert client.bios_attributes()["IntelTxt"] == "Off"
    assert len(bmc.seen("GET", bios)) == 3
    assert waits == [0.5, 1.0]


def test_retry_after_is_honoured_but_capped(serve):
    bmc = dell_bmc()
    bios = f"{DELL_SYSTEM}/Bios"
    bmc.queue("GET", bios, Answer(503, headers={"Retry-After": "7"}), Answer(429, headers={"Retry-After": "900"}))
    waits: list[float] = []
    policy = RetryPolicy(attempts=3, backoff=0.5, max_backoff=60)
    with client_for(serve(bmc), vendor="dell", retry=policy, sleep=waits.append) as client:
        client.bios_attributes()
    assert waits == [7.0, 60.0]


def test_always_5xx_fails_after_n_tries_with_a_clear_message(serve):
    bmc = dell_bmc()
    bios = f"{DELL_SYSTEM}/Bios"
    bmc.queue(
        "GET",
        bios,
        *[Answer(503, {"error": {"code": "Base.1.0.ServiceTemporarilyUnavailable", "message": "busy"}})] * 5,
    )
    with client_for(serve(bmc), vendor="dell", name="gpu-01") as client:
        with pytest.raises(RedfishUnavailable) as err:
            client.bios_attributes()
    assert len(bmc.seen("GET", bios)) == 3
    text = str(err.value)
    assert "gpu-01" in text and "HTTP 503 after 3 attempt(s)" in text and "reading BIOS attributes" in text


def test_post_is_not_retried_on_500(serve):
    # a reset the BMC may have started must not be sent twice
    bmc = dell_bmc()
    reset = f"{DELL_SYSTEM}/Actions/ComputerSystem.Reset"
    bmc.queue("POST", reset, Answer(500), Answer(204))
    with client_for(serve(bmc), vendor="dell") as client, pytest.raises(RedfishUnavailable):
        client.reset()
    assert len(bmc.seen("POST", reset)) == 1


def test_401_is_clear_and_never_shows_the_password(serve, caplog):
    caplog.set_level(logging.DEBUG)
    bmc = dell_bmc()
    with pytest.raises(RedfishAuthError) as err:
        with client_for(
            serve(bmc),
            vendor="dell",
            name="gpu-01",
            password="wrong-" + PASSWORD,
            secret_hint="environment variable BMC_GPU01",
        ) as client:
            client.read_bios()
    text = str(err.value)
    assert "gpu-01" in text and "HTTP 401" in text and "'root'" in text and "BMC_GPU01" in text
    assert PASSWORD not in text and "wrong-" not in text
    assert PASSWORD not in caplog.text, "the BMC echoed the password; our logs must not"
    assert err.value.__cause__ is None and err.value.__suppress_context__


def test_session_token_never_appears_in_errors(serve):
    bmc = dell_bmc()
    bios = f"{DELL_SYSTEM}/Bios"
    with client_for(serve(bmc), vendor="dell") as client:
        token = next(iter(bmc.tokens))
        bmc.queue("GET", bios, Answer(400, {"error": {"code": "X", "message": f"bad token {token}"}}))
        with pytest.raises(RedfishRequestError) as err:
            client.bios_attributes()
    assert token not in str(err.value) and "***" in str(err.value)


def test_timeout_is_retried_then_reported(serve):
    bmc = dell_bmc()
    bmc.queue("GET", "/redfish/v1/Systems", *[Answer(200, bmc.get("/redfish/v1/Systems"), delay=1.0)] * 3)
    with client_for(serve(bmc), vendor="dell", timeout=0.2, retry=RetryPolicy(attempts=2, backoff=0)) as client:
        started = time.monotonic()
        with pytest.raises(RedfishTimeout, match=r"GET /redfish/v1/Systems: no answer within 0.2s after 2 attempt"):
            client.read_bios()
        assert time.monotonic() - started < 2.0
    assert len(bmc.seen("GET", "/redfish/v1/Systems")) == 2


def test_tls_failure_is_not_retried_and_says_how_to_fix(serve):
    # In a clean interpreter: once pyinfra_cli is imported (other tests do), gevent's late
    # monkey.patch_all() breaks every TLS handshake in the process with a RecursionError.
    bmc = dell_bmc()
    url = serve(bmc).replace("http://", "https://")  # TLS handshake against a plain HTTP server
    script = (
        "import requests\n"
        "sent = []\n"
        "send = requests.Session.request\n"
        "requests.Session.request = lambda self, *a, **k: sent.append(1) or send(self, *a, **k)\n"
        "from ccfactory.clients.redfish import RedfishClient, RedfishTLSError, RetryPolicy\n"
        "try:\n"
        f"    RedfishClient({url!r}, 'root', 'pw', retry=RetryPolicy(attempts=3, backoff=0))\n"
        "except RedfishTLSError as exc:\n"
        "    print('TLS:', exc)\n"
        "print('attempts:', len(sent))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert out.stdout.startswith("TLS: BMC https://127.0.0.1:"), out.stderr
    assert "TLS failure on GET /redfish/v1/" in out.stdout and "bmc_ca_bundle" in out.stdout
    assert "attempts: 1" in out.stdout, "a TLS failure is a configuration problem: not retried"
    assert not bmc.requests


def test_unreachable_bmc_fails_after_bounded_retries():
    waits: list[float] = []
    with pytest.raises(RedfishUnavailable, match=r"cannot connect after 3 attempt"):
        RedfishClient(
            "http://127.0.0.1:9",
            USER,
            PASSWORD,
            retry=RetryPolicy(attempts=3, backoff=0.1),
            sleep=waits.append,
            timeout=2,
        )
    assert waits == [0.1, 0.2]


# ---------------------------------------------------------------- PATCH, jobs, reset


def test_patch_sends_if_match_and_apply_time_and_returns_the_dell_job(serve):
    bmc = dell_bmc()
    settings = f"{DELL_SYSTEM}/Bios/Settings"
    bmc.etags[_key(settings)] = '"settings-v1"'
    with client_for(serve(bmc), vendor="dell") as client:
        result = client.apply_bios({"MemoryEncryption": "MultipleKeys"})
    (patch,) = bmc.seen("PATCH", settings)
    assert patch.headers["if-match"] == '"settings-v1"'
    assert patch.body == {
        "Attributes": {"MemoryEncryption": "MultipleKeys"},
        "@Redfish.SettingsApplyTime": {"ApplyTime": "OnReset"},
    }
    assert result.job_id and result.job_id.startswith("JID_") and result.status == 202


def test_dell_job_is_created_when_the_patch_made_none(serve):
    bmc = dell_bmc()
    del bmc.get(f"{DELL_SYSTEM}/Bios")["@Redfish.Settings"]["SupportedApplyTimes"]
    with client_for(serve(bmc), vendor="dell") as client:
        result = client.apply_bios({"IntelTxt": "On"})
    (post,) = bmc.seen("POST", "/redfish/v1/Managers/iDRAC.Embedded.1/Oem/Dell/Jobs")
    assert post.body == {"TargetSettingsURI": f"{DELL_SYSTEM}/Bios/Settings"} and "if-match" not in post.headers
    assert result.job_id


def test_stale_etag_is_a_clear_412_and_not_retried_without_if_match(serve):
    bmc = dell_bmc()
    settings = f"{DELL_SYSTEM}/Bios/Settings"
    bmc.etags[_key(settings)] = '"v1"'
    with client_for(serve(bmc), vendor="dell") as client:
        snap = client.read_bios(registry=False)
        bmc.etags[_key(settings)] = '"v2"'  # someone else staged a change meanwhile
        with pytest.raises(RedfishRequestError) as err:
            client.apply_bios({"IntelTxt": "On"}, snapshot=snap)
    assert err.value.status == 412 and "HTTP 412" in str(err.value)
    assert len(bmc.seen("PATCH", settings)) == 1


def test_dell_job_polling_to_completed(serve):
    bmc = dell_bmc()
    bmc.job_states["JID_000000000001"] = ["Scheduled", "Running", "Running", "Completed"]
    naps: list[float] = []
    with client_for(serve(bmc), vendor="dell", sleep=naps.append) as client:
        status = client.wait_for_job("JID_000000000001", interval=7)
    assert status.state == "Completed" and naps == [7, 7, 7]
    polled = bmc.seen("GET", "/redfish/v1/Managers/iDRAC.Embedded.1/Oem/Dell/Jobs/JID_000000000001")
    assert len(polled) == 4


def test_dell_job_polling_to_failed(serve):
    bmc = dell_bmc()
    bmc.job_states["JID_000000000002"] = ["Scheduled", "Running", "Failed"]
    with client_for(serve(bmc), vendor="dell", name="gpu-01") as client:
        with pytest.raises(
            RedfishJobFailed, match=r"gpu-01 .*BIOS job JID_000000000002 Failed: Job failed: invalid attribute"
        ):
            client.wait_for_job("JID_000000000002", interval=0)


def test_dell_job_that_never_finishes_times_out(serve):
    bmc = dell_bmc()
    bmc.job_states["JID_000000000003"] = ["Scheduled"]
    now = [0.0]

    def nap(seconds: float) -> None:
        now[0] += seconds

    with client_for(serve(bmc), vendor="dell", sleep=nap, clock=lambda: now[0]) as client:
        with pytest.raises(RedfishTimeout, match="still Scheduled after 60s"):
            client.wait_for_job("JID_000000000003", timeout=60, interval=10)


def test_reset_prefers_graceful_restart_and_sends_no_if_match(serve):
    bmc = dell_bmc()
    reset = f"{DELL_SYSTEM}/Actions/ComputerSystem.Reset"
    with client_for(serve(bmc), vendor="dell") as client:
        assert client.reset() == "GracefulRestart"
        bmc.get(DELL_SYSTEM)["Actions"]["#ComputerSystem.Reset"]["ResetType@Redfish.AllowableValues"] = [
            "On",
            "ForceRestart",
        ]
        assert client.reset() == "ForceRestart"
        bmc.get(DELL_SYSTEM)["PowerState"] = "Off"
        assert client.reset() == "On"
    posts = bmc.seen("POST", reset)
    assert [p.body["ResetType"] for p in posts] == ["GracefulRestart", "ForceRestart", "On"]
    assert all("if-match" not in p.headers for p in posts), "iDRAC answers 412 to If-Match on actions"


def test_a_forced_reset_is_force_restart_else_power_cycle_never_graceful(serve):
    bmc = dell_bmc()
    reset = f"{DELL_SYSTEM}/Actions/ComputerSystem.Reset"
    actions = bmc.get(DELL_SYSTEM)["Actions"]["#ComputerSystem.Reset"]
    with client_for(serve(bmc), vendor="dell") as client:
        assert client.reset(force=True) == "ForceRestart"
        actions["ResetType@Redfish.AllowableValues"] = ["On", "GracefulRestart", "PowerCycle"]
        assert client.reset(force=True) == "PowerCycle"
        actions["ResetType@Redfish.AllowableValues"] = ["On", "GracefulRestart"]
        with pytest.raises(RedfishError, match="none of ForceRestart, PowerCycle is allowed"):
            client.reset(force=True)
    assert [p.body["ResetType"] for p in bmc.seen("POST", reset)] == ["ForceRestart", "PowerCycle"]


def test_quirks_are_one_table_and_unknown_vendors_are_generic():
    assert set(QUIRKS) == {"dell", "hpe", "lenovo", "supermicro", "generic"}
    assert quirks_for("acme") is QUIRKS["generic"]
    assert all(q.source for q in QUIRKS.values())


# ---------------------------------------------------------------- end to end: recorded BMC -> plan -> PATCH


def _converge_once(client: RedfishClient, vendor: str, tee: str, **kw: Any) -> Any:
    return firmware_step(client, tee, vendor=vendor, **kw).plan


@pytest.mark.parametrize(
    "vendor, prefix, bios, settings, first_patch, second",
    [
        (
            "hpe",
            "mockups/DL380a/",
            "/redfish/v1/systems/1/bios/",
            "/redfish/v1/systems/1/bios/settings/",
            {"ProcessorPhysicalAddress": "Default", "Tme": "Enabled"},
            "sgx",
        ),
        # the SR670 V2 is Ice Lake: TME yes, TDX no; the registry lacks the TDX chain, so the
        # plan names what is missing before anything is written
        (
            "lenovo",
            "tests/mockups/lenovo/",
            "/redfish/v1/Systems/1/Bios",
            "/redfish/v1/Systems/1/Bios/Pending",
            None,
            "error: 'limit_pa_46bit'",
        ),
        # Supermicro: suffixed names, display values written (Disable, not 0 or Disabled)
        (
            "supermicro",
            "tests/mockups/supermicro/",
            "/redfish/v1/Systems/1/Bios",
            "/redfish/v1/Systems/1/Bios/SD",
            {"LimitCPUPAto46Bits_F319": "Disable", "MemoryEncryption_TME__3C77": "Enabled"},
            "tme_mt",
        ),
    ],
)
def test_recorded_bmc_tdx_first_stage_patch_then_rerun_patches_nothing(
    serve, vendor, prefix, bios, settings, first_patch, second
):
    bmc = fixture_bmc(vendor, prefix)
    with client_for(serve(bmc), vendor=vendor, name=f"{vendor}-node") as client:
        if first_patch is None:
            # the SR670 V2 is Ice Lake: the capability check names the CPU before any setting
            with pytest.raises(CapabilityError, match=f"{vendor}-node .*this BIOS has no TDX settings "
                               r"\(Intel Xeon Platinum 8362, Ice Lake\)"):
                _converge_once(client, vendor, "tdx")
            assert bmc.seen("PATCH", settings) == []
            return
        plan = _converge_once(client, vendor, "tdx")
        assert plan.stage == plan.stages[1].name and dict(plan.patch) == first_patch and plan.reboot
        (patch,) = bmc.seen("PATCH", settings)
        assert patch.body["Attributes"] == first_patch
        etag = bmc.get(settings).get("@odata.etag")
        assert patch.headers.get("if-match") == etag
        again = _converge_once(client, vendor, "tdx")  # re-run before the reboot
        assert again.stage == plan.stage and dict(again.patch) == {} and again.reboot
        assert len(bmc.seen("PATCH", settings)) == 1
        bmc.apply_pending(bios, settings)  # the reboot
        if second.startswith("error: "):
            with pytest.raises(ResolutionError, match=f"{vendor}-node .*BIOS setting {second[7:]}"):
                _converge_once(client, vendor, "tdx")
        else:
            assert _converge_once(client, vendor, "tdx").stage == second


def test_recorded_dell_r750_with_an_oem_profile_runs_patch_job_reset(serve, tmp_path):
    # The R750 (Ice Lake) has no TDX attributes; an OEM profile that only turns on TME-MT
    # exercises the Dell path: PATCH + ApplyTime -> job -> reset -> job Completed.
    (tmp_path / "dell.toml").write_text(
        'vendor = "dell"\n[tdx]\n[[tdx.stages]]\nname = "tme_mt"\n'
        '[tdx.stages.settings.limit_pa_46bit]\nnames = ["CpuPaLimit"]\nvalue = "Disabled"\nsource = "R750"\n'
        '[tdx.stages.settings.tme_mt]\nnames = ["MemoryEncryption"]\nvalue = "MultipleKeys"\nsource = "R750"\n'
    )
    bmc = dell_bmc()
    with client_for(serve(bmc), vendor="dell") as client:
        # the planner reads the ComputerSystem first: an Ice Lake cannot run TDX, nothing is written
        with pytest.raises(CapabilityError, match=r"Intel Xeon Gold 6354 \(Ice Lake\): TDX needs 5th-gen Xeon"):
            _converge_once(client, "dell", "tdx", extra_dirs=[tmp_path])
        assert bmc.seen("PATCH", f"{DELL_SYSTEM}/Bios/Settings") == []
        # the Dell write path itself, as the driver would send a pass
        result = client.apply_bios({"CpuPaLimit": "Disabled"}, snapshot=client.read_bios())
        (patch,) = bmc.seen("PATCH", f"{DELL_SYSTEM}/Bios/Settings")
        assert patch.body["Attributes"] == {"CpuPaLimit": "Disabled"} and result.job_id
        job = next(iter(bmc.job_states))
        bmc.job_states[job] = ["Scheduled", "Running", "Completed"]
        assert client.reset() == "GracefulRestart"
        assert client.wait_for_job(job, interval=0).state == "Completed"


def test_quirk_table_values_match_the_recordings():
    # the Dell job path is the one the recorded job lives at
    name = "libredfish__tests_mockups_dell_redfish_v1_Managers_iDRAC.Embedded.1_Oem_Dell_Jobs_JID_102241909559"
    recorded = _load(FIXTURES / "dell" / f"{name}_index.json")
    assert QUIRKS["dell"].job_path.format(job_id=recorded["Id"]) == recorded["@odata.id"]
    assert recorded["JobState"] in QUIRKS["dell"].job_done
    copy.deepcopy(QUIRKS)  # plain data


def test_dry_step_plans_without_patching(serve):
    bmc = fixture_bmc("hpe", "mockups/DL380a/")
    with client_for(serve(bmc), vendor="hpe", name="dl380a") as client:
        step = firmware_step(client, "tdx", dry=True)
    assert step.applied is None and dict(step.plan.patch) == {"ProcessorPhysicalAddress": "Default", "Tme": "Enabled"}
    assert not bmc.seen("PATCH")
    assert render_plan(step.plan).startswith("dl380a (BMC http://127.0.0.1:")


def test_recorded_gigabyte_ami_without_a_settings_object_falls_back_to_bios_sd_and_is_refused_for_snp(serve):
    # Gigabyte H262-Z63 (AMI MegaRAC, EPYC 7702): its Bios advertises no SettingsObject and
    # has no Bios/Settings. The generic quirks try Settings, then SD (AMI). The SD body served
    # here is the recorded AMI Bios/SD of the NVIDIA DGX (libredfish nvidia_viking), at the
    # Gigabyte's path: the recording has none of its own.
    bmc = fixture_bmc("gigabyte", "mockups/Gigabyte/")
    sd = _load(FIXTURES / "other" / "libredfish__tests_mockups_nvidia_viking_redfish_v1_Systems_DGX_Bios_SD_index.json")
    bmc.add("/redfish/v1/Systems/Self/Bios/SD", sd)
    with client_for(serve(bmc), vendor="generic", name="gb-node") as client:
        snap = client.read_bios()
        assert snap.settings_path == "/redfish/v1/Systems/Self/Bios/SD"
        assert snap.processors == ("AMD EPYC 7702 64-Core Processor",)
        assert snap.registry and len(snap.registry["RegistryEntries"]["Attributes"]) > 500
        with pytest.raises(CapabilityError, match=r"gb-node .*\(AMD EPYC 7702, Zen 2, Rome\): SEV-SNP needs EPYC 7003"):
            _converge_once(client, "generic", "snp")
    assert not [r for r in bmc.requests if r.method == "PATCH"]

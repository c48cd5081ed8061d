"""Lab BMC authentication (Flask test client): Basic auth and Redfish sessions with per-BMC
random credentials kept in 0600 files, never logged."""

from __future__ import annotations

import logging
import stat

import pytest

from ccfactory.lab.bmc.credentials import credentials_path, htpasswd_path
from ccfactory.lab.bmc.testing import PowerRecorder, make_bmc

SESSIONS = "/redfish/v1/SessionService/Sessions"


@pytest.fixture
def bmc(tmp_path):
    return make_bmc(tmp_path, vendor="dell", tee="snp", power_fn=PowerRecorder())


def test_service_root_is_public_everything_else_needs_credentials(bmc):
    root = bmc.get("/redfish/v1/", auth=None)
    assert root.status_code == 200
    assert root.json["Links"]["Sessions"]["@odata.id"] == SESSIONS
    for path in (bmc.paths.system, bmc.paths.bios, bmc.paths.settings, bmc.paths.registry, SESSIONS):
        r = bmc.get(path, auth=None)
        assert r.status_code == 401, path
        assert r.json["error"]["code"] == "Base.1.0.NoValidSession"
        assert r.headers["WWW-Authenticate"].startswith("Basic")


def test_wrong_password_or_user_is_401_right_one_is_200(bmc):
    assert bmc.get(bmc.paths.bios, auth=(bmc.username, bmc.password + "x")).status_code == 401
    assert bmc.get(bmc.paths.bios, auth=("nobody", bmc.password)).status_code == 401
    assert bmc.get(bmc.paths.bios).status_code == 200
    assert bmc.username == "root"  # the personality's factory user


def test_session_login_token_and_logout(bmc):
    r = bmc.post(SESSIONS, {"UserName": bmc.username, "Password": bmc.password}, auth=None)
    assert r.status_code == 201
    token, location = r.headers["X-Auth-Token"], r.headers["Location"]
    assert location.startswith(SESSIONS + "/") and r.json["UserName"] == bmc.username
    assert "Password" not in r.json
    ok = bmc.get(bmc.paths.bios, auth=None, headers={"X-Auth-Token": token})
    assert ok.status_code == 200
    assert bmc.get(SESSIONS, auth=None, headers={"X-Auth-Token": token}).json["Members@odata.count"] == 1
    bad = bmc.get(bmc.paths.bios, auth=None, headers={"X-Auth-Token": token + "x"})
    assert bad.status_code == 401
    assert bmc.request("DELETE", location, auth=None, headers={"X-Auth-Token": token}).status_code == 204
    assert bmc.get(bmc.paths.bios, auth=None, headers={"X-Auth-Token": token}).status_code == 401


def test_session_login_with_wrong_password_is_401(bmc):
    r = bmc.post(SESSIONS, {"UserName": bmc.username, "Password": "guess"}, auth=None)
    assert r.status_code == 401
    assert "X-Auth-Token" not in r.headers
    assert bmc.post(SESSIONS, {"UserName": bmc.username}, auth=None).status_code == 400


def test_sessions_do_not_cross_bmcs(tmp_path):
    a = make_bmc(tmp_path, node="node1", vendor="dell", tee="snp", power_fn=PowerRecorder())
    b = make_bmc(tmp_path, node="node2", index=2, vendor="dell", tee="snp", power_fn=PowerRecorder(),
                 address="127.0.0.3")
    token = a.post(SESSIONS, {"UserName": a.username, "Password": a.password}, auth=None).headers["X-Auth-Token"]
    assert b.get(b.paths.bios, auth=None, headers={"X-Auth-Token": token}).status_code == 401
    assert a.password != b.password  # random per BMC
    assert b.get(b.paths.bios, auth=a.auth).status_code == 401


def test_credential_files_are_private_and_passwords_never_logged(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    bmc = make_bmc(tmp_path, vendor="hpe", tee="tdx", power_fn=PowerRecorder())
    for path in (credentials_path(tmp_path, "node1"), htpasswd_path(tmp_path, "node1")):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(credentials_path(tmp_path, "node1").parent.stat().st_mode) == 0o700
    assert bmc.password not in htpasswd_path(tmp_path, "node1").read_text()
    assert len(bmc.password) >= 16 and bmc.username == "Administrator"
    bmc.get(bmc.paths.bios)
    bmc.get(bmc.paths.bios, auth=(bmc.username, bmc.password + "x"))
    bmc.post(SESSIONS, {"UserName": bmc.username, "Password": bmc.password}, auth=None)
    bmc.patch(bmc.paths.settings, {"Attributes": {"Tme": "Enabled"}})
    assert bmc.password not in caplog.text
    for f in tmp_path.rglob("*"):
        if f.is_file() and f.name != "credentials.json":
            assert bmc.password.encode() not in f.read_bytes(), f

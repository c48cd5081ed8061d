"""Lab BMC service and real HTTPS emulator processes on loopback addresses (127.0.0.x): no root,
no lab network. Includes one test per personality with the real ``sushy`` client library."""

from __future__ import annotations

import json
import socket
import ssl
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from ccfactory.lab.bmc import service
from ccfactory.lab.bmc.server import POWER_HOOK_ENV
from ccfactory.lab.bmc.spec import BmcSpec, run_dir
from ccfactory.lab.bmc.state import platform_features_for
from ccfactory.lab.errors import LabError
from support import free_port_on, undo_gevent_patching

sushy = pytest.importorskip("sushy")
from sushy.resources import constants as sushy_constants  # noqa: E402  (after importorskip)

# A stand-in for ccfactory.lab.power.power, loaded by the emulator process: it records calls.
POWER_HOOK = '''
import json, os
def power(lab_dir, node, action):
    if action != "status":
        with open(os.path.join(str(lab_dir), "power-calls.jsonl"), "a") as f:
            f.write(json.dumps([node, action]) + "\\n")
    return "on"
'''
# First TEE stage per vendor (needs no prerequisite), as in cc-stack.md §1.
FIRST_STAGE = {
    ("dell", "snp"): {"Sme": "Enabled"},
    ("hpe", "tdx"): {"ProcessorPhysicalAddress": "Default", "Tme": "Enabled"},
    ("lenovo", "tdx"): {"Processors_TotalMemoryEncryption": "Enabled"},
    ("supermicro", "snp"): {"SMEE#003E": "Enabled"},
    ("generic", "snp"): {"CbsCmnCpuSmee": "CbsCmnCpuSmeeEnabled"},
}


@pytest.fixture(autouse=True)
def _unpatched_ssl(monkeypatch):
    undo_gevent_patching(monkeypatch)  # real HTTPS and real emulator processes in these tests


def _spec(node: str, index: int, vendor: str, tee: str, **kw) -> BmcSpec:
    address = f"127.0.{100 + index // 200}.{10 + index % 200}"
    return BmcSpec(node=node, index=index, vendor=vendor, tee=tee, address=address,
                   port=kw.pop("port", None) or free_port_on(address), **kw)


_AUTHS: list = []


@pytest.fixture
def lab(tmp_path, monkeypatch):
    hook = tmp_path / "power_hook.py"
    hook.write_text(POWER_HOOK)
    monkeypatch.setenv(POWER_HOOK_ENV, f"{hook}:power")
    yield tmp_path
    # Log out while the BMC still listens: sushy's __del__ would otherwise try later, against
    # a stopped emulator, and retry for ~30 s inside whichever test the GC happens to run in.
    while _AUTHS:
        _AUTHS.pop().close()
    service.stop(tmp_path)  # never leave an emulator behind


def _calls(lab_dir: Path) -> list[list[str]]:
    path = lab_dir / "power-calls.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _connect(lab_dir: Path, spec: BmcSpec, auth_cls=None):
    user, password = service.credentials(lab_dir, spec.node)
    auth = (auth_cls or sushy.auth.BasicAuth)(user, password)
    _AUTHS.append(auth)
    return sushy.Sushy(f"{spec.url}/redfish/v1", auth=auth, verify=str(service.ca_bundle(lab_dir)))


@pytest.mark.parametrize(("vendor", "tee"), sorted(FIRST_STAGE))
def test_sushy_client_reads_stages_and_applies_bios_through_a_reset(lab, vendor, tee):
    spec = _spec("node1", 1, vendor, tee)
    service.start(lab, [spec], per_process=1)
    conn = _connect(lab, spec, sushy.auth.SessionAuth if vendor == "hpe" else None)
    system = conn.get_system()
    assert system.power_state == sushy_constants.PowerState.ON
    stage = FIRST_STAGE[(vendor, tee)]
    assert all(system.bios.attributes[k] != v for k, v in stage.items())
    # Dell applies staged values only through a config job: ask for one with the apply time.
    apply_time = sushy.ApplyTime.ON_RESET if vendor == "dell" else None
    system.bios.set_attributes(stage, apply_time=apply_time)
    assert {k: system.bios.pending_attributes[k] for k in stage} == stage
    system.bios.refresh()
    assert all(system.bios.attributes[k] != v for k, v in stage.items())  # not before the reset
    system.reset_system(sushy_constants.ResetType.FORCE_RESTART)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        system.refresh()
        system.bios.refresh()
        if system.power_state == sushy_constants.PowerState.ON and all(
                system.bios.attributes[k] == v for k, v in stage.items()):
            break
        time.sleep(0.1)
    assert {k: system.bios.attributes[k] for k in stage} == stage
    assert ["node1", "force-restart"] in _calls(lab)
    registry = system.bios.get_attribute_registry()
    if vendor == "supermicro":
        assert registry is None  # the recorded Id mismatch: sushy cannot match it, like on the real BMC
    else:
        assert {a.name for a in registry.registry_entries.attributes} >= set(stage)
    features = platform_features_for(lab, "node1")
    assert features.smee or features.tme


def test_start_is_idempotent_status_stop_and_state_survives_a_restart(lab):
    specs = [_spec(f"node{i}", i, v, t, power="simulated", reset_seconds=0.1)
             for i, (v, t) in enumerate([("dell", "snp"), ("lenovo", "tdx"), ("generic", "none")], start=1)]
    first = service.start(lab, specs, per_process=2)
    assert [s.listening for s in first] == [True, True, True]
    groups = {s.node: s.group for s in first}
    assert groups["node2"] == groups["node3"] != groups["node1"]  # index // 2: 0 | 1, 1
    pids = {s.node: s.pid for s in first}
    again = service.start(lab, specs, per_process=2)
    assert {s.node: s.pid for s in again} == pids  # nothing restarted
    conn = _connect(lab, specs[1])
    system = conn.get_system()
    system.bios.set_attributes({"Processors_TotalMemoryEncryption": "Enabled"})
    service.stop(lab)
    assert all(not s.listening and s.pid is None for s in service.status(lab))
    service.start(lab, specs, per_process=2)
    system = _connect(lab, specs[1]).get_system()
    assert system.bios.pending_attributes["Processors_TotalMemoryEncryption"] == "Enabled"


def test_changing_the_node_set_restarts_only_what_changed(lab):
    a, b = _spec("node1", 1, "dell", "snp"), _spec("node2", 2, "hpe", "snp")
    first = {s.node: s.pid for s in service.start(lab, [a, b], per_process=1)}
    c = _spec("node3", 3, "supermicro", "tdx")
    second = {s.node: s.pid for s in service.start(lab, [a, c], per_process=1)}
    assert second["node1"] == first["node1"]
    assert second["node2"] is None  # no longer wanted: stopped, its state kept on disk
    assert second["node3"] is not None
    assert sorted(p.name for p in run_dir(lab).glob("*.pid")) == ["bmc-p1-001.pid", "bmc-p1-003.pid"]


def test_tls_is_verified_against_the_lab_ca(lab, tmp_path_factory):
    spec = _spec("node1", 1, "generic", "snp")
    service.start(lab, [spec])
    ctx = ssl.create_default_context(cafile=str(service.ca_bundle(lab)))
    with urllib.request.urlopen(f"{spec.url}/redfish/v1/", context=ctx, timeout=5) as r:
        assert json.load(r)["Vendor"] == "Contoso"
    other_ca = service.ca_bundle(tmp_path_factory.mktemp("other"))
    bad = ssl.create_default_context(cafile=str(other_ca))
    with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
        urllib.request.urlopen(f"{spec.url}/redfish/v1/", context=bad, timeout=5)


def test_credentials_file_and_clear_errors(lab):
    spec = _spec("node1", 1, "lenovo", "snp")
    service.start(lab, [spec])
    data = json.loads(service.credentials_file(lab, "node1").read_text())
    assert data["username"] == "USERID" and len(data["password"]) >= 16
    with pytest.raises(LabError, match="no BMC credentials"):
        service.credentials_file(lab, "node9")
    with pytest.raises(LabError, match="not configured on this host"):
        service.start(lab, [BmcSpec(node="node2", index=2, vendor="dell", tee="snp", address="192.0.2.10")])
    with pytest.raises(LabError, match="duplicate"):
        service.start(lab, [spec, spec])


def test_emulator_that_cannot_listen_reports_its_log(lab):
    spec = _spec("node1", 1, "dell", "snp")
    with socket.socket() as busy:
        busy.bind((spec.address, spec.port))
        busy.listen()
        with pytest.raises(LabError, match="cannot listen"):
            service.start(lab, [spec], timeout=10)


def test_many_bmcs_in_one_process_bmc_only_mode(lab):
    specs = [_spec(f"n{i}", i, ["dell", "hpe", "lenovo", "supermicro", "generic"][i % 5], ["snp", "tdx"][i % 2],
                   power="simulated", reset_seconds=0.2) for i in range(20)]
    status = service.start(lab, specs, per_process=20)
    assert len({s.pid for s in status}) == 1 and all(s.listening for s in status)
    for spec in specs[:5]:
        system = _connect(lab, spec).get_system()
        system.reset_system(sushy_constants.ResetType.FORCE_RESTART)
        assert system.power_state in (sushy_constants.PowerState.ON, sushy_constants.PowerState.OFF)
    assert _calls(lab) == []  # BMC-only: no node was touched


def test_bmc_only_mode_can_be_chosen_without_touching_the_specs(lab, monkeypatch):
    """What a benchmark does around `ccfactory lab up`: env switches, specs unchanged."""
    monkeypatch.setenv("CCFACTORY_BMC_POWER", "simulated")
    monkeypatch.setenv("CCFACTORY_BMC_RESET_SECONDS", "0.2")
    monkeypatch.setenv("CCFACTORY_BMC_PER_PROCESS", "50")
    specs = [_spec(f"node{i}", i, "dell", "snp") for i in (1, 2, 3)]  # power="node" by default
    status = service.start(lab, specs)
    assert len({s.pid for s in status}) == 1 and {s.group for s in status} == {"bmc-p50-000"}
    from ccfactory.lab.bmc.spec import read_spec

    assert read_spec(lab, "node1").power == "simulated"
    system = _connect(lab, specs[0]).get_system()
    system.reset_system(sushy_constants.ResetType.FORCE_RESTART)
    assert _calls(lab) == []
    with pytest.raises(LabError, match="invalid BMC power override"):
        service.start(lab, specs, power="sometimes")

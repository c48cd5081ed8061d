"""Every recorded registry in tests/fixtures/redfish, served over HTTPS by the lab's own BMC
emulator (real emulator processes, the lab CA), planned by ccfactory's real Redfish client and
firmware driver, and executed pass by pass where the plan converges.

Each recorded system becomes a lab BMC personality with ``[recording.<tee>] overlay = false``
(ccfactory.lab.bmc.recording): the recorded ComputerSystem model and CPU, the recorded Bios
values and the full recorded registry with its Map dependencies, which the emulator enforces on
PATCH and at the reset independently of ccfactory's planner. The base behaviour (paths,
settings object, jobs, sessions) is the vendor's personality. The outcome must be the one
tests/unit/test_firmware_forecast.py states for the same recording in-process: the same number
of passes, applied by the emulator without a refusal, or the same refusal, before any write.

Fixtures: tests/fixtures/redfish (SOURCES.tsv gives repository, path, commit and licence).
"""

from __future__ import annotations

import json
import shutil
import tomllib
from pathlib import Path

import pytest
import tomli_w

from ccfactory.config import BmcConfig, SecretRef
from ccfactory.clients.redfish import RedfishError
from ccfactory.firmware.driver import FirmwareDriver
from ccfactory.lab.bmc import service
from ccfactory.lab.bmc.personality import PERSONALITY_DIR, PERSONALITY_PATH_ENV, load_personality, provenance_report
from ccfactory.lab.bmc.server import POWER_HOOK_ENV
from ccfactory.lab.bmc.spec import BmcSpec

from support import free_port_on, undo_gevent_patching
from test_firmware_forecast import EXPECTED, FIXTURES, REGISTRIES  # noqa: E402

pytest.importorskip("sushy")

CASES = sorted(EXPECTED)
POWER_HOOK = "def power(lab_dir, node, action):\n    return 'on'\n"


def _personality(root: Path, name: str) -> str:
    """A personality for one recorded system: the vendor's behaviour, the recording as captured."""
    vendor, registry, bios, system = REGISTRIES[name]
    rec = root / "recordings" / name
    rec.mkdir(parents=True)
    for part, rel in (("registry", registry), ("bios", bios), ("system", system)):
        if rel:
            shutil.copyfile(FIXTURES / rel, rec / f"{part}.json")
    data = tomllib.loads((PERSONALITY_DIR / f"{vendor}.toml").read_text())
    label = f"rec-{name}"
    data["vendor"] = label
    data["recording"] = {tee: {"dir": str(rec), "overlay": False} for tee in ("snp", "tdx")}
    (root / "personalities" / f"{label}.toml").write_text(tomli_w.dumps(data))
    return label


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    root = tmp_path_factory.mktemp("recorded")
    (root / "personalities").mkdir()
    (root / "hook.py").write_text(POWER_HOOK)
    with pytest.MonkeyPatch.context() as mp:
        undo_gevent_patching(mp)
        mp.setenv(PERSONALITY_PATH_ENV, str(root / "personalities"))
        mp.setenv(POWER_HOOK_ENV, f"{root / 'hook.py'}:power")
        labels = {name: _personality(root, name) for name in REGISTRIES}
        specs = {}
        for index, (name, tee) in enumerate(CASES, start=1):
            address = f"127.0.{120 + index // 200}.{10 + index % 200}"
            specs[(name, tee)] = BmcSpec(node=f"n{index}", index=index, vendor=labels[name], tee=tee,
                                         address=address, port=free_port_on(address))
        lab_dir = root / "lab"
        lab_dir.mkdir()
        service.start(lab_dir, list(specs.values()), per_process=len(specs), power="simulated", reset_seconds=0.05)
        try:
            yield lab_dir, specs, mp
        finally:
            service.stop(lab_dir)


def _driver(lab_dir: Path, spec: BmcSpec, vendor: str, tee: str, mp: pytest.MonkeyPatch) -> FirmwareDriver:
    user, password = service.credentials(lab_dir, spec.node)
    env = f"CCF_TEST_BMC_{spec.node.upper()}"
    mp.setenv(env, password)
    bmc = BmcConfig(vendor=vendor, address=spec.address, port=spec.port, username=user, password=SecretRef(env=env),
                    ca_bundle=str(service.ca_bundle(lab_dir)), retries=1, retry_backoff=0.1, timeout=20)
    return FirmwareDriver(bmc, tee, host=spec.node, sleep=lambda s: __import__("time").sleep(min(s, 0.05)))


@pytest.mark.parametrize(("name", "tee"), CASES)
def test_recorded_registry_over_https_plans_and_converges_or_refuses_first(lab, name, tee):
    lab_dir, specs, mp = lab
    spec = specs[(name, tee)]
    vendor = REGISTRIES[name][0]
    driver = _driver(lab_dir, spec, vendor, tee, mp)
    expected = EXPECTED[(name, tee)]
    try:
        before = driver.client.read_bios(registry=False)
        if isinstance(expected, tuple):
            kind, words = expected
            with pytest.raises(kind) as err:
                driver.read_plan()
            assert words in str(err.value)
            # refused before any write: nothing staged, nothing changed
            after = driver.client.read_bios(registry=False)
            assert (after.pending, after.attributes) == (before.pending, before.attributes)
            return
        forecast, _ = driver.read_plan()
        assert forecast.expected_reboots() == expected
        executed, due = [], frozenset()
        while (step := driver.next_step(due, done=len(executed))) is not None:
            assert len(executed) < 10, "no convergence"
            job = driver.apply(step)  # the emulator refuses what the recorded registry locks
            driver.reset()
            driver.wait_for_bmc(30, poll=0.05)
            outcome = driver.verify(step, job, job_timeout=30)
            executed.append(step.plan.passes[0])
            due = outcome.due
        assert executed == list(forecast.passes)
    finally:
        driver.close()


def test_emulator_refuses_what_the_recorded_registry_locks(lab):
    """A wrong plan fails in the lab: the Gen12 SEAM loader with TDX still off is greyed out
    by the recorded rule (TdxSeamldrEnable GrayOut IF TdxEnable EQU Disabled), so the emulator
    answers the PATCH with an error, as iLO does."""
    lab_dir, specs, mp = lab
    spec = specs[("hpe-dl360-gen12-u68", "snp")]  # refused by capability above: nothing written to it
    driver = _driver(lab_dir, spec, "hpe", "tdx", mp)
    try:
        snap = driver.client.read_bios()
        assert snap.attributes["TdxEnable"] == "Disabled"
        with pytest.raises(RedfishError) as err:
            driver.client.apply_bios({"TdxSeamldrEnable": "Enabled"}, snapshot=snap)
        assert "TdxSeamldrEnable is a read only property" in str(err.value)
        assert driver.client.read_bios(registry=False).pending.get("TdxSeamldrEnable") != "Enabled"
    finally:
        driver.close()


def test_recorded_personality_serves_the_whole_registry_and_reports_its_provenance(lab):
    lab_dir, specs, _ = lab
    p = load_personality(specs[("dell-r750-1.13.2", "tdx")].vendor)
    recorded = json.loads((FIXTURES / REGISTRIES["dell-r750-1.13.2"][1]).read_text())
    names = {a["AttributeName"] for a in recorded["RegistryEntries"]["Attributes"]}
    served = set(p.attributes_for("tdx"))
    assert len(served) > 600 and served <= names
    report = provenance_report(p)
    assert report["attributes"]["unrecorded"] == [] and report["dependencies"]["unrecorded"] == []
    assert report["recordings"]["tdx"]["overlay"] is False
    # iDRAC's Value limit is enforced: MemoryEncryption only SingleKey/Disabled while CpuPaLimit is Enabled
    applied = p.defaults("tdx")
    assert applied["CpuPaLimit"] == "Enabled"
    assert p.limits("tdx", applied)["MemoryEncryption"] == ["SingleKey", "Disabled"]
    assert "MemoryEncryption" not in p.limits("tdx", {**applied, "CpuPaLimit": "Disabled"})

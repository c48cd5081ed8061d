"""The lab personalities serve real captures (src/ccfactory/lab/bmc/recordings), with the lab's
TEE overlay on top, and enforce the captures' rules on PATCH and at the reset."""

from __future__ import annotations

import csv
import gzip
import json
from pathlib import Path

import pytest

from ccfactory.lab.bmc.personality import load_personality, provenance_report
from ccfactory.lab.bmc.recording import RECORDINGS_DIR
from ccfactory.lab.bmc.testing import PowerRecorder, make_bmc
from ccfactory.lab.errors import LabError

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "redfish"
RECORDED = {("hpe", "snp"): "hpe-dl365-gen10p-a42", ("hpe", "tdx"): "hpe-dl380a-gen12-u72",
            ("supermicro", "tdx"): "supermicro-sys821ge"}


def test_every_packaged_recording_is_a_fixture_byte_for_byte_with_its_source():
    rows = list(csv.DictReader((RECORDINGS_DIR / "SOURCES.tsv").open(), delimiter="\t"))
    fixtures = {r["file"]: r for r in csv.DictReader((FIXTURES / "SOURCES.tsv").open(), delimiter="\t")}
    files = sorted(p.relative_to(RECORDINGS_DIR).as_posix() for p in RECORDINGS_DIR.rglob("*.json.gz"))
    assert files == sorted(f"{r['recording']}/{r['file']}" for r in rows)
    for row in rows:
        assert row["licence"] in ("BSD-3-Clause", "MIT (Copyright (c) 2018 Chris Holcombe)")
        match = [f for f, src in fixtures.items() if (src["repository"], src["path"]) == (row["repository"], row["path"])]
        assert len(match) == 1, row
        vendor = fixtures[match[0]]["vendor"]
        data = gzip.decompress((RECORDINGS_DIR / row["recording"] / row["file"]).read_bytes())
        assert data == (FIXTURES / vendor / match[0]).read_bytes(), row


@pytest.mark.parametrize(("vendor", "tee"), sorted(RECORDED))
def test_personality_serves_the_whole_recorded_registry_under_its_overlay(tmp_path, vendor, tee):
    name = RECORDED[(vendor, tee)]
    recorded = json.loads(gzip.decompress((RECORDINGS_DIR / name / "registry.json.gz").read_bytes()))
    names = {a["AttributeName"] for a in recorded["RegistryEntries"]["Attributes"]}
    bmc = make_bmc(tmp_path, vendor=vendor, tee=tee, power_fn=PowerRecorder())
    served = bmc.get(bmc.paths.registry).json
    assert served["Id"] == recorded["Id"]
    served_names = {a["AttributeName"] for a in served["RegistryEntries"]["Attributes"]}
    p = load_personality(vendor)
    overlay = {a.name for a in p.attributes if a.source != f"rec: {name}" and (a.tee is None or tee in a.tee)}
    assert served_names == names | overlay
    report = provenance_report(p)
    assert report["recordings"][tee]["dir"] == name
    # every name the overlay adds to this capture is reported, and no name the capture has
    assert report["recordings"][tee]["not_in_capture"] == sorted(overlay - names)
    unrecorded = {a.name for a in p.attributes if not a.source.startswith("rec") and (a.tee is None or tee in a.tee)}
    assert unrecorded <= set(report["recordings"][tee]["not_in_capture"])


def test_a_recorded_rule_no_overlay_states_fails_a_wrong_write_in_the_lab(tmp_path):
    """HPE Gen12 U72: a WorkloadProfile of GraphicProcessing makes ProcVirtualization read-only
    (recorded rule, not in the personality's own dependencies): the lab refuses the PATCH."""
    p = load_personality("hpe")
    own = [d for d in p.dependencies if not d.source.startswith("rec")]
    assert not any(d.for_ == "ProcVirtualization" for d in own)
    bmc = make_bmc(tmp_path, vendor="hpe", tee="tdx", power_fn=PowerRecorder())
    assert bmc.stage_and_apply({"WorkloadProfile": "GraphicProcessing"}).status_code < 400
    assert bmc.get(bmc.paths.bios).json["Attributes"]["WorkloadProfile"] == "GraphicProcessing"
    r = bmc.patch(bmc.paths.patch_target, {"Attributes": {"ProcVirtualization": "Enabled"}})
    assert r.status_code == 400
    assert r.json["error"]["@Message.ExtendedInfo"][0]["MessageId"].endswith("PropertyNotWritable")


def test_a_missing_recording_names_the_personality_and_the_file(tmp_path, monkeypatch):
    (tmp_path / "acme.toml").write_text(
        f'schema = 1\nvendor = "acme"\nsummary = "x"\n[recording.snp]\ndir = "{tmp_path / "nothing"}"\n')
    monkeypatch.setenv("CCFACTORY_BMC_PERSONALITIES", str(tmp_path))
    with pytest.raises(LabError) as err:
        load_personality("acme")
    assert str(tmp_path / "acme.toml") in str(err.value) and "registry.json" in str(err.value)

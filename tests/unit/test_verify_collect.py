"""The verify stage's report collection: whole inventory covered, no row lost, file written."""

from __future__ import annotations

import json
from types import SimpleNamespace

from ccfactory.config import load_node_config
from ccfactory.verify import collect
from ccfactory.verify.report import CheckResult


class FakeHost:
    def __init__(self, name, groups):
        self.name, self.groups, self.connected = name, groups, True
        self.data = SimpleNamespace(get=lambda key, default=None: None, dict=lambda: {})
        self.logs = []

    def log_styled(self, message, **kw):
        self.logs.append(message)


def test_rows_for_every_host_and_unreachable_ones(tmp_path, monkeypatch):
    monkeypatch.setenv("CCFACTORY_REPORT_DIR", str(tmp_path))
    hosts = [FakeHost(n, ["prod", g]) for n, g in (("w1", "workers"), ("w2", "workers"), ("k1", "kbs"))]
    hosts[1].connected = False  # SSH never came up
    state = SimpleNamespace(inventory=hosts)
    cfg = load_node_config("w1", ("workers", "snp"), {}, check_files=False)
    monkeypatch.setattr(collect, "run_checks", lambda ctx, stages=None: [
        CheckResult(check="host.tee_active", stage="host", status="fail", detail="sev_snp=N", hint="enable SNP in BIOS")
    ])
    assert collect.record_node(state, hosts[0], cfg)
    assert collect.record_node(state, hosts[2], cfg)
    report = json.loads((tmp_path / "readiness.json").read_text())
    assert report["site"] == "prod"
    rows = {n["node"]: n for n in report["nodes"]}
    assert set(rows) == {"w1", "w2", "k1"}
    assert rows["w1"]["reachable"] and rows["k1"]["reachable"] and not rows["w2"]["reachable"]
    assert "not reachable over SSH" in rows["w2"]["error"]
    page = (tmp_path / "readiness.md").read_text()
    assert "**w1** `host.tee_active` fail: sev_snp=N. Fix: enable SNP in BIOS" in page
    assert any("host.tee_active: fail: sev_snp=N; fix: enable SNP in BIOS" in line for line in hosts[0].logs)


def test_site_name_is_the_inventory_group():
    hosts = [FakeHost("a", ["lab", "workers", "snp"]), FakeHost("b", ["lab", "kbs"])]
    assert collect.site_name(hosts) == "lab"
    assert collect.site_name([FakeHost("a", ["workers"]), FakeHost("b", ["kbs"])]) == "site"


def test_report_carries_the_kbs_stages_reference_values_and_is_refreshed(tmp_path, monkeypatch):
    """record_node puts the kbs stage's reference-values.json in the report; after the site's
    final registration step rewrote it, refresh_reference_values updates the same report."""
    from ccfactory.roles.kbs import collect as kbs_collect
    from ccfactory.kbs import refvalues as rv

    monkeypatch.setenv("CCFACTORY_REPORT_DIR", str(tmp_path))
    summary = tmp_path / "pki" / "reference-values.json"
    monkeypatch.setattr(collect, "reference_summary_paths", lambda inventory: [summary])
    monkeypatch.setattr(collect, "run_checks", lambda ctx, stages=None: [])
    pending = rv.ReferenceSet(pending=["w1/qemu-snp: snp_launch_measurement: no 'launching <qemu> with: [...]' line"])
    kbs_collect.write_summary(summary, pending, {}, {})
    hosts = [FakeHost("w1", ["prod", "workers"])]
    state = SimpleNamespace(inventory=hosts)
    cfg = load_node_config("w1", ("workers", "snp"), {}, check_files=False)
    assert collect.record_node(state, hosts[0], cfg)
    assert "- **w1/qemu-snp** `snp_launch_measurement`: no 'launching" in (tmp_path / "readiness.md").read_text()
    assert collect.refresh_reference_values(state) is False  # nothing new
    learned = rv.ReferenceSet([rv.snp_executables_value("ef" * 48, "w1/qemu-snp", "sev-snp-measure")])
    kbs_collect.write_summary(summary, learned, {}, learned.values())
    assert collect.refresh_reference_values(state) is True
    page = (tmp_path / "readiness.md").read_text()
    assert "| w1/qemu-snp | `snp_launch_measurement` | computed |" in page and "Pending" not in page
    data = json.loads((tmp_path / "readiness.json").read_text())
    assert data["reference_values"]["values"][0]["value"] == "ef" * 48

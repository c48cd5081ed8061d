"""ccfactory.roles.kbs.collect: the kbs stage gathers each SNP worker's facts and turns them into RVPS values."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_kbs_site_values import CPUINFO, DROPIN, NODE_KERNEL, NODE_OVMF, kata_static  # noqa: E402
from test_kbs_snp_host import REPORTED_TCB, status_answer  # noqa: E402
from test_kbs_snp_measure import APPEND, SNP_CONFIG, journal_line  # noqa: E402

from pyinfra.facts.files import FileContents, FindFiles  # noqa: E402
from pyinfra.facts.server import Command  # noqa: E402

from ccfactory.kbs import refvalues as rv  # noqa: E402
from ccfactory.roles.kbs import collect, site_values as sv  # noqa: E402

MAIN = "/opt/kata/share/defaults/kata-containers/runtimes/qemu-snp/configuration-qemu-snp.toml"


class FakeHost:
    """A worker as pyinfra facts show it (only the facts collect reads)."""

    def __init__(self, name, files, answer, log):
        self.name, self.files, self.answer, self.log, self.asked = name, files, answer, log, []

    def get_fact(self, cls, **kwargs):
        self.asked.append((cls.__name__, kwargs.get("path") or kwargs.get("command", "")[:20], kwargs.get("_sudo", False)))
        if cls is Command:
            return self.answer if "python3" in kwargs["command"] else self.log
        if cls is FindFiles:
            prefix = kwargs["path"] + "/"
            return [p for p in self.files if p.startswith(prefix) and p.endswith(".toml")]
        if cls is FileContents:
            text = self.files.get(kwargs["path"])
            return None if text is None else text.splitlines()
        raise AssertionError(cls)


def cfg_of(host, tee="snp", worker=True, cache=""):
    return SimpleNamespace(
        name=host.name, tee=tee, is_worker=worker, has_gpus=False, lab=False, lab_dir=None,
        runtime=SimpleNamespace(shims=None, snp_guest_policy=0x3001F),
        artifacts=SimpleNamespace(site_bom=None, cache_dir=cache),
    )  # fmt: skip


def test_site_values_from_worker_facts(tmp_path, monkeypatch):
    tarball, digest = kata_static(tmp_path)
    monkeypatch.setattr(collect, "guest_assets_for",
                        lambda cfg, log: (sv.guest_assets(tarball, digest, tmp_path / "cache"), ""))  # fmt: skip
    files = {MAIN: SNP_CONFIG, MAIN.rsplit("/", 1)[0] + "/config.d/50-ccfactory.toml": DROPIN,
             "/proc/cpuinfo": CPUINFO, "/sys/devices/system/cpu/smt/active": "1"}  # fmt: skip
    w1 = FakeHost("w1", files, status_answer(REPORTED_TCB), journal_line(NODE_KERNEL, NODE_OVMF, APPEND))
    kbs = FakeHost("kbs", {}, "", "")
    cfgs = {"w1": cfg_of(w1), "kbs": cfg_of(kbs, tee="none", worker=False)}
    refs, values = collect.site_reference_values([kbs, w1], lambda h: cfgs[h.name], {"snp_tsme_enabled": False},
                                                 rv.DEFAULT_CPU_SHAPES)  # fmt: skip
    assert not kbs.asked  # nothing read from hosts that are not SNP workers
    assert ("Command", "python3 -c 'import c", True) in w1.asked  # the firmware is read as root
    assert len(values["snp_launch_measurement"]) == 1 and values["snp_microcode"] == [115]
    assert values["snp_smt_enabled"] is True and values["snp_tsme_enabled"] is False
    assert values["snp_guest_abi_minor"] == 31
    assert refs.pending == []  # TSME came from the operator
    origins = {row["name"]: row["origin"] for row in refs.report({"snp_tsme_enabled": False})}
    assert origins["snp_launch_measurement"] == rv.COMPUTED and origins["snp_tsme_enabled"] == rv.OPERATOR


def test_a_worker_that_cannot_be_read_is_pending_not_fatal(tmp_path, monkeypatch):
    monkeypatch.setattr(collect, "guest_assets_for", lambda cfg, log: (None, "kata-static: not pinned"))

    class Broken(FakeHost):
        def get_fact(self, cls, **kwargs):
            raise OSError("connection lost")

    w1 = Broken("w1", {}, "", "")
    refs, values = collect.site_reference_values([w1], lambda h: cfg_of(h), {}, rv.DEFAULT_CPU_SHAPES)
    assert values == {} and refs.pending == ["w1: facts not readable (OSError: connection lost)"]


def test_summary_for_the_readiness_report_is_written_only_when_it_changes(tmp_path):
    refs = rv.ReferenceSet([rv.Reference("snp_smt_allowed", True, rv.SITE_POLICY, "w1", "runtime_snp_guest_policy 0x30000")],
                           pending=["w1/qemu-snp: snp_launch_measurement: no 'launching <qemu> with: [...]' line"])
    path = tmp_path / "pki" / "reference-values.json"
    values = refs.values()
    assert collect.write_summary(path, refs, {}, values) is True
    assert collect.write_summary(path, refs, {}, values) is False
    import json

    data = json.loads(path.read_text())
    assert data["registered"] == {"snp_smt_allowed": True}
    assert data["references"][0]["origin"] == "site policy" and data["pending"][0].startswith("w1/qemu-snp")
    assert path.stat().st_mode & 0o777 == 0o600


def test_only_a_measurement_this_runs_smoke_check_can_supply_is_waited_for(tmp_path):
    """deploy/site.py's last step runs only when the smoke check of this run launches the shim
    whose measurement is pending (the GPU shim on a GPU worker); converged: nothing to wait for."""
    import json

    def cfg(name, gpus, tee="snp", worker=True):
        return SimpleNamespace(name=name, tee=tee, is_worker=worker, gpu=SimpleNamespace(count=gpus))

    hosts = [SimpleNamespace(name=n) for n in ("w1", "w2", "t1", "kbs")]
    cfgs = {"w1": cfg("w1", 8), "w2": cfg("w2", 0), "t1": cfg("t1", 0, tee="tdx"), "kbs": cfg("kbs", 0, "none", False)}
    path = tmp_path / "reference-values.json"
    assert collect.learnable_pending(path, hosts, lambda h: cfgs[h.name]) == []  # no summary yet
    pending = ["w1/qemu-snp: snp_launch_measurement: no 'launching <qemu> with: [...]' line",
               "w1/qemu-nvidia-gpu-snp: snp_launch_measurement: no 'launching <qemu> with: [...]' line",
               "w2/qemu-snp: snp_launch_measurement: no 'launching <qemu> with: [...]' line",
               "t1: rtmr_1: not pinned"]  # fmt: skip
    path.write_text(json.dumps({"pending": pending}))
    assert collect.learnable_pending(path, hosts, lambda h: cfgs[h.name]) == ["w1/qemu-nvidia-gpu-snp", "w2/qemu-snp"]
    path.write_text(json.dumps({"pending": [pending[0]]}))  # the CPU shim of a GPU worker: no smoke VM
    assert collect.learnable_pending(path, hosts, lambda h: cfgs[h.name]) == []


def test_learned_values_are_registered_through_the_kbs_stages_client_call(tmp_path, monkeypatch):
    from ccfactory.roles.kbs import operations as kbs_ops
    calls = []

    class Client:
        def ensure_reference_values(self, values, ledger):
            calls.append((values, ledger.path if hasattr(ledger, "path") else ledger))
            return sorted(values)

    spec = SimpleNamespace(instance_file="/var/lib/trustee/instance-id", ledger=str(tmp_path / "ledger.json"),
                           client=lambda: Client())  # fmt: skip
    monkeypatch.setattr(kbs_ops, "wait_ready", lambda client: None)

    class KbsHost:
        logs = []

        def get_fact(self, cls, **kwargs):
            assert cls is FileContents and kwargs["_sudo"] is True
            return ["instance-1"] if self.instance else None

        def log(self, message, **kw):
            self.logs.append(message)

        log_styled = log

    kbs = KbsHost()
    kbs.instance = True
    values = {"snp_launch_measurement": ["ab" * 48]}
    assert collect._register_learned(None, kbs, spec, lambda: values, lambda state: calls.append("refreshed")) is True
    assert calls[0][0] == values and calls[1] == "refreshed"
    assert "registered snp_launch_measurement" in kbs.logs[-1]
    kbs.instance = False  # a KBS that lost its state: reported, nothing registered
    assert collect._register_learned(None, kbs, spec, lambda: values, lambda state: calls.append("refreshed")) is False and len(calls) == 2

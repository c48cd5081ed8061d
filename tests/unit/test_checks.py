"""The check framework: applicability, pass/fail with hints, a raising check is an error."""

from __future__ import annotations

import pytest

from ccfactory.config import load_node_config
from ccfactory.verify import checks
from ccfactory.verify.checks import Check, CheckContext, CommandOutput, fail, ok, run_check

CFG = load_node_config("w1", ("workers", "snp"), {}, check_files=False)


def ctx(outputs):
    return CheckContext(cfg=CFG, run=lambda cmd: CommandOutput(0, outputs[cmd]))


def test_pass_fail_na_error():
    def snp(c):
        value = c.run("cat /sys/module/kvm_amd/parameters/sev_snp").stdout.strip()
        return ok("SNP on") if value == "Y" else fail(f"sev_snp={value}", hint="enable SNP in BIOS")

    item = Check("host.snp", "host", snp, lambda cfg: cfg.tee == "snp", "")
    assert run_check(item, ctx({"cat /sys/module/kvm_amd/parameters/sev_snp": "Y\n"})).status == "pass"
    failed = run_check(item, ctx({"cat /sys/module/kvm_amd/parameters/sev_snp": "N\n"}))
    assert (failed.status, failed.detail, failed.hint) == ("fail", "sev_snp=N", "enable SNP in BIOS")
    tdx_only = Check("host.tdx", "host", snp, lambda cfg: cfg.tee == "tdx", "")
    assert run_check(tdx_only, ctx({})).status == "n/a"
    broken = run_check(item, ctx({}))  # KeyError inside the check
    assert broken.status == "error" and "KeyError" in broken.detail


def test_evidence_computed_once():
    calls = []
    c = ctx({})
    assert c.once("x", lambda: calls.append(1) or 42) == 42
    assert c.once("x", lambda: calls.append(1) or 43) == 42
    assert calls == [1]


def test_duplicate_registration_refused():
    checks.check("test.only_once", stage="host")(lambda c: ok("x"))
    with pytest.raises(ValueError, match="registered twice"):
        checks.check("test.only_once", stage="host")(lambda c: ok("x"))
    del checks.REGISTRY["test.only_once"]

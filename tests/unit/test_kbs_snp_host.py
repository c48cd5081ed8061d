"""SNP platform values from the host's SEV firmware interface (ccfactory.roles.kbs.snp_host)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import trustee_claims  # noqa: E402

from ccfactory.kbs import refvalues as rv  # noqa: E402
from ccfactory.roles.kbs import snp_host  # noqa: E402

REPORT = (trustee_claims.FIXTURES / "test-report.bin").read_bytes()
REPORTED_TCB = REPORT[0x180:0x188]  # a real Milan/Genoa-layout TCB_VERSION


def status_answer(reported: bytes, installed: bytes = bytes(8)) -> str:
    """SNP_PLATFORM_STATUS's 32 bytes (virtee/sev@v7.1.0 src/firmware/host/types/snp.rs:341-405)."""
    head = bytes([1, 55, 1, 1]) + (21).to_bytes(4, "little") + bytes(4) + (3).to_bytes(4, "little")
    return (head + installed + reported).hex()


def test_ioctl_number_is_iowr_s_0_of_a_16_byte_command():
    assert snp_host.SEV_ISSUE_CMD == 0xC0105300
    assert "0xC0105300" in snp_host.READER and '"<IQI", 0x9' in snp_host.READER


def test_reported_tcb_of_a_host_matches_what_its_guests_report():
    status = snp_host.parse_platform_status(status_answer(REPORTED_TCB), "Genoa")
    assert (status.api_major, status.api_minor, status.build_id, status.guest_count) == (1, 55, 21, 3)
    claims = trustee_claims.snp_claims()
    assert status.reported_tcb == rv.SnpTcb(claims["reported_tcb_bootloader"], claims["reported_tcb_tee"],
                                            claims["reported_tcb_snp"], claims["reported_tcb_microcode"])  # fmt: skip
    values = rv.ReferenceSet(rv.snp_hardware_values(status.reported_tcb, "w1", "SNP_PLATFORM_STATUS")).values()
    result = rv.appraise((trustee_claims.FIXTURES / "ear_default_policy_cpu.rego").read_text(),
                         rv.as_policy_input("snp", claims), values)  # fmt: skip
    assert result.trust_vector["hardware"] == 2


def test_turin_layout_differs():
    raw = bytes([9, 3, 0, 8, 0, 0, 0, 115])  # FMC 9, boot loader 3, TEE 0, SNP 8, microcode 115
    assert snp_host.tcb_from_bytes(raw, "Turin") == rv.SnpTcb(bootloader=3, tee=0, snp=8, microcode=115)
    assert snp_host.tcb_from_bytes(raw, "Genoa") != rv.SnpTcb(bootloader=3, tee=0, snp=8, microcode=115)


@pytest.mark.parametrize(("family", "model", "gen"), [(25, 1, "Milan"), (25, 17, "Genoa"), (25, 0xA0, "Genoa"), (26, 2, "Turin")])
def test_generation_from_cpuinfo(family, model, gen):
    cpuinfo = f"processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: {family}\nmodel\t\t: {model}\n"
    assert snp_host.generation_of(*snp_host.cpu_family_model(cpuinfo)) == gen


def test_unknown_generation_and_bad_answers():
    with pytest.raises(snp_host.SnpHostError, match="no SEV-SNP generation"):
        snp_host.generation_of(0x17, 0x31)
    with pytest.raises(snp_host.SnpHostError, match="not 32"):
        snp_host.parse_platform_status("00" * 16, "Genoa")
    with pytest.raises(snp_host.SnpHostError, match="kvm_amd sev_snp=1"):
        snp_host.parse_platform_status("error No such file or directory firmware error 0", "Genoa")
    with pytest.raises(snp_host.SnpHostError, match="not 0 or 1"):
        snp_host.smt_active("forceoff")


def test_the_reader_runs_and_its_answer_parses_or_names_the_failure():
    """Here (no SEV device, or not root) the reader reports the failure as a line, never crashes."""
    out = subprocess.run([sys.executable, "-c", snp_host.READER], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    if out.stdout.startswith("error "):
        with pytest.raises(snp_host.SnpHostError, match="failed"):
            snp_host.parse_platform_status(out.stdout, "Genoa")
    else:  # pragma: no cover - a real SEV-SNP host
        assert snp_host.parse_platform_status(out.stdout, "Genoa").api_major >= 1

"""EAR token claims shaped exactly as Trustee v0.21.0's built-in AS issues them, from upstream data.

The frame is upstream's own example token (``attestation-service/docs/example.token.json``);
each device's annotated evidence is replaced by real claims of that TEE from Trustee's test
data (``tests/fixtures/trustee/SOURCES.md``), keyed by the TEE name as ``transform_claims``
does (``attestation-service/src/ear_token/broker.rs:462-515``). The AR4SI status is what the
trust vector gives (``broker.rs:305``); tests set it to each tier.
"""

from __future__ import annotations

import copy
import json
import struct
from pathlib import Path

FIXTURES = Path(__file__).parent / "fixtures" / "trustee"
EXAMPLE_TOKEN = json.loads((FIXTURES / "example.token.json").read_text())


def snp_claims() -> dict:
    """Claims of the real report ``test-report.bin``, as ``deps/verifier/src/snp/mod.rs:600-625``.

    Offsets: AMD SEV-SNP ABI spec (56860), ATTESTATION_REPORT: POLICY 0x08, PLATFORM_INFO
    0x40, REPORT_DATA 0x50, MEASUREMENT 0x90, HOST_DATA 0xC0, REPORTED_TCB 0x180.
    """
    raw = (FIXTURES / "test-report.bin").read_bytes()
    policy = struct.unpack_from("<Q", raw, 0x08)[0]
    plat = struct.unpack_from("<Q", raw, 0x40)[0]
    tcb = raw[0x180:0x188]
    return {
        "policy_abi_major": (policy >> 8) & 0xFF,
        "policy_abi_minor": policy & 0xFF,
        "policy_smt_allowed": bool(policy >> 16 & 1),
        "policy_migrate_ma": bool(policy >> 18 & 1),
        "policy_debug_allowed": bool(policy >> 19 & 1),
        "policy_single_socket": bool(policy >> 20 & 1),
        "reported_tcb_bootloader": tcb[0],
        "reported_tcb_tee": tcb[1],
        "reported_tcb_snp": tcb[6],
        "reported_tcb_microcode": tcb[7],
        "platform_tsme_enabled": bool(plat >> 1 & 1),
        "platform_smt_enabled": bool(plat & 1),
        "measurement": raw[0x90:0xC0].hex(),
        "report_data": raw[0x50:0x90].hex(),
        "init_data": raw[0xC0:0xE0].hex(),
    }


def tdx_claims() -> dict:
    return json.loads((FIXTURES / "parse_tdx_claims_expected.json").read_text())


def tdx_verified_claims() -> dict:
    """The TDX claims after DCAP verification: the quote's parsed claims extended with the
    supplemental claims (``deps/verifier/src/tdx/mod.rs:102,167``;
    ``intel_dcap/mod.rs:152-159`` ``map.extend``), upstream's own expected values for both."""
    supplemental = json.loads((FIXTURES / "intel_dcap_supplemental_claims_expected.json").read_text())
    return tdx_claims() | supplemental


def gpu_claims() -> dict:
    return json.loads((FIXTURES / "hopperAttestationReport-claims.txt").read_text())


def sample_claims() -> dict:
    """``deps/verifier/src/sample/mod.rs``: svn, report_data, launch_digest, platform_version, debug."""
    return {"svn": "1", "report_data": "", "launch_digest": "abcde",
            "platform_version": {"major": 0, "minor": 0}, "debug": False}  # fmt: skip


TEE_CLAIMS = {"snp": snp_claims, "tdx": tdx_claims, "sample": sample_claims, "nvidia": gpu_claims,
              "az-snp-vtpm": snp_claims}  # fmt: skip


def appraisal(status: str, tee: str) -> dict:
    """One ``submods`` entry: the example token's cpu0 with ``tee``'s claims and ``status``."""
    sub = copy.deepcopy(EXAMPLE_TOKEN["submods"]["cpu0"])
    evidence = sub["ear.veraison.annotated-evidence"]
    evidence.pop("sgx")
    evidence[tee] = TEE_CLAIMS[tee]()
    sub["ear.status"] = status
    return sub


def token(**submods: tuple[str, str]) -> dict:
    """Claims of a token: ``token(cpu0=("affirming", "snp"), gpu0=("affirming", "nvidia"))``."""
    claims = copy.deepcopy(EXAMPLE_TOKEN)
    claims["submods"] = {name: appraisal(status, tee) for name, (status, tee) in submods.items()}
    return claims

"""Proof with upstream's own policy: Trustee v0.21.0's default CPU attestation policy
(``tests/fixtures/trustee/ear_default_policy_cpu.rego``, byte for byte) evaluated by regorus on
claims shaped as the AS builds them from real evidence (Trustee's test data), with the
reference values ccfactory registers.

* no reference values: contraindicated (hardware 97, executables 33);
* the values ccfactory computes / reads / records: affirming;
* one value changed (another kernel, command line, vCPU count, TCB, debug bit): not affirming.
"""

from __future__ import annotations

import struct
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import trustee_claims  # noqa: E402

from ccfactory.kbs import refvalues as rv  # noqa: E402
from ccfactory.roles.kbs import snp_measure as sm  # noqa: E402

POLICY = (trustee_claims.FIXTURES / "ear_default_policy_cpu.rego").read_text()
GPU_POLICY = (trustee_claims.FIXTURES / "ear_default_policy_gpu.rego").read_text()
REPORT = (trustee_claims.FIXTURES / "test-report.bin").read_bytes()
OVMF = Path(__file__).resolve().parents[1] / "fixtures" / "sev-snp-measure" / "ovmf_AmdSev_suffix.bin"


def test_shape_table_is_the_policys_own():
    """The shape table (`in` -> list, `==` -> one value) is what the upstream policy text says."""
    assert rv.reference_value_shapes(POLICY) == rv.DEFAULT_CPU_SHAPES
    assert rv.reference_value_shapes(GPU_POLICY) == rv.DEFAULT_GPU_SHAPES
    assert rv.DEFAULT_CPU_SHAPES["snp_smt_enabled"] == rv.SCALAR
    assert rv.DEFAULT_CPU_SHAPES["snp_launch_measurement"] == rv.SET


def test_a_name_compared_both_ways_is_refused():
    text = 'package policy\nx if input.a in query_reference_value("n")\ny if input.b == query_reference_value("n")\n'
    with pytest.raises(rv.ReferenceValueError, match="both"):
        rv.reference_value_shapes(text)


def test_boolean_reference_values_stay_booleans():
    """regorus' add_data() turns Python booleans into 1.0 (== true fails); values go in as JSON."""
    text = 'package policy\nimport rego.v1\nok if query_reference_value("b") == true\n'
    assert rv.evaluate_rule(text + rv._QUERY_FUNCTION, "data.policy.ok", {}, {rv.RV_DOCUMENT: {"b": True}}) is True


def test_tiers_as_rust_ear():
    assert [rv.tier(v) for v in (0, 1, 2, 31, 32, 95, 96, 97, -1, -2, -33, -97)] == [
        "none", "none", "affirming", "affirming", "warning", "warning", "contraindicated",
        "contraindicated", "none", "affirming", "warning", "contraindicated"]  # fmt: skip
    assert rv.ear_status({"a": 2, "b": 33, "c": 97}) == "contraindicated"
    assert rv.ear_status({"a": 2, "b": 3, "c": 0}) == "affirming"


# ------------------------------------------------------------------ SNP


def snp_site(launch: sm.SnpLaunch, measurement: str | None = None) -> rv.ReferenceSet:
    """What the kbs stage assembles for one SNP worker: the computed measurement of ``launch``
    (or ``measurement``), the host's reported TCB and SMT/TSME state, the site's guest policy."""
    policy = struct.unpack_from("<Q", REPORT, 0x08)[0]  # the guest policy this real guest ran with
    plat = struct.unpack_from("<Q", REPORT, 0x40)[0]
    tcb = rv.SnpTcb.from_bytes(REPORT[0x180:0x188])  # the platform's reported TCB at that time
    refs = rv.ReferenceSet()
    refs.add([rv.snp_executables_value(measurement or sm.measure(launch), "w1/qemu-snp", launch.describe())])
    refs.add(rv.snp_hardware_values(tcb, "w1", "SNP_PLATFORM_STATUS reported_tcb"))
    refs.add(rv.snp_configuration_values(policy, "w1", smt_enabled=bool(plat & 1), tsme_enabled=bool(plat >> 1 & 1),
                                         platform_source="SNP_PLATFORM_STATUS"))  # fmt: skip
    return refs


def snp_input(**changes) -> dict:
    """The real report's claims (``deps/verifier/src/snp/mod.rs:600-625``) as the policy sees them."""
    claims = trustee_claims.snp_claims() | changes
    return rv.as_policy_input("snp", claims)


LAUNCH = sm.SnpLaunch(ovmf=str(OVMF), kernel="/dev/null", initrd="", append="console=ttyS0 loglevel=7", vcpus=1)


def kernel_file(tmp_path: Path, content: bytes) -> str:
    path = tmp_path / f"vmlinuz-{len(content)}"
    path.write_bytes(content)
    return str(path)


def test_snp_without_reference_values_is_contraindicated():
    result = rv.appraise(POLICY, snp_input(), {})
    assert result.trust_vector["executables"] == 33
    assert result.trust_vector["hardware"] == 97
    assert result.status == "contraindicated"


def test_snp_real_report_with_its_values_is_affirming():
    """The real report: its measurement recorded, TCB and configuration as the platform/site give them."""
    values = snp_site(LAUNCH, measurement=trustee_claims.snp_claims()["measurement"]).values()
    result = rv.appraise(POLICY, snp_input(), values)
    assert (result.trust_vector["executables"], result.trust_vector["hardware"], result.trust_vector["configuration"]) == (3, 2, 2)
    assert result.status == "affirming"


def test_snp_computed_measurement_is_affirming(tmp_path):
    """A guest launched with exactly the computed inputs reports the computed digest: affirming."""
    launch = sm.SnpLaunch(ovmf=str(OVMF), kernel=kernel_file(tmp_path, b"kernel-a"), initrd="",
                          append="console=hvc0 agent.log=debug", vcpus=2)  # fmt: skip
    values = snp_site(launch).values()
    result = rv.appraise(POLICY, snp_input(measurement=sm.measure(launch)), values)
    assert result.status == "affirming", result.trust_vector


@pytest.mark.parametrize("what", ["kernel", "append", "vcpus", "initrd"])
def test_snp_one_launch_input_changed_is_not_affirming(tmp_path, what):
    launch = sm.SnpLaunch(ovmf=str(OVMF), kernel=kernel_file(tmp_path, b"kernel-a"), initrd="",
                          append="console=hvc0", vcpus=2)  # fmt: skip
    values = snp_site(launch).values()
    other = {
        "kernel": lambda: sm.SnpLaunch(**{**_fields(launch), "kernel": kernel_file(tmp_path, b"kernel-bb")}),
        "append": lambda: sm.SnpLaunch(**{**_fields(launch), "append": "console=hvc0 agent.debug_console"}),
        "vcpus": lambda: sm.SnpLaunch(**{**_fields(launch), "vcpus": 3}),
        "initrd": lambda: sm.SnpLaunch(**{**_fields(launch), "initrd": kernel_file(tmp_path, b"an initrd")}),
    }[what]()
    result = rv.appraise(POLICY, snp_input(measurement=sm.measure(other)), values)
    assert result.trust_vector["executables"] == 33
    assert result.status != "affirming"


def _fields(launch: sm.SnpLaunch) -> dict:
    return {k: getattr(launch, k) for k in ("ovmf", "kernel", "initrd", "append", "vcpus", "vcpu_type", "guest_features")}


@pytest.mark.parametrize(("claim", "value", "vector_key"), [
    ("policy_debug_allowed", True, "configuration"),  # the debug bit
    ("policy_smt_allowed", False, "configuration"),
    ("platform_tsme_enabled", True, "configuration"),
    ("reported_tcb_microcode", 114, "hardware"),  # an older microcode
    ("reported_tcb_snp", 7, "hardware"),
])  # fmt: skip
def test_snp_one_platform_or_policy_value_changed_is_not_affirming_or_not_strict(claim, value, vector_key):
    values = snp_site(LAUNCH, measurement=trustee_claims.snp_claims()["measurement"]).values()
    result = rv.appraise(POLICY, snp_input(**{claim: value}), values)
    if vector_key == "hardware":
        assert result.trust_vector["hardware"] == 97 and result.status == "contraindicated"
    elif claim == "policy_debug_allowed":
        assert result.trust_vector["configuration"] == 36 and result.status == "warning"
    else:  # a strict configuration check failed: only the "no known vulnerability" fallback (3) is left
        assert result.trust_vector["configuration"] == 3


def test_wrapped_scalars_disable_the_strict_configuration_check():
    """The known gap: scalars registered as one-item lists never equal the claim, so the policy
    falls back to configuration 3 even when every value matches; shaped values give 2."""
    good = snp_site(LAUNCH, measurement=trustee_claims.snp_claims()["measurement"]).values()
    wrapped = {k: v if isinstance(v, list) else [v] for k, v in good.items()}
    assert rv.appraise(POLICY, snp_input(), wrapped).trust_vector["configuration"] == 3
    assert rv.appraise(POLICY, snp_input(), good).trust_vector["configuration"] == 2


def test_debug_guest_policy_is_refused_before_registering():
    with pytest.raises(rv.ReferenceValueError, match="DEBUG"):
        rv.snp_configuration_values(0xB0000, "w1", True, False, "x")


def test_scalar_names_must_agree_across_the_site():
    refs = rv.ReferenceSet()
    refs.add(rv.snp_configuration_values(0x30000, "w1", True, False, "x"))
    refs.add(rv.snp_configuration_values(0x30000, "w2", False, False, "x"))
    with pytest.raises(rv.ReferenceValueError, match="snp_smt_enabled.*w1.*w2"):
        refs.values()
    assert refs.values(overrides={"snp_smt_enabled": True})["snp_smt_enabled"] is True


def test_set_names_hold_one_value_per_shim_sorted():
    refs = rv.ReferenceSet()
    refs.add([rv.snp_executables_value("b" * 96, "w1/qemu-nvidia-gpu-snp", ""),
              rv.snp_executables_value("a" * 96, "w1/qemu-snp", ""),
              rv.snp_executables_value("a" * 96, "w2/qemu-snp", "")])  # fmt: skip
    assert refs.values() == {"snp_launch_measurement": ["a" * 96, "b" * 96]}


# ------------------------------------------------------------------ TDX


def tdx_input(claims: dict) -> dict:
    return rv.as_policy_input("tdx", claims)


def test_tdx_without_reference_values_is_contraindicated():
    result = rv.appraise(POLICY, tdx_input(trustee_claims.tdx_verified_claims()), {})
    assert result.trust_vector["hardware"] == 97 and result.status == "contraindicated"


def test_tdx_pinning_a_debug_td_is_refused():
    with pytest.raises(rv.ReferenceValueError, match="debug"):
        rv.tdx_pin_on_first_use(trustee_claims.tdx_verified_claims(), "w2/qemu-tdx", approved_by="operator")


def test_tdx_pinning_needs_explicit_approval():
    claims = trustee_claims.tdx_verified_claims()
    claims["td_attributes"] = dict(claims["td_attributes"], debug=False)
    with pytest.raises(rv.ReferenceValueError, match="approval"):
        rv.tdx_pin_on_first_use(claims, "w2/qemu-tdx", approved_by="")


def test_tdx_pinned_values_affirm_and_a_changed_rtmr_does_not():
    """Upstream's real TDX quote claims (+ upstream's DCAP supplemental claims). That TD ran with
    debug on, so its configuration is 36 whatever the reference values; with the debug
    attribute cleared (isolating that check) the pinned values are affirming."""
    real = trustee_claims.tdx_verified_claims()
    claims = dict(real, td_attributes=dict(real["td_attributes"], debug=False))
    refs = rv.ReferenceSet()
    refs.add(rv.tdx_pin_on_first_use(claims, "w2/qemu-tdx", approved_by="operator"))
    values = refs.values()
    assert all(r.origin == rv.PINNED for r in refs.references)
    assert set(values) == {"rtmr_1", "rtmr_2", "mr_td", "xfam"}  # this TD booted TD-shim: no TDVF events
    result = rv.appraise(POLICY, tdx_input(claims), values)
    assert result.trust_vector["executables"] == 4  # the policy's RTMR-only branch (no TDVF kernel events)
    assert result.status == "affirming", result.trust_vector
    assert rv.appraise(POLICY, tdx_input(real), values).status == "warning"  # the real (debug) TD
    changed = dict(claims, quote=dict(claims["quote"], body=dict(claims["quote"]["body"], rtmr_2="11" * 48)))
    assert rv.appraise(POLICY, tdx_input(changed), values).status != "affirming"

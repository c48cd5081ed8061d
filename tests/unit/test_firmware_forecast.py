"""The firmware plan on every real registry in tests/fixtures/redfish, for every vendor x TEE:
the forecast (``ccfactory firmware plan``) equals the execution, pass by pass, or the error
names the true reason before any write.

Execution is simulated as the BMC's registry says a BIOS behaves: a PATCH is refused when
the registry locks the attribute or limits its value in the applied state, the reset
applies the staged values, then the BIOS's forced values (``CurrentValue`` dependencies),
and a one-shot reads back its old value. Each turn re-reads that state and plans again
(with the one-shots the run deferred), exactly as the role does.

Fixtures: tests/fixtures/redfish (SOURCES.tsv gives repository, path and commit of each).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ccfactory.firmware import FirmwareError, PlanError, bios_profile_for, plan_firmware, render_plan, resolve_settings
from ccfactory.firmware.capability import CapabilityError
from ccfactory.firmware.resolve import AttributeRegistry

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "redfish"
_ILO = "hpe/ilo-redfish-emulator__mockups_"
_CSM = "hpe/csm-redfish-interface-emulator__mockups_"
_REG = "RegistryStore_registries_en_biosattributeregistry"
_DELL = "dell/libredfish__tests_mockups_dell_redfish_v1_Systems_System.Embedded.1_"
_DPU = "dell/libredfish__tests_mockups_dell_multi_dpu_redfish_v1_Systems_System.Embedded.1_"
_GB = "gigabyte/csm-redfish-interface-emulator__mockups_Gigabyte_"

def _mockup(prefix: str, mockup: str, registry: str) -> tuple[str, str, str, str]:
    """An iLO mockup: its registry, bios and ComputerSystem files."""
    return ("hpe", f"{prefix}{mockup}_{_REG}{registry}_index.json", f"{prefix}{mockup}_Systems_1_bios_index.json",
            f"{prefix}{mockup}_Systems_1_index.json")


# name: (vendor profile, registry, Bios resource, ComputerSystem)
REGISTRIES: dict[str, tuple[str, str, str | None, str | None]] = {
    "dell-r750-1.8.2": ("dell", f"{_DELL}Bios_BiosRegistry_index.json", f"{_DELL}Bios_index.json", f"{_DELL}index.json"),
    "dell-r750-1.13.2": ("dell", f"{_DPU}Bios_BiosRegistry_index.json", f"{_DPU}Bios_index.json", f"{_DPU}index.json"),
    "hpe-dl325-gen10p-a43": _mockup(_ILO, "DL325_Gen10Plus_FC", "a43.v1_2_52"),
    "hpe-dl365-gen10p-a42": _mockup(_ILO, "DL365_Gen10Plus", "a42.v1_3_72"),
    "hpe-dl385-gen10p-a42": (
        "hpe", "hpe/libredfish__tests_mockups_hpe_redfish_v1_registrystore_registries_en_biosattributeregistrya42.v1_2_60_index.json",
        "hpe/libredfish__tests_mockups_hpe_redfish_v1_systems_1_bios_index.json",
        "hpe/libredfish__tests_mockups_hpe_redfish_v1_Systems_1_index.json",
    ),
    "hpe-xl675d-a47": _mockup(_CSM, "XL675d_A100", "a47.v1_2_58"),
    "hpe-dl360-gen10p-u46": _mockup(_ILO, "DL360", "u46.v1_2_34"),
    "hpe-dl380a-gen11-u58": _mockup(_ILO, "DL380a", "u58.v1_2_44"),
    "hpe-dl360-gen12-u68": _mockup(_ILO, "DL360_Gen12", "u68.v1_1_40"),
    "hpe-dl380a-gen12-u72": _mockup(_ILO, "DL380a_Gen12", "u72.v1_1_34"),
    "hpe-dl340e-gen12-u71": _mockup(_ILO, "DL340e", "u71.v1_1_52"),
    "lenovo-sr670v2": (
        "lenovo", "lenovo/libredfish__tests_mockups_lenovo_redfish_v1_schemas_registries_BiosAttributeRegistry.1.0.0.json_index.json",
        "lenovo/libredfish__tests_mockups_lenovo_redfish_v1_Systems_1_Bios_index.json",
        "lenovo/libredfish__tests_mockups_lenovo_redfish_v1_Systems_1_index.json",
    ),
    "supermicro-sys821ge": (
        "supermicro", "supermicro/libredfish__tests_mockups_supermicro_registries_BiosAttributeRegistry.1.0.0.json_index.json",
        "supermicro/libredfish__tests_mockups_supermicro_redfish_v1_Systems_1_Bios_index.json",
        "supermicro/libredfish__tests_mockups_supermicro_redfish_v1_Systems_1_index.json",
    ),
    "gigabyte-h262-z63-ami": (
        "generic", f"{_GB}Registries_BiosAttributeRegistry.json_index.json", f"{_GB}Systems_Self_Bios_index.json",
        f"{_GB}Systems_Self_index.json",
    ),
    "dmtf-metal-operator": (
        "generic", "dmtf/metal-operator__bmc_mock_server_data_Registries_BiosAttributeRegistry.v1_0_0.json", None, None,
    ),
    "dmtf-sushy": (
        "generic", "dmtf/sushy__sushy_tests_unit_json_samples_bios_attribute_registry.json",
        "dmtf/sushy__sushy_tests_unit_json_samples_bios.json", None,
    ),
}

# The outcome on each recorded state: the passes to compliance (the minimum the registry
# allows, docs/performance.md), or the refusal and the words it must contain.
EXPECTED: dict[tuple[str, str], int | tuple[type[FirmwareError], str]] = {
    ("dell-r750-1.8.2", "snp"): (CapabilityError, "Intel Xeon Gold 6354 (Ice Lake): SEV-SNP is an AMD EPYC feature"),
    ("dell-r750-1.8.2", "tdx"): (CapabilityError, "this BIOS has no TDX settings (Intel Xeon Gold 6354, Ice Lake): TDX needs 5th-gen Xeon"),
    ("dell-r750-1.13.2", "snp"): (CapabilityError, "SEV-SNP is an AMD EPYC feature"),
    ("dell-r750-1.13.2", "tdx"): (CapabilityError, "this BIOS has no TDX settings (Intel Xeon Gold 6354, Ice Lake): TDX needs 5th-gen Xeon"),
    ("hpe-dl325-gen10p-a43", "snp"): (CapabilityError, "(AMD EPYC 7302P, Zen 2, Rome): SEV-SNP needs EPYC 7003 (Milan) or newer"),
    ("hpe-dl325-gen10p-a43", "tdx"): (CapabilityError, "TDX is an Intel Xeon feature"),
    ("hpe-dl365-gen10p-a42", "snp"): (CapabilityError, "this BIOS has no SEV-SNP settings (AMD EPYC 7313, Zen 3, Milan); EPYC 7003 supports SEV-SNP: update the BIOS"),
    ("hpe-dl365-gen10p-a42", "tdx"): (CapabilityError, "TDX is an Intel Xeon feature"),
    ("hpe-dl385-gen10p-a42", "snp"): (CapabilityError, "this BIOS has no SEV-SNP settings (AMD EPYC 7763, Zen 3, Milan)"),
    ("hpe-dl385-gen10p-a42", "tdx"): (CapabilityError, "TDX is an Intel Xeon feature"),
    ("hpe-xl675d-a47", "snp"): (CapabilityError, "(AMD EPYC 7702, Zen 2, Rome): SEV-SNP needs EPYC 7003 (Milan) or newer"),
    ("hpe-xl675d-a47", "tdx"): (CapabilityError, "TDX is an Intel Xeon feature"),
    ("hpe-dl360-gen10p-u46", "snp"): (CapabilityError, "SEV-SNP is an AMD EPYC feature"),
    ("hpe-dl360-gen10p-u46", "tdx"): (CapabilityError, "(Intel Xeon Silver 4310, Ice Lake): TDX needs 5th-gen Xeon"),
    ("hpe-dl380a-gen11-u58", "snp"): (CapabilityError, "SEV-SNP is an AMD EPYC feature"),
    ("hpe-dl380a-gen11-u58", "tdx"): 3,
    ("hpe-dl360-gen12-u68", "snp"): (CapabilityError, "SEV-SNP is an AMD EPYC feature"),
    ("hpe-dl360-gen12-u68", "tdx"): 4,
    ("hpe-dl380a-gen12-u72", "snp"): (CapabilityError, "SEV-SNP is an AMD EPYC feature"),
    ("hpe-dl380a-gen12-u72", "tdx"): 4,
    ("hpe-dl340e-gen12-u71", "snp"): (CapabilityError, "SEV-SNP is an AMD EPYC feature"),
    ("hpe-dl340e-gen12-u71", "tdx"): 4,
    ("lenovo-sr670v2", "snp"): (CapabilityError, "SEV-SNP is an AMD EPYC feature"),
    ("lenovo-sr670v2", "tdx"): (CapabilityError, "this BIOS has no TDX settings (Intel Xeon Platinum 8362, Ice Lake)"),
    ("supermicro-sys821ge", "snp"): (CapabilityError, "this BIOS has no SEV-SNP settings"),
    ("supermicro-sys821ge", "tdx"): 4,
    ("gigabyte-h262-z63-ami", "snp"): (CapabilityError, "(AMD EPYC 7702, Zen 2, Rome): SEV-SNP needs EPYC 7003 (Milan) or newer"),
    ("gigabyte-h262-z63-ami", "tdx"): (CapabilityError, "AMD EPYC 7702 (Zen 2, Rome): TDX is an Intel Xeon feature"),
    ("dmtf-metal-operator", "snp"): (CapabilityError, "this BIOS has no SEV-SNP settings"),
    ("dmtf-metal-operator", "tdx"): (CapabilityError, "this BIOS has no TDX settings"),
    ("dmtf-sushy", "snp"): (CapabilityError, "this BIOS has no SEV-SNP settings"),
    ("dmtf-sushy", "tdx"): (CapabilityError, "this BIOS has no TDX settings"),
}


def load(rel: str | None) -> Any:
    return json.loads((FIXTURES / rel).read_text()) if rel else None


def recorded(name: str) -> tuple[str, Any, dict[str, Any], list[str]]:
    vendor, registry, bios, system = REGISTRIES[name]
    attributes = dict((load(bios) or {}).get("Attributes") or {}) if bios else {}
    summary = ((load(system) or {}).get("ProcessorSummary") or {}) if system else {}
    return vendor, load(registry), attributes, [summary["Model"]] if summary.get("Model") else []


def plan_on(vendor: str, tee: str, registry: Any, current: dict[str, Any], cpus: list[str], due=(), profile=None):
    profile = profile or bios_profile_for(vendor, tee)
    resolved = resolve_settings(profile, registry, current, bmc="node")
    return plan_firmware(profile, resolved, current, {}, registry, due, cpus=cpus)


def execute(vendor: str, tee: str, registry: Any, current: dict[str, Any], cpus: list[str], profile=None):
    """Run the plan turn by turn against a BIOS that behaves as its registry says; returns
    the settings of each executed pass."""
    index = AttributeRegistry.from_redfish(registry, current)
    state, due, executed = dict(current), frozenset(), []
    profile = profile or bios_profile_for(vendor, tee)
    one_shots = {n for n, (_, s) in profile.settings().items() if s.one_shot}
    for _ in range(20):
        plan = plan_on(vendor, tee, registry, state, cpus, due, profile)
        if plan.compliant:
            return executed
        for attribute, value in plan.patch.items():  # the BMC refuses what its registry locks
            block = index.block(attribute, value, state)
            assert block is None, f"pass {len(executed) + 1}: the BMC refuses {attribute}={value!r}: {block.reason}"
        executed.append(plan.passes[0])
        names = {s.attribute: s.setting for st in plan.stages for s in st.settings if s.attribute}
        state.update({a: v for a, v in plan.patch.items() if names.get(a) not in one_shots})
        state = index.settle(state)
        due = (due - set(plan.firing)) | set(plan.deferred_one_shots)
    raise AssertionError("no convergence in 20 passes")


@pytest.mark.parametrize(("name", "tee"), sorted(EXPECTED))
def test_forecast_equals_execution_or_the_true_reason_before_any_write(name, tee):
    vendor, registry, current, cpus = recorded(name)
    expected = EXPECTED[(name, tee)]
    if isinstance(expected, tuple):
        kind, words = expected
        with pytest.raises(kind) as err:
            plan_on(vendor, tee, registry, current, cpus)
        assert words in str(err.value) and str(err.value).startswith("node: ")
        return
    forecast = plan_on(vendor, tee, registry, current, cpus)
    assert forecast.expected_reboots() == expected
    assert execute(vendor, tee, registry, current, cpus) == list(forecast.passes)


def test_every_registry_in_the_fixtures_is_covered():
    registries = {p.relative_to(FIXTURES).as_posix() for p in FIXTURES.rglob("*.json")
                  if "RegistryEntries" in json.loads(p.read_text())}
    covered = {r[1] for r in REGISTRIES.values()}
    # the same DL325 A43 and XL675d A47 registries are recorded twice (two repositories, or
    # two GPU options with one BIOS family): one copy of each is enough
    duplicates = {
        f"{_CSM}DL325_{_REG}a43.v1_2_52_index.json",
        f"{_CSM}XL675d_A40_{_REG}a47.v1_2_52_index.json",
        "dell/libredfish__tests_mockups_dell_redfish_v1_Registries_BiosAttributeRegistry.v1_0_0_index.json",
    }
    assert registries - covered - duplicates <= {
        "other/sushy__sushy_tests_unit_json_samples_bios_attribute_registry_zthardware.json",  # 2 attributes, no vendor
    }
    assert {(n, t) for n in REGISTRIES for t in ("snp", "tdx")} == set(EXPECTED)


def test_gen12_seam_loader_gets_a_pass_of_its_own_gen11_does_not():
    for name in ("hpe-dl360-gen12-u68", "hpe-dl380a-gen12-u72", "hpe-dl340e-gen12-u71"):
        vendor, registry, current, cpus = recorded(name)
        plan = plan_on(vendor, "tdx", registry, current, cpus)
        assert plan.passes[-2:] == (("tdx",), ("seam_loader",)), name
    vendor, registry, current, cpus = recorded("hpe-dl380a-gen11-u58")
    assert plan_on(vendor, "tdx", registry, current, cpus).passes[-1] == ("tdx", "seam_loader")


@pytest.mark.parametrize("workload", ["GraphicProcessing", "HighPerformanceCompute(HPC)", "LowLatency"])
def test_gen12_workload_profile_that_forces_vtx_off_is_named_as_the_cause(workload):
    vendor, registry, current, cpus = recorded("hpe-dl380a-gen12-u72")
    tdx_on = {"ProcessorPhysicalAddress": "Default", "Tme": "Enabled", "MkTme": "Enabled", "SgxEnable": "Enabled",
              "TdxEnable": "Enabled", "TdxSeamldrEnable": "Enabled"}
    state = {**current, **tdx_on, "WorkloadProfile": workload, "ProcVirtualization": "Disabled"}
    with pytest.raises(PlanError) as err:
        plan_on(vendor, "tdx", registry, state, cpus)
    text = str(err.value)
    assert err.value.attribute == "ProcVirtualization"
    assert f'read-only while WorkloadProfile "Workload Profile" is {workload}' in text
    assert 'fix: change WorkloadProfile "Workload Profile"' in text
    # with a workload profile that leaves VT-x alone, the same state is one pass from compliance
    ok = plan_on(vendor, "tdx", registry, {**state, "WorkloadProfile": "Custom"}, cpus)
    assert ok.patch == {"ProcVirtualization": "Enabled"} and ok.expected_reboots() == 1
    # a virtualization workload profile forces it Enabled (read-only at the value wanted): compliant
    index = AttributeRegistry.from_redfish(registry, current)
    forced = index.settle({**state, "WorkloadProfile": "Virtualization-MaxPerformance"})
    assert forced["ProcVirtualization"] == "Enabled"
    assert plan_on(vendor, "tdx", registry, forced, cpus).compliant


def test_without_a_registry_the_plan_keeps_the_profile_order():
    # Bios.Attributes only (no registry, so no dependencies): every profile stage is its own pass
    vendor, _, current, cpus = recorded("supermicro-sys821ge")
    plan = plan_on(vendor, "tdx", None, current, cpus)
    profile = bios_profile_for(vendor, "tdx")
    assert plan.mode == "profile"
    assert [stage.name for stage in plan.stages[1:]] == [s.name for s in profile.stages][-len(plan.passes):]
    assert "the profile's stage order: the BMC gives no dependencies" in render_plan(plan)


def test_gigabyte_ami_names_resolve_by_display_name_and_suggestions_show_it():
    vendor, registry, current, _ = recorded("gigabyte-h262-z63-ami")
    res = resolve_settings(bios_profile_for(vendor, "snp"), registry, current, bmc="gb")
    # the ASID limit applies only in Manual: the control resolves with it (Rome0037, by DisplayName)
    assert res.names["sev_asid_space_ctrl"].attribute == "Rome0037"
    assert res.names["min_sev_asid"].attribute == "Rome0282"
    # no SMEE on this Rome BIOS: the closest attributes are shown with their DisplayName
    assert 'closest on this BMC: Rome0139 "TSME"' in str(res.missing["smee"])

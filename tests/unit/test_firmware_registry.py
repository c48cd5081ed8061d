"""The registry model: Redfish ``Map`` dependencies (DMTF AttributeRegistry,
DMTF/Redfish-Publications@2025.4:csdl/AttributeRegistry_v1.xml:307-366 for Dependency/MapFrom/
MapTerms, 393-511 for MapFromCondition/MapTerms/MapToProperty) evaluated on a state, on the real
registries in tests/fixtures/redfish (provenance: SOURCES.tsv)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ccfactory.firmware.resolve import AttributeRegistry, menu_text

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "redfish"
_ILO = "hpe/ilo-redfish-emulator__mockups_"
_REG = "RegistryStore_registries_en_biosattributeregistry"
GEN12 = {
    "DL360 Gen12 U68": f"{_ILO}DL360_Gen12_{_REG}u68.v1_1_40_index.json",
    "DL380a Gen12 U72": f"{_ILO}DL380a_Gen12_{_REG}u72.v1_1_34_index.json",
    "DL340e U71": f"{_ILO}DL340e_{_REG}u71.v1_1_52_index.json",
}
GEN11 = f"{_ILO}DL380a_{_REG}u58.v1_2_44_index.json"
DELL_1_13 = "dell/libredfish__tests_mockups_dell_multi_dpu_redfish_v1_Systems_System.Embedded.1_Bios_BiosRegistry_index.json"
GIGABYTE = "gigabyte/csm-redfish-interface-emulator__mockups_Gigabyte_Registries_BiosAttributeRegistry.json_index.json"


def load(rel: str) -> Any:
    return json.loads((FIXTURES / rel).read_text())


def reg(attributes: list[dict], dependencies: list[dict]) -> AttributeRegistry:
    return AttributeRegistry.from_redfish({"RegistryEntries": {"Attributes": attributes, "Dependencies": dependencies}})


def dep(target: str, prop: str, value: Any, *terms: tuple[str, str, Any, str | None]) -> dict:
    return {
        "Type": "Map",
        "Dependency": {
            "MapToAttribute": target,
            "MapToProperty": prop,
            "MapToValue": value,
            "MapFrom": [
                {"MapFromAttribute": a, "MapFromCondition": c, "MapFromProperty": "CurrentValue", "MapFromValue": v,
                 **({"MapTerms": t} if t else {})}
                for a, c, v, t in terms
            ],
        },
    }


# ---------------------------------------------------------------- DMTF semantics


def test_map_terms_join_left_to_right_and_a_missing_term_is_or():
    x = {"AttributeName": "X", "Type": "Enumeration", "Value": [{"ValueName": "On"}, {"ValueName": "Off"}]}
    r = reg([x], [dep("X", "ReadOnly", True, ("A", "EQU", "1", None), ("B", "EQU", "1", "AND"), ("C", "EQU", "1", "OR"))])
    # ((A and B) or C)
    assert r.lock("X", {"A": "1", "B": "1", "C": "0"}) is not None
    assert r.lock("X", {"A": "1", "B": "0", "C": "0"}) is None
    assert r.lock("X", {"A": "0", "B": "0", "C": "1"}) is not None
    # iDRAC omits MapTerms where its help text means "any of": OR
    r = reg([x], [dep("X", "ReadOnly", True, ("A", "EQU", "1", None), ("B", "EQU", "1", None))])
    assert r.lock("X", {"A": "0", "B": "1"}) is not None


@pytest.mark.parametrize(
    ("condition", "value", "holds"),
    [("EQU", 5, False), ("NEQ", 5, True), ("GTR", 3, True), ("GEQ", 4, True), ("LSS", 5, True), ("LEQ", 3, False)],
)
def test_map_from_conditions_compare_numbers_as_numbers(condition, value, holds):
    x = {"AttributeName": "X", "Type": "Integer"}
    r = reg([x], [dep("X", "GrayOut", True, ("N", condition, value, None))])
    assert (r.lock("X", {"N": 4}) is not None) is holds


def test_dependencies_decide_over_the_recorded_flag_and_immutable_always_locks():
    x = {"AttributeName": "X", "Type": "Enumeration", "ReadOnly": True, "Value": [{"ValueName": "On"}]}
    r = reg([x], [dep("X", "ReadOnly", True, ("A", "EQU", "Disabled", None))])
    assert r.lock("X", {"A": "Enabled"}) is None  # the flag was a snapshot of the rule
    assert r.lock("X", {"A": "Disabled"}).kind == "read_only"
    assert reg([x], []).lock("X", {}).kind == "read_only"  # no rule: the flag is all we know
    y = {"AttributeName": "Y", "Immutable": True}
    assert reg([y], []).lock("Y", {}).kind == "immutable"


def test_forced_values_and_limits_are_blocks_and_settle_applies_them():
    x = {"AttributeName": "X", "Type": "Enumeration", "Value": [{"ValueName": "On"}, {"ValueName": "Off"}]}
    n = {"AttributeName": "N", "Type": "Integer", "LowerBound": 1, "UpperBound": 10}
    r = reg([x, n], [dep("X", "CurrentValue", "Off", ("A", "EQU", "1", None)),
                     dep("N", "UpperBound", 5, ("A", "EQU", "1", None))])
    assert r.block("X", "On", {"A": "1"}).kind == "forced"
    assert r.block("X", "Off", {"A": "1"}) is None
    assert r.block("N", 7, {"A": "1"}).kind == "limited" and r.block("N", 7, {"A": "0"}) is None
    assert r.settle({"A": "1", "X": "On"})["X"] == "Off"


# ---------------------------------------------------------------- real registries


@pytest.mark.parametrize("name", sorted(GEN12))
def test_gen12_greys_out_the_seam_loader_until_tdx_is_applied(name):
    r = AttributeRegistry.from_redfish(load(GEN12[name]))
    ready = {"SgxEnable": "Enabled", "MkTme": "Enabled", "TdxEnable": "Disabled"}
    block = r.block("TdxSeamldrEnable", "Enabled", ready)
    assert block is not None and block.kind == "grey_out" and block.causes == ("TdxEnable",)
    assert 'TdxEnable "Trust Domain Extension (TDX)" (ServerSecurity > IntelSecurityOptions) is Disabled' in block.reason
    assert r.block("TdxSeamldrEnable", "Enabled", {**ready, "TdxEnable": "Enabled"}) is None
    assert r.block("TdxEnable", "Enabled", ready) is None


def test_gen11_u58_has_no_seam_loader_rule_on_tdx():
    r = AttributeRegistry.from_redfish(load(GEN11))
    assert r.block("TdxSeamldrEnable", "Enabled", {"SgxEnable": "Enabled", "MkTme": "Enabled", "TdxEnable": "Disabled"}) is None


def test_gen12_workload_profile_forces_and_locks_vtx():
    r = AttributeRegistry.from_redfish(load(GEN12["DL380a Gen12 U72"]))
    block = r.block("ProcVirtualization", "Enabled", {"WorkloadProfile": "GraphicProcessing"})
    assert block.kind == "read_only" and block.causes == ("WorkloadProfile",)
    assert r.settle({"WorkloadProfile": "GraphicProcessing", "ProcVirtualization": "Enabled"})["ProcVirtualization"] == "Disabled"
    assert r.block("ProcVirtualization", "Enabled", {"WorkloadProfile": "Custom"}) is None


def test_dell_1_13_limits_memory_encryption_while_the_pa_limit_is_on():
    # R750 BIOS 1.13.2 (NVIDIA/libredfish dell_multi_dpu): Dell's "Value" map (not in the DMTF
    # MapToProperty enum) narrows the list to SingleKey/Disabled while CpuPaLimit is Enabled.
    # The recorded flags are a locked snapshot (ReadOnly/Immutable): judge the rules alone.
    raw = load(DELL_1_13)
    body = raw["RegistryEntries"]
    unlocked = [{**a, "ReadOnly": False, "Immutable": False} for a in body["Attributes"]]
    r = AttributeRegistry.from_redfish({"RegistryEntries": {**body, "Attributes": unlocked}})
    block = r.block("MemoryEncryption", "MultipleKeys", {"CpuPaLimit": "Enabled"})
    assert block.kind == "limited" and block.causes == ("CpuPaLimit",)
    assert "limited to SingleKey, Disabled while CpuPaLimit" in block.reason
    assert r.block("MemoryEncryption", "MultipleKeys", {"CpuPaLimit": "Disabled"}) is None
    # and what the BIOS derives from it at POST
    assert r.settle({"MemoryEncryption": "MultipleKeys"})["EnableMkTme"] == "Enabled"
    # as recorded, CpuPaLimit itself is Immutable: no plan can lift the limit on that node
    assert AttributeRegistry.from_redfish(raw).lock("CpuPaLimit", {}).kind == "immutable"


def test_labels_show_display_name_and_menu_path():
    r = AttributeRegistry.from_redfish(load(GEN12["DL360 Gen12 U68"]))
    assert r.label("Tme") == 'Tme "Total Memory Encryption (TME)" (MemoryOptions > MemEncryptionOptions)'
    g = AttributeRegistry.from_redfish(load(GIGABYTE))
    assert g.label("Rome0139") == 'Rome0139 "TSME"'  # the AMI registry has no MenuPath
    assert menu_text("./ProcSettingsRef") == "ProcSettingsRef"


def test_every_fixture_registry_parses_every_dependency():
    for path in FIXTURES.rglob("*.json"):
        body = json.loads(path.read_text())
        if not isinstance(body, dict) or "RegistryEntries" not in body:
            continue
        entries = body["RegistryEntries"]
        r = AttributeRegistry.from_redfish(body)
        maps = [d for d in entries.get("Dependencies", ()) if d.get("Type", "Map") == "Map"]
        assert len(r.dependencies) == len(maps), path.name
        for d in r.dependencies:  # every condition evaluates (no crash) on an empty state
            r._holds(d.conditions, {})

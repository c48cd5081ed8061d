"""The staged plan: first unapplied stage only, pending not re-patched, one-shot, read-only
blocking, bad values, compliance; on a synthetic iDRAC-like registry (dependencies as
hippius describes them) and on the real recordings."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ccfactory.firmware import (
    BiosProfile,
    PlanError,
    ResolutionError,
    bios_profile_for,
    plan_firmware,
    render_plan,
    resolve_settings,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "redfish"


def load(rel: str) -> Any:
    return json.loads((FIXTURES / rel).read_text())


def enum(name: str, *values: str, read_only: bool = False) -> dict[str, Any]:
    return {
        "AttributeName": name,
        "DisplayName": name,
        "Type": "Enumeration",
        "ReadOnly": read_only,
        "Value": [{"ValueName": v, "ValueDisplayName": v} for v in values],
    }


def locked_until(target: str, attribute: str, value: str = "Disabled") -> dict[str, Any]:
    return {
        "Type": "Map",
        "DependencyFor": target,
        "Dependency": {
            "MapFrom": [
                {
                    "MapFromAttribute": attribute,
                    "MapFromCondition": "EQU",
                    "MapFromProperty": "CurrentValue",
                    "MapFromValue": value,
                }
            ],
            "MapToAttribute": target,
            "MapToProperty": "ReadOnly",
            "MapToValue": True,
        },
    }


ON_OFF = ("Enabled", "Disabled")
# iDRAC as cc-stack §0.2 describes it: Snp/CpuMinSevAsid read-only until Sme is applied, Rmp until Snp
IDRAC = {
    "RegistryEntries": {
        "Attributes": [
            enum("Sme", *ON_OFF),
            enum("IommuSupport", *ON_OFF),
            enum("ProcVirtualization", *ON_OFF),
            enum("ProcX2Apic", *ON_OFF),
            enum("TransparentSme", *ON_OFF),
            enum("Snp", *ON_OFF),
            {
                "AttributeName": "CpuMinSevAsid",
                "Type": "Integer",
                "LowerBound": 1,
                "UpperBound": 510,
                "ReadOnly": False,
            },
            enum("Rmp", *ON_OFF),
        ],
        "Dependencies": [locked_until("Snp", "Sme"), locked_until("CpuMinSevAsid", "Sme"), locked_until("Rmp", "Snp")],
    }
}
FACTORY = {
    "Sme": "Disabled",
    "IommuSupport": "Enabled",
    "ProcVirtualization": "Enabled",
    "ProcX2Apic": "Enabled",
    "TransparentSme": "Disabled",
    "Snp": "Disabled",
    "CpuMinSevAsid": 1,
    "Rmp": "Disabled",
}
DONE = {**FACTORY, "Sme": "Enabled", "Snp": "Enabled", "CpuMinSevAsid": 100, "Rmp": "Enabled"}


def plan(
    current: dict[str, Any],
    pending: dict[str, Any] | None = None,
    *,
    profile: BiosProfile | None = None,
    registry: Any = IDRAC,
    bmc: str = "gpu-01",
):
    profile = profile or bios_profile_for("dell", "snp")
    resolved = resolve_settings(profile, registry, current, bmc=bmc)
    return plan_firmware(profile, resolved, current, pending or {}, registry)


def converge(
    current: dict[str, Any], profile: BiosProfile, registry: Any, pending: dict[str, Any] | None = None, limit: int = 10
) -> list[dict[str, Any]]:
    """Run the loop a BMC and the role would: PATCH -> pending; reboot -> pending applied."""
    current, pending = dict(current), dict(pending or {})
    patches: list[dict[str, Any]] = []
    for _ in range(limit):
        p = plan(current, pending, profile=profile, registry=registry)
        if p.compliant:
            assert not p.patch and not p.reboot
            return patches
        pending.update(p.patch)
        assert not plan(current, pending, profile=profile, registry=registry).patch, (
            "a re-run before the reboot patches nothing"
        )
        patches.append(dict(p.patch))
        current.update(pending)  # the reboot
        pending.clear()
        for attribute, value in list(current.items()):  # one-shots read back their old value
            if (
                attribute in ("SgxFactoryReset", "Processors_SGXFactoryReset", "SGXFactoryReset_F317")
                and value != "Disabled"
            ):
                current[attribute] = "Disabled"
    raise AssertionError(f"no convergence after {limit} reboots: {patches}")


def without(profile: BiosProfile, *names: str) -> BiosProfile:
    stages = tuple(
        s.model_copy(update={"settings": {k: v for k, v in s.settings.items() if k not in names}})
        for s in profile.stages
    )
    return profile.model_copy(update={"stages": stages})


# ---------------------------------------------------------------- stages


def test_only_the_first_unapplied_stage_is_patched():
    p = plan(FACTORY)
    assert p.stage == "sme" and dict(p.patch) == {"Sme": "Enabled"} and p.reboot
    assert [s.status for s in p.stages] == ["applied", "apply", "waiting", "waiting"]
    assert "pass 1/3 'sme' of dell/snp" in p.reason and p.passes == (("smee",), ("snp", "min_sev_asid"), ("snp_rmp_coverage",))


def test_dell_snp_takes_three_reboots_in_the_documented_order():
    patches = converge(FACTORY, bios_profile_for("dell", "snp"), IDRAC)
    assert patches == [{"Sme": "Enabled"}, {"Snp": "Enabled", "CpuMinSevAsid": 100}, {"Rmp": "Enabled"}]


def test_pending_values_are_not_patched_again_but_still_need_the_reboot():
    p = plan(FACTORY, {"Sme": "Enabled"})
    assert p.stage == "sme" and dict(p.patch) == {} and p.reboot
    (sme,) = [s for s in p.stages[1].settings if s.setting == "smee"]
    assert sme.action == "pending"
    assert "settings already pending" in p.reason
    assert "(pending Enabled, not patched again)" in render_plan(p)


def test_a_wrong_pending_value_is_overwritten():
    assert dict(plan(FACTORY, {"Sme": "Disabled"}).patch) == {"Sme": "Enabled"}
    # HPE/Lenovo show every attribute in the settings object: a full copy is not "pending"
    assert dict(plan(FACTORY, dict(FACTORY)).patch) == {"Sme": "Enabled"}


def test_compliant_means_an_empty_plan_and_no_reboot():
    p = plan(DONE)
    assert p.compliant and p.stage is None and dict(p.patch) == {} and not p.reboot and not p.warnings
    assert [s.status for s in p.stages] == ["applied"]
    assert "compliant, every BIOS setting applied; no reboot" in render_plan(p)


def test_pending_undo_is_a_warning_when_compliant_and_restored_when_rebooting():
    p = plan(DONE, {"Sme": "Disabled"})
    assert p.compliant and not p.patch
    assert p.warnings == ("gpu-01: pending Sme='Disabled' would undo applied setting 'smee' at the next reset",)
    # with a reboot planned anyway (stage rmp), the pending undo of stage sme is patched back
    q = plan({**DONE, "Rmp": "Disabled"}, {"Sme": "Disabled"})
    assert q.stage == "rmp" and dict(q.patch) == {"Rmp": "Enabled", "Sme": "Enabled"}
    assert "restore" in render_plan(q)


def test_unmanaged_settings_are_skipped_until_overridden():
    p = plan(FACTORY)
    (tsme,) = [s for s in p.stages[0].settings if s.setting == "tsme"]
    assert tsme.action == "skip" and "TransparentSme" not in p.patch
    q = plan(FACTORY, profile=bios_profile_for("dell", "snp", overrides={"tsme": "Enabled"}))
    assert dict(q.patch) == {"Sme": "Enabled", "TransparentSme": "Enabled"}


# ---------------------------------------------------------------- errors


def test_read_only_after_the_prerequisite_stage_is_an_error_naming_it():
    registry = json.loads(json.dumps(IDRAC))
    registry["RegistryEntries"]["Dependencies"].append(locked_until("Rmp", "ProcX2Apic", "Enabled"))
    with pytest.raises(PlanError) as err:
        plan({**DONE, "Rmp": "Disabled"}, registry=registry)
    text = str(err.value)
    assert err.value.attribute == "Rmp" and err.value.setting == "snp_rmp_coverage" and err.value.stage == "rmp"
    assert "gpu-01: dell/snp: Rmp [setting 'snp_rmp_coverage'] cannot be set to 'Enabled'" in text
    assert "read-only while ProcX2Apic is Enabled (registry dependency)" in text
    # the cause is a setting of the profile itself: the fix says so, not "an earlier stage"
    assert "fix: the profile's own 'x2apic' (ProcX2Apic) cannot take a value that lifts the rule" in text


def test_read_only_later_stage_is_fine_while_its_prerequisite_is_pending():
    # Rmp is read-only until Snp is applied: that is why it waits; no error while planning stage snp
    p = plan({**FACTORY, "Sme": "Enabled"})
    assert p.stage == "snp" and "Rmp" not in p.patch


def test_a_profile_that_merges_stages_still_gets_the_passes_the_registry_requires():
    flat = bios_profile_for("dell", "snp")
    merged = flat.stages[0].model_copy(update={"settings": {**flat.stages[0].settings, **flat.stages[1].settings}})
    one_stage = flat.model_copy(update={"stages": (merged, flat.stages[2])})
    p = plan(FACTORY, profile=one_stage)
    # Snp is read-only while Sme is Disabled (registry): it waits one pass, whatever the profile's grouping
    assert p.passes[0] == ("smee",) and p.passes[1] == ("snp", "min_sev_asid")


def test_value_outside_the_registry_bounds_is_an_error():
    with pytest.raises(PlanError) as err:
        plan({**FACTORY, "Sme": "Enabled"}, profile=bios_profile_for("dell", "snp", overrides={"min_sev_asid": 600}))
    assert "CpuMinSevAsid [setting 'min_sev_asid']: value 600 is outside 1..510" in str(err.value)
    assert "bios_overrides" in str(err.value)


def test_value_outside_the_allowed_list_is_an_error():
    with pytest.raises(
        PlanError,
        match=r"TransparentSme \[setting 'tsme'\]: value 'Auto' is not one the BMC allows; "
        r"allowed: Enabled, Disabled",
    ):
        plan(FACTORY, profile=bios_profile_for("dell", "snp", overrides={"tsme": "Auto"}))


def test_a_setting_absent_from_the_registry_is_an_error_before_any_write():
    current = {k: v for k, v in FACTORY.items() if k != "Rmp"}  # e.g. not visible before Snp is applied
    registry = {
        "RegistryEntries": {
            "Attributes": [a for a in IDRAC["RegistryEntries"]["Attributes"] if a["AttributeName"] != "Rmp"]
        }
    }
    # a registry lists every attribute of the BIOS (hidden ones too): absent means this BIOS lacks it
    with pytest.raises(ResolutionError, match="BIOS setting 'snp_rmp_coverage'"):
        plan(current, registry=registry)
    # without a registry, Bios.Attributes may omit it until an earlier stage is applied: it waits
    p = plan(current, registry=None)
    assert p.stage == "sme" and p.mode == "profile"
    (rmp,) = p.stages[-1].settings
    assert rmp.action == "unknown" and rmp.note == "not visible yet"
    with pytest.raises(ResolutionError, match="BIOS setting 'snp_rmp_coverage'"):
        plan({**current, "Sme": "Enabled", "Snp": "Enabled", "CpuMinSevAsid": 100}, registry=None)


def test_optional_settings_missing_on_the_bmc_are_skipped_with_a_note():
    # Supermicro SYS-821GE has no TME-MT/TDX key split attribute (optional in the profile)
    current = {
        "LimitCPUPAto46Bits_F319": "Disable",
        "MemoryEncryption_TME__3C77": "Enabled",
        "TotalMemoryEncryptionMulti_Tenant_TME_MT__F31B": "Enabled",
        "TotalMemoryEncryption_TME_Bypass_3C78": "Enabled",
        "MemoryIntegrity_F31A": "Disabled",
        "TrustDomainExtension_TDX__3C79": "Enabled",
        "TDXSecureArbitrationModeLoader_SEAMLoader__3C7A": "Enabled",
        "SWGuardExtensions_SGX__F308": "Disabled",
        "SGXFactoryReset_F317": "Disabled",
    }
    p = plan(current, profile=bios_profile_for("supermicro", "tdx"), registry=None)
    assert p.stage == "sgx"
    assert dict(p.patch) == {"SWGuardExtensions_SGX__F308": "Enabled", "SGXFactoryReset_F317": "Enabled"}
    assert any("optional setting 'tdx_key_split' has no attribute on this BMC; skipped" in w for w in p.warnings)


# ---------------------------------------------------------------- one-shot (real HPE DL380a Gen11 registry)

HPE_REGISTRY = load(
    "hpe/ilo-redfish-emulator__mockups_DL380a_RegistryStore_registries_en_biosattributeregistryu58.v1_2_44_index.json"
)
HPE_BIOS = load("hpe/ilo-redfish-emulator__mockups_DL380a_Systems_1_bios_index.json")["Attributes"]
HPE_STAGE1 = {**HPE_BIOS, "ProcessorPhysicalAddress": "Default", "Tme": "Enabled"}


def greyed_until_sgx(registry: dict[str, Any]) -> dict[str, Any]:
    """The lab's AMI personalities: SgxFactoryReset greyed out until SGX is *applied*."""
    registry = json.loads(json.dumps(registry))
    registry["RegistryEntries"]["Dependencies"].append(
        {
            "Type": "Map",
            "DependencyFor": "SgxFactoryReset",
            "Dependency": {
                "MapFrom": [
                    {
                        "MapFromAttribute": "SgxEnable",
                        "MapFromCondition": "NEQ",
                        "MapFromProperty": "CurrentValue",
                        "MapFromValue": "Enabled",
                    }
                ],
                "MapToAttribute": "SgxFactoryReset",
                "MapToProperty": "GrayOut",
                "MapToValue": True,
            },
        }
    )
    return registry


def hpe_plan(current: dict[str, Any], pending: dict[str, Any] | None = None):
    return plan(current, pending, profile=bios_profile_for("hpe", "tdx"), registry=HPE_REGISTRY, bmc="dl380a")


def test_one_shot_fires_in_the_run_that_turns_sgx_on():
    p = hpe_plan(HPE_STAGE1)
    assert p.stage == "sgx"
    assert dict(p.patch) == {"MkTme": "Enabled", "SgxEnable": "Enabled", "SgxFactoryReset": "Enabled"}
    (reset,) = [s for s in p.stages[1].settings if s.setting == "sgx_factory_reset"]
    assert reset.one_shot and reset.note == "one-shot: fires with sgx"


def test_one_shot_does_not_fire_when_sgx_is_already_on():
    p = hpe_plan({**HPE_STAGE1, "SgxEnable": "Enabled"})
    assert p.stage == "sgx" and dict(p.patch) == {"MkTme": "Enabled"}


def test_one_shot_never_counts_as_unapplied():
    # after the reset fired it reads Disabled again: the sgx stage is applied, TDX is next
    p = hpe_plan({**HPE_STAGE1, "MkTme": "Enabled", "SgxEnable": "Enabled", "SgxFactoryReset": "Disabled"})
    assert p.stage == "tdx" and dict(p.patch) == {"TdxEnable": "Enabled", "TdxSeamldrEnable": "Enabled"}
    assert "SgxFactoryReset" not in p.patch


def test_pending_one_shot_is_not_patched_again():
    p = hpe_plan(HPE_STAGE1, {"MkTme": "Enabled", "SgxEnable": "Enabled", "SgxFactoryReset": "Enabled"})
    assert p.stage == "sgx" and dict(p.patch) == {} and p.reboot


def test_a_locked_one_shot_is_skipped_with_a_warning_not_an_error():
    # some BMCs (the lab's Lenovo/Supermicro personalities) grey the reset out until SGX is applied
    registry = greyed_until_sgx(HPE_REGISTRY)
    p = plan(HPE_STAGE1, profile=bios_profile_for("hpe", "tdx"), registry=registry, bmc="dl380a")
    assert dict(p.patch) == {"MkTme": "Enabled", "SgxEnable": "Enabled"}
    assert any(
        "one-shot 'sgx_factory_reset' (SgxFactoryReset) not sent with sgx: read-only now" in w for w in p.warnings
    )


def test_hpe_tdx_converges_in_three_reboots_firing_the_reset_once():
    patches = converge(HPE_BIOS, bios_profile_for("hpe", "tdx"), HPE_REGISTRY)
    assert patches == [
        {"ProcessorPhysicalAddress": "Default", "Tme": "Enabled"},
        {"MkTme": "Enabled", "SgxEnable": "Enabled", "SgxFactoryReset": "Enabled"},
        {"TdxEnable": "Enabled", "TdxSeamldrEnable": "Enabled"},
    ]


def test_hpe_registry_greys_out_tdx_until_sgx_is_applied():
    # a profile that groups TDX with SGX still gets TDX one pass later: the recorded GrayOut rule
    profile = bios_profile_for("hpe", "tdx")
    merged = profile.stages[1].model_copy(
        update={"settings": {**profile.stages[1].settings, **profile.stages[2].settings}}
    )
    grouped = profile.model_copy(update={"stages": (profile.stages[0], merged)})
    p = plan(HPE_STAGE1, profile=grouped, registry=HPE_REGISTRY)
    assert p.passes == (("tme_mt", "sgx", "sgx_factory_reset"), ("tdx", "seam_loader"))


# ---------------------------------------------------------------- real Dell R750 / Supermicro recordings

DELL_REGISTRY = load(
    "dell/libredfish__tests_mockups_dell_redfish_v1_Systems_System.Embedded.1_Bios_BiosRegistry_index.json"
)
DELL_BIOS = load("dell/libredfish__tests_mockups_dell_redfish_v1_Systems_System.Embedded.1_Bios_index.json")[
    "Attributes"
]


def test_r750_rmp_is_immutable_so_the_last_snp_stage_is_refused():
    # the R750 is an Intel box: its registry marks Rmp ReadOnly/Immutable (no IommuSupport either)
    profile = without(bios_profile_for("dell", "snp"), "iommu")
    current = {**DELL_BIOS, "Sme": "Enabled", "Snp": "Enabled", "CpuMinSevAsid": 100, "ProcX2Apic": "Enabled"}
    with pytest.raises(
        PlanError,
        match=r"Rmp \"SNP Memory Coverage\" \(ProcSettingsRef\) \[setting 'snp_rmp_coverage'\] cannot be set to "
        r"'Enabled' .*Immutable.*fix: none through Redfish",
    ):
        plan(current, profile=profile, registry=DELL_REGISTRY, bmc="r750")


def test_r750_intel_sgx_is_read_only_until_memory_encryption_is_applied():
    profile = bios_profile_for("dell", "tdx")
    sgx_first = profile.model_copy(update={"stages": (profile.stages[1],)})
    with pytest.raises(
        PlanError,
        match=r"IntelSgx \"Intel\(R\) SGX\" \(SysSecurityRef\) \[setting 'sgx'\] cannot be set to 'On' .*"
        r"read-only while MemoryEncryption \"Memory Encryption\" \(SysSecurityRef\) is Disabled.*"
        r"fix: change MemoryEncryption",
    ):
        plan(DELL_BIOS, profile=sgx_first, registry=DELL_REGISTRY, bmc="r750")


def test_supermicro_first_stage_on_the_real_registry_writes_display_values():
    registry = load(
        "supermicro/libredfish__tests_mockups_supermicro_registries_BiosAttributeRegistry.1.0.0.json_index.json"
    )
    current = load("supermicro/libredfish__tests_mockups_supermicro_redfish_v1_Systems_1_Bios_index.json")["Attributes"]
    p = plan(current, profile=bios_profile_for("supermicro", "tdx"), registry=registry, bmc="sys-821ge")
    assert p.stage == "tme"
    assert dict(p.patch) == {"LimitCPUPAto46Bits_F319": "Disable", "MemoryEncryption_TME__3C77": "Enabled"}
    # after the reboot the registry's own GrayOut rule (LimitCPUPAto46Bits = Enable) no longer holds
    q = plan({**current, **p.patch}, profile=bios_profile_for("supermicro", "tdx"), registry=registry, bmc="sys-821ge")
    assert q.stage == "tme_mt"
    assert dict(q.patch) == {
        "TotalMemoryEncryptionMulti_Tenant_TME_MT__F31B": "Enabled",
        "TotalMemoryEncryption_TME_Bypass_3C78": "Enabled",
    }


# ---------------------------------------------------------------- rendering


def test_render_shows_each_stage_current_desired_pending_and_the_reboot():
    text = render_plan(plan({**FACTORY, "Sme": "Enabled"}, {"Snp": "Enabled"}))
    assert text.splitlines()[0] == "gpu-01 (dell/snp): pass 1/2 'snp': patch and reboot"
    assert "  applied:" in text and "  pass 1 snp: APPLY NOW" in text and "  pass 2 rmp: waiting" in text
    assert "    CpuMinSevAsid       [min_sev_asid]      1 -> 100\n" in text
    assert (
        "    Snp                 [snp]               Disabled -> Enabled  (pending Enabled, not patched again)" in text
    )
    assert "    Rmp                 [snp_rmp_coverage]  Disabled -> Enabled later" in text
    assert (
        "    TransparentSme      [tsme]              -  (not managed: no value; set one in bios_overrides)" in text
    )
    assert text.splitlines()[-2:] == [
        "  reboot: BIOS pass 1/2 'snp' of dell/snp: new settings patched apply at the next reset",
        "  to compliance: 2 reboot(s) (passes snp, rmp; computed from the BMC's registry)",
    ]


def test_plan_is_json_ready():
    data = plan(FACTORY).to_dict()
    assert json.loads(json.dumps(data))["patch"] == {"Sme": "Enabled"}
    assert data["stages"][1]["settings"][0]["setting"] == "smee" and data["passes"][0] == ["smee"]


# ---------------------------------------------------------------- property: any start state converges


VALUES = {name: ON_OFF for name in FACTORY if name != "CpuMinSevAsid"} | {"CpuMinSevAsid": (1, 100, 509)}


@settings(max_examples=150, deadline=None)
@given(
    current=st.fixed_dictionaries({k: st.sampled_from(v) for k, v in VALUES.items()}),
    pending=st.dictionaries(st.sampled_from(sorted(VALUES)), st.sampled_from(["Enabled", "Disabled"]), max_size=3),
)
def test_any_start_state_converges_stage_by_stage(current, pending):
    pending = {k: (100 if k == "CpuMinSevAsid" else v) for k, v in pending.items()}
    profile = bios_profile_for("dell", "snp")
    reboots = converge(current, profile, IDRAC, pending)  # asserts re-runs patch nothing
    assert len(reboots) <= len(profile.stages), "at most one reboot per stage, whatever was pending"

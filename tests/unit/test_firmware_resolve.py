"""Name and value resolution against REAL vendor registries and Bios payloads.

Fixtures: tests/fixtures/redfish (copied with provenance: tests/fixtures/redfish/SOURCES.tsv).
What each recording can and cannot confirm is asserted here, so a new recording that
changes the picture shows up as a test change:

* Dell R750 (Intel Ice Lake): registry has the AMD names (hidden) and the Intel memory
  encryption/SGX/TXT names, but no TDX; R6515 (AMD Rome) Bios has IommuSupport,
  CpuMinSevAsid, TransparentSme but no Sme/Snp/Rmp (old BIOS).
* HPE Gen10 Plus AMD registries: SME, IOMMU, ASID, TSME, but no SNP switch; DL380a
  Gen11: the whole TDX chain.
* Lenovo SR670 V2 (Ice Lake): TME, TME-MT, SGX, SGX factory reset; no TDX; no AMD box.
* Supermicro SYS-821GE: the TDX chain with suffixes, except the key split; no AMD box.
* Generic: DMTF samples have no CC attribute at all; the DGX H100 (AMI) Bios has the
  Intel reference names for TME/TME-MT/SGX, not TDX.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ccfactory.firmware import (
    AttributeInfo,
    AttributeRegistry,
    ResolutionError,
    bios_profile_for,
    check_value,
    normalise,
    resolve_settings,
)
from ccfactory.firmware.resolve import EnumValue

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "redfish"

DELL_R750_REGISTRY = (
    "dell/libredfish__tests_mockups_dell_redfish_v1_Systems_System.Embedded.1_Bios_BiosRegistry_index.json"
)
DELL_R750_BIOS = "dell/libredfish__tests_mockups_dell_redfish_v1_Systems_System.Embedded.1_Bios_index.json"
DELL_R6515_BIOS = "dell/bmclib__internal_redfishwrapper_fixtures_dell_bios.json"
_ILO = "hpe/ilo-redfish-emulator__mockups_"
_REG = "RegistryStore_registries_en_biosattributeregistry"
HPE_AMD = {
    "DL325 Gen10 Plus": f"{_ILO}DL325_Gen10Plus_FC_{_REG}a43.v1_2_52_index.json",
    "DL365 Gen10 Plus": f"{_ILO}DL365_Gen10Plus_{_REG}a42.v1_3_72_index.json",
    "DL385 Gen10 Plus v2": "hpe/libredfish__tests_mockups_hpe_redfish_v1_registrystore_registries_en_"
    "biosattributeregistrya42.v1_2_60_index.json",
    "XL675d Gen10 Plus": "hpe/csm-redfish-interface-emulator__mockups_XL675d_A100_RegistryStore_registries_en_"
    "biosattributeregistrya47.v1_2_58_index.json",
}
HPE_DL380A_REGISTRY = (
    "hpe/ilo-redfish-emulator__mockups_DL380a_RegistryStore_registries_en_biosattributeregistryu58.v1_2_44_index.json"
)
HPE_DL380A_BIOS = "hpe/ilo-redfish-emulator__mockups_DL380a_Systems_1_bios_index.json"
LENOVO_REGISTRY = (
    "lenovo/libredfish__tests_mockups_lenovo_redfish_v1_schemas_registries_BiosAttributeRegistry.1.0.0.json_index.json"
)
LENOVO_BIOS = "lenovo/libredfish__tests_mockups_lenovo_redfish_v1_Systems_1_Bios_index.json"
SMC_REGISTRY = "supermicro/libredfish__tests_mockups_supermicro_registries_BiosAttributeRegistry.1.0.0.json_index.json"
SMC_BIOS = "supermicro/libredfish__tests_mockups_supermicro_redfish_v1_Systems_1_Bios_index.json"
DGX_BIOS = "other/libredfish__tests_mockups_nvidia_viking_redfish_v1_Systems_DGX_Bios_index.json"
DMTF_REGISTRY = "dmtf/sushy__sushy_tests_unit_json_samples_bios_attribute_registry.json"
DMTF_BIOS = "dmtf/sushy__sushy_tests_unit_json_samples_bios.json"
METAL_REGISTRY = "dmtf/metal-operator__bmc_mock_server_data_Registries_BiosAttributeRegistry.v1_0_0.json"


def load(rel: str) -> Any:
    return json.loads((FIXTURES / rel).read_text())


def attrs(rel: str) -> dict[str, Any]:
    return load(rel)["Attributes"]


def resolved(vendor: str, tee: str, registry: str | None, bios: str | None, **kw: Any):
    profile = bios_profile_for(vendor, tee, **kw)
    return resolve_settings(
        profile, load(registry) if registry else None, attrs(bios) if bios else None, bmc=f"{vendor}-fixture"
    )


def names(res) -> dict[str, str]:
    return {k: v.attribute for k, v in res.names.items()}


# ---------------------------------------------------------------- Dell


def test_dell_snp_on_the_r750_registry():
    res = resolved("dell", "snp", DELL_R750_REGISTRY, DELL_R750_BIOS)
    assert names(res) == {
        "smee": "Sme",
        "virtualization": "ProcVirtualization",
        "x2apic": "ProcX2Apic",
        "tsme": "TransparentSme",
        "snp": "Snp",
        "min_sev_asid": "CpuMinSevAsid",
        "snp_rmp_coverage": "Rmp",
    }
    assert all(n.level == "exact" for n in res.names.values())
    # an Intel R750 has no AMD IOMMU switch: the error says what was tried and what is close
    err = res.missing["iommu"]
    assert set(res.missing) == {"iommu"}
    assert "dell-fixture: BIOS setting 'iommu' (dell/snp, stage 'sme')" in str(err)
    assert err.tried == ("IommuSupport",) and err.suggestions


def test_dell_snp_on_the_amd_r6515_bios_values():
    # no registry: names come from Bios.Attributes; the Rome BIOS 2.2.4 predates Sme/Snp/Rmp
    res = resolved("dell", "snp", None, DELL_R6515_BIOS)
    assert names(res)["iommu"] == "IommuSupport" and names(res)["min_sev_asid"] == "CpuMinSevAsid"
    assert names(res)["tsme"] == "TransparentSme"
    assert set(res.missing) == {"smee", "snp", "snp_rmp_coverage"}
    assert "matches no attribute in Bios.Attributes (no registry)" in str(res.missing["snp"])


def test_dell_tdx_on_the_r750_registry_finds_the_real_names():
    res = resolved("dell", "tdx", DELL_R750_REGISTRY, DELL_R750_BIOS)
    found = names(res)
    assert found["node_interleave"] == "NodeInterleave"  # cc-stack §1.2 says NodeInterleaving
    assert found["x2apic"] == "ProcX2Apic"  # cc-stack §1.2 says X2ApicMode
    assert found["limit_pa_46bit"] == "CpuPaLimit" and res.names["limit_pa_46bit"].level == "exact"
    assert found["tme_mt"] == "MemoryEncryption" and found["sgx"] == "IntelSgx" and found["txt"] == "IntelTxt"
    assert found["sgx_factory_reset"] == "SgxFactoryReset"
    # Ice Lake has no TDX: (no real Dell TDX registry exists in the fixtures)
    assert set(res.missing) == {"memory_integrity", "tdx", "tdx_key_split", "seam_loader"}


def test_display_name_matches_when_the_attribute_name_differs():
    # a profile that only knows cc-stack's R760 name still finds the R750's CpuPaLimit by its label
    registry = load(DELL_R750_REGISTRY)
    profile = bios_profile_for("dell", "tdx").model_copy()
    stage = profile.stages[0]
    limit = stage.settings["limit_pa_46bit"].model_copy(update={"names": ("CpuPhysicalAddressLimit",)})
    stages = (stage.model_copy(update={"settings": {**stage.settings, "limit_pa_46bit": limit}}), *profile.stages[1:])
    res = resolve_settings(profile.model_copy(update={"stages": stages}), registry, bmc="r750")
    assert res.names["limit_pa_46bit"].attribute == "CpuPaLimit"
    assert res.names["limit_pa_46bit"].level == "display"
    assert res.names["limit_pa_46bit"].candidate == "CPU Physical Address Limit"


# ---------------------------------------------------------------- HPE


@pytest.mark.parametrize("model", sorted(HPE_AMD))
def test_hpe_snp_on_real_gen10_plus_registries(model):
    res = resolved("hpe", "snp", HPE_AMD[model], None)
    assert names(res) == {
        "smee": "AmdSecureMemoryEncryption",
        "iommu": "ProcAmdIoVt",
        "tsme": "TransparentSecureMemoryEncryption",
        "min_sev_asid": "MinimumSevAsid",
    }
    # the SNP switch (iLO 6 docs) is not in these Milan/Rome registries; RMP coverage is UNCONFIRMED
    assert set(res.missing) == {"snp", "snp_rmp_coverage"}


def test_hpe_tdx_on_the_real_dl380a_gen11_registry():
    res = resolved("hpe", "tdx", HPE_DL380A_REGISTRY, HPE_DL380A_BIOS)
    assert names(res) == {
        "limit_pa_46bit": "ProcessorPhysicalAddress",
        "tme": "Tme",
        "virtualization": "ProcVirtualization",
        "tme_mt": "MkTme",
        "sgx": "SgxEnable",
        "sgx_factory_reset": "SgxFactoryReset",
        "tdx": "TdxEnable",
        "seam_loader": "TdxSeamldrEnable",
        "tdx_key_split": "KeySplit",
    }
    assert not res.missing


# ---------------------------------------------------------------- Lenovo


def test_lenovo_tdx_on_the_real_sr670_v2_registry():
    res = resolved("lenovo", "tdx", LENOVO_REGISTRY, LENOVO_BIOS)
    assert names(res) == {
        "tme": "Processors_TotalMemoryEncryption",
        "tme_mt": "Processors_MultikeyTotalMemoryEncryption",
        "sgx": "Processors_SWGuardExtensions",
        "sgx_factory_reset": "Processors_SGXFactoryReset",
    }
    # Ice Lake: no TDX; these names come only from third-party scripts (cc-stack §1.4, §8)
    assert set(res.missing) == {
        "limit_pa_46bit",
        "tme_bypass",
        "memory_integrity",
        "tdx",
        "seam_loader",
        "cmr_exclude_below_1mb",
        "tdx_key_split",
    }
    assert all(bios_profile_for("lenovo", "tdx").setting(s).unconfirmed for s in res.missing)


# ---------------------------------------------------------------- Supermicro


def test_supermicro_tdx_on_the_real_sys_821ge_registry_by_suffix():
    res = resolved("supermicro", "tdx", SMC_REGISTRY, SMC_BIOS)
    assert names(res) == {
        "limit_pa_46bit": "LimitCPUPAto46Bits_F319",
        "tme": "MemoryEncryption_TME__3C77",
        "x2apic": "ExtendedAPIC_F281",
        "volatile_memory_mode": "VolatileMemoryMode_F302",
        "tme_mt": "TotalMemoryEncryptionMulti_Tenant_TME_MT__F31B",
        "tme_bypass": "TotalMemoryEncryption_TME_Bypass_3C78",
        "memory_integrity": "MemoryIntegrity_F31A",
        "tdx": "TrustDomainExtension_TDX__3C79",
        "seam_loader": "TDXSecureArbitrationModeLoader_SEAMLoader__3C7A",
        "sgx": "SWGuardExtensions_SGX__F308",
        "sgx_package_info_inband": "SGXPackageInfoIn_BandAccess_F30A",
        "sgx_factory_reset": "SGXFactoryReset_F317",
    }
    assert {n.level for n in res.names.values()} == {"suffix"}
    assert set(res.missing) == {"tdx_key_split"}  # optional in the profile: absent from this board


def test_supermicro_old_style_hash_suffixes_from_the_cns_playbook():
    # NVIDIA CNS reads SMEE#003E, SEV-SNPSupport#01A7 ... (cc-stack §1.5); no AMD Supermicro recording exists
    current = {
        "SEV-ESASIDSpaceLimit#700C": 1,
        "SEV-SNPSupport#01A7": "Disabled",
        "SMEE#003E": "Disabled",
        "IOMMU#0196": "Auto",
        "SNPMemory(RMPTable)Coverage#003C": "Auto",
    }
    res = resolve_settings(bios_profile_for("supermicro", "snp"), None, current, bmc="smc-amd")
    assert names(res) == {
        "smee": "SMEE#003E",
        "iommu": "IOMMU#0196",
        "snp": "SEV-SNPSupport#01A7",
        "snp_rmp_coverage": "SNPMemory(RMPTable)Coverage#003C",
        "min_sev_asid": "SEV-ESASIDSpaceLimit#700C",
    }


def test_supermicro_new_style_underscore_suffix_from_the_reference():
    current = {"TME_MT_TDXKeySplit_F31D": 0, "TrustDomainExtensions_TDX__F3A0": "Disabled"}
    res = resolve_settings(bios_profile_for("supermicro", "tdx"), None, current, bmc="smc")
    assert names(res)["tdx_key_split"] == "TME_MT_TDXKeySplit_F31D"
    assert names(res)["tdx"] == "TrustDomainExtensions_TDX__F3A0"


def test_two_attributes_with_one_normalised_name_are_ambiguous():
    # the SYS-821GE registry has TXTSupport_0062 and TXTSupport_0072 ('  TXT Support' twice)
    profile = bios_profile_for("supermicro", "tdx", overrides=None)
    stage = profile.stages[0]
    txt = profile.setting("tme").model_copy(update={"names": ("TXTSupport",), "display_names": ()})
    stages = (stage.model_copy(update={"settings": {**stage.settings, "tme": txt}}), *profile.stages[1:])
    res = resolve_settings(profile.model_copy(update={"stages": stages}), load(SMC_REGISTRY), bmc="smc")
    err = res.missing["tme"]
    assert "matches 2 attributes (TXTSupport_0062, TXTSupport_0072) by suffix" in str(err)
    assert "put the exact AttributeName first" in str(err)


# ---------------------------------------------------------------- generic


def test_generic_tdx_on_the_real_dgx_h100_bios():
    res = resolved("generic", "tdx", None, DGX_BIOS)
    assert names(res) == {
        "limit_pa_46bit": "CpuPaLimit",
        "tme": "EnableTme",
        "tme_mt": "EnableMktme",
        "tme_bypass": "EnableTmeBypass",
        "memory_integrity": "EnableGlobalIntegrity",
        "sgx": "EnableSgx",
        "sgx_factory_reset": "SgxFactoryReset",
    }
    assert set(res.missing) == {"tdx", "seam_loader", "tdx_key_split"}


@pytest.mark.parametrize("registry, bios", [(DMTF_REGISTRY, DMTF_BIOS), (METAL_REGISTRY, None)])
def test_generic_snp_on_dmtf_samples_has_nothing_to_bind(registry, bios):
    # the DMTF/sushy/metal-operator samples carry no CC attribute: every setting reports what it tried
    res = resolved("generic", "snp", registry, bios)
    assert not res.names
    err = res.missing["smee"]
    assert err.tried == ("SMEE", "CbsCmnCpuSmee", "Sme", "SMEE", "Secure Memory Encryption")
    assert "tried names SMEE, CbsCmnCpuSmee, Sme; display names 'SMEE', 'Secure Memory Encryption'" in str(err)


def test_close_names_are_suggested():
    current = {"SevSnpSupportEn": "Disabled", "SmeeEnable": "Disabled", "BootMode": "Uefi"}
    res = resolve_settings(bios_profile_for("generic", "snp"), None, current, bmc="node9 (BMC 10.0.0.9)")
    err = res.missing["snp"]
    assert "node9 (BMC 10.0.0.9): BIOS setting 'snp' (generic/snp, stage 'snp')" in str(err)
    assert "SevSnpSupportEn" in err.suggestions and "closest on this BMC: SevSnpSupportEn" in str(err)
    with pytest.raises(ResolutionError):
        res.attribute("snp")


# ---------------------------------------------------------------- values


def _info(registry: str, name: str, current: dict[str, Any] | None = None) -> AttributeInfo:
    info = AttributeRegistry.from_redfish(load(registry), current).get(name)
    assert info is not None
    return info


def test_supermicro_writes_the_display_value_and_accepts_both_forms():
    profile = bios_profile_for("supermicro", "tdx")
    info = _info(SMC_REGISTRY, "LimitCPUPAto46Bits_F319")  # ValueName 0/1, display Disable/Enable
    check = check_value(profile, profile.setting("limit_pa_46bit"), "Disabled", info)
    assert check.write == "Disable" and check.error is None
    assert check.satisfied_by("Disable") and check.satisfied_by("0") and not check.satisfied_by("Enable")


def test_dell_intel_sgx_enabled_is_written_as_on():
    profile = bios_profile_for("dell", "tdx")
    info = AttributeInfo("IntelSgx", type="Enumeration", values=(EnumValue("On", "On"), EnumValue("Off", "Off")))
    assert check_value(profile, profile.setting("sgx"), "Enabled", info).write == "On"


def test_value_not_in_the_registry_list_is_reported_with_the_allowed_values():
    profile = bios_profile_for("dell", "tdx")
    info = _info(DELL_R750_REGISTRY, "MemoryEncryption")
    check = check_value(profile, profile.setting("tme_mt"), "AllKeys", info)
    assert check.error == "value 'AllKeys' is not one the BMC allows"
    assert check.allowed == ("MultipleKeys (Multiple Keys)", "SingleKey (Single Key)", "Disabled")


def test_integer_bounds_come_from_the_registry():
    profile = bios_profile_for("hpe", "snp")
    info = _info(HPE_AMD["DL365 Gen10 Plus"], "MinimumSevAsid")  # Integer 1..510
    assert check_value(profile, profile.setting("min_sev_asid"), 100, info).error is None
    assert check_value(profile, profile.setting("min_sev_asid"), 600, info).error == "value 600 is outside 1..510"
    assert check_value(profile, profile.setting("min_sev_asid"), 100, info).satisfied_by("100")


def test_integer_setting_shown_as_an_enumeration():
    # CpuMinSevAsid was an Enumeration on older Dell BIOSes (cc-stack §1.2)
    profile = bios_profile_for("dell", "snp")
    info = AttributeInfo(
        "CpuMinSevAsid", type="Enumeration", values=(EnumValue("1"), EnumValue("100"), EnumValue("509"))
    )
    check = check_value(profile, profile.setting("min_sev_asid"), 100, info)
    assert check.write == "100" and check.satisfied_by(100) and check.satisfied_by("100")


def test_amd_cbs_value_aliases():
    profile = bios_profile_for("generic", "snp")
    info = AttributeInfo(
        "CbsCmnCpuSmee",
        type="Enumeration",
        values=(EnumValue("CbsCmnCpuSmeeDisabled"), EnumValue("CbsCmnCpuSmeeEnabled"), EnumValue("CbsCmnCpuSmeeAuto")),
    )
    assert check_value(profile, profile.setting("smee"), "Enabled", info).write == "CbsCmnCpuSmeeEnabled"


def test_without_a_registry_values_are_written_as_given():
    profile = bios_profile_for("dell", "snp")
    check = check_value(profile, profile.setting("smee"), "Enabled", None)
    assert check.write == "Enabled" and check.satisfied_by("Enabled") and check.satisfied_by("On")


def test_normalise():
    assert normalise("TME-MT/TDX key split") == normalise("TmeMtTdxKeySplit") == "tmemttdxkeysplit"

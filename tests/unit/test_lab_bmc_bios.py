"""Lab BMC BIOS semantics through the Flask test client (no network): pending vs applied,
apply on reset only, dependencies on APPLIED values, validation errors, ETag/If-Match,
staged TEE bring-up per vendor and the platform features it yields."""

from __future__ import annotations

import pytest

from ccfactory.lab.bmc.state import PowerOp, StateStore, platform_features_for
from ccfactory.lab.bmc.testing import PowerRecorder, make_bmc
from ccfactory.lab.platform import PlatformFeatures

# Stage order per vendor/TEE as cc-stack.md §1 (and the recorded dependencies) require:
# each stage needs the previous one APPLIED, i.e. a reset in between.
STAGES: dict[tuple[str, str], list[dict[str, object]]] = {
    ("dell", "snp"): [{"Sme": "Enabled"}, {"Snp": "Enabled", "CpuMinSevAsid": 100}, {"Rmp": "Enabled"}],
    ("dell", "tdx"): [
        {"NodeInterleave": "Disabled", "ProcX2Apic": "Enabled", "CpuPhysicalAddressLimit": "Disabled",
         "GlobalMemoryIntegrity": "Disabled", "IntelTxt": "On"},
        # rec: R750 1.13.2, MemoryEncryption is limited to SingleKey/Disabled while the PA limit is on
        {"MemoryEncryption": "MultipleKeys"},
        {"IntelSgx": "On", "IntelTdx": "Enabled", "TmeMtTdxKeySplit": 1, "TdxSeamLoader": "Enabled"},
    ],
    ("hpe", "snp"): [{"AmdSecureMemoryEncryption": "Enabled"},
                     {"AmdSecureNestedPaging": "Enabled", "MinimumSevAsid": 100}],
    ("hpe", "tdx"): [
        {"ProcessorPhysicalAddress": "Default", "Tme": "Enabled"},
        {"MkTme": "Enabled", "SgxEnable": "Enabled", "KeySplit": 1},
        {"TdxEnable": "Enabled"},
        {"TdxSeamldrEnable": "Enabled"},  # rec: U72, greyed out while TdxEnable is Disabled (Gen12)
    ],
    ("lenovo", "snp"): [
        {"Memory_SMEE": "Enabled"},
        {"Processors_SEV_SNPSupport": "Enabled", "Memory_SEV_ESASIDSpaceLimit": 100},
        {"Processors_SNPMemoryRMPTableCoverage": "Enabled"},
    ],
    ("lenovo", "tdx"): [
        {"Processors_TotalMemoryEncryption": "Enabled"},
        {"Processors_LimitCPUPAto46bits": "Disabled", "Processors_TotalMemoryEncryptionTMEBypass": "Auto",
         "Processors_MultikeyTotalMemoryEncryption": "Enabled", "Processors_Memoryintegrity": "Disabled",
         "Processors_TrustDomainExtensionTDX": "Enabled",
         "Processors_TDXSecureArbitrationModeLoaderSEAMLoader": "Enabled",
         "Processors_DisableexcludingMembelow1MBinCMR": "Auto", "Processors_TME_MTTDXkeysplit": 1,
         "Processors_SWGuardExtensions": "Enabled"},
        {"Processors_SGXFactoryReset": "Enabled"},
    ],
    ("supermicro", "snp"): [
        {"SMEE#003E": "Enabled", "IOMMU#0196": "Enabled"},
        {"SEV-SNPSupport#01A7": "Enabled", "SEV-ESASIDSpaceLimit#700C": 100},
        {"SNPMemory(RMPTable)Coverage#003C": "Enabled"},
    ],
    ("supermicro", "tdx"): [
        {"LimitCPUPAto46Bits_F319": "Disable", "MemoryEncryption_TME__3C77": "Enabled"},
        {"TotalMemoryEncryptionMulti_Tenant_TME_MT__F31B": "Enabled", "TotalMemoryEncryption_TME_Bypass_3C78": "Enabled"},
        {"TrustDomainExtension_TDX__3C79": "Enabled", "TDXSecureArbitrationModeLoader_SEAMLoader__3C7A": "Enabled"},
        {"TME_MT_TDXKeySplit_F31D": 1, "SWGuardExtensions_SGX__F308": "Enabled",
         "SGXPackageInfoIn_BandAccess_F30A": "Enabled"},
        {"SGXFactoryReset_F317": "Enabled"},
    ],
    ("generic", "snp"): [
        {"CbsCmnCpuSmee": "CbsCmnCpuSmeeEnabled"},
        {"CbsSevSnpSupport": "CbsSevSnpSupportEnable", "CbsCmnCpuSevAsidSpaceLimit": 100},
        {"CbsDbgCpuSnpMemCover": "CbsDbgCpuSnpMemCoverEnabled"},
    ],
    ("generic", "tdx"): [
        {"LimitCpuPa46Bits": "Disabled", "TmeEnable": "Enabled"},
        {"TmeMtEnable": "Enabled", "SgxEnable": "Enabled"},
        {"TdxEnable": "Enabled", "TdxSeamLoader": "Enabled", "TmeMtTdxKeySplit": 1},
        {"SgxFactoryReset": "Enabled"},
    ],
}
SNP_ON = dict(smee=True, snp=True, rmp_coverage=True, sev_es_asid_limit=100)
TDX_ON = dict(tme=True, tme_mt=True, tdx=True, seam_loader=True, sgx=True, tdx_key_split=1, limit_pa_46bit=False)


@pytest.fixture
def power() -> PowerRecorder:
    return PowerRecorder()


@pytest.mark.parametrize(("vendor", "tee"), sorted(STAGES))
def test_staged_bring_up_applies_only_on_reset_and_sets_platform_features(tmp_path, power, vendor, tee):
    bmc = make_bmc(tmp_path, vendor=vendor, tee=tee, power_fn=power)
    assert platform_features_for(tmp_path, "node1").snp is False
    for stage in STAGES[(vendor, tee)]:
        r = bmc.patch(bmc.paths.patch_target, _body(bmc, stage))
        assert r.status_code in (200, 202, 204), r.json
        # staged, not applied: the settings object shows it, Bios does not, hardware neither
        staged = bmc.get(bmc.paths.settings).json["Attributes"]
        assert all(staged[k] == v for k, v in stage.items())
        applied = bmc.get(bmc.paths.bios).json["Attributes"]
        before = platform_features_for(tmp_path, "node1")
        assert any(applied.get(k) != v for k, v in stage.items())
        assert bmc.reset("ForceRestart").status_code == 204
        assert bmc.wait_power("On") == "On"
        assert platform_features_for(tmp_path, "node1") != before or stage == STAGES[(vendor, tee)][-1]
    features = platform_features_for(tmp_path, "node1")
    expected = SNP_ON if tee == "snp" else TDX_ON
    assert {k: getattr(features, k) for k in expected} == expected
    assert bmc.get(bmc.paths.settings).json["Attributes"] in ({}, bmc.get(bmc.paths.bios).json["Attributes"])
    assert power.actions().count("force-restart") == len(STAGES[(vendor, tee)])


@pytest.mark.parametrize(("vendor", "tee"), sorted(STAGES))
def test_dependent_attribute_is_not_writable_until_its_prerequisite_is_applied(tmp_path, power, vendor, tee):
    bmc = make_bmc(tmp_path, vendor=vendor, tee=tee, power_fn=power)
    first, second = STAGES[(vendor, tee)][0], STAGES[(vendor, tee)][1]
    r = bmc.patch(bmc.paths.patch_target, _body(bmc, second))
    assert r.status_code == 400
    ids = {m["MessageId"] for m in r.json["error"]["@Message.ExtendedInfo"]}
    assert ids & {"Base.1.0.PropertyNotWritable", "Base.1.0.PropertyUnknown", "Base.1.0.PropertyValueNotInList"}
    # staging the prerequisite is not enough: it must be applied by a reset
    assert bmc.patch(bmc.paths.patch_target, _body(bmc, first)).status_code in (200, 202, 204)
    if bmc.paths.jobs:
        bmc.post(bmc.personality.paths.clear_pending)  # Dell refuses a second PATCH while a job waits
        assert bmc.patch(bmc.paths.patch_target, {"Attributes": first}).status_code == 200
    assert bmc.patch(bmc.paths.patch_target, {"Attributes": second}).status_code == 400
    bmc.stage_and_apply(first)
    assert bmc.patch(bmc.paths.patch_target, _body(bmc, second)).status_code in (200, 202, 204)


def test_tdx_attributes_are_absent_until_tme_mt_is_applied_dell(tmp_path, power):
    bmc = make_bmc(tmp_path, vendor="dell", tee="tdx", power_fn=power)
    attrs = bmc.get(bmc.paths.bios).json["Attributes"]
    assert "IntelTdx" not in attrs and "TdxSeamLoader" not in attrs
    registry = {a["AttributeName"]: a for a in bmc.get(bmc.paths.registry).json["RegistryEntries"]["Attributes"]}
    assert registry["IntelTdx"]["Hidden"] is True
    r = bmc.patch(bmc.paths.settings, {"Attributes": {"MemoryEncryption": "MultipleKeys", "IntelTdx": "Enabled"}})
    assert r.status_code == 400
    assert r.json["error"]["@Message.ExtendedInfo"][0]["RelatedProperties"] == ["#/Attributes/IntelTdx"]
    bmc.stage_and_apply({"CpuPhysicalAddressLimit": "Disabled"})
    bmc.stage_and_apply({"MemoryEncryption": "MultipleKeys"})
    assert bmc.get(bmc.paths.bios).json["Attributes"]["IntelTdx"] == "Disabled"


def test_a_value_limited_by_an_applied_setting_is_refused_on_patch_and_at_post(tmp_path, power):
    bmc = make_bmc(tmp_path, vendor="dell", tee="tdx", power_fn=power)
    registry = bmc.get(bmc.paths.registry).json["RegistryEntries"]["Dependencies"]
    (limit,) = [d["Dependency"] for d in registry if d["Dependency"]["MapToProperty"] == "Value"]
    assert [v["ValueName"] for v in limit["MapToValue"]] == ["SingleKey", "Disabled"]
    # the PA limit is applied (factory Enabled): MultipleKeys is refused, even with the limit staged off
    r = bmc.patch(bmc.paths.settings, {"Attributes": {"CpuPhysicalAddressLimit": "Disabled",
                                                      "MemoryEncryption": "MultipleKeys"}})
    assert r.status_code == 400
    (info,) = r.json["error"]["@Message.ExtendedInfo"]
    assert info["MessageId"] == "Base.1.0.PropertyValueNotInList"
    assert info["RelatedProperties"] == ["#/Attributes/MemoryEncryption"]
    assert bmc.patch(bmc.paths.settings, {"Attributes": {"MemoryEncryption": "SingleKey"}}).status_code in (200, 202)


def test_a_staged_value_the_bios_locks_by_post_time_is_not_applied(tmp_path, power):
    # HPE Gen12 (rec: U72): the SEAM loader is greyed out while TdxEnable is Disabled
    bmc = make_bmc(tmp_path, vendor="hpe", tee="tdx", power_fn=power)
    for stage in STAGES[("hpe", "tdx")][:3]:
        bmc.stage_and_apply(stage)
    store = StateStore(tmp_path, bmc.spec.node)
    with store.transaction() as state:  # staged while the rule did not hold, as after a PATCH race
        state.applied["TdxEnable"] = "Disabled"
        state.pending["TdxSeamldrEnable"] = "Enabled"
    bmc.reset()
    bmc.wait_power("On")
    assert bmc.get(bmc.paths.bios).json["Attributes"]["TdxSeamldrEnable"] == "Disabled"
    messages = bmc.get(bmc.paths.bios).json["@Redfish.Settings"]["Messages"]
    assert [m["MessageId"] for m in messages] == ["Base.1.0.SettingsFailed"]


@pytest.mark.parametrize("vendor", ["dell", "hpe", "lenovo", "supermicro", "generic"])
def test_bad_value_unknown_attribute_and_range_give_400_with_extended_info(tmp_path, power, vendor):
    bmc = make_bmc(tmp_path, vendor=vendor, tee="snp", power_fn=power)
    smee = next(iter(STAGES[(vendor, "snp")][0]))
    r = bmc.patch(bmc.paths.patch_target, {"Attributes": {smee: "Sometimes", "NoSuchAttribute": 1}})
    assert r.status_code == 400
    info = r.json["error"]["@Message.ExtendedInfo"]
    by_prop = {m["RelatedProperties"][0]: m for m in info}
    assert by_prop[f"#/Attributes/{smee}"]["MessageId"] == "Base.1.0.PropertyValueNotInList"
    assert by_prop["#/Attributes/NoSuchAttribute"]["MessageId"] == "Base.1.0.PropertyUnknown"
    assert all(m["Message"] and m["Resolution"] for m in info)
    assert bmc.get(bmc.paths.settings).json["Attributes"] == ({} if bmc.personality.bios.settings_view == "pending"
                                                              else bmc.get(bmc.paths.bios).json["Attributes"])
    # integers: type and bounds come from the registry
    bmc.stage_and_apply(STAGES[(vendor, "snp")][0])
    asid = next(k for k in STAGES[(vendor, "snp")][1] if isinstance(STAGES[(vendor, "snp")][1][k], int))
    for bad, msg_id in ((100000, "PropertyValueOutOfRange"), ("100", "PropertyValueTypeError")):
        r = bmc.patch(bmc.paths.patch_target, {"Attributes": {asid: bad}})
        assert r.status_code == 400
        assert r.json["error"]["@Message.ExtendedInfo"][0]["MessageId"] == f"Base.1.0.{msg_id}"


def test_read_only_information_attribute_is_refused(tmp_path, power):
    bmc = make_bmc(tmp_path, vendor="dell", tee="snp", power_fn=power)
    r = bmc.patch(bmc.paths.settings, {"Attributes": {"SystemModelName": "PowerEdge R1"}})
    assert r.status_code == 400
    assert r.json["error"]["code"] == "Base.1.0.PropertyNotWritable"


def test_malformed_bodies(tmp_path, power):
    bmc = make_bmc(tmp_path, vendor="generic", tee="snp", power_fn=power)
    r = bmc.client.patch(bmc.paths.settings, data=b"{not json", auth=bmc.auth,
                         headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and r.json["error"]["code"] == "Base.1.0.MalformedJSON"
    assert bmc.patch(bmc.paths.settings, {"ProcTurboMode": "Disabled"}).status_code == 400  # no Attributes wrapper
    r = bmc.patch(bmc.paths.settings, {"Attributes": {"ProcTurboMode": "Disabled"},
                                       "@Redfish.SettingsApplyTime": {"ApplyTime": "Immediate"}})
    assert r.status_code == 400 and "ApplyTime" in r.json["error"]["message"]


@pytest.mark.parametrize("vendor", ["dell", "hpe", "lenovo", "supermicro", "generic"])
def test_etag_if_match_stale_gives_412_current_and_star_pass(tmp_path, power, vendor):
    bmc = make_bmc(tmp_path, vendor=vendor, tee="none", power_fn=power)
    target = bmc.paths.patch_target
    attr, values = _some_writable(bmc)
    etag = bmc.get(target).headers["ETag"]
    assert etag == bmc.get(target).json["@odata.etag"]
    r = bmc.patch(target, {"Attributes": {attr: values[0]}}, headers={"If-Match": etag})
    assert r.status_code in (200, 204)
    new_etag = bmc.get(target).headers["ETag"]
    assert new_etag != etag
    r = bmc.patch(target, {"Attributes": {attr: values[1]}}, headers={"If-Match": etag})
    assert r.status_code == 412
    assert r.json["error"]["code"] == "Base.1.0.PreconditionFailed"
    assert bmc.patch(target, {"Attributes": {attr: values[1]}}, headers={"If-Match": new_etag}).status_code < 300
    assert bmc.patch(target, {"Attributes": {attr: values[0]}}, headers={"If-Match": "*"}).status_code < 300


def test_bios_etag_changes_only_when_a_reset_applies(tmp_path, power):
    bmc = make_bmc(tmp_path, vendor="hpe", tee="snp", power_fn=power)
    etag = bmc.get(bmc.paths.bios).headers["ETag"]
    assert etag.startswith('W/"')  # iLO ETags are weak, as recorded
    bmc.patch(bmc.paths.settings, {"Attributes": {"AmdSecureMemoryEncryption": "Enabled"}})
    assert bmc.get(bmc.paths.bios).headers["ETag"] == etag
    bmc.reset("ForceRestart")
    bmc.wait_power("On")
    assert bmc.get(bmc.paths.bios).headers["ETag"] != etag


@pytest.mark.parametrize("vendor", ["hpe", "lenovo", "generic"])
def test_settings_status_is_reported_in_redfish_settings(tmp_path, power, vendor):
    bmc = make_bmc(tmp_path, vendor=vendor, tee="snp", power_fn=power)
    settings = bmc.get(bmc.paths.bios).json["@Redfish.Settings"]
    assert settings["SettingsObject"]["@odata.id"] == bmc.paths.settings
    assert settings["Time"] is None
    bmc.stage_and_apply(STAGES[(vendor, "snp")][0])
    settings = bmc.get(bmc.paths.bios).json["@Redfish.Settings"]
    assert settings["Time"] and settings["Messages"][0]["MessageId"] == "Base.1.0.Success"
    assert settings["ETag"] == bmc.get(bmc.paths.settings).headers["ETag"]


def test_settings_apply_time_is_echoed_in_the_settings_object(tmp_path, power):
    bmc = make_bmc(tmp_path, vendor="generic", tee="none", power_fn=power)
    r = bmc.patch(bmc.paths.settings, {"Attributes": {"ProcTurboMode": "Disabled"},
                                       "@Redfish.SettingsApplyTime": {"ApplyTime": "InMaintenanceWindowOnReset"}})
    assert r.status_code == 204
    body = bmc.get(bmc.paths.settings).json
    assert body["@Redfish.SettingsApplyTime"]["ApplyTime"] == "InMaintenanceWindowOnReset"
    assert bmc.get(bmc.paths.bios).json["@Redfish.Settings"]["SupportedApplyTimes"] == [
        "OnReset", "InMaintenanceWindowOnReset"]


def test_reset_bios_stages_factory_defaults(tmp_path, power):
    bmc = make_bmc(tmp_path, vendor="lenovo", tee="snp", power_fn=power)
    bmc.stage_and_apply({"Memory_SMEE": "Enabled"})
    assert bmc.post(bmc.personality.paths.reset_bios).status_code == 204
    assert bmc.get(bmc.paths.settings).json["Attributes"]["Memory_SMEE"] == "Disabled"
    bmc.reset("ForceRestart")
    bmc.wait_power("On")
    assert platform_features_for(tmp_path, "node1").smee is False


def test_state_survives_an_emulator_restart(tmp_path, power):
    bmc = make_bmc(tmp_path, vendor="supermicro", tee="snp", power_fn=power)
    bmc.stage_and_apply({"SMEE#003E": "Enabled"})
    bmc.patch(bmc.paths.settings, {"Attributes": {"SEV-SNPSupport#01A7": "Enabled"}})
    again = make_bmc(tmp_path, vendor="supermicro", tee="snp", power_fn=power)  # a new process, same lab dir
    assert again.get(again.paths.bios).json["Attributes"]["SMEE#003E"] == "Enabled"
    assert again.get(again.paths.settings).json["Attributes"] == {"SEV-SNPSupport#01A7": "Enabled"}
    state = StateStore(tmp_path, "node1").load()
    assert state.boots == 1 and state.vendor == "supermicro"


def test_platform_features_defaults_without_state_and_error_without_bmc(tmp_path):
    from ccfactory.lab.bmc.spec import BmcSpec, write_spec
    from ccfactory.lab.errors import LabError

    write_spec(tmp_path, BmcSpec.for_node("node7", 7, vendor="hpe", tee="snp"))
    assert platform_features_for(tmp_path, "node7") == PlatformFeatures()
    with pytest.raises(LabError, match="has no BMC"):
        platform_features_for(tmp_path, "node8")


def _body(bmc, attrs):
    body = {"Attributes": dict(attrs)}
    if bmc.paths.jobs:  # Dell applies only through a config job: ask for one
        body["@Redfish.SettingsApplyTime"] = {"ApplyTime": "OnReset"}
    return body


def _some_writable(bmc):
    p = bmc.personality
    flags = p.flags(bmc.spec.tee, p.defaults(bmc.spec.tee))
    for name, attr in p.attributes_for(bmc.spec.tee).items():
        if attr.type == "Enumeration" and not any(flags[name].values()) and len(attr.values) >= 2:
            current = p.defaults(bmc.spec.tee)[name]
            others = [v for v in p.accepted_values(attr) if v != current]
            return name, [others[0], current]  # the first PATCH really changes something
    raise AssertionError("no writable enumeration")


def test_a_reboot_the_bmc_did_not_order_still_runs_post(tmp_path, power):
    """The lab supervisor calls apply_pending_on_boot before every boot (e.g. `systemctl reboot`)."""
    from ccfactory.lab.bmc.state import apply_pending_on_boot

    bmc = make_bmc(tmp_path, vendor="lenovo", tee="snp", power_fn=power)
    bmc.patch(bmc.paths.settings, {"Attributes": {"Memory_SMEE": "Enabled"}})
    assert apply_pending_on_boot(tmp_path, "node1") is True
    assert platform_features_for(tmp_path, "node1").smee is True
    assert bmc.get(bmc.paths.settings).json["Attributes"]["Memory_SMEE"] == "Enabled"
    # a boot caused by the BMC's own reset already ran POST: the hook must not run it again
    bmc.patch(bmc.paths.settings, {"Attributes": {"Processors_SEV_SNPSupport": "Enabled"}})
    with StateStore(tmp_path, "node1").transaction() as state:
        state.power.op = PowerOp(kind="ForceRestart", boot=True, started=0.0)
    assert apply_pending_on_boot(tmp_path, "node1") is False
    assert apply_pending_on_boot(tmp_path, "node9") is False  # no BMC, nothing to do


def test_a_reset_whose_node_boots_late_is_still_one_post(tmp_path):
    """CI failure of 2026-12-07: a GracefulRestart whose shutdown outlived the power action's
    wait ended the reset with an error, and the node's late boot then ran POST a second time
    (the BMC counted 4 boots for 2 passes). One reset is one POST, however long the node takes."""
    from ccfactory.lab.bmc.state import apply_pending_on_boot

    def slow_power(lab_dir, node, action):
        if action == "status":
            return "on"
        raise RuntimeError("node node1: power restart: did not take effect within 60 s")

    bmc = make_bmc(tmp_path, vendor="hpe", tee="snp", power_fn=slow_power)
    boots = StateStore(tmp_path, "node1").load().boots
    assert bmc.reset("GracefulRestart").status_code == 204
    bmc.wait_power("On")  # the failed power action settles the reset
    state = StateStore(tmp_path, "node1").load()
    assert state.power.op is None and state.boots == boots + 1
    assert apply_pending_on_boot(tmp_path, "node1") is False  # the node's late boot: the reset's own
    assert StateStore(tmp_path, "node1").load().boots == boots + 1
    assert apply_pending_on_boot(tmp_path, "node1") is True  # the boot after it is the node's own
    assert StateStore(tmp_path, "node1").load().boots == boots + 2


def test_dell_self_reboot_runs_a_scheduled_job_but_not_bare_pending(tmp_path, power):
    from ccfactory.lab.bmc.state import apply_pending_on_boot

    bmc = make_bmc(tmp_path, vendor="dell", tee="snp", power_fn=power)
    bmc.patch(bmc.paths.settings, {"Attributes": {"Sme": "Enabled"}})
    apply_pending_on_boot(tmp_path, "node1")
    assert platform_features_for(tmp_path, "node1").smee is False
    bmc.post(bmc.personality.paths.clear_pending)
    r = bmc.patch(bmc.paths.settings, {"Attributes": {"Sme": "Enabled"},
                                       "@Redfish.SettingsApplyTime": {"ApplyTime": "OnReset"}})
    apply_pending_on_boot(tmp_path, "node1")
    assert platform_features_for(tmp_path, "node1").smee is True
    assert bmc.get(r.headers["Location"]).json["JobState"] == "Completed"


def test_factory_reset_restores_defaults(tmp_path, power):
    from ccfactory.lab.bmc.state import reset

    bmc = make_bmc(tmp_path, vendor="generic", tee="snp", power_fn=power)
    bmc.stage_and_apply(STAGES[("generic", "snp")][0])
    bmc.patch(bmc.paths.settings, {"Attributes": STAGES[("generic", "snp")][1]})
    reset(tmp_path, "node1")
    assert platform_features_for(tmp_path, "node1") == PlatformFeatures()
    assert bmc.get(bmc.paths.settings).json["Attributes"] == bmc.get(bmc.paths.bios).json["Attributes"]
    reset(tmp_path, "node9")  # unknown node: nothing to do

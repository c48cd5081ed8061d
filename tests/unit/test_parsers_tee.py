"""SEV-SNP / TDX host status from kernel log lines and sysfs.

No SNP or TDX host was recorded (the GPU recordings are VMs without a CPU TEE); that
negative case is tested on the recording. Positive and failure cases use lines built
from the kernel's own format strings (docs/formats.md lists each source).
"""

from __future__ import annotations

import pytest
from support import FIXTURES

from ccfactory.parsers.tee import (
    SECTION_CMDLINE,
    SECTION_CPUFLAGS,
    SECTION_DEVICES,
    SECTION_DMESG,
    SECTION_DMESG_SOURCE,
    SECTION_MODULES,
    SECTION_PARAMS,
    parse_snp_log,
    parse_tdx_log,
    parse_tee_sections,
)

KVM_AMD = "/sys/module/kvm_amd/parameters/"
KVM_INTEL = "/sys/module/kvm_intel/parameters/"
CMDLINE = "BOOT_IMAGE=/boot/vmlinuz-6.17.0-5-generic root=UUID=6b1c ro quiet splash"

SNP_GOOD_LOG = (
    "[    0.000000] SEV-SNP: RMP table physical range [0x000000bf7e800000 - 0x000000c03f0fffff]",
    "[    1.010000] AMD-Vi: IOMMU SNP support enabled.",
    "[    4.300000] ccp 0000:02:00.1: SEV-SNP API:1.55 build:21",
    "[    4.400000] kvm_amd: SEV enabled (ASIDs 100 - 509)",
    "[    4.400000] kvm_amd: SEV-ES enabled (ASIDs 1 - 99)",
    "[    4.400000] kvm_amd: SEV-SNP enabled (ASIDs 1 - 99)",
)


def snp_host(
    log=SNP_GOOD_LOG,
    cmdline=CMDLINE,
    params=(("sev", "Y"), ("sev_es", "Y"), ("sev_snp", "Y")),
    devices=("/dev/sev", "/dev/kvm"),
    source="dmesg",
    modules=("kvm_amd 217088 0 - Live 0x0", "kvm 1400832 1 kvm_amd, Live 0x0", "ccp 139264 1 kvm_amd, Live 0x0"),
):
    return parse_tee_sections(
        {
            SECTION_CMDLINE: (cmdline,),
            SECTION_CPUFLAGS: ("flags\t\t: fpu vme svm sme sev sev_es sev_snp",),
            SECTION_MODULES: tuple(modules),
            SECTION_PARAMS: tuple(f"{KVM_AMD}{k}={v}" for k, v in params),
            SECTION_DEVICES: tuple(devices),
            SECTION_DMESG_SOURCE: (source,),
            SECTION_DMESG: tuple(log),
        }
    )


def names(results):
    return [c.name for c in results]


# ------------------------------------------------------------------ SNP


def test_snp_good_host():
    snp = snp_host().snp
    assert snp.kvm_amd_loaded and (snp.sev, snp.sev_es, snp.sev_snp) == (True, True, True) and snp.dev_sev
    assert [str(a) for a in snp.asids] == [
        "SEV enabled (ASIDs 100 - 509)",
        "SEV-ES enabled (ASIDs 1 - 99)",
        "SEV-SNP enabled (ASIDs 1 - 99)",
    ]
    assert snp.asid("SEV-SNP").count == 99 and snp.asid("SEV").count == 410
    assert snp.rmp_seen and snp.log.rmp_range == (0xBF7E800000, 0xC03F0FFFFF)
    assert str(snp.firmware) == "1.55 build 21" and snp.firmware.snp_initialized
    assert not snp.iommu_passthrough_warning
    assert snp.failed == () and snp.active
    assert all(c.ok is not False for c in snp.checks)


def test_snp_sev_es_asid_limit_left_at_bios_default():
    log = (
        "SEV-SNP: RMP table physical range [0x000000bf7e800000 - 0x000000c03f0fffff]",
        "kvm_amd: SEV enabled (ASIDs 1 - 509)",
        "kvm_amd: SEV-ES disabled (ASIDs 0 - 0)",
        "kvm_amd: SEV-SNP disabled (ASIDs 0 - 0)",
    )
    snp = snp_host(log=log, params=(("sev", "Y"), ("sev_es", "N"), ("sev_snp", "N"))).snp
    assert not snp.active
    assert names(snp.failed) == ["sev_es_asids", "snp_asids", "kvm_amd_sev_snp"]
    first = snp.failed[0]
    assert first.detail == "kvm_amd: SEV-ES disabled (ASIDs 0 - 0)"
    assert "raise the SEV-ES ASID Space Limit in BIOS" in first.hint


def test_snp_iommu_pt_on_the_command_line():
    log = (
        SNP_GOOD_LOG[0],  # the RMP is probed before the IOMMU, so this line is still there
        "[    0.9] AMD-Vi: SNP: IOMMU disabled or configured in passthrough mode, SNP cannot be supported.",
        "kvm_amd: SEV enabled (ASIDs 100 - 509)",
        "kvm_amd: SEV-ES enabled (ASIDs 1 - 99)",
        "kvm_amd: SEV-SNP disabled (ASIDs 1 - 99)",
    )
    snp = snp_host(log=log, cmdline=CMDLINE + " iommu=pt", params=(("sev", "Y"), ("sev_es", "Y"), ("sev_snp", "N"))).snp
    assert snp.iommu_passthrough_warning
    assert names(snp.failed) == ["iommu_not_passthrough", "snp_asids", "kvm_amd_sev_snp"]
    iommu = snp.failed[0]
    assert "iommu=pt puts the IOMMU in passthrough mode" in iommu.detail
    assert iommu.hint.startswith("remove iommu=pt from GRUB_CMDLINE_LINUX_DEFAULT")


def test_snp_iommu_off_in_bios_has_no_command_line_culprit():
    log = ("AMD-Vi: SNP: IOMMU disabled or configured in passthrough mode, SNP cannot be supported.",)
    snp = snp_host(log=log + SNP_GOOD_LOG[:1] + SNP_GOOD_LOG[3:5], params=(("sev_snp", "N"),)).snp
    iommu = snp.failed[0]
    assert iommu.name == "iommu_not_passthrough" and "enable the IOMMU in BIOS" in iommu.hint


@pytest.mark.parametrize("token", ["iommu=off", "amd_iommu=off", "iommu.passthrough=1"])
def test_snp_other_command_lines_that_disable_it(token):
    snp = snp_host(cmdline=f"{CMDLINE} {token}").snp
    assert names(snp.failed) == ["iommu_not_passthrough"] and token in snp.failed[0].hint


def test_snp_rmp_not_reserved_by_bios():
    log = ("[    0.0] SEV-SNP: Memory for the RMP table has not been reserved by BIOS",)
    snp = snp_host(log=log, params=(("sev", "Y"), ("sev_es", "N"), ("sev_snp", "N"))).snp
    rmp = next(c for c in snp.failed if c.name == "rmp_table")
    assert "SNP Memory (RMP Table) Coverage" in rmp.hint


def test_snp_psp_init_failure_and_old_firmware():
    log = (
        *SNP_GOOD_LOG,
        "ccp 0000:02:00.1: SEV-SNP: failed to INIT rc -5, error 0x3",
        "ccp 0000:02:00.1: SEV API:1.49 build:3",
    )
    snp = snp_host(log=tuple(x for x in log if "SEV-SNP API" not in x)).snp
    assert names(snp.failed) == ["psp_snp_init", "sev_firmware"]
    assert snp.failed[0].detail == "SEV-SNP: failed to INIT rc -5, error 0x3"
    assert "older than 1.51" in snp.failed[1].detail


def test_snp_firmware_below_155_is_a_warning():
    log = tuple(x.replace("1.55", "1.52") for x in SNP_GOOD_LOG)
    snp = snp_host(log=log).snp
    assert snp.failed == () and snp.active
    [warning] = [c for c in snp.checks if c.warned]
    assert warning.name == "sev_firmware" and "v3 attestation reports" in warning.detail


def test_snp_missing_dev_sev_and_kvm_amd():
    snp = snp_host(devices=(), modules=(), params=()).snp
    assert names(snp.failed)[:1] == ["kvm_amd_loaded"] and "dev_sev" in names(snp.failed)
    assert "modprobe ccp" in next(c for c in snp.failed if c.name == "dev_sev").hint


def test_snp_lab_log_file_is_a_log_source():
    snp = snp_host(source="/var/log/ccfactory-lab/dmesg").snp
    assert snp.active and snp.checks[0].detail == "kernel log read from /var/log/ccfactory-lab/dmesg"


def test_snp_unreadable_log_gives_unknown_not_failure():
    snp = snp_host(log=(), source="none").snp
    assert snp.failed == ()  # sysfs says sev_snp=Y; log-only checks cannot decide
    unknown = {c.name for c in snp.checks if c.ok is None}
    assert {"rmp_table", "sev_es_asids", "snp_asids"} <= unknown
    assert snp.checks[0].warned and "sudo" in snp.checks[0].hint


def test_snp_log_wrapped_but_sysfs_on():
    snp = snp_host(log=()).snp
    assert snp.failed == () and snp.active


def test_snp_offlined_cpus_warn():
    snp = snp_host(cmdline=CMDLINE + " nosmt").snp
    assert snp.active and [c.name for c in snp.checks if c.warned] == ["cpus_online"]


def test_snp_status_from_the_recorded_vm_without_tee():
    path = FIXTURES / "nvidia-h100-real" / "host.txt"
    if not path.is_file():
        pytest.fail("recording missing: tests/fixtures is part of the repository")
    text = path.read_text()
    dmesg = text.split("== dmesg cc\n")[1].split("== driver version")[0].splitlines()
    # the recording kept the model name and the TEE-relevant flags ("hypervisor"); rebuild a flags line
    recorded = text.split("== cpuinfo model/flags\n")[1].split("== kvm params")[0].splitlines()
    flags = " ".join(line for line in recorded if not line.startswith("model name"))
    status = parse_tee_sections(
        {SECTION_CPUFLAGS: (f"flags\t\t: {flags}",), SECTION_DMESG_SOURCE: ("dmesg",), SECTION_DMESG: tuple(dmesg)}
    )
    assert status.inputs.cpu_flags == {"hypervisor"}
    assert status.snp.log == parse_snp_log([]) and status.tdx.log == parse_tdx_log([])
    assert not status.snp.active and not status.tdx.active
    assert names(status.snp.failed)[:3] == ["kvm_amd_loaded", "cpu_sev_snp", "rmp_table"]
    assert "kvm_intel_loaded" in names(status.tdx.failed)


# ------------------------------------------------------------------ TDX

TDX_GOOD_LOG = (
    "[    0.620000] virt/tdx: BIOS enabled: private KeyID range [64, 128)",
    "[    0.620000] virt/tdx: Disable ACPI S3. Turn off TDX in the BIOS to use ACPI S3.",
    "[    4.400000] virt/tdx: TDX module: attributes 0x0, vendor_id 0x8086, major_version 1, minor_version 5, "
    "build_date 20230323, build_num 481",
    "[    4.500000] virt/tdx: 1050644 KB allocated for PAMT",
    "[    4.520000] virt/tdx: module initialized",
)


def tdx_host(log=TDX_GOOD_LOG, cmdline=CMDLINE + " nohibernate kvm_intel.tdx=1", tdx="Y", source="dmesg"):
    return parse_tee_sections(
        {
            SECTION_CMDLINE: (cmdline,),
            SECTION_MODULES: ("kvm_intel 462848 0 - Live 0x0",),
            SECTION_PARAMS: (f"{KVM_INTEL}tdx={tdx}",) if tdx else (),
            SECTION_DEVICES: ("/dev/kvm",),
            SECTION_DMESG_SOURCE: (source,),
            SECTION_DMESG: tuple(log),
        }
    ).tdx


def test_tdx_good_host_with_older_version_line():
    tdx = tdx_host()
    assert tdx.tdx is True and tdx.module_initialized and tdx.kvm_intel_loaded
    assert tdx.log.keyid_range == (64, 128) and tdx.log.pamt_kb == 1050644
    v = tdx.module_version
    assert (v.major, v.minor, v.build_date, v.build_num, v.vendor_id) == (1, 5, 20230323, 481, "0x8086")
    assert str(v) == "1.5 build 481 (20230323)"
    assert tdx.failed == () and tdx.active and all(c.ok for c in tdx.checks)


def test_tdx_newer_version_line_and_tdx_module_wording():
    log = (TDX_GOOD_LOG[0], "virt/tdx: Module version: 1.5.06", "virt/tdx: TDX-Module initialized")
    tdx = tdx_host(log=log)
    assert str(tdx.module_version) == "1.5.06" and tdx.module_initialized and tdx.active


def test_tdx_hibernation_blocks_init():
    log = (TDX_GOOD_LOG[0], "virt/tdx: initialization failed: Hibernation support is enabled")
    tdx = tdx_host(log=log, cmdline=CMDLINE, tdx="N")
    assert names(tdx.failed) == ["tdx_nohibernate", "tdx_module", "kvm_intel_tdx"]
    assert "add nohibernate" in tdx.failed[0].hint


def test_tdx_old_module_fails_to_initialize():
    tdx = tdx_host(log=(TDX_GOOD_LOG[0], "virt/tdx: module initialization failed (-5)"), tdx="N")
    module = next(c for c in tdx.failed if c.name == "tdx_module")
    assert (
        module.detail == "virt/tdx: module initialization failed (-5)" and "update the BIOS / TDX module" in module.hint
    )


def test_tdx_seam_loader_off():
    tdx = tdx_host(log=(TDX_GOOD_LOG[0], "virt/tdx: module not loaded"), tdx="N")
    assert "SEAM loader" in next(c for c in tdx.failed if c.name == "tdx_module").hint


def test_tdx_bios_off():
    tdx = tdx_host(log=("virt/tdx: TDX not supported by the host platform",), tdx="N")
    keyids = tdx.failed[0]
    assert keyids.name == "tdx_keyids" and "TME-MT" in keyids.hint


def test_tdx_param_off_only():
    tdx = tdx_host(log=TDX_GOOD_LOG[:2], cmdline=CMDLINE + " nohibernate", tdx="N")
    assert names(tdx.failed) == ["tdx_module", "kvm_intel_tdx"]
    assert "options kvm_intel tdx=1" in tdx.failed[1].hint


def test_tdx_kernel_without_kvm_tdx():
    tdx = tdx_host(tdx=None, log=())
    param = next(c for c in tdx.failed if c.name == "kvm_intel_tdx")
    assert "missing" in param.detail and "6.16" in param.hint


def test_tdx_without_nohibernate_is_a_warning_when_initialized():
    tdx = tdx_host(cmdline=CMDLINE)
    assert tdx.active and [c.name for c in tdx.checks if c.warned] == ["tdx_nohibernate"]


def test_tdx_dependent_checks_point_at_the_bios_cause():
    # BIOS has TDX off but kvm_intel.tdx=1 was requested: KVM leaves the parameter at N
    tdx = tdx_host(log=("[0.1] Linux version 6.17.0",), tdx="N")
    assert names(tdx.failed) == ["tdx_keyids", "tdx_module", "kvm_intel_tdx"]
    assert all("TDX is off in BIOS (tdx_keyids)" in c.hint for c in tdx.failed[1:])


def test_snp_dependent_checks_point_at_the_cause():
    log = ("kvm_amd: SEV enabled (ASIDs 1 - 509)", "kvm_amd: SEV-ES disabled (ASIDs 0 - 0)")
    snp = snp_host(
        log=(SNP_GOOD_LOG[0], *log, "kvm_amd: SEV-SNP disabled (ASIDs 0 - 0)"), params=(("sev_snp", "N"),)
    ).snp
    snp_line, param = snp.failed[1:]
    assert "no ASIDs for SEV-ES/SNP (sev_es_asids)" in snp_line.hint and snp_line.hint == param.hint

"""The lab's hardware renderer: a pure function of BIOS state, boot config and profile."""

from __future__ import annotations

import pytest

from ccfactory.lab.bootconfig import BootConfig, ModprobeConfig, parse_modprobe, parse_vfio_conf
from ccfactory.lab.gpustate import GpuDeviceState, GpuState
from ccfactory.lab.hwprofile import load_profile, profile_names
from ccfactory.lab.platform import PlatformFeatures
from ccfactory.lab.render import (
    DMESG_PATH,
    HARDWARE_JSON,
    SNP_IOMMU_MESSAGE,
    VFIO_DRIVER_LINK,
    CharDevice,
    Directory,
    RenderInput,
    Symlink,
    hardware_state,
    render,
)

AMD = load_profile("amd-snp-hgx")
INTEL = load_profile("intel-tdx")
PLAIN = load_profile("plain")

SNP_ON = PlatformFeatures(smee=True, snp=True, rmp_coverage=True, sev_es_asid_limit=100)
TDX_ON = PlatformFeatures(tme=True, tme_mt=True, tdx=True, seam_loader=True, tdx_key_split=1, limit_pa_46bit=False)


def boot(profile, extra_cmdline: str = "", modprobe: str = "", vfio: str = "") -> BootConfig:
    cmdline = profile.kernel["cmdline"] + (" " + extra_cmdline if extra_cmdline else "")
    return BootConfig(cmdline, parse_modprobe([modprobe]) if modprobe else ModprobeConfig(), parse_vfio_conf(vfio))


def files_for(profile, features, **kw) -> dict:
    return render(RenderInput("node1", profile, features, boot(profile, **kw)))


def dmesg(files) -> str:
    return files[DMESG_PATH]


# ------------------------------------------------------------------ SNP


def test_snp_on_when_bios_enables_smee_snp_and_rmp():
    f = files_for(AMD, SNP_ON)
    assert f["/sys/module/kvm_amd/parameters/sev"] == "Y\n"
    assert f["/sys/module/kvm_amd/parameters/sev_es"] == "Y\n"
    assert f["/sys/module/kvm_amd/parameters/sev_snp"] == "Y\n"
    assert "kvm_amd: SEV-SNP enabled (ASIDs 1 - 99)" in dmesg(f)
    assert "kvm_amd: SEV enabled (ASIDs 100 - 509)" in dmesg(f)
    assert "SEV-SNP: RMP table physical range" in dmesg(f)
    assert "ccp 0000:02:00.1: SEV-SNP API:1.55 build:21" in dmesg(f)
    assert isinstance(f["/dev/sev"], CharDevice)
    flags = f["/proc/cpuinfo"].split("flags\t\t: ")[1].split("\n")[0].split()
    assert {"sme", "sev", "sev_es", "sev_snp"} <= set(flags)


def test_factory_bios_has_no_sev_at_all():
    f = files_for(AMD, PlatformFeatures())
    assert f["/sys/module/kvm_amd/parameters/sev_snp"] == "N\n"
    assert f["/sys/module/kvm_amd/parameters/sev"] == "N\n"
    assert "/dev/sev" not in f
    assert "sev" not in f["/proc/cpuinfo"].split()  # no flags without SMEE
    assert "kvm_amd: SEV" not in dmesg(f)  # the kernel prints nothing when the CPU shows no SEV


@pytest.mark.parametrize(
    "features, dmesg_line",
    [
        (PlatformFeatures(smee=True, snp=False, rmp_coverage=True, sev_es_asid_limit=100), None),
        (
            PlatformFeatures(smee=True, snp=True, rmp_coverage=False, sev_es_asid_limit=100),
            "SEV-SNP: Memory for the RMP table has not been reserved by BIOS",
        ),
        (PlatformFeatures(smee=False, snp=True, rmp_coverage=True, sev_es_asid_limit=100), None),
    ],
)
def test_snp_needs_every_bios_switch(features, dmesg_line):
    f = files_for(AMD, features)
    assert f["/sys/module/kvm_amd/parameters/sev_snp"] == "N\n"
    if dmesg_line:
        assert dmesg_line in dmesg(f)


def test_asid_limit_1_means_no_sev_es_or_snp_guests():
    f = files_for(AMD, PlatformFeatures(smee=True, snp=True, rmp_coverage=True, sev_es_asid_limit=1))
    assert "kvm_amd: SEV enabled (ASIDs 1 - 509)" in dmesg(f)
    assert "kvm_amd: SEV-ES disabled (ASIDs 0 - 0)" in dmesg(f)
    assert "kvm_amd: SEV-SNP disabled (ASIDs 0 - 0)" in dmesg(f)
    assert f["/sys/module/kvm_amd/parameters/sev"] == "Y\n"
    assert f["/sys/module/kvm_amd/parameters/sev_snp"] == "N\n"


def test_iommu_pt_disables_snp_with_the_kernels_message():
    f = files_for(AMD, SNP_ON, extra_cmdline="iommu=pt")
    assert f["/sys/module/kvm_amd/parameters/sev_snp"] == "N\n"
    assert f["/sys/module/kvm_amd/parameters/sev_es"] == "Y\n"  # SEV-ES does not need the IOMMU
    assert f"AMD-Vi: {SNP_IOMMU_MESSAGE}" in dmesg(f)
    assert "kvm_amd: SEV-SNP disabled (ASIDs 1 - 99)" in dmesg(f)
    assert "iommu: Default domain type: Passthrough (set via kernel command line)" in dmesg(f)
    groups = [v for k, v in f.items() if k.startswith("/sys/kernel/iommu_groups/") and k.endswith("/type")]
    assert groups and set(groups) == {"identity\n"}
    assert f["/proc/cmdline"].rstrip().endswith("iommu=pt")


@pytest.mark.parametrize("cmdline", ["iommu=off", "amd_iommu=off", "iommu=soft,pt", "iommu.passthrough=1"])
def test_other_ways_to_lose_the_iommu_also_disable_snp(cmdline):
    f = files_for(AMD, SNP_ON, extra_cmdline=cmdline)
    assert f["/sys/module/kvm_amd/parameters/sev_snp"] == "N\n"
    assert SNP_IOMMU_MESSAGE in dmesg(f)


def test_iommu_off_in_bios_disables_snp():
    f = files_for(AMD, PlatformFeatures(smee=True, snp=True, rmp_coverage=True, sev_es_asid_limit=100, iommu=False))
    assert f["/sys/module/kvm_amd/parameters/sev_snp"] == "N\n"
    assert SNP_IOMMU_MESSAGE in dmesg(f)
    assert not [k for k in f if k.startswith("/sys/kernel/iommu_groups/")]


def test_iommu_pt_then_nopt_keeps_snp():
    f = files_for(AMD, SNP_ON, extra_cmdline="iommu=pt iommu=nopt")
    assert f["/sys/module/kvm_amd/parameters/sev_snp"] == "Y\n"


@pytest.mark.parametrize(
    "modprobe, cmdline",
    [("options kvm_amd sev_snp=0", ""), ("options kvm-amd sev_snp=N", ""), ("", "kvm_amd.sev_snp=0")],
)
def test_module_option_sev_snp_0_turns_only_snp_off(modprobe, cmdline):
    f = files_for(AMD, SNP_ON, modprobe=modprobe, extra_cmdline=cmdline)
    assert f["/sys/module/kvm_amd/parameters/sev_snp"] == "N\n"
    assert f["/sys/module/kvm_amd/parameters/sev_es"] == "Y\n"
    assert "kvm_amd: SEV-SNP disabled (ASIDs 1 - 99)" in dmesg(f)


def test_cmdline_module_param_beats_modprobe_options():
    f = files_for(AMD, SNP_ON, modprobe="options kvm_amd sev_snp=0", extra_cmdline="kvm_amd.sev_snp=1")
    assert f["/sys/module/kvm_amd/parameters/sev_snp"] == "Y\n"


def test_blacklisted_kvm_amd_is_not_loaded():
    f = files_for(AMD, SNP_ON, modprobe="blacklist kvm_amd")
    assert "/sys/module/kvm_amd/parameters/sev_snp" not in f
    assert "kvm_amd" not in f["/proc/modules"]
    f = files_for(AMD, SNP_ON, modprobe="install kvm_amd /bin/false")
    assert "/sys/module/kvm_amd/parameters/sev_snp" not in f


# ------------------------------------------------------------------ TDX


def test_tdx_needs_bios_and_kvm_intel_tdx_1():
    f = files_for(INTEL, TDX_ON, extra_cmdline="kvm_intel.tdx=1")
    assert f["/sys/module/kvm_intel/parameters/tdx"] == "Y\n"
    assert f["/sys/firmware/tdx/tdx_module/status"] == "initialized\n"
    assert "virt/tdx: module initialized" in dmesg(f)
    assert "virt/tdx: BIOS enabled: private KeyID range [64, 128)" in dmesg(f)
    assert "tdx_host_platform" in f["/proc/cpuinfo"]


def test_tdx_bios_on_without_kvm_intel_tdx_stays_uninitialized():
    f = files_for(INTEL, TDX_ON)
    assert f["/sys/module/kvm_intel/parameters/tdx"] == "N\n"
    assert "/sys/firmware/tdx/tdx_module/status" not in f
    assert isinstance(f["/sys/firmware"], Directory)
    assert "virt/tdx: module initialized" not in dmesg(f)
    assert "tdx_host_platform" in f["/proc/cpuinfo"]  # the BIOS part is there


def test_tdx_modprobe_option_works_like_the_cmdline():
    f = files_for(INTEL, TDX_ON, modprobe="options kvm_intel tdx=1")
    assert f["/sys/module/kvm_intel/parameters/tdx"] == "Y\n"


@pytest.mark.parametrize("missing", ["tme", "tme_mt", "tdx", "seam_loader", "tdx_key_split"])
def test_tdx_needs_every_bios_switch(missing):
    from dataclasses import replace

    features = replace(TDX_ON, **{missing: 0 if missing == "tdx_key_split" else False})
    f = files_for(INTEL, features, extra_cmdline="kvm_intel.tdx=1")
    assert f["/sys/module/kvm_intel/parameters/tdx"] == "N\n"
    assert "virt/tdx: TDX not supported by the host platform" in dmesg(f)
    assert "tdx_host_platform" not in f["/proc/cpuinfo"]


def test_sgx_devices_follow_the_bios():
    from dataclasses import replace

    assert "/dev/sgx_enclave" not in files_for(INTEL, TDX_ON)
    f = files_for(INTEL, replace(TDX_ON, sgx=True))
    assert isinstance(f["/dev/sgx_enclave"], CharDevice)
    assert " sgx " in f["/proc/cpuinfo"]


def test_plain_profile_ignores_tee_bios_switches():
    f = files_for(PLAIN, TDX_ON, extra_cmdline="kvm_intel.tdx=1")
    assert f["/sys/module/kvm_intel/parameters/tdx"] == "N\n"
    assert [k for k in f if k.startswith("/sys/bus/pci/") and k.count("/") == 4 and ":" in k] == []


# ------------------------------------------------------------------ PCI and VFIO


def test_gpus_appear_unbound_without_vfio_config():
    f = files_for(AMD, SNP_ON)
    dev = "/sys/bus/pci/0000:18:00.0"
    assert f["/sys/bus/pci/devices/0000:18:00.0"] == Symlink("../0000:18:00.0")
    assert f[f"{dev}/vendor"] == "0x10de\n" and f[f"{dev}/device"] == "0x2330\n"
    assert f[f"{dev}/class"] == "0x030200\n"
    assert len(f[f"{dev}/config"]) == 256 and f[f"{dev}/config"][:4] == bytes.fromhex("de103023")
    assert f"{dev}/driver" not in f
    assert "vfio_pci" not in f["/proc/modules"]
    gpus = [k for k in f if k.startswith("/sys/bus/pci/devices/")]
    assert len(gpus) == 13  # 8 GPUs, 4 NVSwitches, the PSP
    assert f["/sys/bus/pci/0000:c5:00.0/device"] == "0x22a3\n"


@pytest.mark.parametrize(
    "kw",
    [
        {"modprobe": "options vfio-pci ids=10de:2330,10de:22a3"},
        {"modprobe": "options vfio_pci ids=10de:2330:10de:16c1,10de:22a3"},
        {"extra_cmdline": "vfio-pci.ids=10de:2330,10de:22a3"},
        {"vfio": "# ccfactory\n10de:2330\n10de:22a3\n"},
    ],
)
def test_vfio_binding_follows_node_config(kw):
    f = files_for(AMD, SNP_ON, **kw)
    assert f["/sys/bus/pci/0000:18:00.0/driver"] == Symlink(VFIO_DRIVER_LINK)
    assert f["/sys/bus/pci/0000:c5:00.0/driver"] == Symlink(VFIO_DRIVER_LINK)
    assert f["/sys/bus/pci/drivers/vfio-pci/0000:18:00.0"] == Symlink("../../0000:18:00.0")
    assert "/sys/module/vfio_pci/parameters/disable_idle_d3" in f
    assert isinstance(f["/dev/vfio/vfio"], CharDevice)
    group = f["/sys/bus/pci/0000:18:00.0/iommu_group"].target.rsplit("/", 1)[1]
    assert isinstance(f[f"/dev/vfio/{group}"], CharDevice)
    assert f["/sys/bus/pci/0000:02:00.1/driver"] == Symlink("../../../bus/pci/drivers/ccp")  # PSP stays on ccp


def test_vfio_by_pci_address_binds_only_that_gpu():
    f = files_for(AMD, SNP_ON, vfio="0000:18:00.0\n2a:00.0\n")
    assert f["/sys/bus/pci/0000:18:00.0/driver"] == Symlink(VFIO_DRIVER_LINK)
    assert f["/sys/bus/pci/0000:2a:00.0/driver"] == Symlink(VFIO_DRIVER_LINK)
    assert "/sys/bus/pci/0000:3a:00.0/driver" not in f


def test_vfio_without_iommu_fails_to_bind():
    f = files_for(INTEL, TDX_ON, modprobe="options vfio-pci ids=10de:2901")  # Intel: IOMMU off by default
    assert "/sys/bus/pci/0000:19:00.0/driver" not in f
    assert "vfio-pci 0000:19:00.0: probe with driver vfio-pci failed with error -22" in dmesg(f)
    f = files_for(INTEL, TDX_ON, modprobe="options vfio-pci ids=10de:2901", extra_cmdline="intel_iommu=on")
    assert f["/sys/bus/pci/0000:19:00.0/driver"] == Symlink(VFIO_DRIVER_LINK)


def test_relative_links_resolve_inside_the_node(tmp_path):
    """The symlink targets resolve within the rendered tree the way sysfs does."""
    import posixpath

    f = files_for(AMD, SNP_ON, modprobe="options vfio-pci ids=10de:2330")
    for path, content in f.items():
        if isinstance(content, Symlink) and path.startswith(("/sys/bus/pci/", "/sys/kernel/iommu_groups/")):
            link_dir = posixpath.dirname(path)
            if path.startswith("/sys/bus/pci/devices/"):
                continue
            target = posixpath.normpath(posixpath.join(link_dir, content.target))
            assert target in f or any(k.startswith(target + "/") for k in f), (path, content.target, target)


def test_render_is_pure_and_deterministic():
    a = files_for(AMD, SNP_ON, extra_cmdline="iommu=pt")
    b = files_for(AMD, SNP_ON, extra_cmdline="iommu=pt")
    assert a == b


def test_every_profile_renders():
    for name in profile_names():
        p = load_profile(name)
        f = render(RenderInput("n", p, PlatformFeatures(), boot(p)))
        assert "/proc/cpuinfo" in f and DMESG_PATH in f and HARDWARE_JSON in f


def test_gpu_state_is_exported_in_hardware_json():
    import json

    gpus = GpuState({"0000:18:00.0": GpuDeviceState("gpu", "H100", "2330", cc_mode="on")})
    f = render(RenderInput("node1", AMD, SNP_ON, boot(AMD), gpus))
    data = json.loads(f[HARDWARE_JSON])
    assert data["gpus"]["0000:18:00.0"]["cc_mode"] == "on"
    assert data["state"]["sev_snp"] is True


def test_hardware_state_is_a_summary_of_the_rules():
    hw = hardware_state(RenderInput("n", AMD, SNP_ON, boot(AMD, extra_cmdline="iommu=pt")))
    assert hw.snp_cpu and not hw.snp_host and hw.iommu and hw.iommu_passthrough

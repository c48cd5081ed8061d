"""sysfs PCI and IOMMU-group parsers, and NVIDIA device discovery, on recordings where they exist."""

from __future__ import annotations

import pytest
from support import FIXTURES
from hypothesis import given
from hypothesis import strategies as st

from ccfactory.parsers.gpuhost import nvidia_devices, nvidia_devices_from_lines
from ccfactory.parsers.pci import (
    normalize_bdf,
    parse_iommu_groups,
    parse_pci_line,
    parse_pci_lines,
    parse_pci_sysfs_dump,
)

H100 = FIXTURES / "nvidia-h100-real"
H200 = FIXTURES / "nvidia-h200-real"


def recording(path):
    if not path.is_file():
        pytest.fail(f"recording {path} is missing: tests/fixtures is part of the repository")
    return path.read_text()


def test_pci_line_from_recorded_host_view():
    # host.txt "== pci nvidia" prints exactly the NvidiaGpus fact's line format
    text = recording(H100 / "host.txt")
    [fn] = parse_pci_lines(text.splitlines())
    assert (fn.bdf, fn.vendor, fn.device, fn.class_code, fn.class_prefix) == (
        "0000:00:06.0",
        "10de",
        "2330",
        "030200",
        "0302",
    )
    assert fn.driver == "nvidia" and fn.iommu_group is None  # a VM without an IOMMU group
    devs = nvidia_devices([fn])
    [gpu] = devs.gpus
    assert gpu.model_name == "H100" and gpu.cc_capable and gpu.ppcie_capable and not gpu.on_vfio
    assert devs.drivers() == {"nvidia"} and devs.not_on_vfio() == (gpu,)


def test_pci_sysfs_dump_h200():
    fn = parse_pci_sysfs_dump(recording(H200 / "pci-0000_00_06.0.txt"))
    assert fn.bdf == "0000:00:06.0"
    assert (fn.vendor, fn.device, fn.class_code) == ("10de", "2335", "030200")
    assert (fn.subsystem_vendor, fn.subsystem_device) == ("10de", "18bf")
    assert fn.driver == "nvidia" and fn.iommu_group is None and fn.numa_node == -1
    assert nvidia_devices([fn]).gpus[0].model_name == "H200"


def test_pci_line_with_every_key():
    fn = parse_pci_line(
        "0000:c5:00.0 vendor=0x10de device=0x22a3 class=0x068000 driver=vfio-pci iommu_group=28 "
        "subsystem_device=0x1796 numa_node=1"
    )
    assert (fn.driver, fn.iommu_group, fn.subsystem_device, fn.numa_node) == ("vfio-pci", 28, "1796", 1)
    assert parse_pci_line("== pci nvidia") is None and parse_pci_line("") is None


def test_discovery_keeps_gpus_and_nvswitches_only():
    devs = nvidia_devices_from_lines(
        [
            "0000:18:00.0 vendor=0x10de device=0x2330 class=0x030200 driver=vfio-pci iommu_group=20",
            "0000:2a:00.0 vendor=0x10de device=0x2330 class=0x030200 driver= iommu_group=21",
            "0000:c5:00.0 vendor=0x10de device=0x22a3 class=0x068000 driver=vfio-pci iommu_group=28",
            "0000:18:00.1 vendor=0x10de device=0x22e8 class=0x040300 driver=snd_hda_intel iommu_group=20",
            "0000:02:00.1 vendor=0x1022 device=0x14ca class=0x108000 driver=ccp iommu_group=3",
            "0000:44:00.0 vendor=0x10de device=0x9999 class=0x030200 driver= iommu_group=",
        ]
    )
    assert [g.bdf for g in devs.gpus] == ["0000:18:00.0", "0000:2a:00.0", "0000:44:00.0"]
    assert [s.bdf for s in devs.nvswitches] == ["0000:c5:00.0"]
    assert devs.nvswitches[0].model_name == "NVSwitch LS10"
    unknown = devs.by_bdf("0000:44:00.0")
    assert unknown.model is None and not unknown.cc_capable
    assert devs.models() == {"H100", "unknown 10de:9999"}
    assert devs.drivers() == {"vfio-pci", "(none)"}
    assert [d.bdf for d in devs.not_on_vfio()] == ["0000:2a:00.0", "0000:44:00.0"]


def test_iommu_groups():
    topo = parse_iommu_groups(
        [
            "group 20 type=DMA-FQ devices= 0000:18:00.0 0000:18:00.1",
            "group 3 type=identity devices= 0000:02:00.1",
            "group 7 type= devices=",
            "noise",
        ]
    )
    assert [g.number for g in topo.groups] == [3, 7, 20]
    assert topo.enabled and topo.passthrough
    assert topo.group_of("0000:18:00.1") == 20 and topo.group_of("18:00.0") == 20
    assert topo.members(20) == ("0000:18:00.0", "0000:18:00.1")
    assert topo.members(7) == () and topo.group_of("0000:99:00.0") is None
    assert not parse_iommu_groups([]).enabled


@given(st.integers(0, 0xFFFF), st.integers(0, 0xFF), st.integers(0, 0x1F), st.integers(0, 7), st.booleans())
def test_normalize_bdf_nvidia_smi_and_sysfs_forms_agree(domain, bus, dev, fn, upper):
    sysfs = f"{domain:04x}:{bus:02x}:{dev:02x}.{fn}"
    smi = f"{domain:08X}:{bus:02X}:{dev:02X}.{fn}" if upper else f"{domain:08x}:{bus:02x}:{dev:02x}.{fn}"
    assert normalize_bdf(smi) == sysfs == normalize_bdf(sysfs)

"""GPU facts: ``command`` + ``process(lines)``, and the real shell commands on a fake sysfs laid
out like a real kernel's and like the lab's (``/sys/bus/pci/<bdf>`` with ``devices/`` links)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from ccfactory.facts.gpu import GpuDrivers, NvidiaGpus, gpu_drivers_command, nvidia_gpus_command
from ccfactory.parsers.gpuhost import GpuDriverState, NvidiaDevices


def _sh(command: str) -> list[str]:
    result = subprocess.run(["sh", "-c", command], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _pci_device(
    root: Path, bdf: str, vendor: int, device: int, cls: int, driver: str | None, group: int | None, lab: bool
):
    if lab:  # the lab: /sys/bus/pci/<bdf>, devices/<bdf> -> ../<bdf>
        d = root / "sys/bus/pci" / bdf
        (root / "sys/bus/pci/devices").mkdir(parents=True, exist_ok=True)
        (root / "sys/bus/pci/devices" / bdf).symlink_to(f"../{bdf}")
    else:  # a real kernel: devices/<bdf> -> ../../../devices/pci0000:00/<bdf>
        d = root / "sys/devices/pci0000:00" / bdf
        (root / "sys/bus/pci/devices").mkdir(parents=True, exist_ok=True)
        (root / "sys/bus/pci/devices" / bdf).symlink_to(f"../../../devices/pci0000:00/{bdf}")
    _write(d / "vendor", f"0x{vendor:04x}\n")
    _write(d / "device", f"0x{device:04x}\n")
    _write(d / "class", f"0x{cls:06x}\n")
    _write(d / "subsystem_device", "0x16c1\n")
    _write(d / "numa_node", "0\n")
    if driver:
        (d / "driver").symlink_to(f"../../../bus/pci/drivers/{driver}")
    if group is not None:
        (d / "iommu_group").symlink_to(f"../../../kernel/iommu_groups/{group}")


@pytest.mark.parametrize("lab", [False, True], ids=["kernel-layout", "lab-layout"])
def test_nvidia_gpus_on_a_fake_sysfs(tmp_path, lab):
    root = tmp_path / "r"
    _pci_device(root, "0000:18:00.0", 0x10DE, 0x2330, 0x030200, "vfio-pci", 20, lab)
    _pci_device(root, "0000:2a:00.0", 0x10DE, 0x2330, 0x030200, None, 21, lab)
    _pci_device(root, "0000:c5:00.0", 0x10DE, 0x22A3, 0x068000, "vfio-pci", 28, lab)
    _pci_device(root, "0000:02:00.1", 0x1022, 0x14CA, 0x108000, "ccp", 3, lab)
    lines = _sh(nvidia_gpus_command(str(root)))
    assert lines[0] == (
        "0000:18:00.0 vendor=0x10de device=0x2330 class=0x030200 driver=vfio-pci iommu_group=20 "
        "subsystem_device=0x16c1 numa_node=0"
    )
    devs = NvidiaGpus().process(lines)
    assert [(g.bdf, g.model_name, g.driver, g.iommu_group) for g in devs.gpus] == [
        ("0000:18:00.0", "H100", "vfio-pci", 20),
        ("0000:2a:00.0", "H100", None, 21),
    ]
    assert [s.bdf for s in devs.nvswitches] == ["0000:c5:00.0"]
    assert [d.bdf for d in devs.not_on_vfio()] == ["0000:2a:00.0"]


def test_nvidia_gpus_without_any_pci_tree(tmp_path):
    assert _sh(nvidia_gpus_command(str(tmp_path))) == []
    assert NvidiaGpus().process([]) == NvidiaDevices() == NvidiaGpus.default()


def test_gpu_drivers_on_a_fake_root(tmp_path):
    root = tmp_path / "r"
    _write(
        root / "proc/modules", "vfio_pci 16384 0 - Live 0x0\nvfio 65536 1 vfio_pci, Live 0x0\nkvm_amd 1 0 - Live 0x0\n"
    )
    _write(root / "proc/cmdline", "ro quiet modprobe.blacklist=nouveau\n")
    _write(root / "lib/modprobe.d/nvidia.conf", "options nvidia NVreg_OpenRmEnableUnsupportedGpus=1")  # no newline
    _write(
        root / "etc/modprobe.d/vfio.conf", "options vfio-pci ids=10de:2330,10de:22a3\nsoftdep nvidia pre: vfio-pci\n"
    )
    _write(root / "etc/modprobe.d/nvidia.conf", "blacklist nvidia\n")
    _write(root / "etc/modprobe.d/README", "not a .conf file: ignored by modprobe\n")
    drv = GpuDrivers().process(_sh(gpu_drivers_command(str(root))))
    assert drv.modprobe.files == ("/etc/modprobe.d/nvidia.conf", "/etc/modprobe.d/vfio.conf")  # /etc shadows /lib
    assert drv.nvidia_loaded == () and not drv.nouveau_loaded and drv.vfio_loaded == ("vfio", "vfio_pci")
    assert drv.nouveau_blocked and drv.nvidia_blocked  # nouveau from the command line, nvidia from /etc
    assert drv.vfio_pci_ids == ("10de:2330", "10de:22a3")
    assert drv.softdeps("nvidia") == ("pre: vfio-pci",)


def test_gpu_drivers_process_and_default():
    output = [
        "### ccfactory:modules",
        "nvidia_uvm 1 0 - Live 0x0",
        "nvidia 2 1 nvidia_uvm, Live 0x0",
        "nouveau 3 0 - Live 0x0",
        "### ccfactory:cmdline",
        "ro vfio-pci.ids=10de:2335",
        "### ccfactory:file /etc/modprobe.d/x.conf",
        "install nouveau /bin/false",
    ]
    drv = GpuDrivers().process(output)
    assert drv.nvidia_loaded == ("nvidia", "nvidia_uvm") and drv.nouveau_loaded
    assert drv.nouveau_blocked and drv.vfio_pci_ids == ("10de:2335",)
    assert GpuDrivers.default() == GpuDriverState()


def test_commands_are_strings_pyinfra_can_run():
    assert NvidiaGpus.command == nvidia_gpus_command() and GpuDrivers.command == gpu_drivers_command()
    for command in (NvidiaGpus.command, GpuDrivers.command):
        assert subprocess.run(["sh", "-n", "-c", command], check=False, env=os.environ).returncode == 0

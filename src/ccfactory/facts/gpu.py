"""Facts about a host's NVIDIA GPUs, read from sysfs (the host runs no NVIDIA driver).

Example::

    devs = host.get_fact(NvidiaGpus)
    [(g.bdf, g.model_name, g.driver) for g in devs.gpus]   # [('0000:18:00.0', 'H100', 'vfio-pci'), ...]
"""

from __future__ import annotations

import shlex

from pyinfra.api import FactBase

from ccfactory.parsers.gpuhost import (
    GpuDriverState,
    NvidiaDevices,
    files_from_sections,
    gpu_driver_state,
    nvidia_devices_from_lines,
)
from ccfactory.parsers.kernel import MODPROBE_DIRS
from ccfactory.parsers.sections import echo_marker, section_map, split_sections


def nvidia_gpus_command(root: str = "") -> str:
    """One ``<bdf> vendor=.. device=.. class=.. driver=.. iommu_group=..`` line per NVIDIA PCI function.

    Same line format as the recorded host view (tests/fixtures/nvidia-h100-real/host.txt).
    ``read`` and parameter expansion keep it to one process per device. ``root``: tests.
    """
    r = shlex.quote(root) if root else ""
    return (
        f"for d in {r}/sys/bus/pci/devices/*; do "
        '[ -r "$d/vendor" ] || continue; read -r v < "$d/vendor"; [ "$v" = 0x10de ] || continue; '
        'dev=""; c=""; sd=""; n=""; '
        '[ -r "$d/device" ] && read -r dev < "$d/device"; [ -r "$d/class" ] && read -r c < "$d/class"; '
        '[ -r "$d/subsystem_device" ] && read -r sd < "$d/subsystem_device"; '
        '[ -r "$d/numa_node" ] && read -r n < "$d/numa_node"; '
        'drv=$(readlink "$d/driver" 2>/dev/null); grp=$(readlink "$d/iommu_group" 2>/dev/null); '
        'echo "${d##*/} vendor=$v device=$dev class=$c driver=${drv##*/} iommu_group=${grp##*/} '
        'subsystem_device=$sd numa_node=$n"; '
        "done; true"
    )


class NvidiaGpus(FactBase):
    """NVIDIA GPUs (PCI class 0302) and NVSwitches (class 0680) with model, bound driver and IOMMU group.

    Models come from the GPU table (``ccfactory.gpus``); an unknown device ID gives ``model=None``.

    Example::

        devs = host.get_fact(NvidiaGpus)
        devs.models(), devs.drivers(), [d.bdf for d in devs.not_on_vfio()]   # ({'H100'}, {'vfio-pci'}, [])
    """

    command = nvidia_gpus_command()

    def process(self, output: list[str]) -> NvidiaDevices:
        return nvidia_devices_from_lines(output)

    @staticmethod
    def default() -> NvidiaDevices:
        return NvidiaDevices()


def gpu_drivers_command(root: str = "") -> str:
    """``/proc/modules``, ``/proc/cmdline`` and every modprobe.d ``*.conf`` file (``root``: tests)."""
    r = shlex.quote(root) if root else ""
    globs = " ".join(f"{r}{d}/*.conf" for d in reversed(MODPROBE_DIRS))
    path = f"${{f#{r}}}" if root else "$f"  # report real paths under a test root
    return "; ".join(
        [
            echo_marker("modules"),
            f"cat {r}/proc/modules 2>/dev/null",
            echo_marker("cmdline"),
            f"cat {r}/proc/cmdline 2>/dev/null",
            f'for f in {globs}; do [ -r "$f" ] || continue; '
            f'p={path}; {echo_marker("file", "$p")}; cat "$f"; echo; done',
            "true",
        ]
    )


class GpuDrivers(FactBase):
    """Loaded GPU kernel modules (nvidia*, nouveau, vfio*) and the modprobe.d / command-line
    settings for them: blacklists, ``options vfio-pci ids=``, softdeps, install overrides.

    Example::

        drv = host.get_fact(GpuDrivers)
        drv.nvidia_loaded, drv.nouveau_blocked, drv.vfio_pci_ids    # ((), True, ('10de:2330',))
    """

    command = gpu_drivers_command()

    def process(self, output: list[str]) -> GpuDriverState:
        sections = split_sections(output)
        by_name = section_map(output)
        return gpu_driver_state(
            by_name.get("modules", ()), files_from_sections(sections), " ".join(by_name.get("cmdline", ()))
        )

    @staticmethod
    def default() -> GpuDriverState:
        return GpuDriverState()

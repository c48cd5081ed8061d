"""What the GPU stage must do on one node, decided from its config and facts (pure).

``plan_stage`` checks discovery against the inventory (count, model, NVSwitches for
``ppcie``), refuses GPUs held by a host driver, and decides the VFIO configuration and
whether a reboot is needed. No pyinfra here: the role turns the plan into operations.

Reboots (design: "record why a reboot is needed ... a re-run after a reboot does not
reboot again"): a reboot is needed when a device is not on vfio-pci *and* either the
VFIO configuration changes now or a reboot recorded for it has not happened yet (the
marker file holds the boot id it was recorded in). A device still not on vfio-pci after
the configured reboot is an error to fix (IOMMU off, another driver first), not a
reason to reboot again.

Example::

    >>> from ccfactory.model import GpuConfig
    >>> from ccfactory.parsers.gpuhost import GpuDriverState, nvidia_devices_from_lines
    >>> devs = nvidia_devices_from_lines(["0000:18:00.0 vendor=0x10de device=0x2330 class=0x030200 driver=vfio-pci iommu_group=20"])
    >>> p = plan_stage(GpuConfig(count=1, model="H100", cc_mode="on"), devs, GpuDriverState(), None, None, "b1")
    >>> p.problems, p.vfio_ids, p.needs_reboot
    ((), ('10de:2330',), False)
"""

from __future__ import annotations

from dataclasses import dataclass

from ccfactory.model import GpuConfig
from ccfactory.parsers.gpuhost import GpuDriverState, NvidiaDevices, inventory_problems
from ccfactory.parsers.reboot_marker import marker_path, marker_pending
from ccfactory.templating import render

VFIO_CONF = "/etc/modprobe.d/ccfactory-vfio.conf"
VFIO_MODULES_CONF = "/etc/modules-load.d/ccfactory-vfio.conf"
REBOOT_MARKER = marker_path("gpu-vfio")
DRIVER_HOLDERS = ("nvidia", "nouveau")
VFIO_HINT = (
    "Binding needs the IOMMU on (BIOS VT-d/AMD-Vi, and intel_iommu=on on Intel: host stage), vfio-pci "
    f"not blacklisted, and no GPU driver loading first; {VFIO_CONF} is in place, so fix the cause and reboot"
)


@dataclass(frozen=True)
class GpuStagePlan:
    problems: tuple[str, ...] = ()
    gpus: tuple[str, ...] = ()  # PCI addresses of the GPUs
    nvswitches: tuple[str, ...] = ()
    ppcie_devices: tuple[str, ...] = ()  # GPUs and NVSwitches that support PPCIe
    vfio_devices: tuple[str, ...] = ()  # devices to bind to vfio-pci
    vfio_ids: tuple[str, ...] = ()  # their vendor:device IDs
    vfio_conf: str = ""  # wanted content of VFIO_CONF
    vfio_modules_conf: str = ""  # wanted content of VFIO_MODULES_CONF
    vfio_conf_changes: bool = False
    unbound: tuple[str, ...] = ()  # vfio_devices not on vfio-pci now
    needs_reboot: bool = False
    reboot_reason: str = ""


def render_vfio_conf(ids: tuple[str, ...], *, nvswitches: bool, mode: str, overlays: tuple[str, ...] = ()) -> str:
    """``/etc/modprobe.d/ccfactory-vfio.conf`` (from ``roles/gpu/templates/ccfactory-vfio.conf.j2``)."""
    return render("gpu/ccfactory-vfio.conf.j2", overlays, ids=list(ids), nvswitches=nvswitches, mode=mode,
                  ccfactory_source="gpu stage")  # fmt: skip


def render_vfio_modules_conf(overlays: tuple[str, ...] = ()) -> str:
    return render("gpu/ccfactory-vfio-modules.conf.j2", overlays, ccfactory_source="gpu stage")


def _same_text(current: list[str] | None, wanted: str) -> bool:
    if current is None:
        return False
    return [line.rstrip() for line in current] == [line.rstrip() for line in wanted.rstrip("\n").split("\n")]


def holder_problems(devices: NvidiaDevices, bdfs: tuple[str, ...]) -> list[str]:
    held = [f"{d.driver} holds {d.bdf}" for d in devices.all if d.bdf in bdfs and d.driver in DRIVER_HOLDERS]
    if not held:
        return []
    return [
        f"a host GPU driver holds the GPUs ({'; '.join(held)}): ccfactory never switches CC mode under a "
        "driver, and a CoCo host runs none; unload it (modprobe -r nvidia_drm nvidia_modeset nvidia_uvm nvidia) "
        "and keep it from loading (host stage), then re-run"
    ]


def vfio_conflicts(drivers: GpuDriverState, ids: tuple[str, ...]) -> list[str]:
    """Other settings that would keep vfio-pci from claiming the devices."""
    problems = []
    others = [o for o in drivers.modprobe.options if o.module == "vfio_pci" and o.key == "ids"]
    others = [o for o in others if o.source != VFIO_CONF]
    if others:
        where = ", ".join(f"{o.source} (ids={o.value})" for o in others)
        problems.append(
            f"vfio-pci ids are also set in {where}; modprobe keeps one value, so remove that line and let "
            f"{VFIO_CONF} own it"
        )
    on_cmdline = drivers.cmdline.module_param("vfio_pci", "ids")
    if on_cmdline is not None and not set(ids) <= {i.lower() for i in on_cmdline.split(",") if i}:
        problems.append(f"the kernel command line sets vfio-pci.ids={on_cmdline}, which overrides {VFIO_CONF}; remove it")
    if drivers.blocked("vfio_pci"):
        problems.append("vfio-pci is blacklisted or disabled in modprobe.d or on the kernel command line; remove that")
    return problems


def plan_stage(
    cfg: GpuConfig,
    devices: NvidiaDevices,
    drivers: GpuDriverState,
    vfio_conf_now: list[str] | None,
    reboot_marker: list[str] | None,
    boot_id: str,
    overlays: tuple[str, ...] = (),
) -> GpuStagePlan:
    """Everything the stage decides from config and facts (see the module docstring).

    ``vfio_conf_now``/``reboot_marker``: lines of those files, None when absent.
    """
    gpus = tuple(g.bdf for g in devices.gpus)
    nvswitches = tuple(s.bdf for s in devices.nvswitches)
    ppcie_devices = tuple(d.bdf for d in devices.all if d.ppcie_capable)
    vfio = devices.all if cfg.cc_mode == "ppcie" else devices.gpus
    vfio_devices = tuple(d.bdf for d in vfio)
    ids = tuple(sorted({f"10de:{d.device_id}" for d in vfio}))
    problems = inventory_problems(cfg, devices)
    problems += holder_problems(devices, vfio_devices + tuple(b for b in ppcie_devices if b not in vfio_devices))
    problems += vfio_conflicts(drivers, ids)
    conf = render_vfio_conf(ids, nvswitches=cfg.cc_mode == "ppcie", mode=cfg.cc_mode, overlays=overlays)
    changes = not _same_text(vfio_conf_now, conf)
    unbound = tuple(d.bdf for d in vfio if d.driver != "vfio-pci")
    pending = marker_pending(reboot_marker, boot_id)
    needs_reboot = bool(unbound) and (changes or pending)
    if needs_reboot:
        why = "VFIO configuration changed" if changes else "VFIO configuration written before an unfinished reboot"
        reason = f"{why}: bind {len(unbound)} device(s) to vfio-pci"
    else:
        reason = ""
    return GpuStagePlan(
        problems=tuple(problems),
        gpus=gpus,
        nvswitches=nvswitches,
        ppcie_devices=ppcie_devices,
        vfio_devices=vfio_devices,
        vfio_ids=ids,
        vfio_conf=conf,
        vfio_modules_conf=render_vfio_modules_conf(overlays),
        vfio_conf_changes=changes,
        unbound=unbound,
        needs_reboot=needs_reboot,
        reboot_reason=reason,
    )

"""GPU operations: gpu-admin-tools installed, GPUs in the wanted CC/PPCIe mode, GPUs on vfio-pci.

Each operation is named for the state it ensures and yields nothing when facts show that
state (a converged node: no change). Mode switches run NVIDIA's ``nvidia_gpu_tools.py``
(or the lab stand-in, same CLI) with stdout and stderr together and check its log lines
(``ccfactory.parsers.gpuadmin``). A failure names the device (PCI address), what it is
in, and the exact command that finishes the switch.

How a mode is switched: as NVIDIA's k8s-cc-manager does it (``main.py``
``_set_cc_mode_direct``/``_set_ppcie_mode_direct`` at NVIDIA/k8s-cc-manager@785d77e), in
three tool runs per phase, see docs/gpu.md:

1. **set** the mode on every device that needs it, without a reset
   (``--set-cc-mode X`` / ``--set-ppcie-mode X``; the tool writes the device's
   configuration knobs, active after the device's next reset);
2. **reset** all of them (``--reset-with-os``: the tool resets them one after another,
   ``cli/main.py:356-358`` -> ``cli/per_device.py:46-47`` at gpu-admin-tools@v2025.10.20);
3. **verify** each (``--query-cc-mode``/``--query-ppcie-mode``: the tool waits for each
   device's boot to complete before it reads the mode, ``wait_for_boot`` in
   ``query_cc_mode_hopper``/``query_ppcie_mode``), then ccfactory compares every device
   with the wanted mode.

Phases:

* ``on``/``devtools``/``off``: PPCIe off on every device that has it on (set, reset,
  verify), then the CC mode on every GPU (set, reset, verify).
* ``ppcie`` (HGX Hopper): PPCIe on, set on every GPU and NVSwitch together, in PCI
  address order (the order the tool and k8s-cc-manager list devices in,
  ``pci/devices.py:find_gpus_sysfs``), then all reset, then each verified: PPCIe on
  everywhere and CC off on every GPU. Setting PPCIe on turns CC off in the same knob
  write (``nvidia_gpu_tools.py:1843-1851``, "CC is currently active. It will be turned
  off before switching to PPCIe."), so no separate CC-off reset is needed. GPUs without
  PPCIe that are not CC off get a CC-off phase first. (The tool has no CC mode on
  NVSwitches: ``--set-cc-mode`` does nothing there, so only GPUs get it.)

The driver guard is ccfactory's own (sysfs driver links, ``driver_holders``): the tool
assumes no kernel driver on Hopper and later (``nvidia_gpu_tools.py:4361-4364``).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence

from pyinfra import host
from pyinfra.api import FunctionCommand, StringCommand, operation

from ccfactory.facts.gpu import NvidiaGpus
from ccfactory.operations.artifacts import unpacked_as, verified_unpack
from ccfactory.facts.gpu_cc import GpuCcModes, GpuModes
from ccfactory.gpuadmin import (
    FEATURE_LABEL,
    TOOL_ENTRY,
    ModePlan,
    ToolStep,
    mode_mismatches,
    pci_order,
    plan_modes,
)
from ccfactory.parsers.gpuadmin import parse_admin_tool_output

logger = logging.getLogger("pyinfra")

DRIVER_HOLDERS = ("nvidia", "nouveau")  # host GPU drivers that must not hold a GPU during a switch
_LOG_PREFIX = re.compile(r"^\d{4}-\d\d-\d\d,\d\d:\d\d:\d\d\.\d{3} [A-Z]+\s+")  # the tool's logging format


def driver_holders(devices, bdfs: Sequence[str]) -> list[str]:
    """``"<driver> holds <bdf>"`` for every listed device bound to a host GPU driver."""
    out = []
    for bdf in bdfs:
        d = devices.by_bdf(bdf)
        if d is not None and d.driver in DRIVER_HOLDERS:
            out.append(f"{d.driver} holds {bdf}")
    return out


# ------------------------------------------------------------------ execute-time callbacks


class _HostCallback(FunctionCommand):
    """A FunctionCommand whose function also gets the operation's connector arguments
    (``_sudo`` ...), so commands it runs are privileged like the operation's own."""

    def execute(self, state, host, connector_arguments):  # noqa: ARG002 - pyinfra's signature
        return self.function(state, host, connector_arguments, *self.args, **self.kwargs)


def _fail(state, host, problem: str) -> bool:  # noqa: ARG001 - pyinfra passes state and host
    host.log_styled(f"ccfactory: {problem}", fg="red", log_func=logger.error)
    return False


def _query(host, tool: str, gpus: Sequence[str], ppcie_devices: Sequence[str]) -> GpuModes:
    # inside an operation a fact inherits the operation's global arguments (_sudo ...)
    return host.get_fact(GpuCcModes, tool=tool, cc_devices=",".join(gpus), ppcie_devices=",".join(ppcie_devices))


def _describe(plan: ModePlan) -> str:
    parts = [f"in the wanted modes: {', '.join(plan.done) or 'none'}"]
    if plan.todo:
        parts.append(f"not yet: {', '.join(plan.todo)}")
    return "; ".join(parts)


# What to do first, by the kind of failure the tool reported (parsers/gpuadmin events).
_FIRST = {
    "fw_update_needed": "update the HGX firmware of {bdfs} (PPCIe needs HGX Hopper FW 1.7.0 or later; "
    "docs/reference/cc-stack.md §3.4), then",
    "driver_in_use": "unload the host driver from {bdfs}, then",
    "unsupported": "{bdfs} cannot do this (check gpu_model and gpu_cc_mode); otherwise",
}


def _device_text(report, bdf: str) -> str:
    """The device as the tool prints it (``GPU <bdf> <name> 0x<id> BAR0 0x<bar0>``), or its address."""
    d = report.devices().get(bdf)
    if d is None:
        return bdf
    return f"{'GPU' if d.kind == 'gpu' else 'NvSwitch'} {d.bdf} {d.name} 0x{int(d.device_id, 16):x} BAR0 {d.bar0}"


def verify_mismatches(step: ToolStep, report, plan: ModePlan) -> list[str]:
    """For a ``verify`` run: every device of the step whose reported mode is not the wanted
    one, worded as the tool words it after ``--reset-after-*-mode-switch``
    (``cli/per_gpu.py:214``, ``cli/per_gpu_nvswitch.py:127``)."""
    out = []
    checks = [(step.feature, step.target)]
    if step.feature == "ppcie" and "--query-cc-mode" in step.args:
        checks.append(("cc", "off"))
    for bdf in step.devices:
        for feature, target in checks:
            if feature == "cc" and bdf not in plan.want_cc:
                continue  # NVSwitches have no CC mode
            got = (report.cc_modes() if feature == "cc" else report.ppcie_modes()).get(bdf, "unknown")
            if got != target:
                out.append(f"{_device_text(report, bdf)} failed to switch to {FEATURE_LABEL[feature]} mode {target}, current mode is {got}")
    return out


def _failure_text(step: ToolStep, why: list[str], report, now: GpuModes, rest: ModePlan, tool: str, pending: dict[str, set[str]]) -> str:
    """The message for a failed step: what failed, where every device is, how to recover.

    ``pending``: feature -> devices whose mode was set in this switch and not yet applied
    by a reset (applied by the next reset or reboot).
    """
    text = [f"gpu-admin-tools failed {step.purpose}: {'; '.join(why)}."]
    if now.installed and not now.problems:
        text.append(f"Devices now {_describe(rest)}.")
    first = []
    for event, advice in _FIRST.items():
        bdfs = sorted({e.device.bdf for e in report.failures if e.event == event})
        if bdfs:
            first.append(advice.format(bdfs=", ".join(bdfs)))
    undo = []
    for feature, flag, current in (("cc", "--set-cc-mode", now.cc), ("ppcie", "--set-ppcie-mode", now.ppcie)):
        by_mode: dict[str, list[str]] = {}
        for bdf in pci_order(pending.get(feature, ())):
            by_mode.setdefault(current.get(bdf, "off"), []).append(bdf)
        for mode, bdfs in sorted(by_mode.items()):
            undo.append(ToolStep("", ("--devices", ",".join(bdfs), flag, mode)).shown(tool))
    if undo:
        waiting = pci_order({b for f in ("cc", "ppcie") for b in pending.get(f, ())})
        text.append(
            f"Set but not applied, and applied by the next reset or reboot: {', '.join(waiting)}; "
            f"to withdraw that: {' && '.join(undo)}."
        )
    text.append(
        f"Recovery, as root on the node: {' '.join(first) + ' ' if first else ''}"
        f"{rest.recovery(tool) or step.shown(tool)}; if a device keeps its old mode after the reset, "
        "power-cycle the node through its BMC (a cold reset applies pending modes) and re-run the gpu stage."
    )
    return " ".join(text)


def _switch(state, host, connector_arguments, plan: ModePlan, tool: str, gpus, ppcie_devices) -> bool:
    """Run the plan's tool steps (set all, reset all, verify each; per phase), then read
    every device back and verify it."""
    if plan.half_switched:
        host.log_styled(
            f"ccfactory: GPUs are half-switched ({_describe(plan)}); finishing with: {plan.recovery(tool)}",
            fg="yellow",
            log_func=logger.warning,
        )
    pending: dict[str, set[str]] = {}
    for step in plan.steps:
        ok, output = host.run_shell_command(
            StringCommand(step.command(tool)), print_output=state.print_output, **connector_arguments
        )
        report = parse_admin_tool_output(output.output_lines)
        if step.kind == "set":
            # a device is pending once the tool said "... mode set to X. It will be active after ... reset."
            pending.setdefault(step.feature, set()).update(report.pending_reset(step.feature))
        elif step.kind == "reset" and ok:
            pending.get(step.feature, set()).difference_update(step.devices)
        why = [_LOG_PREFIX.sub("", e.line).rstrip(".") for e in report.failures]
        if ok and not why and step.kind == "verify":
            why = verify_mismatches(step, report, plan)
        if ok and not why:
            continue
        if not why:
            why = [" | ".join(line.strip() for line in output.output_lines[-3:] if line.strip()) or "no output"]
        now = _query(host, tool, gpus, ppcie_devices)
        rest = plan_modes(plan.mode, gpus, ppcie_devices, now.cc, now.ppcie)
        return _fail(state, host, _failure_text(step, why, report, now, rest, tool, pending))
    now = _query(host, tool, gpus, ppcie_devices)
    wrong = mode_mismatches(plan, now) if not now.problems else list(now.problems)
    if wrong:
        rest = plan_modes(plan.mode, gpus, ppcie_devices, now.cc, now.ppcie)
        return _fail(
            state,
            host,
            f"after the switch to {plan.mode}, these devices are not as wanted: {'; '.join(wrong)}. "
            f"Recovery, as root on the node: {rest.recovery(tool)}",
        )
    host.log_styled(
        f"GPU modes verified after reset: {len(plan.want_cc)} GPU(s) CC "
        f"{'off' if plan.mode == 'ppcie' else plan.mode}"
        + (f", {len(plan.want_ppcie)} device(s) PPCIe {'on' if plan.mode == 'ppcie' else 'off'}" if plan.want_ppcie else ""),
        log_func=logger.info,
    )
    return True


# ------------------------------------------------------------------ operations


@operation()
def admin_tools_unpacked(archive: str, dest: str, sha256: str, strip: int = 1):
    """gpu-admin-tools from ``archive`` (a tarball already on the host) unpacked in ``dest``.

    + archive: path of the tarball on the host (pushed with ``files.put``)
    + dest: install directory, e.g. ``/opt/ccfactory/gpu-admin-tools/<version>``
    + sha256: the BOM's checksum; checked again on the host before unpacking
    + strip: leading directories to drop: 1 for a tarball with a top directory (GitHub tag
      archives), 0 for the BOM's ``git archive`` of the pinned commit

    ``dest/.ccfactory-sha256`` records what was unpacked: the same checksum means nothing
    to do. ``strip`` leading directories are dropped (see above); the
    new tree replaces ``dest`` only once complete.

    **Example:**

    .. code:: python

        gpu.admin_tools_unpacked(archive="/opt/ccfactory/gpu-admin-tools/x.tar.gz",
                                 dest="/opt/ccfactory/gpu-admin-tools/v2025.10.20", sha256=artifact.sha256)
    """
    if unpacked_as(dest, sha256):
        host.noop(f"gpu-admin-tools already unpacked in {dest}")
        return
    yield verified_unpack(archive, dest, sha256, entry=TOOL_ENTRY, strip=strip)


@operation()
def cc_mode(mode: str, gpus: list[str], ppcie_devices: list[str], tool: str):
    """Every GPU in CC mode ``mode`` (``on``/``devtools``/``off``), or PPCIe on every GPU
    and NVSwitch with CC off (``ppcie``): the mode set on every device, then all reset,
    then each verified (see the module docstring).

    + mode: ``on``, ``devtools``, ``off`` or ``ppcie``
    + gpus: PCI addresses of all GPUs of the node (all alike: partial CC is unsupported)
    + ppcie_devices: PCI addresses of the devices that support PPCIe (Hopper GPUs and
      NVSwitches); their PPCIe mode is turned off for the CC modes, on for ``ppcie``
    + tool: path of ``nvidia_gpu_tools.py`` on the host

    Refuses (changes nothing) while a host GPU driver (nvidia, nouveau) holds one of the
    devices. A node found half-switched (some devices in the wanted mode, some not) is
    reported with the command that finishes it, then finished. If the tool fails, the
    message names the device, what every device is in now, and the recovery command.

    **Example:**

    .. code:: python

        gpu.cc_mode(mode="on", gpus=["0000:18:00.0", "0000:2a:00.0"], ppcie_devices=[],
                    tool=tool_path(version), _sudo=True)
    """
    devices = host.get_fact(NvidiaGpus)
    modes = host.get_fact(GpuCcModes, tool=tool, cc_devices=",".join(gpus), ppcie_devices=",".join(ppcie_devices))
    if modes.installed and modes.problems:
        yield FunctionCommand(_fail, (f"gpu-admin-tools could not read the GPU modes: {'; '.join(modes.problems)}",), {})
        return
    known = modes.installed
    plan = plan_modes(mode, gpus, ppcie_devices, modes.cc if known else {}, modes.ppcie if known else {})
    if not plan.steps:
        host.noop(f"{len(gpus)} GPU(s) already in CC mode {mode}")
        return
    holders = driver_holders(devices, sorted(set(gpus) | set(ppcie_devices)))
    if holders:
        yield FunctionCommand(
            _fail,
            (
                f"not switching GPU modes while a host driver holds a GPU: {'; '.join(holders)}. "
                "Unload it (e.g. `modprobe -r nvidia_drm nvidia_modeset nvidia_uvm nvidia`) and keep it from "
                "loading (no host NVIDIA driver on a CoCo node), then re-run",
            ),
            {},
        )
        return
    yield _HostCallback(_switch, (plan, tool, list(gpus), list(ppcie_devices)), {})


@operation()
def vfio_bound(devices: list[str], hint: str = ""):
    """Every listed device bound to ``vfio-pci`` (checks only: binding comes from the
    modprobe.d configuration and a reboot). Fails naming each device and its driver.

    + devices: PCI addresses
    + hint: extra advice appended to the failure message
    """
    found = host.get_fact(NvidiaGpus)
    wrong = []
    for bdf in devices:
        d = found.by_bdf(bdf)
        if d is None:
            wrong.append(f"{bdf} is missing")
        elif d.driver != "vfio-pci":
            iommu = "" if d.iommu_group is not None else ", no IOMMU group (the IOMMU is off)"
            wrong.append(f"{bdf} is on {d.driver or 'no driver'}{iommu}")
    if not wrong:
        host.noop(f"{len(devices)} device(s) on vfio-pci")
        return
    problem = f"not bound to vfio-pci: {'; '.join(wrong)}"
    yield FunctionCommand(_fail, (f"{problem}. {hint}".strip(),), {})

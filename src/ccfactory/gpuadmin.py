"""gpu-admin-tools as ccfactory uses it: where it is installed, and how a CC/PPCIe mode switch
is planned (pure). The gpu stage runs the plan (``roles/gpu/operations.py``, where the
method and its sources are described); the verify stage judges a node against the same plan.

Example::

    >>> plan = plan_modes("on", ["0000:17:00.0"], [], {"0000:17:00.0": "off"}, {})
    >>> [step.kind for step in plan.steps]
    ['set', 'reset', 'verify']
    >>> tool_path("v2025.10.20")
    '/opt/ccfactory/gpu-admin-tools/v2025.10.20/nvidia_gpu_tools.py'
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field

from ccfactory.facts.gpu_cc import GpuModes

TOOL_ROOT = "/opt/ccfactory/gpu-admin-tools"
TOOL_ENTRY = "nvidia_gpu_tools.py"
CC_MODES = ("on", "devtools", "off", "ppcie")


def tool_dir(version: str) -> str:
    """``/opt/ccfactory/gpu-admin-tools/<version>``"""
    return f"{TOOL_ROOT}/{version}"


def tool_path(version: str) -> str:
    return f"{tool_dir(version)}/{TOOL_ENTRY}"


# ------------------------------------------------------------------ planning (pure)


@dataclass(frozen=True)
class ToolStep:
    """One run of the tool: why, and its arguments.

    ``kind`` is ``set`` (stage a mode, no reset), ``reset`` (``--reset-with-os``) or
    ``verify`` (query after the reset); ``feature``/``target``: what is set or verified
    (``cc``/``ppcie`` and the mode); ``devices``: the PCI addresses in ``--devices``.
    """

    purpose: str
    args: tuple[str, ...]
    kind: str = ""
    feature: str = ""
    target: str = ""
    devices: tuple[str, ...] = ()

    def command(self, tool: str) -> str:
        return " ".join(["python3", shlex.quote(tool), *map(shlex.quote, self.args), "2>&1"])

    def shown(self, tool: str) -> str:
        """The command as an operator types it on the node (as root)."""
        return " ".join(["python3", shlex.quote(tool), *map(shlex.quote, self.args)])


@dataclass(frozen=True)
class ModePlan:
    """Tool runs that take the devices from their current modes to the wanted ones."""

    mode: str
    steps: tuple[ToolStep, ...]
    want_cc: dict[str, str] = field(default_factory=dict)  # GPU -> CC mode after the steps
    want_ppcie: dict[str, str] = field(default_factory=dict)  # device -> PPCIe mode after the steps
    done: tuple[str, ...] = ()  # devices already in their wanted modes
    todo: tuple[str, ...] = ()  # devices not (yet) in them, "bdf (cc X, ppcie Y)"
    mixed: bool = False  # known modes differ between GPUs, or between PPCIe devices

    @property
    def half_switched(self) -> bool:
        """GPUs (or PPCIe devices) in different modes while a switch is due: an interrupted
        switch, or devices switched one by one by hand."""
        return self.mixed and bool(self.steps)

    def recovery(self, tool: str) -> str:
        return " && ".join(step.shown(tool) for step in self.steps)


def pci_order(bdfs) -> list[str]:
    """PCI addresses in the order gpu-admin-tools lists devices: by the address read as one
    hex number (``pci/devices.py:find_gpus_sysfs`` ``devpath_to_id``)."""
    return sorted(bdfs, key=lambda b: int(b.replace(":", "").replace(".", ""), 16))


FEATURE_LABEL = {"cc": "CC", "ppcie": "PPCIe"}
_SET_FLAG = {"cc": "--set-cc-mode", "ppcie": "--set-ppcie-mode"}
_QUERY_FLAG = {"cc": "--query-cc-mode", "ppcie": "--query-ppcie-mode"}


def _phase(feature: str, target: str, devices: list[str], what: str, *, also_cc: bool = False) -> list[ToolStep]:
    """Set ``feature`` to ``target`` on every device without a reset, reset them all, verify each.

    ``also_cc``: the verify run also queries the CC mode (the PPCIe-on phase turns CC off on GPUs).
    """
    bdfs = ",".join(devices)
    n, label = len(devices), FEATURE_LABEL[feature]
    query = ("--query-cc-mode", "--query-ppcie-mode") if also_cc else (_QUERY_FLAG[feature],)
    devs = tuple(devices)
    return [
        ToolStep(f"setting {n} {what} to {label} mode {target}", ("--devices", bdfs, _SET_FLAG[feature], target), "set", feature, target, devs),
        ToolStep(f"resetting {n} {what} to apply {label} mode {target}", ("--devices", bdfs, "--reset-with-os"), "reset", feature, target, devs),
        ToolStep(f"verifying that {n} {what} are in {label} mode {target} after the reset", ("--devices", bdfs, *query), "verify", feature, target, devs),
    ]


def plan_modes(
    mode: str,
    gpus: Sequence[str],
    ppcie_devices: Sequence[str],
    cc_now: dict[str, str],
    ppcie_now: dict[str, str],
) -> ModePlan:
    """The tool runs needed (pure). A device missing from ``cc_now``/``ppcie_now`` (mode
    unknown, e.g. before the tool is installed) counts as not in the wanted mode.

    ``gpus``: every GPU of the node; ``ppcie_devices``: the GPUs and NVSwitches that
    support PPCIe (Hopper). ``mode``: ``on``, ``devtools``, ``off`` or ``ppcie``. Devices
    are passed to the tool in PCI address order.

    >>> p = plan_modes("on", ["0000:18:00.0"], [], {"0000:18:00.0": "off"}, {})
    >>> [s.args for s in p.steps]  # doctest: +NORMALIZE_WHITESPACE
    [('--devices', '0000:18:00.0', '--set-cc-mode', 'on'),
     ('--devices', '0000:18:00.0', '--reset-with-os'),
     ('--devices', '0000:18:00.0', '--query-cc-mode')]
    """
    if mode not in CC_MODES:
        raise ValueError(f"unknown GPU CC mode {mode!r}; use one of {', '.join(CC_MODES)}")
    cc_target = "off" if mode == "ppcie" else mode
    ppcie_target = "on" if mode == "ppcie" else "off"
    want_cc = {g: cc_target for g in gpus}
    want_ppcie = {d: ppcie_target for d in ppcie_devices}
    cc_wrong = pci_order(g for g in gpus if cc_now.get(g) != cc_target)
    ppcie_wrong = pci_order(d for d in ppcie_devices if ppcie_now.get(d) != ppcie_target)

    steps: list[ToolStep] = []
    if mode == "ppcie":
        # As NVIDIA's k8s-cc-manager (main.py:336-372 at 785d77e, "Per deployment guide:
        # --set-ppcie-mode=off on all devices" first, then "Set PPCIe mode on ALL devices ...
        # Reset all devices together ... so the NVLink fabric is configured consistently"):
        # when any device is not in PPCIe, the devices already in it go off first, then every
        # PPCIe device is set on and reset together. --set-ppcie-mode on also turns CC off
        # (nvidia_gpu_tools.py:1843-1851): one set, one reset.
        if ppcie_wrong or any(g in ppcie_devices for g in cc_wrong):
            already_on = pci_order(d for d in ppcie_devices if ppcie_now.get(d) == "on")
            if already_on:
                steps += _phase("ppcie", "off", already_on, "device(s) already in PPCIe (all off first, NVIDIA's order)")
            steps += _phase("ppcie", "on", pci_order(ppcie_devices), "device(s)", also_cc=True)
        cc_only = [g for g in cc_wrong if g not in ppcie_devices]
        if cc_only:
            steps = _phase("cc", "off", cc_only, "GPU(s) without PPCIe") + steps
    else:
        if ppcie_wrong:
            steps += _phase("ppcie", "off", ppcie_wrong, "device(s)")
        if cc_wrong:
            steps += _phase("cc", cc_target, cc_wrong, "GPU(s)")

    done, todo = [], []
    for bdf in pci_order(set(gpus) | set(ppcie_devices)):
        bad = (bdf in want_cc and bdf in cc_wrong) or (bdf in want_ppcie and bdf in ppcie_wrong)
        if not bad:
            done.append(bdf)
            continue
        state = []
        if bdf in want_cc:
            state.append(f"cc {cc_now.get(bdf, 'unknown')}")
        if bdf in want_ppcie:
            state.append(f"ppcie {ppcie_now.get(bdf, 'unknown')}")
        todo.append(f"{bdf} ({', '.join(state)})")
    # "half-switched" only means something for modes that are known
    mixed = len({cc_now[g] for g in gpus if g in cc_now}) > 1 or len({ppcie_now[d] for d in ppcie_devices if d in ppcie_now}) > 1
    return ModePlan(mode, tuple(steps), want_cc, want_ppcie, tuple(done), tuple(todo), mixed)


def mode_mismatches(plan: ModePlan, modes: GpuModes) -> list[str]:
    """Devices whose reported mode is not the planned one: ``"bdf: CC off (wanted on)"``."""
    out = []
    for bdf, want in sorted(plan.want_cc.items()):
        got = modes.cc.get(bdf, "unknown")
        if got != want:
            out.append(f"{bdf}: CC {got} (wanted {want})")
    for bdf, want in sorted(plan.want_ppcie.items()):
        got = modes.ppcie.get(bdf, "unknown")
        if got != want:
            out.append(f"{bdf}: PPCIe {got} (wanted {want})")
    return out

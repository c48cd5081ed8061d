"""Log lines of NVIDIA gpu-admin-tools (``nvidia_gpu_tools.py``): CC and PPCIe modes.

Read from the tool's source at the pinned release (gpu-admin-tools ``v2025.10.20``,
commit 82422cc1811cf7d04b69733cef3fa46e4144e203; docs/gpu.md has the line-by-line table)
and checked against real logs pasted in public issues (``tests/fixtures/gpu-admin-tools``).

The tool logs through Python ``logging`` to **stderr** with
``format='%(asctime)s.%(msecs)03d %(levelname)-8s %(message)s'`` and
``datefmt='%Y-%m-%d,%H:%M:%S'`` (``cli/main.py:260-262``), so run it with ``2>&1``. A
device prints itself as (``nvidia_gpu_tools.py:3268-3269``, ``:4486-4487``)::

    GPU <bdf> <name> <hex device id> BAR0 0x<bar0>        Gpu.__str__
    NvSwitch <bdf> <name> <hex device id> BAR0 0x<bar0>   NvSwitch.__str__

e.g. ``GPU 0000:45:00.0 H100 0x2330 BAR0 0x2c040000000`` (``?`` and ``BAR0 0x0`` before
the device is set up, older releases ``H100-SXM``/``H100-PCIE``). Messages
(``cli/per_gpu.py``, ``cli/per_gpu_nvswitch.py``)::

    {dev} CC mode is {mode}                                                 per_gpu.py:223
    {dev} CC mode set to {mode}. It will be active after GPU reset.         per_gpu.py:209
    {dev} was reset to apply the new CC mode.                               per_gpu.py:215
    {dev} failed to switch to CC mode {mode}, current mode is {mode}.       per_gpu.py:214 (raised GpuError)
    {dev} PPCIe mode is {mode}                                              per_gpu_nvswitch.py:136
    {dev} PPCIe mode set to {mode}. It will be active after GPU or switch reset.   per_gpu_nvswitch.py:122
    {dev} was reset to apply the new PPCIe mode.                            per_gpu_nvswitch.py:128
    {dev} failed to switch to PPCIe mode {mode}, current mode is {mode}.    per_gpu_nvswitch.py:127 (raised GpuError)
    {dev} has CC mode {mode}, some functionality may not work               per_gpu_nvswitch.py:70 (warning)
    {dev} has PPCIe mode {mode}, some functionality may not work            per_gpu_nvswitch.py:75 (warning)
    The nvidia driver appears to be using {dev}, aborting. Specify ...      per_gpu.py:158 (pre-Hopper only:
                                                                            nvidia_gpu_tools.py:4361-4364)
    {dev} does not support PPCIe on current FW. A FW update is required.    per_gpu_nvswitch.py:111
    Configuring CC not supported on {dev}                                   per_gpu.py:194
    Querying CC mode is not supported on {dev}                              per_gpu.py:219
    Configuring PPCIe not supported on {dev}                                per_gpu_nvswitch.py:104
    Querying PPCIe mode is not supported on {dev}                           per_gpu_nvswitch.py:132

"was reset to apply the new ... mode." is logged only after the tool read the new mode
back and found it equal to the one set (``per_gpu.py:211-215``), so it counts as that
mode being reported.

Example::

    >>> r = parse_admin_tool_output(
    ...     "2025-10-21,10:00:01.123 INFO     GPU 0000:45:00.0 H100 0x2330 BAR0 0x2c040000000 CC mode is on")
    >>> r.cc_modes()
    {'0000:45:00.0': 'on'}
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

# "<kind> <bdf> <name> <0xdevid> BAR0 0x<addr>": names have no fixed form ("H100",
# "Generic-GH100", "H100-PCIE" in older releases), so anchor on the device id and BAR0.
_DEVICE = (
    r"(?P<kind>GPU|NvSwitch) (?P<bdf>[0-9a-fA-F]{4}:[0-9a-fA-F]{2}:[0-9a-fA-F]{2}\.[0-7]) "
    r"(?P<name>.+?) (?P<devid>0x[0-9a-fA-F]+) BAR0 (?P<bar0>0x[0-9a-fA-F]+)"
)
_MODE = r"(?P<mode>[\w-]+)"

# (event, feature, pattern after the device) - the tool's messages, table-driven.
_MESSAGES: tuple[tuple[str, str, re.Pattern[str]], ...] = tuple(
    (event, feature, re.compile(_DEVICE + " " + pattern))
    for event, feature, pattern in (
        ("query", "cc", rf"CC mode is {_MODE}\s*$"),
        ("set", "cc", rf"CC mode set to {_MODE}\. It will be active after GPU reset\."),
        ("reset", "cc", r"was reset to apply the new CC mode\."),
        ("failed", "cc", rf"failed to switch to CC mode {_MODE}, current mode is (?P<current>[\w-]+)"),
        ("observed", "cc", rf"has CC mode {_MODE}, some functionality may not work"),
        ("query", "ppcie", rf"PPCIe mode is {_MODE}\s*$"),
        ("set", "ppcie", rf"PPCIe mode set to {_MODE}\. It will be active after GPU or switch reset\."),
        ("reset", "ppcie", r"was reset to apply the new PPCIe mode\."),
        ("failed", "ppcie", rf"failed to switch to PPCIe mode {_MODE}, current mode is (?P<current>[\w-]+)"),
        ("observed", "ppcie", rf"has PPCIe mode {_MODE}, some functionality may not work"),
        ("fw_update_needed", "ppcie", r"does not support PPCIe on current FW\. A FW update is required\."),
    )
)
_DRIVER_IN_USE = re.compile(r"The nvidia driver appears to be using " + _DEVICE + r", aborting")
_UNSUPPORTED = re.compile(
    r"(?:Querying|Configuring) (?P<feature>CC|PPCIe|PPCIE)(?: mode| settings)? (?:is )?not supported on " + _DEVICE
)


@dataclass(frozen=True)
class AdminToolDevice:
    kind: str  # "gpu" or "nvswitch"
    bdf: str
    name: str  # the tool's name for it: "H100", "B200", "Generic-GB202", "NVSwitch_gen3", "?" ...
    device_id: str  # 4 hex digits, no 0x
    bar0: str


@dataclass(frozen=True)
class AdminToolEvent:
    event: str  # query, set, reset, failed, observed, fw_update_needed, driver_in_use, unsupported
    feature: str  # "cc", "ppcie" ("" for driver_in_use)
    device: AdminToolDevice
    mode: str | None = None  # the mode printed (target mode for set/failed)
    current: str | None = None  # failed: the mode the device is in
    line: str = ""


@dataclass(frozen=True)
class AdminToolReport:
    events: tuple[AdminToolEvent, ...] = ()

    def _modes(self, feature: str) -> dict[str, str]:
        # Later lines win: a query after a reset reports the final state. "was reset to
        # apply the new mode" follows a read-back equal to the mode set (per_gpu.py:211-215).
        modes: dict[str, str] = {}
        last_set: dict[str, str] = {}
        for e in self.events:
            if e.feature != feature:
                continue
            if e.event in ("query", "observed") and e.mode:
                modes[e.device.bdf] = e.mode
            elif e.event == "set" and e.mode:
                last_set[e.device.bdf] = e.mode
            elif e.event == "reset" and e.device.bdf in last_set:
                modes[e.device.bdf] = last_set[e.device.bdf]
            elif e.event == "failed" and e.current:
                modes[e.device.bdf] = e.current
        return modes

    def cc_modes(self) -> dict[str, str]:
        """BDF -> CC mode (``on``/``off``/``devtools``) last reported per device."""
        return self._modes("cc")

    def ppcie_modes(self) -> dict[str, str]:
        return self._modes("ppcie")

    def devices(self) -> dict[str, AdminToolDevice]:
        return {e.device.bdf: e.device for e in self.events}

    @property
    def failures(self) -> tuple[AdminToolEvent, ...]:
        return tuple(
            e for e in self.events if e.event in ("failed", "driver_in_use", "unsupported", "fw_update_needed")
        )

    def pending_reset(self, feature: str = "cc") -> tuple[str, ...]:
        """Devices whose mode was set but not (yet) reset to apply it."""
        pending: dict[str, bool] = {}
        for e in self.events:
            if e.feature == feature and e.event == "set":
                pending[e.device.bdf] = True
            elif e.feature == feature and e.event in ("reset", "failed"):
                pending[e.device.bdf] = False
        return tuple(b for b, p in pending.items() if p)


def _device(m: re.Match[str]) -> AdminToolDevice:
    return AdminToolDevice(
        kind="gpu" if m["kind"] == "GPU" else "nvswitch",
        bdf=m["bdf"].lower(),
        name=m["name"],
        device_id=m["devid"].lower().removeprefix("0x").rjust(4, "0"),
        bar0=m["bar0"].lower(),
    )


def parse_admin_tool_line(line: str) -> AdminToolEvent | None:
    """One log line (with or without the logging prefix) to an event, or None."""
    for event, feature, pattern in _MESSAGES:
        if m := pattern.search(line):
            groups = m.groupdict()
            return AdminToolEvent(event, feature, _device(m), groups.get("mode"), groups.get("current"), line.strip())
    if m := _DRIVER_IN_USE.search(line):
        return AdminToolEvent("driver_in_use", "", _device(m), line=line.strip())
    if m := _UNSUPPORTED.search(line):
        return AdminToolEvent("unsupported", m["feature"].lower(), _device(m), line=line.strip())
    return None


def parse_admin_tool_output(text: str | Iterable[str]) -> AdminToolReport:
    """All events in the tool's combined stdout+stderr, in order."""
    lines = text.splitlines() if isinstance(text, str) else list(text)
    return AdminToolReport(tuple(e for e in map(parse_admin_tool_line, lines) if e is not None))

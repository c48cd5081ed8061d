"""gpu-admin-tools log lines. No recording exists (no CC host here); the lines are built from
the tool's own format strings (NVIDIA/gpu-admin-tools cli/per_gpu.py, cli/per_gpu_nvswitch.py,
nvidia_gpu_tools.py Gpu/NvSwitch.__str__, cli/main.py logging format); see docs/formats.md."""

from __future__ import annotations

import logging

import pytest

from ccfactory.parsers.gpuadmin import parse_admin_tool_line, parse_admin_tool_output


class _Dev:
    """Renders like the tool's Gpu/NvSwitch: "%s %s %s %s BAR0 0x%x" % (kind, bdf, name, hex(devid), bar0)."""

    def __init__(self, kind, bdf, name, devid, bar0):
        self.kind, self.bdf, self.name, self.device, self.bar0_addr = kind, bdf, name, devid, bar0

    def __str__(self):  # %-formatting on purpose: the tool formats it this way
        return "%s %s %s %s BAR0 0x%x" % (self.kind, self.bdf, self.name, hex(self.device), self.bar0_addr)  # noqa: UP031


GPU = _Dev("GPU", "0000:45:00.0", "H100", 0x2330, 0x2C040000000)
SWITCH = _Dev("NvSwitch", "0000:c5:00.0", "NVSwitch_gen3", 0x22A3, 0xA0000000)


def _logged(*messages: str) -> str:
    """Format messages exactly as the tool's logging.basicConfig does."""
    fmt = logging.Formatter("%(asctime)s.%(msecs)03d %(levelname)-8s %(message)s", datefmt="%Y-%m-%d,%H:%M:%S")
    out = []
    for msg in messages:
        level = logging.ERROR if "aborting" in msg else logging.INFO
        out.append(fmt.format(logging.LogRecord("root", level, __file__, 1, msg, None, None)))
    return "\n".join(out)


def test_query_cc_mode():
    report = parse_admin_tool_output(_logged(f"{GPU} CC mode is on"))
    [event] = report.events
    assert (event.event, event.feature, event.mode) == ("query", "cc", "on")
    dev = event.device
    assert (dev.kind, dev.bdf, dev.name, dev.device_id, dev.bar0) == (
        "gpu",
        "0000:45:00.0",
        "H100",
        "2330",
        "0x2c040000000",
    )
    assert report.cc_modes() == {"0000:45:00.0": "on"}


def test_set_and_reset_cc_mode_sequence():
    text = _logged(
        f"{GPU} has CC mode off, some functionality may not work",
        f"{GPU} CC mode set to devtools. It will be active after GPU reset.",
        f"{GPU} was reset to apply the new CC mode.",
        f"{GPU} CC mode is devtools",
    )
    report = parse_admin_tool_output(text)
    assert [e.event for e in report.events] == ["observed", "set", "reset", "query"]
    assert report.cc_modes() == {"0000:45:00.0": "devtools"}
    assert report.pending_reset() == () and report.failures == ()


def test_set_without_reset_is_pending():
    report = parse_admin_tool_output(_logged(f"{GPU} CC mode set to on. It will be active after GPU reset."))
    assert report.pending_reset("cc") == ("0000:45:00.0",)
    assert report.cc_modes() == {}


def test_failed_switch_raised_as_gpu_error_in_a_traceback():
    # per_gpu.py raises GpuError(f"{gpu} failed to switch ..."); Python prints it as the last traceback line
    text = "\n".join(
        [
            _logged(f"{GPU} CC mode set to on. It will be active after GPU reset."),
            "Traceback (most recent call last):",
            '  File "nvidia_gpu_tools.py", line 40, in <module>',
            f"gpu.error.GpuError: {GPU} failed to switch to CC mode on, current mode is off.",
        ]
    )
    report = parse_admin_tool_output(text)
    [failure] = report.failures
    assert (failure.event, failure.mode, failure.current) == ("failed", "on", "off")
    assert report.cc_modes() == {"0000:45:00.0": "off"} and report.pending_reset() == ()


def test_ppcie_lines_for_gpus_and_switches():
    text = _logged(
        f"{SWITCH} PPCIe mode set to on. It will be active after GPU or switch reset.",
        f"{SWITCH} was reset to apply the new PPCIe mode.",
        f"{SWITCH} PPCIe mode is on",
        f"{GPU} PPCIe mode is off",
    )
    report = parse_admin_tool_output(text)
    assert report.ppcie_modes() == {"0000:c5:00.0": "on", "0000:45:00.0": "off"}
    assert report.cc_modes() == {}
    assert report.devices()["0000:c5:00.0"].kind == "nvswitch"


def test_ppcie_failure_and_firmware_too_old():
    report = parse_admin_tool_output(
        [
            f"gpu.error.GpuError: {SWITCH} failed to switch to PPCIe mode on, current mode is off.",
            f"{GPU} does not support PPCIe on current FW. A FW update is required.",
        ]
    )
    assert [(e.event, e.feature) for e in report.failures] == [("failed", "ppcie"), ("fw_update_needed", "ppcie")]


def test_driver_in_use_and_unsupported():
    # cli/per_gpu.py:158,194,219 and cli/per_gpu_nvswitch.py:104,132 at gpu-admin-tools v2025.10.20
    text = _logged(
        f"The nvidia driver appears to be using {GPU}, aborting. Specify --ignore-nvidia-driver to ignore this check.",
        f"Querying CC mode is not supported on {GPU}",
        f"Configuring CC not supported on {GPU}",
        f"Configuring PPCIe not supported on {SWITCH}",
        f"Querying PPCIe mode is not supported on {SWITCH}",
    )
    report = parse_admin_tool_output(text)
    assert [(e.event, e.feature) for e in report.events] == [
        ("driver_in_use", ""),
        ("unsupported", "cc"),
        ("unsupported", "cc"),
        ("unsupported", "ppcie"),
        ("unsupported", "ppcie"),
    ]
    assert len(report.failures) == 5


def test_a_message_the_tool_does_not_have_is_not_an_event():
    # no "Enabling CC not supported ... Only disabling CC is allowed." in gpu-admin-tools v2025.10.20
    assert parse_admin_tool_output(f"Enabling CC not supported on {GPU}. Only disabling CC is allowed.").events == ()


def test_reset_line_reports_the_mode_that_was_set():
    # "was reset to apply the new CC mode." only follows a read-back equal to the mode set (per_gpu.py:211-215)
    report = parse_admin_tool_output(
        _logged(
            f"{GPU} has CC mode on, some functionality may not work",
            f"{GPU} CC mode set to off. It will be active after GPU reset.",
            f"{GPU} was reset to apply the new CC mode.",
        )
    )
    assert report.cc_modes() == {"0000:45:00.0": "off"} and report.pending_reset("cc") == ()


@pytest.mark.parametrize("name", ["H100", "Generic-GH100", "H100-PCIE", "RTX PRO 6000 BSE"])
def test_device_names_of_any_shape(name):
    dev = _Dev("GPU", "0000:01:00.0", name, 0x2BB5, 0x1000)
    event = parse_admin_tool_line(f"{dev} CC mode is off")
    assert event.device.name == name and event.device.device_id == "2bb5"


def test_unrelated_lines_are_ignored():
    assert parse_admin_tool_output("NVIDIA GPU Tools version v2026.02.24o\nTopo:\n  GPUs:").events == ()

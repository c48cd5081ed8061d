"""ccfactory's gpu-admin-tools parser on real output pasted in public issues
(``tests/fixtures/gpu-admin-tools``, sources and dates in its SOURCES.md)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ccfactory.facts.gpu_cc import parse_query_output
from ccfactory.parsers.gpuadmin import parse_admin_tool_output

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "gpu-admin-tools"


def read(name: str) -> str:
    return (FIXTURES / name).read_text()


def test_every_fixture_has_its_source():
    sources = read("SOURCES.md")
    logs = sorted(p.name for p in FIXTURES.glob("*.log"))
    assert len(logs) == 4
    assert all(f"`{name}`" in sources for name in logs)


def test_query_cc_mode_v2025_07_21o():
    report = parse_admin_tool_output(read("gpu-admin-tools-13-query-cc-mode.log"))
    assert report.cc_modes() == {"0000:3a:00.0": "off"}
    (event,) = report.events  # the power-control warnings and the "?" name before set-up are not events
    assert (event.event, event.device.name, event.device.device_id, event.device.bar0) == ("query", "H100", "2321", "0x7e042000000")
    assert report.failures == ()


def test_set_cc_mode_off_with_reset_v2024_02_14o():
    report = parse_admin_tool_output(read("nvtrust-55-set-cc-mode-off.log"))
    assert [(e.event, e.mode) for e in report.events] == [("observed", "on"), ("set", "off"), ("reset", None)]
    assert report.events[0].device.name == "H100-SXM"
    # the reset line follows the tool's read-back of the mode it set: the GPU is off now
    assert report.cc_modes() == {"0000:43:00.0": "off"}
    assert report.pending_reset("cc") == () and report.failures == ()


def test_set_cc_mode_on_with_reset_gpu_cc_tool_535():
    report = parse_admin_tool_output(read("nvtrust-30-set-cc-mode-on.log"))
    assert [(e.event, e.device.bdf) for e in report.events] == [("set", "0009:01:00.0"), ("reset", "0009:01:00.0")]
    assert report.cc_modes() == {"0009:01:00.0": "on"}
    assert report.devices()["0009:01:00.0"].name == "H100-PCIE"


def test_query_traceback_is_no_mode_and_fails_the_fact_by_exit_status():
    text = read("gpu-admin-tools-7-query-traceback.log")
    report = parse_admin_tool_output(text)
    assert report.events == () and report.cc_modes() == {}
    # as the GpuCcModes fact sees it: the tool's output, then its exit status (1 for a traceback)
    modes = parse_query_output(["### ccfactory:cc", *text.splitlines(), "### ccfactory:exit 1"])
    assert modes.installed and modes.cc == {}
    (problem,) = modes.problems
    assert problem.startswith("--query-cc-mode exited with status 1: ")
    assert problem.endswith("gpu.error.GpuError: Unexpected CC state 0x2")


@pytest.mark.parametrize("name", ["gpu-admin-tools-13-query-cc-mode.log", "nvtrust-55-set-cc-mode-off.log", "nvtrust-30-set-cc-mode-on.log"])
def test_fact_reads_the_real_lines(name):
    modes = parse_query_output(["### ccfactory:cc", *read(name).splitlines(), "### ccfactory:exit 0"])
    assert modes.known and len(modes.cc) == 1

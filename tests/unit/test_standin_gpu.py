"""The gpu-admin-tools lab stand-in: real CLI, real log lines and exit codes, lab GPU state.

Every test runs the tool from its built tarball with the node's python3 against a PCI
tree rendered by the lab renderer and a ``gpus.json`` made by the lab's gpustate.
"""

from __future__ import annotations

import re
import subprocess

import pytest
from test_standin_gpu_helpers import PYTHON, make_lab_node

from ccfactory.facts.gpu import nvidia_gpus_command
from ccfactory.lab.gpustate import apply_pending_on_reset, load_gpu_state
from ccfactory.parsers.gpuadmin import parse_admin_tool_output
from ccfactory.parsers.gpuhost import nvidia_devices_from_lines

GPUS = ["0000:18:00.0", "0000:2a:00.0", "0000:3a:00.0", "0000:5d:00.0", "0000:9a:00.0", "0000:ab:00.0", "0000:ba:00.0", "0000:db:00.0"]
SWITCHES = ["0000:c5:00.0", "0000:c6:00.0", "0000:c7:00.0", "0000:c8:00.0"]
PREFIX = r"\d{4}-\d\d-\d\d,\d\d:\d\d:\d\d\.\d{3} (INFO|WARNING|ERROR|DEBUG)\s+"


@pytest.fixture
def node(tmp_path):
    return make_lab_node(tmp_path)


def test_query_prints_the_real_lines_on_stderr(node):
    r = node.run("--devices", "gpus", "--query-cc-mode")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("NVIDIA GPU Tools version v2026.02.24o-ccfactory-lab.1\nCommand line arguments: [")
    assert "Topo:\n  GPU 0000:18:00.0 H100 0x2330 BAR0 0x" in r.stdout
    lines = r.stderr.splitlines()
    assert all(re.match(PREFIX, line) for line in lines)
    assert re.search(r"INFO     GPU 0000:18:00\.0 H100 0x2330 BAR0 0x[0-9a-f]+ CC mode is off$", lines[-8])
    assert parse_admin_tool_output(r.stderr).cc_modes() == dict.fromkeys(GPUS, "off")


def test_set_without_reset_is_pending_until_a_reset(node):
    r = node.run("--devices", "gpus[0]", "--set-cc-mode", "on")
    assert r.returncode == 0
    assert re.search(r"GPU 0000:18:00\.0 .* CC mode set to on\. It will be active after GPU reset\.$", r.stderr, re.M)
    assert node.state()["0000:18:00.0"]["cc_mode"] == "off"
    assert node.state()["0000:18:00.0"]["pending_cc_mode"] == "on"
    assert parse_admin_tool_output(node.run("--devices", "gpus[0]", "--query-cc-mode").stderr).cc_modes() == {
        "0000:18:00.0": "off"
    }
    # the lab applies pending modes at the next boot (gpustate reads what the stand-in wrote)
    apply_pending_on_reset(node.lab, "node1")
    assert load_gpu_state(node.lab, "node1").devices["0000:18:00.0"].cc_mode == "on"
    # so does an explicit reset through the tool
    node.run("--devices", "gpus[1]", "--set-cc-mode", "devtools")
    assert node.run("--devices", "gpus[1]", "--reset-with-os").returncode == 0
    assert node.state()["0000:2a:00.0"]["cc_mode"] == "devtools"


def test_set_and_reset_switches_and_reports(node):
    r = node.run("--devices", "gpus", "--set-cc-mode=on", "--reset-after-cc-mode-switch")
    assert r.returncode == 0, r.stderr
    report = parse_admin_tool_output(r.stderr)
    assert [e.event for e in report.events if e.device.bdf == "0000:18:00.0"] == ["set", "reset", "observed"]
    assert report.cc_modes() == dict.fromkeys(GPUS, "on")
    assert "has CC mode on, some functionality may not work" in r.stderr
    state = node.state()
    assert all(state[g]["cc_mode"] == "on" and state[g]["pending_cc_mode"] is None for g in GPUS)
    load_gpu_state(node.lab, "node1")  # still valid for the lab core


def test_refuses_while_the_nvidia_driver_holds_the_gpu(node):
    node.bind("0000:2a:00.0", "nvidia")
    r = node.run("--devices", "gpus", "--set-cc-mode", "on", "--reset-after-cc-mode-switch")
    assert r.returncode == 1
    assert re.search(
        r"ERROR    The nvidia driver appears to be using GPU 0000:2a:00\.0 H100 0x2330 BAR0 0x[0-9a-f]+, aborting\. "
        r"Specify --ignore-nvidia-driver to ignore this check\.$",
        r.stderr,
        re.M,
    )
    state = node.state()
    assert state["0000:18:00.0"]["cc_mode"] == "on"  # processed before the held one
    assert state["0000:2a:00.0"]["cc_mode"] == "off" and state["0000:3a:00.0"]["cc_mode"] == "off"
    assert parse_admin_tool_output(r.stderr).failures[0].event == "driver_in_use"

    r = node.run("--devices", "0000:2a:00.0", "--set-cc-mode", "on", "--reset-after-cc-mode-switch", "--ignore-nvidia-driver")
    assert r.returncode == 0
    assert "but --ignore-nvidia-driver was specified, continuing." in r.stderr
    assert node.state()["0000:2a:00.0"]["cc_mode"] == "on"


def test_ppcie_on_hopper_gpus_and_nvswitches(node):
    r = node.run("--devices", "gpus,nvswitches", "--set-ppcie-mode", "on")
    assert r.returncode == 0, r.stderr
    assert "NvSwitch 0000:c5:00.0 NVSwitch_gen3 0x22a3 BAR0 0x" in r.stderr
    assert "PPCIe mode set to on. It will be active after GPU or switch reset." in r.stderr
    r = node.run("--devices", "gpus,nvswitches", "--reset-with-os", "--query-ppcie-mode")
    assert parse_admin_tool_output(r.stderr).ppcie_modes() == dict.fromkeys(GPUS + SWITCHES, "on")
    r = node.run("--devices", "nvswitches[1]", "--set-ppcie-mode", "off", "--reset-after-ppcie-mode-switch")
    assert "NvSwitch 0000:c6:00.0 NVSwitch_gen3 0x22a3" in r.stderr and "was reset to apply the new PPCIe mode." in r.stderr
    # NVSwitches have no CC mode in the tool: the CC flags do nothing there
    r = node.run("--devices", "nvswitches", "--set-cc-mode", "off", "--query-cc-mode")
    assert r.returncode == 0 and "CC mode" not in r.stderr


def test_ppcie_is_refused_on_blackwell(tmp_path):
    node = make_lab_node(tmp_path, "intel-tdx")
    r = node.run("--devices", "gpus", "--query-cc-mode")
    assert re.search(r"GPU 0000:19:00\.0 Generic-GB100 0x2901 BAR0 0x[0-9a-f]+ CC mode is off$", r.stderr, re.M)
    r = node.run("--devices", "gpus", "--query-ppcie-mode")
    assert r.returncode == 1
    assert re.search(r"ERROR    Querying PPCIe mode is not supported on GPU 0000:19:00\.0 Generic-GB100", r.stderr)
    assert "0000:9b:00.0" not in r.stderr.split("Querying")[1]  # the tool stops at the first refusal
    r = node.run("--devices", "gpus", "--set-ppcie-mode", "on")
    assert r.returncode == 1 and "Configuring PPCIe not supported on GPU 0000:19:00.0" in r.stderr
    assert parse_admin_tool_output(r.stderr).failures[0].event == "unsupported"


def test_stuck_gpu_fails_with_the_real_message_and_stops(node):
    node.faults(stuck_after_reset=["0000:3a:00.0"])
    r = node.run("--devices", "gpus", "--set-cc-mode", "on", "--reset-after-cc-mode-switch")
    assert r.returncode == 1
    last = r.stderr.strip().splitlines()[-1]
    assert re.fullmatch(
        r"gpu\.error\.GpuError: GPU 0000:3a:00\.0 H100 0x2330 BAR0 0x[0-9a-f]+ failed to switch to CC mode on, "
        r"current mode is off\.",
        last,
    )
    assert "Traceback (most recent call last):" in r.stderr
    report = parse_admin_tool_output(r.stderr)
    assert [(e.device.bdf, e.event, e.current) for e in report.failures] == [("0000:3a:00.0", "failed", "off")]
    state = node.state()
    assert [state[g]["cc_mode"] for g in GPUS] == ["on", "on", "off", "off", "off", "off", "off", "off"]
    assert state["0000:3a:00.0"]["pending_cc_mode"] is None  # the failed switch is not pending either


def test_ppcie_fw_update_fault(node):
    node.faults(ppcie_fw_update_required=["0000:c5:00.0"])
    r = node.run("--devices", "nvswitches", "--set-ppcie-mode", "on")
    assert r.returncode == 1
    assert "NvSwitch 0000:c5:00.0 NVSwitch_gen3 0x22a3 BAR0 0xa8000000 does not support PPCIe on current FW. A FW update is required." in r.stderr
    assert parse_admin_tool_output(r.stderr).failures[0].event == "fw_update_needed"


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("gpus[1:3]", ["0000:2a:00.0", "0000:3a:00.0"]),
        ("gpus[7]", ["0000:db:00.0"]),
        ("nvswitches[0]", ["0000:c5:00.0"]),
        ("10de:22a3", SWITCHES),
        ("5d:00.0,0000:18:00.0", ["0000:5d:00.0", "0000:18:00.0"]),
    ],
)
def test_device_selection(node, spec, expected):
    r = node.run("--devices", spec, "--query-ppcie-mode")
    assert r.returncode == 0, r.stderr
    assert list(parse_admin_tool_output(r.stderr).ppcie_modes()) == expected


def test_selection_errors_and_usage(node):
    r = node.run("--devices", "0000:77:00.0", "--query-cc-mode")
    assert r.returncode == 1
    assert "WARNING  No device found at BDF 0000:77:00.0" in r.stderr
    assert "ERROR    No devices found matching: 0000:77:00.0" in r.stderr
    r = node.run("--devices", "gpus", "--set-cc-mode", "maybe")
    assert r.returncode == 2 and "invalid choice: 'maybe'" in r.stderr
    r = node.run("--devices", "gpus", "--query-cc-settings")
    assert r.returncode == 2 and "unrecognized arguments" in r.stderr


def test_refuses_outside_a_lab_node(node, tmp_path):
    env = dict(node.env, CCFACTORY_LAB_STATE_DIR=str(tmp_path / "nowhere"))
    r = subprocess.run([PYTHON, str(node.tool), "--devices", "gpus", "--query-cc-mode"], capture_output=True, text=True, env=env)
    assert r.returncode == 1
    assert "only runs on ccfactory lab nodes" in r.stderr


def test_sysfs_unbind_and_bind(node):
    node.bind("0000:18:00.0", "nvidia")
    node.bind("0000:2a:00.0", "vfio-pci")  # creates the vfio-pci driver directory
    assert node.run("--devices", "0000:18:00.0", "--sysfs-unbind").returncode == 0
    assert not (node.pci("0000:18:00.0") / "driver").exists()
    assert node.run("--devices", "0000:18:00.0", "--sysfs-bind", "vfio-pci", "--log", "debug").returncode == 0
    out = node.shell(nvidia_gpus_command(str(node.root))).stdout.splitlines()
    assert nvidia_devices_from_lines(out).by_bdf("0000:18:00.0").driver == "vfio-pci"

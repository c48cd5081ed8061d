"""The gpu-admin-tools lab stand-in: real CLI, real log lines and exit codes, lab GPU state.

Every test runs the tool from its built tarball with the node's python3 against a PCI
tree rendered by the lab renderer and a ``gpus.json`` made by the lab's gpustate.
"""

from __future__ import annotations

import ast
import importlib.util
import re
import subprocess
from pathlib import Path

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
    assert r.stdout.startswith("NVIDIA GPU Tools version v2025.10.20o-ccfactory-lab.1\nCommand line arguments: [")
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


def test_the_tool_does_not_check_the_driver_on_hopper(node):
    # nvidia_gpu_tools.py:4361-4364 (v2025.10.20): "if self.is_hopper_plus: # TODO, for now assume
    # no driver." The guard is ccfactory's own sysfs check (roles/gpu/operations.py driver_holders).
    node.bind("0000:2a:00.0", "nvidia")
    r = node.run("--devices", "gpus", "--set-cc-mode", "on", "--reset-after-cc-mode-switch")
    assert r.returncode == 0, r.stderr
    assert "driver appears to be using" not in r.stderr
    assert all(node.state()[g]["cc_mode"] == "on" for g in GPUS)


def test_cc_and_ppcie_knobs_turn_each_other_off(node):
    # set_ppcie_mode("on") writes the CC knobs off (nvidia_gpu_tools.py:1843-1851)
    node.run("--devices", "gpus[0]", "--set-cc-mode", "on", "--reset-after-cc-mode-switch")
    r = node.run("--devices", "gpus[0]", "--set-ppcie-mode", "on")
    assert r.returncode == 0, r.stderr
    assert re.search(r"INFO     CC is currently active\. It will be turned off before switching to PPCIe\.$", r.stderr, re.M)
    assert node.state()["0000:18:00.0"]["pending_cc_mode"] == "off"
    assert node.run("--devices", "gpus[0]", "--reset-with-os").returncode == 0
    assert (node.state()["0000:18:00.0"]["cc_mode"], node.state()["0000:18:00.0"]["ppcie_mode"]) == ("off", "on")
    # set_cc_mode("on") reads the PPCIe knob and writes it off on Hopper (nvidia_gpu_tools.py:3794-3811)
    r = node.run("--devices", "gpus[0]", "--set-cc-mode", "on")
    assert re.search(r"GPU 0000:18:00\.0 H100 0x2330 BAR0 0x[0-9a-f]+ has PPCIe enabled\. It will be turned off before "
                     r"switching to CC\.$", r.stderr, re.M)
    assert node.state()["0000:18:00.0"]["pending_ppcie_mode"] == "off"


def test_devices_are_reset_and_queried_one_at_a_time(node):
    node.run("--devices", "gpus", "--set-cc-mode", "devtools")
    r = node.run("--devices", "0000:2a:00.0,0000:18:00.0", "--reset-with-os", "--query-cc-mode")
    assert r.returncode == 0, r.stderr
    # in the order given; each device reset then queried before the next (cli/main.py:356-364)
    assert [(e.device.bdf, e.event, e.mode) for e in parse_admin_tool_output(r.stderr).events] == [
        ("0000:2a:00.0", "query", "devtools"),
        ("0000:2a:00.0", "observed", "devtools"),
        ("0000:18:00.0", "query", "devtools"),
        ("0000:18:00.0", "observed", "devtools"),
    ]


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
    # 0x2901 is "B200" in the tool's gpu/devid_names.py
    assert re.search(r"GPU 0000:19:00\.0 B200 0x2901 BAR0 0x[0-9a-f]+ CC mode is off$", r.stderr, re.M)
    r = node.run("--devices", "gpus", "--query-ppcie-mode")
    assert r.returncode == 1
    assert re.search(r"ERROR    Querying PPCIe mode is not supported on GPU 0000:19:00\.0 B200", r.stderr)
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


STANDIN = Path(__file__).resolve().parents[2] / "src/ccfactory/lab/standins/gpu_admin_tools"


def test_the_standin_imports_nothing_from_ccfactory():
    files = sorted(STANDIN.rglob("*.py"))
    assert len(files) >= 8
    bad = []
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            elif isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", "")) in ("__import__", "import_module"):
                names = [a.value for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str)]
            bad += [f"{path.relative_to(STANDIN)}: {n}" for n in names if n == "ccfactory" or n.startswith("ccfactory.")]
    assert bad == []


def _devid_names():
    spec = importlib.util.spec_from_file_location("standin_devid_names", STANDIN / "gpu/devid_names.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    ("devid", "name", "arch"),
    [
        (0x2330, "H100", "hopper"),
        (0x2335, "H200", "hopper"),
        (0x2342, "GH200", "hopper"),  # repeated key in the tool's dict literal: the last value wins
        (0x2901, "B200", "blackwell"),
        (0x2941, "GB200", "blackwell"),
        (0x2BB5, "Generic-GB202", "blackwell"),  # in GPU_DEVID_CHIPS, not in the name table
        (0x2350, "Generic-GH100", "hopper"),  # the 0x22f0-0x237f Hopper range (nvidia_gpu_tools.py:3315-3318)
    ],
)
def test_device_names_follow_the_tools_tables(devid, name, arch):
    assert _devid_names().gpu_identity(devid) == (name, arch)


def test_devices_the_tool_names_from_registers_are_refused():
    with pytest.raises(KeyError):
        _devid_names().gpu_identity(0x20B0)  # A100: named from BOOT_0 by the real tool

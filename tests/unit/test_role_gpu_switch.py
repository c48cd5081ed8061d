"""The mode-switch callback of ``gpu.cc_mode`` against the real stand-in on a rendered lab node:
set all, reset all, verify each; stuck GPU (half-switched, recovery command), PPCIe
ordering, and the GpuCcModes fact's command and parsing."""

from __future__ import annotations

import pytest
from pyinfra.connectors.util import CommandOutput, OutputLine
from test_standin_gpu_helpers import make_lab_node

from ccfactory.facts.gpu_cc import GpuCcModes, parse_query_output, query_command
from ccfactory.gpuadmin import plan_modes
from ccfactory.roles.gpu.operations import _switch

GPUS = ["0000:18:00.0", "0000:2a:00.0", "0000:3a:00.0", "0000:5d:00.0", "0000:9a:00.0", "0000:ab:00.0", "0000:ba:00.0", "0000:db:00.0"]
SWITCHES = ["0000:c5:00.0", "0000:c6:00.0", "0000:c7:00.0", "0000:c8:00.0"]


class NodeHost:
    """Just enough of a pyinfra Host: runs commands on the rendered lab node."""

    def __init__(self, node):
        self.node = node
        self.logs: list[str] = []
        self.commands: list[str] = []

    def run_shell_command(self, command, print_output=False, **kwargs):  # noqa: ARG002
        text = command.get_raw_value()
        self.commands.append(text)
        r = self.node.shell(text)
        lines = [OutputLine("stdout", line) for line in r.stdout.splitlines()]
        lines += [OutputLine("stderr", line) for line in r.stderr.splitlines()]
        return r.returncode == 0, CommandOutput(lines)

    def get_fact(self, cls, **kwargs):
        assert cls is GpuCcModes
        r = self.node.shell(query_command(kwargs["tool"], kwargs.get("cc_devices", ""), kwargs.get("ppcie_devices", "")))
        return parse_query_output(r.stdout.splitlines())

    def log_styled(self, message, **kwargs):  # noqa: ARG002
        self.logs.append(message)


class State:
    print_output = False


@pytest.fixture
def node(tmp_path):
    return make_lab_node(tmp_path)


def switch(node, mode, *, ppcie=GPUS + SWITCHES):
    host = NodeHost(node)
    now = host.get_fact(GpuCcModes, tool=str(node.tool), cc_devices=",".join(GPUS), ppcie_devices=",".join(ppcie))
    plan = plan_modes(mode, GPUS, ppcie, now.cc, now.ppcie)
    ok = _switch(State(), host, {}, plan, str(node.tool), GPUS, ppcie)
    return ok, host, plan


def test_fact_reads_modes_and_reports_a_missing_tool(node):
    modes = NodeHost(node).get_fact(GpuCcModes, tool=str(node.tool), cc_devices=",".join(GPUS), ppcie_devices="0000:c5:00.0")
    assert modes.installed and modes.known and modes.cc == dict.fromkeys(GPUS, "off") and modes.ppcie == {"0000:c5:00.0": "off"}
    missing = NodeHost(node).get_fact(GpuCcModes, tool="/nonexistent/nvidia_gpu_tools.py", cc_devices="x")
    assert not missing.installed and missing.cc == {}


def test_fact_reports_tool_refusals(tmp_path):
    node = make_lab_node(tmp_path, "intel-tdx")
    modes = NodeHost(node).get_fact(GpuCcModes, tool=str(node.tool), cc_devices="0000:19:00.0", ppcie_devices="0000:19:00.0")
    assert modes.cc == {"0000:19:00.0": "off"}
    assert len(modes.problems) == 1 and "Querying PPCIe mode is not supported on GPU 0000:19:00.0" in modes.problems[0]


def flags(host):
    """The tool arguments after ``--devices <list>`` of each command run."""
    return [c.split(" --devices ")[1].split(" 2>&1")[0].split(" ", 1)[1] for c in host.commands]


def test_switch_on_then_verified_then_nothing_left(node):
    ok, host, plan = switch(node, "on")
    assert ok, host.logs
    assert host.logs[-1] == "GPU modes verified after reset: 8 GPU(s) CC on, 12 device(s) PPCIe off"
    assert flags(host) == ["--set-cc-mode on", "--reset-with-os", "--query-cc-mode"]
    assert all(f"--devices {','.join(GPUS)} " in c for c in host.commands)
    assert all(d["cc_mode"] == "on" and d["pending_cc_mode"] is None for b, d in node.state().items() if b in GPUS)
    now = NodeHost(node).get_fact(GpuCcModes, tool=str(node.tool), cc_devices=",".join(GPUS), ppcie_devices=",".join(GPUS + SWITCHES))
    assert plan_modes("on", GPUS, GPUS + SWITCHES, now.cc, now.ppcie).steps == ()


def test_stuck_gpu_names_the_device_the_state_and_the_recovery(node):
    node.faults(stuck_after_reset=["0000:3a:00.0"])
    ok, host, _ = switch(node, "on")
    assert not ok
    (message,) = host.logs
    # every GPU was set and reset; the verify run finds the stuck one (the others switched)
    assert message.startswith("ccfactory: gpu-admin-tools failed verifying that 8 GPU(s) are in CC mode on after the reset: ")
    assert "GPU 0000:3a:00.0 H100 0x2330 BAR0 0x" in message
    assert "failed to switch to CC mode on, current mode is off." in message
    assert "Devices now in the wanted modes: 0000:18:00.0, 0000:2a:00.0, 0000:5d:00.0" in message
    assert "not yet: 0000:3a:00.0 (cc off, ppcie off)." in message
    assert "Set but not applied" not in message  # every set was followed by a reset
    tool = str(node.tool)
    assert (
        f"Recovery, as root on the node: python3 {tool} --devices 0000:3a:00.0 --set-cc-mode on && python3 {tool} "
        f"--devices 0000:3a:00.0 --reset-with-os && python3 {tool} --devices 0000:3a:00.0 --query-cc-mode; if a device "
        "keeps its old mode after the reset, power-cycle the node through its BMC" in message
    )
    state = node.state()
    assert [state[g]["cc_mode"] for g in GPUS] == ["on", "on", "off", "on", "on", "on", "on", "on"]
    # the next run finds the node half-switched and says so before finishing it
    node.faults()
    ok, host, plan = switch(node, "on")
    assert ok and plan.half_switched
    assert host.logs[0].startswith("ccfactory: GPUs are half-switched (in the wanted modes: 0000:18:00.0, 0000:2a:00.0")
    assert flags(host) == ["--set-cc-mode on", "--reset-with-os", "--query-cc-mode"] and "--devices 0000:3a:00.0 " in host.commands[0]


def test_ppcie_switch_and_back(node):
    node.run("--devices", "gpus", "--set-cc-mode", "on", "--reset-after-cc-mode-switch")
    ok, host, _ = switch(node, "ppcie")
    assert ok, host.logs
    # PPCIe set on every GPU and NVSwitch (which also turns CC off), all reset, each verified
    assert flags(host) == ["--set-ppcie-mode on", "--reset-with-os", "--query-cc-mode --query-ppcie-mode"]
    assert all(f"--devices {','.join(sorted(GPUS + SWITCHES))} " in c for c in host.commands)
    state = node.state()
    assert all(state[g]["cc_mode"] == "off" and state[g]["pending_cc_mode"] is None for g in GPUS)
    assert all(state[d]["ppcie_mode"] == "on" and state[d]["pending_ppcie_mode"] is None for d in GPUS + SWITCHES)
    assert host.logs[-1] == "GPU modes verified after reset: 8 GPU(s) CC off, 12 device(s) PPCIe on"
    ok, host, _ = switch(node, "devtools")
    assert ok, host.logs
    assert flags(host) == [
        "--set-ppcie-mode off", "--reset-with-os", "--query-ppcie-mode", "--set-cc-mode devtools", "--reset-with-os", "--query-cc-mode",
    ]
    assert all(state["cc_mode"] == "devtools" and state["ppcie_mode"] == "off" for b, state in node.state().items() if b in GPUS)


def test_ppcie_set_failure_reports_pending_devices(node):
    node.faults(ppcie_fw_update_required=["0000:c7:00.0"])
    ok, host, _ = switch(node, "ppcie")
    assert not ok
    (message,) = host.logs
    assert "failed setting 12 device(s) to PPCIe mode on: NvSwitch 0000:c7:00.0 NVSwitch_gen3 0x22a3" in message
    assert "does not support PPCIe on current FW. A FW update is required." in message
    # the tool stops at c7 (PCI order: 18 .. ba, c5, c6, c7): those before it are set, not reset
    pending = message.split("applied by the next reset or reboot: ")[1].split("; to withdraw")[0]
    assert pending == "0000:18:00.0, 0000:2a:00.0, 0000:3a:00.0, 0000:5d:00.0, 0000:9a:00.0, 0000:ab:00.0, 0000:ba:00.0, 0000:c5:00.0, 0000:c6:00.0"
    assert message.split("to withdraw that: ")[1].split(". Recovery")[0].endswith(
        "--devices 0000:18:00.0,0000:2a:00.0,0000:3a:00.0,0000:5d:00.0,0000:9a:00.0,0000:ab:00.0,0000:ba:00.0,"
        "0000:c5:00.0,0000:c6:00.0 --set-ppcie-mode off"
    )
    assert "Recovery, as root on the node: update the HGX firmware of 0000:c7:00.0" in message
    assert len(host.commands) == 1  # nothing was reset


def test_a_half_switched_ppcie_fabric_goes_all_off_then_all_on_together():
    """NVIDIA k8s-cc-manager main.py:336-372 (785d77e): PPCIe off on every device first (per the
    deployment guide), then on for ALL devices and one reset of all, so the NVLink fabric is
    configured consistently; never only the devices that look wrong."""

    gpus = ["0000:18:00.0", "0000:2a:00.0"]
    switches = ["0000:05:00.0", "0000:06:00.0"]
    devices = gpus + switches
    ppcie_now = {"0000:18:00.0": "on", "0000:2a:00.0": "off", "0000:05:00.0": "on", "0000:06:00.0": "off"}
    plan = plan_modes("ppcie", gpus, devices, dict.fromkeys(gpus, "off"), ppcie_now)
    steps = [(s.kind, s.feature, s.target, s.devices) for s in plan.steps]
    on_now = ("0000:05:00.0", "0000:18:00.0")
    every = ("0000:05:00.0", "0000:06:00.0", "0000:18:00.0", "0000:2a:00.0")
    assert steps == [("set", "ppcie", "off", on_now), ("reset", "ppcie", "off", on_now), ("verify", "ppcie", "off", on_now),
                     ("set", "ppcie", "on", every), ("reset", "ppcie", "on", every), ("verify", "ppcie", "on", every)]  # fmt: skip
    converged = plan_modes("ppcie", gpus, devices, dict.fromkeys(gpus, "off"), dict.fromkeys(devices, "on"))
    assert converged.steps == ()

"""GPU confidential-computing modes as NVIDIA's gpu-admin-tools reports them.

The fact runs the installed ``nvidia_gpu_tools.py`` (``python3``, stdlib only) with
``--query-cc-mode`` on the given GPUs and ``--query-ppcie-mode`` on the given
PPCIe-capable devices, stdout and stderr together (the tool logs to stderr), and parses
the log lines with ``ccfactory.parsers.gpuadmin``. Queries change nothing. It needs
root: call it with ``_sudo=True`` as a non-root user.

The device lists are explicit because the real tool stops at the first device that
cannot answer (``Querying PPCIe mode is not supported on ...``, exit 1): ask for PPCIe
only on Hopper GPUs and NVSwitches.

Example::

    modes = host.get_fact(GpuCcModes, tool="/opt/ccfactory/gpu-admin-tools/v1/nvidia_gpu_tools.py",
                          cc_devices="0000:18:00.0,0000:2a:00.0", ppcie_devices="", _sudo=True)
    modes.installed, modes.cc, modes.problems   # (True, {'0000:18:00.0': 'on', ...}, ())
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field

from pyinfra.api import FactBase

from ccfactory.parsers.gpuadmin import AdminToolReport, parse_admin_tool_output
from ccfactory.parsers.sections import echo_marker, split_sections


def query_command(tool: str, cc_devices: str = "", ppcie_devices: str = "") -> str:
    """The fact's shell command (pure): one section per query, each ending with its exit status."""
    t = shlex.quote(tool)
    parts = [f"if [ -f {t} ]; then true"]
    for name, devices, flag in (("cc", cc_devices, "--query-cc-mode"), ("ppcie", ppcie_devices, "--query-ppcie-mode")):
        if devices:
            parts += [
                echo_marker(name),
                f"python3 {t} --devices {shlex.quote(devices)} {flag} 2>&1",
                echo_marker("exit", "$?"),
            ]
    parts += [f"else {echo_marker('missing')}", "fi", "true"]
    return "; ".join(parts)


@dataclass(frozen=True)
class GpuModes:
    """What the tool reported: CC modes of GPUs, PPCIe modes of GPUs and NVSwitches.

    ``installed`` is False when the tool is not at the given path (modes then unknown).
    ``problems`` holds the tool's refusals and failures (driver in use, unsupported
    device, non-zero exit) as the lines it printed.
    """

    installed: bool = False
    cc: dict[str, str] = field(default_factory=dict)
    ppcie: dict[str, str] = field(default_factory=dict)
    problems: tuple[str, ...] = ()
    report: AdminToolReport = field(default_factory=AdminToolReport)

    @property
    def known(self) -> bool:
        return self.installed and not self.problems


def parse_query_output(lines: list[str]) -> GpuModes:
    """The fact's output (sections ``cc``/``ppcie``/``exit``/``missing``) to ``GpuModes``."""
    sections = split_sections(lines)
    if any(s.name == "missing" for s in sections):
        return GpuModes(installed=False)
    problems: list[str] = []
    texts: list[str] = []
    query, body, failed = "", (), False
    for s in sections:
        if s.name in ("cc", "ppcie"):
            query, body = s.name, s.lines
            texts += s.lines
            failures = [e.line for e in parse_admin_tool_output(s.lines).failures]
            problems += failures
            failed = bool(failures)
        elif s.name == "exit" and s.arg not in ("", "0") and not failed:
            tail = [line.strip() for line in body if line.strip()][-2:]
            problems.append(f"--query-{query}-mode exited with status {s.arg}: {' | '.join(tail) or 'no output'}")
    report = parse_admin_tool_output(texts)
    return GpuModes(True, report.cc_modes(), report.ppcie_modes(), tuple(problems), report)


class GpuCcModes(FactBase):
    """CC mode per GPU and PPCIe mode per device, from the installed gpu-admin-tools.

    + tool: path of ``nvidia_gpu_tools.py`` on the host
    + cc_devices: comma-separated PCI addresses of the GPUs to ask for their CC mode
    + ppcie_devices: comma-separated PCI addresses of Hopper GPUs and NVSwitches
    """

    def command(self, tool: str, cc_devices: str = "", ppcie_devices: str = "") -> str:
        return query_command(tool, cc_devices, ppcie_devices)

    def process(self, output: list[str]) -> GpuModes:
        return parse_query_output(output)

    @staticmethod
    def default() -> GpuModes:
        return GpuModes()

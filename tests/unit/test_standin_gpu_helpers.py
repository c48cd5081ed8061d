"""Test helper (no tests here): a lab node's GPU view in a temporary directory, and the stand-in tool unpacked.

The PCI tree is rendered by the lab's own renderer (``ccfactory.lab.render``) from a lab
hardware profile, so the stand-in sees exactly what a lab node sees; ``gpus.json`` is
created by the lab's ``ensure_gpu_state``. The stand-in runs from its built tarball.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

from ccfactory.lab.artifacts import standins, tarball_bytes
from ccfactory.lab.bootconfig import BootConfig
from ccfactory.lab.gpustate import ensure_gpu_state, state_path
from ccfactory.lab.hwprofile import load_profile
from ccfactory.lab.platform import PlatformFeatures
from ccfactory.lab.render import CharDevice, Directory, RenderInput, Symlink, render

PYTHON = shutil.which("python3") or sys.executable


def unpack_standin(dest: Path) -> Path:
    """Unpack the gpu-admin-tools stand-in tarball (as built for the lab); returns the tool path."""
    data = tarball_bytes(next(s for s in standins() if s.name == "gpu-admin-tools"))
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        top = tar.getnames()[0].split("/")[0]
        tar.extractall(dest, filter="data")
    return dest / top / "nvidia_gpu_tools.py"


def write_rendered(root: Path, files: dict, prefix: str = "/sys/bus/pci") -> None:
    for path, content in files.items():
        if not path.startswith(prefix):
            continue
        target = root / path.lstrip("/")
        if isinstance(content, Directory):
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, Symlink):
            os.symlink(content.target, target)
        elif isinstance(content, CharDevice):
            continue
        else:
            target.write_bytes(content if isinstance(content, bytes) else content.encode())


@dataclass
class LabNode:
    root: Path  # fake filesystem root (sysfs below it)
    lab: Path
    tool: Path
    profile: str

    @property
    def state_dir(self) -> Path:
        return state_path(self.lab, "node1").parent

    @property
    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CCFACTORY_LAB")}
        env["CCFACTORY_LAB_SYSFS_ROOT"] = str(self.root)
        env["CCFACTORY_LAB_STATE_DIR"] = str(self.state_dir)
        return env

    def run(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([PYTHON, str(self.tool), *args], capture_output=True, text=True, env=self.env, timeout=60)

    def shell(self, command: str) -> subprocess.CompletedProcess:
        return subprocess.run(command, shell=True, capture_output=True, text=True, env=self.env, timeout=60)

    def state(self) -> dict:
        return json.loads((self.state_dir / "gpus.json").read_text())["devices"]

    def faults(self, **faults: list[str]) -> None:
        (self.state_dir / "faults.json").write_text(json.dumps(faults))

    def pci(self, bdf: str) -> Path:
        return self.root / "sys/bus/pci" / bdf

    def bind(self, bdf: str, driver: str) -> None:
        """Bind ``bdf`` to ``driver`` in the fake sysfs, the way the kernel shows it."""
        drivers = self.root / "sys/bus/pci/drivers" / driver
        drivers.mkdir(parents=True, exist_ok=True)
        for name in ("bind", "unbind"):
            (drivers / name).touch()
        link = self.pci(bdf) / "driver"
        if link.is_symlink():
            link.unlink()
        os.symlink(f"../../../bus/pci/drivers/{driver}", link)


def make_lab_node(tmp: Path, profile: str = "amd-snp-hgx", extra_cmdline: str = "") -> LabNode:
    p = load_profile(profile)
    files = render(RenderInput("node1", p, PlatformFeatures(), BootConfig(f"{p.kernel['cmdline']} {extra_cmdline}".strip())))
    root = tmp / "root"
    write_rendered(root, files)
    lab = tmp / "lab"
    ensure_gpu_state(lab, "node1", p)
    tool = unpack_standin(tmp / "tool")
    return LabNode(root, lab, tool, profile)

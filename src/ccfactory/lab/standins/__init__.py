"""Lab stand-ins: programs that keep a real tool's layout, flags and output lines and act
on a lab node's simulated hardware. They exist only in the lab and reach nodes only as
artifacts of the lab's BOM overlay (``ccfactory.lab.artifacts``).

Each stand-in is a source tree in this package directory (``gpu_admin_tools/``: NVIDIA
gpu-admin-tools' ``nvidia_gpu_tools.py`` with its ``cli``/``gpu``/``pci``/``utils``
packages). The trees carry no ``__init__.py``: they are program sources, not modules of
ccfactory (nothing imports them, and the packaging test declares every ``__init__.py``
below ``src/ccfactory`` as a ccfactory package). ``tree_files`` adds an ``__init__.py``
to each package directory of the program, so the shipped tarball has the real layout.

Example::

    >>> files = tree_files("gpu_admin_tools")
    >>> "nvidia_gpu_tools.py" in files and "cli/__init__.py" in files
    True
    >>> gpu_admin_tools_version()
    'v2025.10.20o-ccfactory-lab.1'
"""

from __future__ import annotations

import re
from importlib import resources

INIT_TEXT = b"# Part of a ccfactory lab stand-in (see README.md). Not NVIDIA's code.\n"

GPU_ADMIN_TOOLS_README = """\
# gpu-admin-tools (ccfactory lab stand-in)

This is NOT NVIDIA's gpu-admin-tools. It is a stand-in for ccfactory's lab: it keeps the real
tool's entry file (`nvidia_gpu_tools.py`), command line, log format, messages and exit codes,
and acts on a lab node's simulated GPUs (`/sys/bus/pci/devices` and
`/var/lib/ccfactory-lab/state/gpus.json`). It refuses to run outside a lab node.

    sudo python3 nvidia_gpu_tools.py --devices gpus --query-cc-mode
    sudo python3 nvidia_gpu_tools.py --devices gpus --set-cc-mode=on --reset-after-cc-mode-switch
    sudo python3 nvidia_gpu_tools.py --devices gpus,nvswitches --query-ppcie-mode

Simulated flags: --devices, --gpu, --gpu-bdf, --gpu-name, --no-gpu, --log, --query-cc-mode,
--set-cc-mode, --reset-after-cc-mode-switch, --query-ppcie-mode, --set-ppcie-mode,
--reset-after-ppcie-mode-switch, --reset-with-os, --sysfs-bind, --sysfs-unbind,
--ignore-nvidia-driver, --mmio-access-type (ignored). Faults: see utils/labstate.py.
"""

_EXTRA = {"gpu_admin_tools": {"README.md": GPU_ADMIN_TOOLS_README.encode()}}


def _walk(node, prefix: str = ""):
    for child in sorted(node.iterdir(), key=lambda c: c.name):
        rel = f"{prefix}{child.name}"
        if child.is_dir():
            if child.name == "__pycache__":
                continue
            yield from _walk(child, rel + "/")
        elif child.name.endswith(".py"):
            yield rel, child.read_bytes()


def tree_files(name: str) -> dict[str, bytes]:
    """``relative path -> content`` of stand-in ``name``'s program, as it ships.

    Every directory holding Python files gets an ``__init__.py`` (except the top level,
    which holds the entry script); ``.py`` files and the generated README only.
    """
    root = resources.files(__name__).joinpath(name)
    if not root.is_dir():
        raise KeyError(f"no lab stand-in {name!r} in {__name__}")
    files = dict(_walk(root))
    for path in list(files):
        parts = path.split("/")[:-1]
        for depth in range(1, len(parts) + 1):
            files.setdefault("/".join(parts[:depth]) + "/__init__.py", INIT_TEXT)
    files.update(_EXTRA.get(name, {}))
    return dict(sorted(files.items()))


def gpu_admin_tools_version() -> str:
    """The stand-in's ``VERSION`` (what it prints after ``NVIDIA GPU Tools version``)."""
    text = resources.files(__name__).joinpath("gpu_admin_tools/cli/main.py").read_text()
    m = re.search(r'^VERSION = "([^"]+)"', text, re.M)
    if not m:
        raise RuntimeError("gpu_admin_tools/cli/main.py has no VERSION")
    return m.group(1)

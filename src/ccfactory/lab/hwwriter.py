"""Write a rendered hardware view to disk and compute the nspawn bind arguments (thin I/O layer).

Where each rendered path goes:

* under a *root* (``/sys/module``, ``/sys/firmware``, ``/sys/bus/pci``,
  ``/sys/kernel/iommu_groups``, ``/var/log/ccfactory-lab``): into ``<hw_dir>/<root>``,
  and the whole root is bind-mounted read-only over the node's directory (sysfs has no
  mkdir, so single sysfs files cannot be added; the host's view of these directories
  is hidden);
* ``/proc/<file>``: copied into the node's rootfs at ``/var/lib/ccfactory-lab/hw/proc/``
  and bound from there (nspawn resolves bind sources for /proc targets inside the
  container root); skipped when the host kernel has no such file (``/proc/modules``
  without module support: ``lsmod`` then fails in nodes; read ``/sys/module`` instead);
* ``CharDevice`` entries: ``--bind=/dev/null:/dev/<name>`` (``test -c`` works, ioctls do not).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from ccfactory.lab.errors import LabError
from ccfactory.lab.render import CharDevice, Content, Directory, Symlink

ROOTS = ("/sys/module", "/sys/firmware", "/sys/bus/pci", "/sys/kernel/iommu_groups", "/var/log/ccfactory-lab")
PROC_IN_ROOTFS = "/var/lib/ccfactory-lab/hw/proc"


def _root_of(path: str) -> str | None:
    for r in ROOTS:
        if path == r or path.startswith(r + "/"):
            return r
    return None


def write_hardware(files: dict[str, Content], hw_dir: Path, rootfs: Path) -> list[str]:
    """Write ``files`` below ``hw_dir`` (and /proc sources into ``rootfs``); return nspawn bind args.

    Example::

        args = write_hardware(render(inp), lab / "nodes/node1/hw", lab / "nodes/node1/rootfs")
        # ['--bind-ro=/var/lib/.../hw/sys/module:/sys/module', ..., '--bind=/dev/null:/dev/sev']
    """
    if hw_dir.exists():
        shutil.rmtree(hw_dir)
    hw_dir.mkdir(parents=True)
    proc_dir = rootfs / PROC_IN_ROOTFS.lstrip("/")
    if proc_dir.exists():
        shutil.rmtree(proc_dir)
    proc_dir.mkdir(parents=True)
    args: list[str] = []
    for r in ROOTS:
        (hw_dir / r.lstrip("/")).mkdir(parents=True, exist_ok=True)
    for path, content in sorted(files.items()):
        if isinstance(content, CharDevice):
            if not path.startswith("/dev/"):
                raise LabError(f"render: character device outside /dev: {path}")
            args.append(f"--bind={content.source}:{path}")
            continue
        if path.startswith("/proc/"):
            if not isinstance(content, (str, bytes)) or path.count("/") != 2:
                raise LabError(f"render: only plain files directly under /proc are supported: {path}")
            dest = proc_dir / path.rsplit("/", 1)[1]
            dest.write_bytes(content.encode() if isinstance(content, str) else content)
            if Path(path).exists():  # procfs has no mkdir: e.g. /proc/modules is absent without CONFIG_MODULES
                args.append(f"--bind-ro={PROC_IN_ROOTFS}/{dest.name}:{path}")
            continue
        if _root_of(path) is None:
            raise LabError(f"render: {path} is outside the lab's hardware roots {', '.join(ROOTS)}")
        dest = hw_dir / path.lstrip("/")
        if isinstance(content, Directory):
            dest.mkdir(parents=True, exist_ok=True)
            continue
        dest.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, Symlink):
            os.symlink(content.target, dest)
        else:
            dest.write_bytes(content.encode() if isinstance(content, str) else content)
            dest.chmod(0o644 if not path.startswith("/sys/") else 0o444)
    for r in ROOTS:
        if r == "/sys/kernel/iommu_groups" and not Path(r).is_dir():
            continue  # host kernel without IOMMU support: no mount point to cover (cannot mkdir in sysfs)
        args.append(f"--bind-ro={hw_dir / r.lstrip('/')}:{r}")
    return args

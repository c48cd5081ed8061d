"""Host tools the lab needs, and the Debian package that provides each.

``check_host()`` reports one line per missing tool, naming its apt package;
``ensure_host_packages()`` installs them (CI and README bootstrap).

Example::

    >>> missing = check_host()          # [] when the host is ready
    >>> for line in missing: print(line)
    missing systemd-nspawn: apt-get install systemd-container
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass

from ccfactory.lab.errors import LabError


@dataclass(frozen=True)
class HostTool:
    name: str  # what we look for on PATH (or an absolute path)
    package: str  # the Debian package that ships it
    why: str


# /usr/sbin is not on every root PATH (sudo -s, CI shells): look there too.
_SBIN_DIRS = ("/usr/sbin", "/sbin", "/usr/bin", "/bin")

HOST_TOOLS: tuple[HostTool, ...] = (
    HostTool("systemd-nspawn", "systemd-container", "runs each node"),
    HostTool("mmdebstrap", "mmdebstrap", "builds the node root filesystem"),
    HostTool("apt-cacher-ng", "apt-cacher-ng", "apt proxy for the nodes"),
    HostTool("ip", "iproute2", "bridges, veths and network namespaces"),
    HostTool("ssh", "openssh-client", "reaches the nodes"),
    HostTool("ssh-keygen", "openssh-client", "lab SSH key and node host keys"),
    HostTool("mount", "mount", "overlay root filesystems"),
    HostTool("umount", "mount", "overlay root filesystems"),
    HostTool("setpriv", "util-linux", "runs apt-cacher-ng unprivileged"),
    HostTool("mkfs.ext4", "e2fsprogs", "ext4 scratch space for containerd when the lab dir is not ext4"),
    HostTool("apt-config", "apt", "reads the host's apt proxy settings"),
    HostTool("docker-registry", "docker-registry", "the lab's image registry (the Trustee stand-in image)"),
    HostTool("skopeo", "skopeo", "pushes the Trustee stand-in image to the lab registry"),
)


def which(name: str) -> str | None:
    """Absolute path of a host tool, also searching the sbin directories."""
    found = shutil.which(name)
    if found:
        return found
    for d in _SBIN_DIRS:
        cand = os.path.join(d, name)
        if os.access(cand, os.X_OK):
            return cand
    return None


def missing_tools() -> list[HostTool]:
    """The host tools that are not installed."""
    return [t for t in HOST_TOOLS if which(t.name) is None]


def check_host() -> list[str]:
    """One human line per missing tool, e.g. ``missing mmdebstrap: apt-get install mmdebstrap``."""
    return [f"missing {t.name} ({t.why}): apt-get install {t.package}" for t in missing_tools()]


def require_host() -> None:
    """Raise ``LabError`` listing every missing tool, or return if the host is ready.

    Also checks that we run as root: namespaces, overlay mounts and nspawn need it.
    """
    problems = check_host()
    if os.geteuid() != 0:
        problems.insert(0, "the lab needs root (network namespaces, overlay mounts, systemd-nspawn): run as root")
    if problems:
        pkgs = sorted({t.package for t in missing_tools()})
        hint = f"\nfix: apt-get install -y --no-install-recommends {' '.join(pkgs)}" if pkgs else ""
        raise LabError("host is not ready for the lab:\n  " + "\n  ".join(problems) + hint)


def required_packages() -> list[str]:
    """Every apt package the lab needs on the host (sorted, unique)."""
    return sorted({t.package for t in HOST_TOOLS} | {"debian-archive-keyring"})


def ensure_host_packages(*, update: bool = True) -> list[str]:
    """apt-get install the packages of missing tools; returns the packages installed.

    Example (CI bootstrap)::

        python -c 'from ccfactory.lab.hostdeps import ensure_host_packages; ensure_host_packages()'
    """
    if os.geteuid() != 0:
        raise LabError("installing host packages needs root")
    pkgs = sorted({t.package for t in missing_tools()})
    if not pkgs:
        return []
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    if update:
        subprocess.run(["apt-get", "update"], check=True, env=env)
    # apt-cacher-ng's postinst tries to start the daemon; on hosts without an init
    # system that fails harmlessly (policy-rc.d), and the lab starts its own instance.
    subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", *pkgs], check=True, env=env)
    still = check_host()
    if still:
        raise LabError("packages installed but tools still missing:\n  " + "\n  ".join(still))
    return pkgs


if __name__ == "__main__":  # python -m ccfactory.lab.hostdeps [--install]
    if "--install" in sys.argv:
        print("installed:", " ".join(ensure_host_packages()) or "nothing (all present)")
    lines = check_host()
    print("\n".join(lines) if lines else "host tools: all present")
    sys.exit(1 if lines else 0)

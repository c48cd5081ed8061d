"""Where the lab keeps things. Everything lives below one lab directory.

::

    <lab>/spec.json              node list the last `up` asked for (profiles, vendors)
    <lab>/lab.json               present while the lab is up: nodes, addresses, the lab CA's SHA-256
                                 (a claim: the lab gate, ccfactory.lab.proof, checks it against live state)
    <lab>/keys/id_ed25519{,.pub} SSH key for root on every node
    <lab>/secrets/bmc-password   BMC password (0600), shared by the lab's BMCs
    <lab>/pki/ca.pem             lab CA (made by the BMC emulator)
    <lab>/ssh_config             SSH config for the nodes
    <lab>/images/base-<hash>/    cached Debian base image (overlay lower layer)
    <lab>/acng/                  apt-cacher-ng config, cache and logs
    <lab>/run/*.pid              lab-wide background processes
    <lab>/logs/                  lab-wide logs (mmdebstrap, apt proxy)
    <lab>/nodes/<n>/             one node: see NodePaths
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_LAB_DIR = "/var/lib/ccfactory/lab"
ENV_LAB_DIR = "CCFACTORY_LAB_DIR"


def default_lab_dir() -> Path:
    """``$CCFACTORY_LAB_DIR`` or ``/var/lib/ccfactory/lab``.

    >>> os.environ[ENV_LAB_DIR] = "/tmp/mylab"; str(default_lab_dir())
    '/tmp/mylab'
    >>> del os.environ[ENV_LAB_DIR]
    """
    return Path(os.environ.get(ENV_LAB_DIR) or DEFAULT_LAB_DIR).resolve()


def lab_path(lab_dir: str | os.PathLike | None) -> Path:
    return Path(lab_dir).resolve() if lab_dir else default_lab_dir()


@dataclass(frozen=True)
class NodePaths:
    """Files of one node (``<lab>/nodes/<name>/``)."""

    lab: Path
    name: str

    @property
    def dir(self) -> Path:
        return self.lab / "nodes" / self.name

    node_json = property(lambda s: s.dir / "node.json")  # name, index, profile, vendor, base hash
    upper = property(lambda s: s.dir / "upper")  # the node's "disk" (overlay upper layer)
    work = property(lambda s: s.dir / "work")  # overlay workdir
    rootfs = property(lambda s: s.dir / "rootfs")  # merged overlay, nspawn -D
    hw = property(lambda s: s.dir / "hw")  # rendered hardware (rebuilt every boot)
    state = property(lambda s: s.dir / "state")  # gpus.json etc., bound rw at /var/lib/ccfactory-lab/state
    containerd = property(lambda s: s.dir / "containerd")  # bound at /var/lib/containerd (not overlayfs)
    containerd_img = property(lambda s: s.dir / "containerd.img")  # ext4 image when the lab dir is on overlayfs
    supervisor_pid = property(lambda s: s.dir / "supervisor.pid")
    supervisor_log = property(lambda s: s.dir / "supervisor.log")
    console_log = property(lambda s: s.dir / "console.log")
    power_request = property(lambda s: s.dir / "power.json")  # desired power state (written by power())
    power_state = property(lambda s: s.dir / "power-state.json")  # actual state (written by the supervisor)
    power_lock = property(lambda s: s.dir / "power.lock")
    nspawn_args = property(lambda s: s.dir / "nspawn.args")  # last nspawn command line (debugging)

"""The node supervisor: one background process per lab node.

``python -m ccfactory.lab.supervisor --lab-dir D --node N`` (started by ``lab up``,
PID in ``nodes/<n>/supervisor.pid``, output in ``nodes/<n>/supervisor.log``):

1. mounts the node's overlay root filesystem and writes its per-node files;
2. before every boot: lets the BMC apply pending BIOS settings (optional hook), applies
   pending GPU modes, reads the applied platform features and the node's boot config,
   renders the hardware, and builds the nspawn command;
3. runs ``systemd-nspawn --boot`` (console in ``nodes/<n>/console.log``) and waits;
4. exit 133 (guest reboot) → back to 2; otherwise the node stays off until a power-on
   request (see ``ccfactory.lab.power``);
5. on SIGTERM: powers the container off gracefully (SIGKILL after a timeout),
   unmounts, exits.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

from ccfactory.lab import features, gpustate, proc
from ccfactory.lab.bootconfig import read_boot_config
from ccfactory.lab.errors import LabError
from ccfactory.lab.hostdeps import which
from ccfactory.lab.hwprofile import load_profile
from ccfactory.lab.hwwriter import write_hardware
from ccfactory.lab.layout import NodePaths
from ccfactory.lab.network import netns_path
from ccfactory.lab.power import SIG_POWEROFF, container_init, read_request, write_json
from ccfactory.lab.render import RenderInput, render
from ccfactory.lab.rootfs import base_dir, is_mounted, mount_overlay, personalize, unmount

log = logging.getLogger("ccfactory.lab.supervisor")

GUEST_REBOOT = 133  # systemd-nspawn's exit status when the container rebooted
STOP_TIMEOUT = 20.0  # graceful poweroff budget before SIGKILL
NODE_UUID_NS = uuid.UUID("6f1d3a52-2a43-4c1e-9d7e-6b1f1a0c0c00")
NODE_STATE_MOUNT = gpustate.NODE_STATE_DIR


def node_uuid(node: str) -> str:
    """Stable per-node UUID (nspawn --uuid): systemd derives /etc/machine-id from it."""
    return str(uuid.uuid5(NODE_UUID_NS, node))


def fs_type(path: Path) -> str:
    """Filesystem type of the mount holding ``path``."""
    best, fstype = "", ""
    target = str(path.resolve())
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, right = line.split(" - ", 1)
        mp = left.split()[4]
        if (target == mp or target.startswith(mp.rstrip("/") + "/")) and len(mp) >= len(best):
            best, fstype = mp, right.split()[0]
    return fstype


def ensure_containerd_dir(paths: NodePaths) -> None:
    """/var/lib/containerd must not be on overlayfs (containerd's overlay snapshotter fails there).

    The lab dir is normally on ext4/xfs, so a plain directory does; on an overlayfs lab
    dir (e.g. inside a container) an ext4 image is loop-mounted instead.
    """
    paths.containerd.mkdir(parents=True, exist_ok=True)
    if fs_type(paths.dir) != "overlay" or is_mounted(paths.containerd):
        return
    img = paths.containerd_img
    if not img.exists():
        with open(img, "wb") as f:
            f.truncate(8 << 30)  # sparse
        proc.run([which("mkfs.ext4") or "mkfs.ext4", "-q", "-F", str(img)])
    proc.run(["mount", "-o", "loop", str(img), str(paths.containerd)])


class Supervisor:
    def __init__(self, lab: Path, node: str):
        self.lab, self.node = lab, node
        self.paths = NodePaths(lab, node)
        self.spec = json.loads(self.paths.node_json.read_text())
        self.stopping = False
        self.boot = int(json.loads(self.paths.power_state.read_text()).get("boot", 0)) if self.paths.power_state.exists() else 0
        self.booted_seq = 0
        self.nspawn: subprocess.Popen | None = None

    # -- state

    def write_state(self, power: str, **extra) -> None:
        st = {
            "power": power,
            "boot": self.boot,
            "booted_seq": self.booted_seq,
            "nspawn_pid": self.nspawn.pid if (self.nspawn and power == "on") else None,
            "supervisor_pid": os.getpid(),
            "since": time.time(),
        }
        st.update(extra)
        write_json(self.paths.power_state, st)

    def on_signal(self, signum, _frame) -> None:
        if signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            self.stopping = True

    # -- boot

    def prepare(self) -> list[str]:
        """Render this boot's hardware; returns the full nspawn command."""
        lab, node, paths = self.lab, self.node, self.paths
        features.bmc_post(lab, node)
        gpustate.apply_pending_on_reset(lab, node)
        profile = load_profile(self.spec["profile"])
        feats = features.platform_features(lab, node, self.spec.get("platform_source"))
        boot = read_boot_config(paths.rootfs, profile.kernel["cmdline"])
        files = render(
            RenderInput(node, profile, feats, boot, gpustate.load_gpu_state(lab, node), cpus=os.cpu_count() or 1)
        )
        hw_args = write_hardware(files, paths.hw, paths.rootfs)
        paths.state.mkdir(parents=True, exist_ok=True)
        cmd = [
            which("systemd-nspawn") or "systemd-nspawn",
            f"--directory={paths.rootfs}",
            f"--machine={node}",
            f"--uuid={node_uuid(node)}",
            "--boot",
            "--register=no",  # no systemd on the host: no machined to register with ...
            "--keep-unit",  # ... and no unit to move into (--register=no alone fails)
            "--console=read-only",
            f"--network-namespace-path={netns_path(node)}",
            "--resolv-conf=off",
            "--timezone=off",
            "--link-journal=no",
            # containerd in a node: session keyrings and cgroup device BPF programs ...
            "--system-call-filter=@keyring bpf",
            # ... runc's netlink calls ...
            "--capability=CAP_NET_ADMIN",
            # ... and an overlay-capable filesystem for its snapshots
            f"--bind={paths.containerd}:/var/lib/containerd",
            f"--bind={paths.state}:{NODE_STATE_MOUNT}",
            *hw_args,
        ]
        paths.nspawn_args.write_text("\n".join(cmd) + "\n")
        log.info(
            "boot %d: profile %s, cmdline %r, platform %s",
            self.boot + 1,
            profile.name,
            boot.cmdline,
            {k: v for k, v in vars(feats).items()} if hasattr(feats, "__dict__") else feats,
        )
        return cmd

    def run_container(self, cmd: list[str]) -> int:
        env = dict(os.environ, SYSTEMD_NSPAWN_UNIFIED_HIERARCHY="1")  # cgroup v2 only: containerd needs it writable
        with open(self.paths.console_log, "ab", buffering=0) as out:
            out.write(f"\n===== ccfactory lab: boot {self.boot} of {self.node} at {time.ctime()} =====\n".encode())
            self.nspawn = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env)
        self.write_state("on")
        while True:
            try:
                return self.nspawn.wait(timeout=0.2)
            except subprocess.TimeoutExpired:
                pass
            if self.stopping:
                return self.shutdown_container()

    def shutdown_container(self) -> int:
        assert self.nspawn
        init = container_init(self.nspawn.pid)
        log.info("stopping: powering the container off (init pid %s)", init)
        if init:
            proc.signal_pid(init, SIG_POWEROFF)
        else:
            self.nspawn.send_signal(signal.SIGTERM)
        try:
            return self.nspawn.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            log.warning("container did not power off within %.0f s: killing it", STOP_TIMEOUT)
        init = container_init(self.nspawn.pid)
        if init:
            proc.signal_pid(init, signal.SIGKILL)
        try:
            return self.nspawn.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.nspawn.kill()
            return self.nspawn.wait()

    # -- main loop

    def run(self) -> int:
        for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1):
            signal.signal(s, self.on_signal)
        paths = self.paths
        base = base_dir(self.lab, self.spec["base"])
        if not base.is_dir():
            raise LabError(f"base image {base} is missing: run `ccfactory lab up`")
        mount_overlay(base, paths.upper, paths.work, paths.rootfs)
        ensure_containerd_dir(paths)
        personalize(paths.rootfs, self.node, (self.lab / "keys" / "id_ed25519.pub").read_text())
        log.info("supervisor %d for %s ready (rootfs %s)", os.getpid(), self.node, paths.rootfs)
        reboot = False
        try:
            while not self.stopping:
                req = read_request(paths)
                wanted = req.get("desired") == "on" and int(req.get("seq", 0)) > self.booted_seq
                if not (reboot or wanted):
                    self.write_state("off")
                    while not self.stopping and read_request(paths) == req:
                        time.sleep(0.1)
                    continue
                reboot = False
                self.booted_seq = max(self.booted_seq, int(req.get("seq", 0)))
                try:
                    cmd = self.prepare()
                except Exception as exc:  # noqa: BLE001 - a bad profile or state file must not kill the supervisor
                    log.error("cannot boot %s: %s", self.node, exc)
                    self.write_state("off", error=str(exc))
                    continue
                self.boot += 1
                t0 = time.monotonic()
                rc = self.run_container(cmd)
                took = time.monotonic() - t0
                log.info("boot %d ended: nspawn exit %d after %.1f s", self.boot, rc, took)
                if rc == GUEST_REBOOT and not self.stopping:
                    reboot = True
                elif rc not in (0, GUEST_REBOOT) and not self.stopping and read_request(paths) == req:
                    # nobody asked for this: nspawn failed to start the container (or it crashed)
                    tail = self.paths.console_log.read_text(errors="replace").strip().splitlines()[-3:]
                    err = f"systemd-nspawn exited {rc} after {took:.1f} s: {' | '.join(tail)}"
                    log.error("%s", err)
                    self.nspawn = None
                    self.write_state("off", error=err)
        finally:
            if self.nspawn and self.nspawn.poll() is None:
                self.shutdown_container()
            self.nspawn = None
            self.write_state("off")
            unmount(paths.dir)
            log.info("supervisor for %s stopped", self.node)
        return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ccfactory.lab.supervisor")
    ap.add_argument("--lab-dir", required=True)
    ap.add_argument("--node", required=True)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stdout)
    lab = Path(args.lab_dir)
    paths = NodePaths(lab, args.node)
    proc.write_pidfile(paths.supervisor_pid, os.getpid())
    try:
        return Supervisor(lab, args.node).run()
    except LabError as exc:
        log.error("%s", exc)
        return 1
    finally:
        if proc.read_pidfile(paths.supervisor_pid) == os.getpid():
            paths.supervisor_pid.unlink(missing_ok=True)


if __name__ == "__main__":
    sys.exit(main())

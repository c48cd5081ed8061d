"""A simulated host for the host stage's unit tests, and the stage's decisions over its boots.

``SimNode`` is a root directory with Debian's stock ``/etc/default/grub``: "booting" it
renders the kernel's view (``/proc/cmdline``, ``/sys/module``, the kernel log ...) with the
lab's renderer from the node's own GRUB and modprobe.d files and a BIOS state, so the
facts read it through their real shell commands, as on a lab node. The other host-stage
tests import it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

from ccfactory.distros import distro_for
from ccfactory.facts.node import NodeOsInfo
from ccfactory.facts.tee import TeeHostStatus, tee_command
from ccfactory.lab.bootconfig import read_boot_config
from ccfactory.lab.hwprofile import load_profile
from ccfactory.lab.platform import PlatformFeatures
from ccfactory.lab.render import RenderInput, render
from ccfactory.lab.rootfs import DEFAULT_GRUB
from ccfactory.roles.host.facts import REBOOT_MARKER, HostBootConfig, host_boot_files_command
from ccfactory.roles.host.plan import plan_host
from support import materialize

SNP_ON = PlatformFeatures(smee=True, snp=True, rmp_coverage=True, sev_es_asid_limit=100)
TDX_ON = PlatformFeatures(tme=True, tme_mt=True, tdx=True, seam_loader=True, tdx_key_split=1, sgx=True, limit_pa_46bit=False)
BIOS_OFF = PlatformFeatures()
PROFILES = {"snp": "amd-snp-hgx", "tdx": "intel-tdx"}
RENDERED_ROOTS = ("proc", "sys", "dev", "var/log/ccfactory-lab")


class SimNode:
    """One simulated host. ``boot()`` renders the kernel's view from the node's files."""

    def __init__(
        self,
        base: Path,
        tee: str = "snp",
        features: PlatformFeatures | None = None,
        *,
        os_id: str = "ubuntu",
        os_version: str = "25.10",
        kernel: str = "6.17.0-5-generic",
        initramfs: bool = True,
    ):
        self.base = base
        self.root = base / "root"
        self.tee = tee
        self.profile = load_profile(PROFILES[tee])
        self.features = features if features is not None else (SNP_ON if tee == "snp" else TDX_ON)
        self.os_id, self.os_version, self.kernel = os_id, os_version, kernel
        self.boots = 0
        self.reboots_requested = 0
        self.write("/etc/default/grub", DEFAULT_GRUB)
        (self.root / "etc/default/grub.d").mkdir(parents=True, exist_ok=True)
        (self.root / "etc/modprobe.d").mkdir(parents=True, exist_ok=True)
        if initramfs:
            self.write(f"/boot/initrd.img-{kernel}", "")
        self._bin = base / "bin"
        self._bin.mkdir(exist_ok=True)
        scripts = {"dmesg": "echo 'dmesg: read kernel buffer failed: Operation not permitted' >&2; exit 1"}
        scripts |= {tool: "exit 0" for tool in ("update-grub", "update-initramfs")}
        for name, body in scripts.items():
            (self._bin / name).write_text(f"#!/bin/sh\n{body}\n")
            (self._bin / name).chmod(0o755)
        self.boot()

    # ------------------------------------------------------------ the node's files

    def path(self, node_path: str) -> Path:
        return self.root / node_path.lstrip("/")

    def write(self, node_path: str, text: str) -> None:
        p = self.path(node_path)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)

    def read(self, node_path: str) -> str | None:
        p = self.path(node_path)
        return p.read_text() if p.is_file() else None

    def remove(self, node_path: str) -> None:
        self.path(node_path).unlink(missing_ok=True)

    def remove_tool(self, name: str) -> None:
        (self._bin / name).unlink()

    # ------------------------------------------------------------ boot and facts

    @property
    def boot_id(self) -> str:
        return f"boot-{self.boots}"

    def boot(self) -> None:
        """Power-on: the lab's renderer turns BIOS state + the node's boot files into its kernel view."""
        for rel in RENDERED_ROOTS:
            shutil.rmtree(self.root / rel, ignore_errors=True)
        boot = read_boot_config(self.root, self.profile.kernel["cmdline"])
        materialize(render(RenderInput("sim", self.profile, self.features, boot)), self.root)
        self.boots += 1

    def run(self, command: str) -> list[str]:
        env = dict(os.environ, PATH=f"{self._bin}:{os.environ['PATH']}")
        return subprocess.run(["sh", "-c", command], capture_output=True, text=True, env=env, check=True).stdout.splitlines()

    def info(self) -> NodeOsInfo:
        return NodeOsInfo(self.os_id, self.os_version, self.kernel, self.profile.cpu["vendor_id"], "none", self.boot_id)

    def tee_status(self):
        return TeeHostStatus().process(self.run(tee_command(str(self.root))))

    def boot_files(self, tools: str = "update-grub update-initramfs"):
        return HostBootConfig().process(self.run(host_boot_files_command(tools, str(self.root))))

    def plan(self, cfg):
        info = self.info()
        return plan_host(cfg, info, self.tee_status(), self.boot_files(), distro_for(info.os_id, info.os_version))

    # ------------------------------------------------------------ what the role's operations do

    def apply(self, plan) -> None:
        """Carry the plan out as the role's operations would (files, marker, reboot)."""
        assert not plan.problems, plan.problems
        if plan.needs_reboot:
            self.write(REBOOT_MARKER, plan.marker_text(self.boot_id))
        for f in plan.files:
            if f.wanted is None:
                self.remove(f.path)
            else:
                self.write(f.path, f.wanted)
        if plan.needs_reboot:
            self.reboots_requested += 1
            self.boot()
            self.remove(REBOOT_MARKER)
        elif plan.stale_marker:
            self.remove(REBOOT_MARKER)

    # ------------------------------------------------------------ pyinfra's file facts, answered from the root

    def file_fact(self, path: str):
        p = self.path(path)
        if not p.is_file():
            return None
        st = p.stat()
        return {"mode": int(oct(st.st_mode & 0o777)[2:]), "user": "root", "group": "root", "size": st.st_size, "mtime": None}

    def directory_fact(self, path: str):
        return {"mode": 755, "user": "root", "group": "root"} if self.path(path).is_dir() else None

    def sha1_fact(self, path: str):
        p = self.path(path)
        return hashlib.sha1(p.read_bytes()).hexdigest() if p.is_file() else None


# ------------------------------------------------------------------ the stage over boots


def _cfg(tee: str, gpus: bool = True, **data):
    from ccfactory.config import load_node_config

    groups = ["workers", tee] + (["gpu"] if gpus else [])
    base = {"gpu_count": 8, "gpu_model": "H100"} if gpus else {}
    return load_node_config("sim", groups, base | data)


def test_snp_from_fresh_to_active_with_one_reboot_then_nothing(tmp_path):
    node = SimNode(tmp_path, "snp")
    cfg = _cfg("snp")
    first = node.plan(cfg)
    assert first.problems == () and first.needs_reboot
    assert node.tee_status().snp.active is False or first.running_diffs  # fresh: not configured yet
    node.apply(first)
    assert node.reboots_requested == 1 and node.tee_status().snp.active
    second = node.plan(cfg)
    assert not second.changes and not second.needs_reboot and second.running_diffs == ()
    assert second.update_bootloader is None and second.update_initramfs is None


def test_tdx_from_fresh_to_active_with_one_reboot_then_nothing(tmp_path):
    node = SimNode(tmp_path, "tdx")
    cfg = _cfg("tdx", gpu_model="B200", gpu_count=2)
    assert not node.tee_status().tdx.active  # kvm_intel.tdx is off by default
    first = node.plan(cfg)
    assert first.needs_reboot and "kvm_intel.tdx=1" in first.reboot_reason
    node.apply(first)
    status = node.tee_status()
    assert status.tdx.active and status.tdx.module_initialized
    assert {"intel_iommu=on", "kvm_intel.tdx=1", "nohibernate"} <= set(status.cmdline.tokens)
    second = node.plan(cfg)
    assert not second.changes and not second.needs_reboot


def test_bios_off_writes_the_files_but_does_not_reboot_for_nothing(tmp_path):
    node = SimNode(tmp_path, "snp", BIOS_OFF)
    cfg = _cfg("snp")
    plan = node.plan(cfg)
    assert plan.changes and not plan.needs_reboot and plan.reboot_if_bios_on
    assert any(f.startswith("cpu_sev_snp: FAIL") for f in plan.firmware)
    assert "SNP is still off in BIOS" in plan.not_in_effect
    node.apply(plan)
    # the firmware stage turns SNP on and reboots: the configuration written before is in effect
    node.features = SNP_ON
    node.boot()
    assert node.tee_status().snp.active
    again = node.plan(cfg)
    assert not again.changes and not again.needs_reboot


def test_no_reboot_loop_when_the_reboot_did_not_bring_the_configuration(tmp_path):
    node = SimNode(tmp_path, "tdx")
    cfg = _cfg("tdx", gpu_model="B200", gpu_count=2)
    plan = node.plan(cfg)
    node.apply(plan)
    # something outside ccfactory's files drops the tokens at the next boot (e.g. not booting GRUB)
    node.write("/etc/default/grub.d/99-site.cfg", 'GRUB_CMDLINE_LINUX_DEFAULT=""\n')
    node.boot()
    node.remove("/etc/default/grub.d/99-site.cfg")  # ... and is gone from the files ccfactory reads
    again = node.plan(cfg)
    assert again.running_diffs and not again.changes and not again.needs_reboot

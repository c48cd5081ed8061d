"""ContainerdRuntimes and KataInstall parse what containerd and the Kata probe print."""

from __future__ import annotations

import json
import subprocess

from ccfactory.facts.containerd import parse_probe as parse_containerd
from ccfactory.facts.kata import parse_probe as parse_kata
from ccfactory.facts.kata import parse_version_output, probe_command
from ccfactory.roles.runtime import containerd as ops
from ccfactory.parsers.sections import MARKER

DUMP = """\
version = 2
root = "/var/lib/containerd"

[plugins]
  [plugins."io.containerd.grpc.v1.cri"]
    sandbox_image = "registry.k8s.io/pause:3.6"
    [plugins."io.containerd.grpc.v1.cri".containerd]
      default_runtime_name = "runc"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes]
        [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.kata-qemu-snp]
          pod_annotations = ["io.katacontainers.*"]
          runtime_path = "/opt/kata/bin/containerd-shim-kata-v2"
          runtime_type = "io.containerd.kata-qemu-snp.v2"
          [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.kata-qemu-snp.options]
            ConfigPath = "/opt/kata/share/defaults/kata-containers/runtimes/qemu-snp/configuration-qemu-snp.toml"
        [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
          runtime_type = "io.containerd.runc.v2"
"""


def probe_lines(dump=DUMP, dump_exit="0", cri="ok", active="active", main="# ccfactory-handlers: kata-qemu-snp\nversion = 2\n"):
    lines = [
        f"{MARKER}version", "containerd github.com/containerd/containerd 1.6.20~ds1 1.6.20~ds1-1+deb12u3",
        f"{MARKER}binary", "/usr/bin/containerd", f"{MARKER}active", active, f"{MARKER}enabled", "enabled",
        f"{MARKER}candidate", "1.6.20~ds1-1+deb12u3", f"{MARKER}main", *main.splitlines(), f"{MARKER}dropin-missing",
        f"{MARKER}dump", *dump.splitlines(), f"{MARKER}dump-exit {dump_exit}", f"{MARKER}default", "version = 2",
        f"{MARKER}cri", cri, f"{MARKER}links", "containerd-shim-kata-qemu-snp-v2",
    ]  # fmt: skip
    return lines


def test_containerd_state():
    s = parse_containerd(probe_lines())
    assert s.installed and s.version == "1.6.20" and s.active and s.enabled and s.cri_ok
    assert s.candidate == "1.6.20~ds1-1+deb12u3" and s.dropin is None and s.config_version == 2
    assert set(s.handlers) == {"kata-qemu-snp", "runc"}
    assert s.handlers["kata-qemu-snp"]["config_path"].endswith("configuration-qemu-snp.toml")
    assert s.owned == ["kata-qemu-snp"] and s.shim_links == ("containerd-shim-kata-qemu-snp-v2",)
    assert ops.problems_with(s, ["kata-qemu-snp"], []) == []


def test_containerd_rejecting_its_config_is_reported_with_its_message():
    msg = 'containerd: failed to load TOML from /etc/containerd/config.toml: invalid plugin key URI "x" expect io.containerd.x.vx'
    s = parse_containerd(probe_lines(dump=msg, dump_exit="1", cri="", active="failed"))
    assert not s.dump_ok and "invalid plugin key URI" in s.dump_error
    problems = ops.problems_with(s, ["kata-qemu-snp"], [])
    assert any("not active" in p for p in problems) and any("invalid plugin key URI" in p for p in problems)


def test_unwanted_handler_still_listed_is_a_problem():
    s = parse_containerd(probe_lines())
    assert ops.problems_with(s, [], ["kata-qemu-snp"]) == ["config dump still lists removed handler(s) kata-qemu-snp"]


def test_not_installed():
    s = parse_containerd([f"{MARKER}version", f"{MARKER}binary", f"{MARKER}active", "inactive", f"{MARKER}candidate", "(none)"])
    assert not s.installed and s.candidate == "" and s.main_config is None


def test_kata_version_line():
    assert parse_version_output("kata-runtime  : 4.1.0\n   commit   : abc\n   OCI specs: 1.2.1") == "4.1.0"


def test_kata_probe_runs_against_a_tree(tmp_path):
    (tmp_path / "bin").mkdir()
    kr = tmp_path / "bin" / "kata-runtime"
    kr.write_text("#!/bin/sh\necho 'kata-runtime  : 9.9.9'\n")
    kr.chmod(0o755)
    (tmp_path / "bin" / "containerd-shim-kata-v2").write_text("#!/bin/sh\n")
    d = tmp_path / "share/defaults/kata-containers"
    (d / "runtimes/qemu-snp/config.d").mkdir(parents=True)
    (d / "configuration-qemu-snp.toml").write_text('[hypervisor.qemu]\nkernel_params = "x=1"\n')
    (d / "runtimes/qemu-snp/configuration-qemu-snp.toml").write_text('[hypervisor.qemu]\nkernel_params = "x=1"\n')
    (d / "runtimes/qemu-snp/config.d/50-ccfactory.toml").write_text("# ours\n")
    out = subprocess.run(["sh", "-c", probe_command(str(tmp_path))], capture_output=True, text=True).stdout
    k = parse_kata(out.splitlines())
    assert k.present and k.version == "9.9.9" and k.upstream["qemu-snp"]["kernel_params"] == "x=1"
    assert k.copies["qemu-snp"] == k.upstream["qemu-snp"]["sha256"]
    assert k.dropins == {"qemu-snp": {"50-ccfactory.toml": "# ours\n"}}
    assert json.loads(json.dumps(k.running)) == []
